"""End-to-end: a real node in front of a real business backend process (examples/upstream_backend.py on
a free loopback port): upstream routes (op 4 -> POST -> op 5), their error bodies and bounds, auth = http,
and webhooks across a backend outage."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from imgate.core import FrameDecoder, encode_frame

from helpers import free_port, run
from nodeutil import NodeThread, read_until_closed
from polling import wait_until, wait_until_async

BACKEND = Path(__file__).resolve().parents[2] / "examples" / "upstream_backend.py"


class Backend:
    """The example backend as a subprocess; ``restart`` brings it back on the same port."""

    def __init__(self, port: int = 0):
        self.port = port
        self.proc = None

    def start(self) -> "Backend":
        self.proc = subprocess.Popen([sys.executable, str(BACKEND), "--port", str(self.port), "--hold-max", "120"],
                                     stdout=subprocess.PIPE, text=True, env=dict(os.environ))
        line = self.proc.stdout.readline()
        assert line.startswith("listening on"), f"backend did not start: {line!r}"
        self.port = int(line.rsplit(":", 1)[1])
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(self.url(path), timeout=30) as r:
            return json.loads(r.read())

    def post(self, path: str) -> None:
        urllib.request.urlopen(urllib.request.Request(self.url(path), data=b"", method="POST"), timeout=30).read()


class Client:
    """A raw goim TCP client: frames out, frames in, nothing hidden."""

    def __init__(self, node):
        self.sock = socket.create_connection(("127.0.0.1", node.node.proxy.tcp_port), timeout=30)
        self.decoder = FrameDecoder(max_body=1 << 20)
        self.frames = []

    def send(self, op: int, seq: int, body: bytes = b"") -> None:
        self.sock.sendall(encode_frame(op, seq, body))

    def read(self, op: int, seq: int | None = None):
        """The next frame with this op (and seq); frames in between are kept."""
        while True:
            for i, f in enumerate(self.frames):
                if f.op == op and (seq is None or f.seq == seq):
                    return self.frames.pop(i)
            data = self.sock.recv(65536)
            assert data, f"closed while waiting for op {op} seq {seq}; kept {[(f.op, f.seq) for f in self.frames]}"
            self.frames.extend(self.decoder.feed(data))

    def auth(self, **body) -> dict:
        self.send(7, 1, json.dumps(body).encode())
        return json.loads(self.read(8).body)

    def close(self):
        self.sock.close()


@pytest.fixture(scope="module")
def backend():
    b = Backend().start()
    yield b
    b.stop()


def node_for(backend, **overrides) -> NodeThread:
    cfg = dict(handshake_timeout=30.0, heartbeat_timeout=60.0, upstream_url=backend.url("/upstream"),
               upstream_routes={"101": backend.url("/hold"), "102": backend.url("/status/503"),
                                "103": f"http://127.0.0.1:{free_port()}/nobody"})
    cfg.update(overrides)
    return NodeThread(**cfg).start()


def reply_of(client, op, seq):
    return json.loads(client.read(op, seq).body)


def test_op4_reaches_the_backend_and_its_answer_comes_back(backend):
    node = node_for(backend)
    try:
        c = Client(node)
        ok = c.auth(mid=42, key="k42", room_id="live://9", platform="ios")
        c.send(4, 77, "héllo".encode())
        r = reply_of(c, 5, 77)
        assert r == {"user": 42, "key": "k42", "conn_id": ok["conn_id"], "platform": "ios", "room": "live://9",
                     "op": 4, "seq": 77, "echo": "héllo"}
        # a room change is what the next message carries, whatever its characters
        c.send(12, 78, "live://10 café%\r\n".encode())
        c.read(13, 78)
        c.send(4, 79, b"again")
        assert reply_of(c, 5, 79)["room"] == "live://10 café%\r\n"
        c.close()
    finally:
        node.stop()


def test_backend_errors_give_clear_op5_bodies_and_the_connection_stays(backend):
    node = node_for(backend, upstream_timeout=0.5)
    try:
        c = Client(node)
        c.auth(mid=7)
        c.send(102, 1, b"x")           # the route answers 503
        assert reply_of(c, 103, 1) == {"ok": False, "code": "status", "error": "upstream answered HTTP 503",
                                       "status": 503}
        c.send(103, 2, b"x")           # nothing listens there
        assert reply_of(c, 104, 2) == {"ok": False, "code": "unavailable", "error": "upstream service unavailable"}
        c.send(101, 3, b"x")           # held past upstream_timeout
        assert reply_of(c, 102, 3) == {"ok": False, "code": "timeout",
                                       "error": "upstream did not answer within 0.5 s"}
        c.send(150, 4, b"x")           # an op with no route falls back to upstream_url
        assert reply_of(c, 151, 4)["op"] == 150
        c.send(4, 5, b"still here")    # the same connection goes on being served
        assert reply_of(c, 5, 5)["echo"] == "still here"
        c.close()
    finally:
        node.stop()


@pytest.mark.parametrize("path, error", [
    ("/status/500", {"ok": False, "code": "status", "error": "upstream answered HTTP 500", "status": 500}),
    ("/hold", {"ok": False, "code": "timeout", "error": "upstream did not answer within 0.5 s"}),
    (None, {"ok": False, "code": "unavailable", "error": "upstream service unavailable"}),
], ids=["5xx", "slow", "down"])
def test_op4_gets_an_op5_error_and_the_node_keeps_serving(backend, path, error):
    url = backend.url(path) if path else f"http://127.0.0.1:{free_port()}/down"
    node = node_for(backend, upstream_url=url, upstream_routes={"101": backend.url("/upstream")},
                    upstream_timeout=0.5)
    try:
        c = Client(node)
        c.auth(mid=8)
        for seq in (1, 2):  # twice on one connection: it stays open
            c.send(4, seq, b"x")
            assert reply_of(c, 5, seq) == error
        other = Client(node)  # and the node serves others, through another route
        other.auth(mid=9)
        other.send(101, 3, b"fine")
        assert reply_of(other, 102, 3)["echo"] == "fine"
        c.close()
        other.close()
    finally:
        node.stop()


def test_answers_over_max_frame_body_are_refused(backend):
    routes = {str(100 + i): backend.url(path) for i, path in
              enumerate(["/big/4000", "/big/4001", "/big/4000/chunked", "/big/4001/chunked"])}
    node = node_for(backend, upstream_routes=routes, max_frame_body=4000)
    try:
        c = Client(node)
        c.auth(mid=3)
        for op in (100, 101, 102, 103):
            c.send(op, op, b"")
        assert c.read(101, 100).body == b"x" * 4000
        assert reply_of(c, 102, 101) == {"ok": False, "code": "too_large",
                                         "error": "upstream answer is 4001 bytes, the limit is 4000"}
        assert c.read(103, 102).body == b"x" * 4000
        assert reply_of(c, 104, 103) == {"ok": False, "code": "too_large",
                                         "error": "upstream answer is over 4000 bytes"}
        c.close()
    finally:
        node.stop()


@pytest.mark.parametrize("routes", [{"101": "http://127.0.0.1:1/x"}, {}], ids=["other-routes", "no-upstream"])
def test_no_route(backend, routes):
    node = node_for(backend, upstream_url="", upstream_routes=routes)
    try:
        c = Client(node)
        c.auth(mid=7)
        c.send(150, 1, b"x")
        assert reply_of(c, 151, 1) == {"ok": False, "code": "no_route", "error": "no upstream service for op 150"}
        if not routes:  # without any upstream, op 4 keeps its embedded answer: an empty op 5
            c.send(4, 2, b"x")
            assert c.read(5, 2).body == b""
        c.close()
    finally:
        node.stop()


def test_concurrency_bounds_answer_busy_at_once():
    backend = Backend().start()  # its own: no request held by another test
    node = node_for(backend, upstream_timeout=120.0, upstream_conn_limit=2, upstream_limit=3)
    try:
        a, b = Client(node), Client(node)
        a.auth(mid=1)
        b.auth(mid=2)
        a.send(101, 1, b"a1")
        a.send(101, 2, b"a2")
        wait_until(lambda: node.node.logic.upstream.stats()["upstream_in_flight"], equals=2,
                   what="a's two held requests to be in flight")
        a.send(101, 3, b"a3")       # a third on the same connection: over upstream_conn_limit
        assert reply_of(a, 102, 3) == {"ok": False, "code": "busy",
                                       "error": "too many requests in flight on this connection (limit 2)"}
        b.send(101, 1, b"b1")
        wait_until(lambda: node.node.logic.upstream.stats()["upstream_in_flight"], equals=3,
                   what="three held requests in flight")
        b.send(101, 2, b"b2")       # over upstream_limit for the whole logic
        assert reply_of(b, 102, 2) == {"ok": False, "code": "busy",
                                       "error": "the gateway has too many upstream requests in flight (limit 3)"}
        status, text = node.http("GET", "/metrics")
        assert b"imgate_upstream_busy_total 2.0" in text   # one refused by the proxy, one by logic
        # released only once all three wait in the backend (a release lets go of those held then)
        wait_until(lambda: backend.get("/events")["held"], equals=3, what="three requests held by the backend")
        backend.post("/release")
        assert reply_of(a, 102, 1) == {"held": "a1"}
        assert reply_of(a, 102, 2) == {"held": "a2"}
        assert reply_of(b, 102, 1) == {"held": "b1"}
        wait_until(lambda: node.node.logic.upstream.stats()["upstream_in_flight"], equals=0,
                   what="nothing left in flight")
        a.send(4, 9, b"after")      # the bounds are free again
        assert reply_of(a, 5, 9)["echo"] == "after"
        a.close()
        b.close()
    finally:
        node.stop()
        backend.stop()


def notice(client) -> dict:
    frames = FrameDecoder(max_body=1 << 20).feed(read_until_closed(client.sock))
    return json.loads([f for f in client.frames + frames if f.op == 6][-1].body)


def test_http_auth_accepts_refuses_maps_and_survives_the_service_going_down():
    auth = Backend(free_port()).start()
    node = NodeThread(handshake_timeout=30.0, auth="http", auth_url=auth.url("/auth"), auth_cache_ttl=300.0)
    node.start()
    try:
        c = Client(node)
        ok = c.auth(mid=0, token="user:42:live://7,team://3,team://4", room_id="live://1")
        assert (ok["mid"], ok["room_id"]) == (42, "live://7")  # the service's user and rooms win
        assert sorted(ok["rooms"]) == ["live://7", "team://3", "team://4"]
        c.send(2, 2)
        assert c.read(3, 2).body == (1).to_bytes(4, "big")       # and it is really in live://7
        status, _ = node.http("POST", "/goim/push/room?operation=1000&type=team&room=4", b"to team 4")
        assert status == 200
        assert c.read(1000).body == b"to team 4"                 # and in team://4
        status, sessions = node.http("GET", "/session?uid=42")
        assert [s["conn_id"] for s in sessions["data"]] == [ok["conn_id"]]

        r = Client(node)
        r.send(7, 1, json.dumps({"token": "nobody"}).encode())
        assert notice(r) == {"reason": "auth failed: unknown token", "reconnect": False}

        calls = auth.get("/events")["auth_calls"]
        again = Client(node)                                      # the same token: answered from the cache
        assert again.auth(token="user:42:live://7,team://3,team://4")["mid"] == 42
        assert auth.get("/events")["auth_calls"] == calls

        auth.stop()
        down = Client(node)                                       # a new token while the service is down
        down.send(7, 1, json.dumps({"token": "user:43"}).encode())
        assert notice(down) == {"reason": "auth unavailable", "reconnect": True}
        c.send(2, 3)                                              # open connections are left alone
        c.read(3, 3)
        cached = Client(node)                                     # a cached token still gets in
        assert cached.auth(token="user:42:live://7,team://3,team://4")["mid"] == 42

        auth.start()                                              # back on the same port
        back = Client(node)
        assert back.auth(token="user:43")["mid"] == 43
        for x in (c, again, cached, back):
            x.close()
    finally:
        node.stop()
        auth.stop()


def test_webhooks_delivered_after_the_backend_comes_back_none_lost():
    hooks = Backend(free_port()).start()
    node = NodeThread(handshake_timeout=30.0, webhook_url=hooks.url("/events"), webhook_max_backoff=0.5,
                      webhook_batch=5)
    node.start()
    try:
        c = Client(node)
        first = c.auth(mid=5, room_id="live://1")
        wait_until(lambda: [e["event"] for e in hooks.get("/events")["events"]], equals=["connect"],
                   what="the connect event")
        wait_until(lambda: node.node.backends.stats()["webhook_queue"], equals=0, what="its 2xx read")
        hooks.stop()
        # while the service is down: room changes, 12 connects and their disconnects, all queued
        c.send(18, 2, b"live://2")
        c.read(19, 2)
        c.send(20, 3, b"live://2")
        c.read(21, 3)
        c.send(12, 4, b"live://3")
        c.read(13, 4)
        others = []
        for i in range(12):
            o = Client(node)
            others.append(o.auth(mid=100 + i)["conn_id"])
            o.close()
        wait_until(lambda: node.node.logic.counters["disconnects"], equals=12, what="the 12 disconnects")
        wait_until(lambda: node.node.backends.stats()["webhook_retries"] >= 2, what="retries while down")
        hooks.start()
        want = ([("room", "join", "live://2"), ("room", "leave", "live://2"), ("room", "change", "live://3")]
                + [("connect", None, None)] * 12 + [("disconnect", None, None)] * 12)

        def got():
            return [(e["event"], e.get("action"), e.get("room_id") if e["event"] == "room" else None)
                    for e in hooks.get("/events")["events"]]
        wait_until(lambda: sorted(got(), key=str) == sorted(want, key=str), what="every queued event, once back")
        events = hooks.get("/events")["events"]
        assert len({e["id"] for e in events}) == len(events) == len(want)
        assert {e["conn_id"] for e in events if e["event"] == "connect"} == set(others)
        assert {e["conn_id"] for e in events if e["event"] == "disconnect"} == set(others)
        assert all(e["conn_id"] == first["conn_id"] and e["mid"] == 5 for e in events if e["event"] == "room")
        # room events keep their order
        assert [e["action"] for e in events if e["event"] == "room"] == ["join", "leave", "change"]
        # the last batch leaves the queue once its 2xx is read
        wait_until(lambda: node.node.backends.stats()["webhook_queue"], equals=0, what="an empty queue")
        assert node.node.backends.stats()["webhook_dropped"] == 0
        c.close()
    finally:
        node.stop()
        hooks.stop()


def test_webhook_queue_bound_counts_what_it_drops():
    port = free_port()  # nothing listens: every event waits
    node = NodeThread(handshake_timeout=30.0, webhook_url=f"http://127.0.0.1:{port}/events", webhook_queue=3)
    node.start()
    try:
        for i in range(5):
            c = Client(node)
            c.auth(mid=i + 1)
            c.close()
        wait_until(lambda: node.node.logic.counters["disconnects"], equals=5, what="5 disconnects")
        stats = node.node.backends.stats()
        # 10 events, room for 3 (the first batch is held at the head of the queue until it is delivered)
        assert (stats["webhook_events"], stats["webhook_dropped"], stats["webhook_queue"]) == (3, 7, 3)
        status, text = node.http("GET", "/metrics")
        assert b"imgate_webhook_dropped_total 7.0" in text
    finally:
        node.stop(grace=0.1)  # nobody will take the queued events


def test_through_logic_rpc(backend):
    """In a cluster the proxy reaches the upstream routes and the webhooks through logic's RPC."""
    import asyncio

    from imgate.auth import NoAuth
    from imgate.cache import MemoryCache
    from imgate.config import Config
    from imgate.logic import Logic, backends
    from imgate.push import MemoryBus, PushRouter
    from imgate.rpc.logic import LogicClient, serve_logic

    async def main():
        logic = Logic(MemoryCache(), MemoryBus(PushRouter()), NoAuth(), session_ttl=60)
        cfg = Config(upstream_url=backend.url("/upstream"), webhook_url=backend.url("/events")).validate()
        attached = backends.attach(logic, cfg)
        svc = await serve_logic(logic, "127.0.0.1", 0)
        client = LogicClient([svc.addr], pool_size=1)
        try:
            c = await client.connect("proxy-9", json.dumps({"mid": 31, "key": "k31", "platform": "pc"}).encode())
            raw = await client.receive("proxy-9", c.conn_id, 31, 4, 5, b"over rpc", key="k31",
                                       room_id="live://4", platform="pc")
            assert json.loads(raw) == {"user": 31, "key": "k31", "conn_id": c.conn_id, "platform": "pc",
                                       "room": "live://4", "op": 4, "seq": 5, "echo": "over rpc"}
            await client.room_event("proxy-9", c.conn_id, 31, "join", "live://4")

            def mine():
                return [(e["event"], e.get("action")) for e in backend.get("/events")["events"]
                        if e.get("conn_id") == c.conn_id and e.get("server") == "proxy-9"]
            loop = asyncio.get_running_loop()  # the backend is read off the loop, which sends the events
            await wait_until_async(lambda: loop.run_in_executor(None, mine), equals=[("connect", None), ("room", "join")],
                                   what="the connect and room events through logic's webhooks")
        finally:
            await client.close()
            await svc.stop()
            await attached.close()

    run(main(), 120)


def test_webhooks_queued_at_shutdown_are_delivered_within_the_grace(backend):
    from imgate.logic.webhooks import Webhooks

    async def main():
        hooks = Webhooks(backend.url("/events"))
        hooks.start()
        hooks.emit("disconnect", mid=880088, conn_id=1, server="s")
        await hooks.stop(grace=30.0)  # at once: the sender has not even run yet

    run(main(), 60)
    assert [e["event"] for e in backend.get("/events")["events"] if e.get("mid") == 880088] == ["disconnect"]


@pytest.mark.parametrize("path, reason, reconnect", [
    ("/status/401", "auth failed: refused by the auth service", False),
    ("/status/403", "auth failed: refused by the auth service", False),
    ("/status/500", "auth unavailable", True),
    ("/big/10", "auth unavailable", True),   # 200 but not JSON with an accept field
])
def test_http_auth_statuses(backend, path, reason, reconnect):
    node = NodeThread(handshake_timeout=30.0, auth="http", auth_url=backend.url(path))
    node.start()
    try:
        c = Client(node)
        c.send(7, 1, json.dumps({"token": "user:1"}).encode())
        assert notice(c) == {"reason": reason, "reconnect": reconnect}
    finally:
        node.stop()
