"""A small goim v2 server for the client's tests, over TCP and WebSocket, built on imgate.core's server
side (FrameDecoder, WebSocketHandshake, WebSocketParser): its parser refuses unmasked client frames, so
every passing WebSocket test also proves that the client masks.

``loop_kind`` (import it into a test module: an autouse fixture) runs each of the module's tests on both
event loops through helpers.run.
"""
import asyncio
import json
import struct

import pytest

import helpers
from imgate.core import (
    Frame,
    FrameDecoder,
    WebSocketError,
    WebSocketHandshake,
    WebSocketParser,
    encode_batch,
    encode_frame,
    encode_ws_close,
    encode_ws_frame,
)
from polling import wait_until_async

TRANSPORTS = ["tcp", "ws"]


@pytest.fixture(autouse=True, params=["asyncio", "uvloop"])
def loop_kind(request):
    """Every test runs on both event loops (uvloop is stricter about closed transports)."""
    helpers.LOOP = request.param
    yield request.param
    helpers.LOOP = "uvloop"


# -- the fake server ----------------------------------------------------------------------------

class FakeConn(asyncio.Protocol):
    def __init__(self, server, ws):
        self.server = server
        self.ws = ws
        self.hs = WebSocketHandshake() if ws else None
        self.parser = None
        self.decoder = FrameDecoder()
        self.received: list[Frame] = []
        self.messages: list[bytes] = []     # WebSocket data messages, unmasked by the parser
        self.auth: dict | None = None
        self.held: list[Frame] = []
        self.ws_error: WebSocketError | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport
        self.server.conns.append(self)

    def connection_lost(self, exc):
        if self in self.server.authed:
            self.server.authed.remove(self)
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data):
        if self.ws:
            if self.parser is None:
                if not self.hs.feed(data):
                    return
                if self.server.bad_accept:
                    self.transport.write(self.hs.response.replace(b"Accept: ", b"Accept: x"))
                else:
                    self.transport.write(self.hs.response)
                if not self.hs.ok or self.hs.path != "/sub":
                    self.transport.close()
                    return
                self.parser = WebSocketParser(max_message=1 << 22)
                data = self.hs.leftover
            try:
                messages = self.parser.feed(data)
            except WebSocketError as e:
                self.ws_error = e
                self.transport.write(e.close_frame())
                self.transport.close()
                return
            out = self.parser.take_output()
            if out:
                self.transport.write(out)
            for _opcode, payload in messages:
                self.messages.append(payload)
                for frame in FrameDecoder(1 << 22).feed(payload):
                    self.handle(frame)
            if self.parser.closed:
                self.transport.close()
        else:
            for frame in self.decoder.feed(data):
                self.handle(frame)

    # what the server does with each request
    def handle(self, f: Frame):
        self.received.append(f)
        server = self.server
        if f.op == 7:
            self.auth = json.loads(f.body)
            verdict = server.on_auth(self.auth)
            if verdict == "close":
                self.transport.close()
            elif verdict:
                self.notice(verdict)
            else:
                server.authed.append(self)
                self.send(encode_frame(8, f.seq, server.auth_reply))
        elif f.op == 2:
            self.send(encode_frame(3, f.seq if server.echo_seq else 0,
                                   struct.pack(">i", len(server.authed))))
        elif f.op == 4:
            if f.body.startswith(b"hold"):
                # answer held requests in reverse order once two arrived
                self.held.append(f)
                if len(self.held) == 2:
                    for h in reversed(self.held):
                        self.send(encode_frame(5, h.seq, b"re:" + h.body))
                    self.held.clear()
            else:
                self.send(encode_frame(5, f.seq, b"re:" + f.body))
        elif f.op in (12, 14, 16, 18, 20):
            refusal = server.refuse.get(f.body)
            if refusal is not None:  # what imgate answers when it refuses
                body = json.dumps({"ok": False, "error": refusal}).encode()
            else:
                body = server.room_reply
            self.send(encode_frame(f.op + 1, f.seq if server.echo_seq else 0, body))
        elif f.op == 50:  # an IM-style request with a non-standard reply op
            self.send(encode_frame(1000, 0, b"push-before-reply"))
            self.send(encode_frame(51, f.seq, f.body[::-1]))

    # server -> client
    def send(self, frame: bytes):
        self.transport.write(encode_ws_frame(frame) if self.ws else frame)

    def push(self, op, body=b"", seq=0):
        self.send(encode_frame(op, seq, body))

    def push_batch(self, frames, wrap=None):
        """goim style: over TCP the inner frames go straight on the stream; over WS as one op 9."""
        if self.ws or wrap:
            self.send(encode_batch(frames))
        else:
            self.transport.write(b"".join(frames))

    def notice(self, reason, reconnect=False):
        self.send(encode_frame(6, 0, json.dumps({"reason": reason, "reconnect": reconnect})))
        if self.ws:
            self.transport.write(encode_ws_close(1000))
        self.transport.close()


class FakeServer:
    def __init__(self):
        self.conns: list[FakeConn] = []
        self.authed: list[FakeConn] = []
        self.reject: dict[int, str] = {}     # mid -> reason of the op-6 notice
        self.close_mids: set[int] = set()     # close without a notice
        self.auth_reply = b""
        self.echo_seq = True
        self.bad_accept = False
        self.refuse: dict[bytes, str] = {}    # request body of ops 12-20 -> error of an "ok": false reply
        self.room_reply = b""                 # reply body when not refused (goim: empty)

    def on_auth(self, body):
        mid = body.get("mid")
        if mid in self.close_mids:
            return "close"
        return self.reject.get(mid)

    async def start(self):
        loop = asyncio.get_running_loop()
        self.tcp = await loop.create_server(lambda: FakeConn(self, False), "127.0.0.1", 0)
        self.ws = await loop.create_server(lambda: FakeConn(self, True), "127.0.0.1", 0)
        return self

    def url(self, kind, path="/sub"):
        srv = self.tcp if kind == "tcp" else self.ws
        port = srv.sockets[0].getsockname()[1]
        return f"tcp://127.0.0.1:{port}" if kind == "tcp" else f"ws://127.0.0.1:{port}{path}"

    def conn_of(self, mid) -> FakeConn:
        return next(c for c in self.conns if c.auth and c.auth.get("mid") == mid)

    async def stop(self):
        for c in self.conns:
            c.transport.abort()
        self.tcp.close()
        self.ws.close()


async def with_server(body, kind, **server_opts):
    server = await FakeServer().start()
    for name, value in server_opts.items():
        setattr(server, name, value)
    try:
        return await body(server, server.url(kind))
    finally:
        await server.stop()


async def until(predicate):
    await wait_until_async(predicate, interval=0.005, what="the fake server or the client to get there")

