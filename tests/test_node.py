"""End-to-end: a real node (proxy + logic + push + cache + HTTP API) over real sockets, TCP and WebSocket."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
import time

import pytest
import uvloop

from imgate import client as imclient
from imgate.auth import mint_token
from imgate.core import FrameDecoder, encode_frame

from nodeutil import NodeThread, read_until_closed

ROOM = "live://1000"


@pytest.fixture(scope="module")
def node():
    n = NodeThread(handshake_timeout=1.0, heartbeat_timeout=30.0, max_pending=256 * 1024).start()
    yield n
    n.stop()


def run(coro, timeout=60):
    return uvloop.run(asyncio.wait_for(coro, timeout))


def urls(node):
    return [node.tcp_url, node.ws_url]


def notice_of(data: bytes) -> dict:
    frames = FrameDecoder(max_body=1 << 20).feed(data)
    sixes = [f for f in frames if f.op == 6]
    assert sixes, f"no op-6 notice among ops {[f.op for f in frames][:20]}"
    return json.loads(sixes[-1].body)


def raw_tcp(node) -> socket.socket:
    return socket.create_connection(("127.0.0.1", node.node.proxy.tcp_port), timeout=5)


def auth_body(mid=1, room=ROOM, **extra):
    return json.dumps(dict(mid=mid, key="", room_id=room, platform="test", accepts=[], **extra)).encode()


def assert_still_serving(node):
    async def go():
        c = await imclient.connect(node.tcp_url, mid=424242, room_id="check://1", heartbeat=None)
        assert await c.heartbeat() >= 1
        await c.close()

    run(go())


# ---------------------------------------------------------------- the protocol


@pytest.mark.parametrize("transport", ["tcp", "ws"])
def test_auth_heartbeat_and_room_push(node, transport):
    async def go():
        url = node.tcp_url if transport == "tcp" else node.ws_url
        a = await imclient.connect(url, mid=11, room_id="live://e2e-" + transport, heartbeat=None)
        b = await imclient.connect(url, mid=12, room_id="live://e2e-" + transport, heartbeat=None)
        assert await a.heartbeat() == 2, "op 3 carries the room's online count"
        loop = asyncio.get_running_loop()
        status, reply = await loop.run_in_executor(
            None, node.http, "POST", f"/goim/push/room?operation=1000&type=live&room=e2e-{transport}", b"hello room")
        assert status == 200 and reply["code"] == 0, reply
        for c in (a, b):
            m = await c.recv(timeout=5)
            assert (m.op, m.body) == (1000, b"hello room")
        await a.close()
        await asyncio.sleep(0.05)
        assert await b.heartbeat() == 1
        await b.close()

    run(go())


@pytest.mark.parametrize("transport", ["tcp", "ws"])
def test_rooms_sub_and_upstream(node, transport):
    async def go():
        url = node.tcp_url if transport == "tcp" else node.ws_url
        c = await imclient.connect(url, mid=21, room_id="live://r1-" + transport, heartbeat=None, accepts=[1000])
        loop = asyncio.get_running_loop()

        async def push_room(room, body, op=1000):
            t, r = room.split("://")
            status, reply = await loop.run_in_executor(
                None, node.http, "POST", f"/goim/push/room?operation={op}&type={t}&room={r}", body)
            assert status == 200, reply

        await c.change_room("live://r2-" + transport)
        await push_room("live://r1-" + transport, b"old room")
        await push_room("live://r2-" + transport, b"new room")
        assert (await c.recv(timeout=5)).body == b"new room"
        await c.join_room("extra://x-" + transport)
        await push_room("extra://x-" + transport, b"extra")
        assert (await c.recv(timeout=5)).body == b"extra"
        await c.leave_room("extra://x-" + transport)
        await push_room("extra://x-" + transport, b"gone")
        # ops filter applies to pushes by key/mid: accepts [1000] at auth, then sub 1001
        status, _ = await loop.run_in_executor(None, node.http, "POST", "/goim/push/mids?operation=1001&mids=21", b"f1")
        await c.sub([1001])
        status, _ = await loop.run_in_executor(None, node.http, "POST", "/goim/push/mids?operation=1001&mids=21", b"f2")
        assert (await c.recv(timeout=5)).body == b"f2", "1001 arrives only after sub"
        await c.unsub([1001])
        await loop.run_in_executor(None, node.http, "POST", "/goim/push/mids?operation=1001&mids=21", b"f3")
        await loop.run_in_executor(None, node.http, "POST", "/goim/push/mids?operation=1000&mids=21", b"f4")
        assert (await c.recv(timeout=5)).body == b"f4"
        # op 4 -> op 5 with the same seq
        assert await c.send(b"upstream") == b""
        await c.close()

    run(go())


def test_push_keys_mids_and_multi_device(node):
    async def go():
        phone = await imclient.connect(node.ws_url, mid=31, key="phone-31", heartbeat=None)
        desk = await imclient.connect(node.tcp_url, mid=31, key="desk-31", heartbeat=None)
        other = await imclient.connect(node.tcp_url, mid=32, heartbeat=None)
        loop = asyncio.get_running_loop()
        status, reply = await loop.run_in_executor(None, node.http, "POST", "/goim/push/mids?operation=1000&mids=31", b"to 31")
        assert status == 200 and reply["data"]["targets"] == 2, reply
        assert (await phone.recv(timeout=5)).body == b"to 31"
        assert (await desk.recv(timeout=5)).body == b"to 31"
        status, reply = await loop.run_in_executor(None, node.http, "POST", "/goim/push/keys?operation=1000&keys=phone-31", b"key")
        assert reply["data"]["targets"] == 1
        assert (await phone.recv(timeout=5)).body == b"key"
        status, reply = await loop.run_in_executor(None, node.http, "POST", "/goim/push/all?operation=1002", b"all")
        for c in (phone, desk, other):
            assert (await c.recv(timeout=5)).body == b"all"
        with pytest.raises(asyncio.TimeoutError):
            await other.recv(timeout=0.3)  # nothing else was meant for it
        # the session registry: user 31 has two connections on this server
        status, reply = await loop.run_in_executor(None, node.http, "GET", "/session?uid=31")
        assert status == 200 and sorted(s["key"] for s in reply["data"]) == ["desk-31", "phone-31"]
        assert {s["server"] for s in reply["data"]} == {"test-node"}
        # one device leaves: a push by mid now reaches the other one only
        await desk.close()
        await asyncio.sleep(0.1)
        status, reply = await loop.run_in_executor(None, node.http, "POST", "/goim/push/mids?operation=1000&mids=31,32", b"left")
        assert status == 200 and reply["data"]["targets"] == 2, reply
        assert (await phone.recv(timeout=5)).body == b"left"
        assert (await other.recv(timeout=5)).body == b"left"
        for c in (phone, other):
            await c.close()
        await asyncio.sleep(0.1)
        status, reply = await loop.run_in_executor(None, node.http, "POST", "/goim/push/mids?operation=1000&mids=31", b"x")
        assert status == 200 and reply["data"]["targets"] == 0, reply
        status, reply = await loop.run_in_executor(None, node.http, "GET", "/session?uid=31")
        assert reply["data"] == [], "offline users have no sessions"

    run(go())


@pytest.mark.parametrize("transport", ["tcp", "ws"])
def test_room_pushes_and_unicasts_leave_in_the_order_accepted(node, transport):
    """Within one event-loop iteration, a unicast accepted after a room push must not overtake it
    (nor the room push the unicast before it), whatever path each push takes through logic."""
    room = "order://" + transport
    mid = 41 if transport == "tcp" else 42

    async def burst():  # runs on the node's loop and never suspends: one loop iteration
        logic = node.node.logic
        for i in range(3):
            await logic.push_room(1000, room, b"room %d" % i)
            logic.push_mids_nowait(1001, [mid], b"unicast %d" % i)
            await logic.push_mids(1002, [mid], b"awaited %d" % i)

    async def go():
        url = node.tcp_url if transport == "tcp" else node.ws_url
        c = await imclient.connect(url, mid=mid, room_id=room, heartbeat=None)
        await asyncio.get_running_loop().run_in_executor(None, node.call, burst())
        got = [await c.recv(timeout=5) for _ in range(9)]
        expected = [p for i in range(3) for p in ((1000, b"room %d" % i), (1001, b"unicast %d" % i),
                                                   (1002, b"awaited %d" % i))]
        assert [(m.op, m.body) for m in got] == expected
        await c.close()

    run(go())


def test_online_queries(node):
    async def go():
        cs = [await imclient.connect(node.tcp_url, mid=40 + i, room_id="quiz://q1" if i < 3 else "quiz://q2",
                                     heartbeat=None) for i in range(5)]
        loop = asyncio.get_running_loop()
        await asyncio.sleep(0.4)  # proxies report and logic absorbs every online_interval (0.1 s here)
        get = lambda p: loop.run_in_executor(None, node.http, "GET", p)
        _, r = await get("/goim/online/top?type=quiz&limit=10")
        assert r["data"] == [{"room_id": "quiz://q1", "count": 3}, {"room_id": "quiz://q2", "count": 2}]
        _, r = await get("/goim/online/room?type=quiz&rooms=q1,q2,q3")
        assert r["data"] == {"q1": 3, "q2": 2, "q3": 0}
        _, r = await get("/goim/online/total")
        assert r["data"]["conn_count"] >= 5 and r["data"]["server_count"] == 1
        _, r = await get("/count?type=room")
        assert r["data"]["quiz://q1"] == 3
        _, r = await get("/count?type=server")
        assert r["data"]["test-node"] >= 5
        _, r = await get("/room?rid=quiz://q2")
        assert r["data"]["count"] == 2 and r["data"]["servers"] == {"test-node": 2}
        _, r = await get("/list")
        assert {40, 41, 42, 43, 44} <= {s["mid"] for s in r["data"]}
        for c in cs:
            await c.close()

    run(go())


def test_jwt_auth():
    n = NodeThread(auth="jwt", jwt_secret="s3cret-for-tests-0123456789abcdef-xyz").start()
    try:
        async def go():
            good = mint_token("s3cret-for-tests-0123456789abcdef-xyz", 77)
            c = await imclient.connect(n.ws_url, mid=77, token=good, heartbeat=None)
            await c.close()
            for token, why in [
                (mint_token("another-secret-0123456789abcdef-xyz", 77), "signature"),
                (mint_token("s3cret-for-tests-0123456789abcdef-xyz", 77, ttl=-10), "expired"),
                ("not-a-token", "token"),
                ("", "token"),
            ]:
                for url in (n.tcp_url, n.ws_url):
                    with pytest.raises(imclient.AuthRejected) as e:
                        await imclient.connect(url, mid=77, token=token, heartbeat=None)
                    assert why in str(e.value).lower(), (why, str(e.value))
            with pytest.raises(imclient.AuthRejected, match="does not match"):
                await imclient.connect(n.tcp_url, mid=78, token=good, heartbeat=None)

        run(go())
        assert n.stats()["auth_failures"] >= 9
    finally:
        n.stop()


# ---------------------------------------------------------------- bad input


def test_garbage_bytes_get_op6_and_node_keeps_serving(node):
    s = raw_tcp(node)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + os.urandom(64))
    n = notice_of(read_until_closed(s))
    assert n["reason"].startswith("protocol error: headerLen must be 16") or "packLen" in n["reason"], n
    assert n["reconnect"] is False
    s.close()
    assert_still_serving(node)


def test_frame_before_auth(node):
    s = raw_tcp(node)
    s.sendall(encode_frame(2, 1))
    n = notice_of(read_until_closed(s))
    assert n == {"reason": "the first frame must be auth (op 7), got op 2", "reconnect": False}
    s.close()


def test_oversized_frame(node):
    received = []

    async def record(server, conn_id, mid, op, seq, body):
        received.append((mid, seq, body))
        return b"ok"

    node.node.logic.upstream_handler = record
    try:
        s = raw_tcp(node)
        s.sendall(encode_frame(7, 1, auth_body(mid=5)))
        assert FrameDecoder().feed(s.recv(4096))[0].op == 8
        # an upstream message and then a header announcing 10 MB, in one write
        s.sendall(encode_frame(4, 2, b"before") + struct.pack(">ihhii", 16 + 10_000_000, 16, 1, 4, 3))
        data = read_until_closed(s)
        assert "exceeds the limit" in notice_of(data)["reason"]
        for _ in range(100):
            if received:
                break
            time.sleep(0.01)
        assert received == [(5, 2, b"before")], "the message before the bad header still reached logic"
    finally:
        node.node.logic.upstream_handler = None
    s.close()
    assert_still_serving(node)


def test_bad_auth_body(node):
    for body, why in [(b"not json", "json"), (b'{"mid": "x"}', "mid"), (b'{"mid": 1, "room_id": "bad"}', "room_id")]:
        s = raw_tcp(node)
        s.sendall(encode_frame(7, 1, body))
        n = notice_of(read_until_closed(s))
        assert n["reason"].startswith("auth failed") and why in n["reason"].lower(), n
        s.close()


def test_auth_timeout(node):
    s = raw_tcp(node)
    t0 = time.monotonic()
    n = notice_of(read_until_closed(s, timeout=5))
    assert "auth timeout" in n["reason"]
    assert 0.9 <= time.monotonic() - t0 < 3.5
    s.close()


def test_heartbeat_timeout():
    n = NodeThread(heartbeat_timeout=0.6).start()
    try:
        async def go():
            c = await imclient.connect(n.tcp_url, mid=1, heartbeat=None)
            with pytest.raises(imclient.ConnectionClosed):
                while True:
                    await c.recv(timeout=5)
            assert c.closed_reason == {"reason": "heartbeat timeout", "reconnect": True}
            # a client that beats stays
            d = await imclient.connect(n.tcp_url, mid=2, heartbeat=0.2)
            await asyncio.sleep(1.5)
            assert await d.heartbeat() == 0
            await d.close()

        run(go())
    finally:
        n.stop()


def test_websocket_upgrade_errors(node):
    port = node.node.proxy.ws_port

    def upgrade(path="/sub", version="13", key=None):
        key = key or base64.b64encode(os.urandom(16)).decode()
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall((f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: {version}\r\n\r\n").encode())
        data = read_until_closed(s, timeout=3)
        s.close()
        return data

    assert upgrade(path="/nope").startswith(b"HTTP/1.1 404")
    assert upgrade(version="8").startswith(b"HTTP/1.1 426")
    assert upgrade(key="short").startswith(b"HTTP/1.1 400")
    assert_still_serving(node)


def test_websocket_text_and_bad_frames(node):
    async def go():
        c = await imclient.connect(node.ws_url, mid=55, heartbeat=None)
        c.send_raw(b"\x00\x00\x00\x05garbage-not-a-frame")  # inside a binary message: bad goim header
        with pytest.raises(imclient.ConnectionClosed):
            while True:
                await c.recv(timeout=5)
        assert c.closed_reason["reason"].startswith("protocol error")

    run(go())
    assert_still_serving(node)


def test_slow_consumer_is_closed_and_others_keep_receiving(node):
    """A client that never reads is cut off at its bound; a reading member of the room gets everything."""
    s = raw_tcp(node)
    s.sendall(encode_frame(7, 1, auth_body(mid=61, room="slow://r")))
    time.sleep(0.2)
    before = node.stats()["slow_consumer_closes"]

    async def go():
        reader = await imclient.connect(node.tcp_url, mid=62, room_id="slow://r", heartbeat=None)
        loop = asyncio.get_running_loop()
        body = b"x" * 32000
        got = 0
        # the kernel's buffers absorb a few MB first; then the 256 KiB queue bound is passed
        for i in range(600):
            await loop.run_in_executor(None, node.http, "POST", "/goim/push/room?operation=1000&type=slow&room=r", body)
            m = await reader.recv(timeout=5)
            assert m.body == body
            got += 1
            if node.stats()["slow_consumer_closes"] > before:
                break
        assert node.stats()["slow_consumer_closes"] == before + 1, f"not closed after {got} pushes"
        # the others keep receiving
        await loop.run_in_executor(None, node.http, "POST", "/goim/push/room?operation=1000&type=slow&room=r", b"after")
        assert (await reader.recv(timeout=5)).body == b"after"
        await reader.close()

    run(go())
    # the slow client's stream is whole frames up to where it was cut, then the end of the stream
    data = read_until_closed(s, timeout=20)
    frames = FrameDecoder(max_body=1 << 20).feed(data)
    assert frames[0].op == 8 and all(f.op in (1000, 6) for f in frames[1:])
    s.close()
    assert_still_serving(node)


def test_http_bad_parameters(node):
    cases = [
        ("POST", "/goim/push/room?operation=x&type=live&room=1", b"m", "operation"),
        ("POST", "/goim/push/room?operation=1000&room=1", b"m", "type"),
        ("POST", "/goim/push/mids?operation=1000&mids=a,b", b"m", "mids"),
        ("POST", "/goim/push/keys?operation=1000", b"m", "keys"),
        ("POST", "/goim/push/room?operation=1000&type=live&room=1", b"", "empty"),
        ("GET", "/goim/online/top?type=live&limit=-1", None, "limit"),
        ("GET", "/session", None, "uid"),
        ("GET", "/count?type=bogus", None, "type"),
        ("GET", "/nope", None, "no route"),
    ]
    for method, path, body, word in cases:
        status, reply = node.http(method, path, body)
        assert 400 <= status < 500, (path, status, reply)
        assert reply["code"] != 0 and word in reply["message"].lower(), (path, reply)
    status, _ = node.http("POST", "/goim/push/all?operation=1000", b"x" * (2 << 20))
    assert status == 413
    assert_still_serving(node)


def test_openapi_metrics_health(node):
    status, doc = node.http("GET", "/openapi.json")
    assert status == 200 and "/goim/push/room" in doc["paths"]
    status, text = node.http("GET", "/metrics")
    assert status == 200 and b"imgate_connections" in text and b"imgate_frames_in_total" in text
    status, reply = node.http("GET", "/healthz")
    assert status == 200 and reply["data"]["status"] == "ok"


# ---------------------------------------------------------------- scale and shutdown


def test_room_push_reaches_2000_websocket_clients_once_in_order():
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 6000:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 20000), hard))
    n = NodeThread().start()
    try:
        async def go():
            clients = []
            for i in range(0, 2000, 100):
                clients += await asyncio.gather(*[
                    imclient.connect(n.ws_url, mid=1000 + j, room_id="big://1", heartbeat=None, timeout=20)
                    for j in range(i, i + 100)])
            loop = asyncio.get_running_loop()
            for k in range(5):
                status, reply = await loop.run_in_executor(
                    None, n.http, "POST", "/goim/push/room?operation=1000&type=big&room=1", b"msg-%d" % k)
                assert status == 200
            for c in clients:
                got = [(await c.recv(timeout=20)).body for _ in range(5)]
                assert got == [b"msg-%d" % k for k in range(5)]
            for c in clients:
                with pytest.raises(asyncio.TimeoutError):
                    await c.recv(timeout=0.001)
            await asyncio.gather(*[c.close() for c in clients])

        run(go(), timeout=180)
    finally:
        n.stop()


def test_shutdown_sends_op6_to_every_client():
    n = NodeThread().start()
    stopped = False
    try:
        async def go():
            cs = [await imclient.connect(u, mid=90 + i, heartbeat=None) for i, u in enumerate([n.tcp_url, n.ws_url] * 3)]
            loop = asyncio.get_running_loop()
            t0 = time.monotonic()
            stopper = loop.run_in_executor(None, n.stop, 5.0)
            for c in cs:
                with pytest.raises(imclient.ConnectionClosed):
                    while True:
                        await c.recv(timeout=10)
                assert c.closed_reason == {"reason": "shutdown", "reconnect": True}
            await stopper
            assert time.monotonic() - t0 < 6

        run(go())
        stopped = True
    finally:
        if not stopped:
            n.stop()


def test_no_pushes_before_auth(node):
    """A connection that has not authenticated gets no broadcast (nor anything else)."""
    s = raw_tcp(node)
    time.sleep(0.1)
    status, _ = node.http("POST", "/goim/push/all?operation=1000", b"for members only")
    assert status == 200
    s.settimeout(0.5)
    with pytest.raises(socket.timeout):
        s.recv(4096)
    s.close()


def test_sub_with_out_of_range_ops_is_refused_and_the_connection_keeps_working(node):
    async def go():
        c = await imclient.connect(node.tcp_url, mid=71, heartbeat=None, accepts=[1000])
        reply = await c.request(14, b"99999999999999", reply_op=15)
        assert b"int32" in reply.body
        await c.sub([1001])
        assert await c.heartbeat() == 0
        await c.close()

    run(go())


def test_stop_tells_logic_about_every_session():
    n = NodeThread().start()
    try:
        async def go():
            cs = [await imclient.connect(n.ws_url if i % 2 else n.tcp_url, mid=300 + i, heartbeat=None)
                  for i in range(6)]
            await asyncio.get_running_loop().run_in_executor(None, n.stop, 3.0)
            for c in cs:
                await c.close()

        run(go())
        # the node's loop has stopped; its in-memory cache can be read from here
        assert uvloop.run(n.node.cache.list_sessions(100)) == [], "no session outlives the shutdown"
    finally:
        if n.loop.is_running():
            n.stop()
