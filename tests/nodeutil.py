"""Run a real imgate node in a background thread (its own uvloop loop) for end-to-end tests, and talk to it
raw: goim frames over a blocking socket, the op-6 notice a close carries."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import struct
import tempfile
import threading
import urllib.error
import urllib.request

import pytest
import uvloop

from imgate import client as imclient
from imgate.config import Config
from imgate.core import FrameDecoder
from imgate.http.apikeys import KeyStore

from helpers import run


# http base ("http://127.0.0.1:PORT") -> the admin API key a helper made for that node: helpers that
# only know a node's address (imutil.api) find its credential here
API_KEYS: dict[str, str] = {}


class NodeThread:
    """The node's HTTP API needs a credential: ``http()`` sends ``api_key``, an admin key the helper
    creates in the node's data dir (a fresh temporary one unless the config names it)."""

    def __init__(self, config: Config | None = None, **overrides):
        self._tmp = None
        if config is None:
            if "data_dir" not in overrides:  # the message store's file: never the working directory
                self._tmp = overrides["data_dir"] = tempfile.mkdtemp(prefix="imgate-node-")
            defaults = dict(tcp="127.0.0.1:0", ws="127.0.0.1:0", http="127.0.0.1:0", auth="none",
                            online_interval=0.1, server_id="test-node")
            defaults.update(overrides)
            config = Config(**defaults).validate()
        self.config = config
        self.api_key = KeyStore(config.data_dir).create("tests", ["admin"])[1]
        self.loop = uvloop.new_event_loop()
        self.node = None
        self._ready = threading.Event()
        self._error = None
        self._thread = threading.Thread(target=self._run, name="imgate-node", daemon=True)

    def _run(self):
        from imgate.node import Node

        asyncio.set_event_loop(self.loop)
        try:
            self.node = Node(self.config)
            self.loop.run_until_complete(self.node.start())
        except BaseException as e:  # surfaced to the test thread
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()

    def start(self) -> "NodeThread":
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        API_KEYS[self.http_base] = self.api_key
        return self

    def call(self, coro, timeout=30):
        """Run a coroutine on the node's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self, grace=2.0):
        if self.node is not None and self.loop.is_running():
            try:
                self.call(self.node.stop(grace))
            finally:
                self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    @property
    def tcp_url(self):
        return f"tcp://127.0.0.1:{self.node.proxy.tcp_port}"

    @property
    def ws_url(self):
        return f"ws://127.0.0.1:{self.node.proxy.ws_port}/sub"

    @property
    def http_base(self):
        return f"http://127.0.0.1:{self.node.http_port}"

    def http(self, method, path, body=None, timeout=10, headers=None, api_key=True):
        """(status, parsed JSON or raw bytes). ``api_key``: True sends the helper's admin key, a string
        sends that credential, None sends none."""
        headers = dict(headers or {})
        if api_key:
            headers["Authorization"] = f"Bearer {self.api_key if api_key is True else api_key}"
        req = urllib.request.Request(self.http_base + path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status, raw, ctype = resp.status, resp.read(), resp.headers.get("Content-Type", "")
        except urllib.error.HTTPError as e:
            status, raw, ctype = e.code, e.read(), e.headers.get("Content-Type", "")
        if "json" in ctype:
            return status, json.loads(raw)
        return status, raw

    def stats(self):
        return self.node.proxy.stats()


def module_node(**overrides):
    """A module-scoped fixture named ``node``: one :class:`NodeThread` with these settings, shared by the
    module's tests (``node = module_node(heartbeat_timeout=30.0)`` at the top of a test module)."""

    @pytest.fixture(scope="module")
    def node():
        n = NodeThread(**overrides).start()
        try:
            yield n
        finally:
            n.stop()

    return node


# ---------------------------------------------------------------- a node's clients, down to the bytes

ROOM = "live://1000"


def urls(node):
    return [node.tcp_url, node.ws_url]


def notice_of(data: bytes) -> dict:
    frames = FrameDecoder(max_body=1 << 20).feed(data)
    sixes = [f for f in frames if f.op == 6]
    assert sixes, f"no op-6 notice among ops {[f.op for f in frames][:20]}"
    return json.loads(sixes[-1].body)


def raw_tcp(node) -> socket.socket:
    return socket.create_connection(("127.0.0.1", node.node.proxy.tcp_port), timeout=5)


def recv_exact(sock, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        assert chunk, f"closed after {len(out)} of {n} bytes"
        out += chunk
    return bytes(out)


def recv_frame(sock):
    """Exactly one goim frame from a blocking socket."""
    head = recv_exact(sock, 16)
    [frame] = FrameDecoder(max_body=1 << 20).feed(head + recv_exact(sock, struct.unpack(">i", head[:4])[0] - 16))
    return frame


def auth_body(mid=1, room=ROOM, **extra):
    return json.dumps(dict(mid=mid, key="", room_id=room, platform="test", accepts=[], **extra)).encode()


def assert_still_serving(node):
    async def go():
        c = await imclient.connect(node.tcp_url, mid=424242, room_id="check://1", heartbeat=None)
        assert await c.heartbeat() >= 1
        await c.close()

    run(go())


def read_until_closed(sock, timeout=30.0) -> bytes:
    """Everything the peer sends until it closes the stream (FIN) or resets it.

    `timeout` only bounds a hang: if the peer stays silent that long without closing, that is a failure
    (AssertionError), never taken for a close: a server that forgets to close must turn the test red.
    """
    sock.settimeout(timeout)
    out = bytearray()
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        except socket.timeout:
            raise AssertionError(f"the peer sent {len(out)} bytes and then nothing for {timeout:.0f}s "
                                 f"without closing the connection (last bytes: {bytes(out[-64:])!r})") from None
        if not chunk:
            break
        out += chunk
    return bytes(out)

