"""End-to-end: a real node (proxy + logic + push + cache + HTTP API) over real sockets, TCP and WebSocket."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct

import pytest
import uvloop

from imgate import client as imclient
from imgate.auth import mint_token
from imgate.core import FrameDecoder, encode_frame

from nodeutil import NodeThread, read_until_closed
from polling import wait_until, wait_until_async

ROOM = "live://1000"


@pytest.fixture(scope="module")
def node():
    # a handshake timeout far above what a raw test needs to authenticate, even on a busy machine
    n = NodeThread(handshake_timeout=30.0, heartbeat_timeout=30.0, max_pending=256 * 1024).start()
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
            m = await c.recv(timeout=30)
            assert (m.op, m.body) == (1000, b"hello room")
        await a.close()
        await wait_until_async(b.heartbeat, equals=1, what="the room count to drop once a left")
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
        assert (await c.recv(timeout=30)).body == b"new room"
        await c.join_room("extra://x-" + transport)
        await push_room("extra://x-" + transport, b"extra")
        assert (await c.recv(timeout=30)).body == b"extra"
        await c.leave_room("extra://x-" + transport)
        await push_room("extra://x-" + transport, b"gone")
        # ops filter applies to pushes by key/mid: accepts [1000] at auth, then sub 1001
        status, _ = await loop.run_in_executor(None, node.http, "POST", "/goim/push/mids?operation=1001&mids=21", b"f1")
        await c.sub([1001])
        status, _ = await loop.run_in_executor(None, node.http, "POST", "/goim/push/mids?operation=1001&mids=21", b"f2")
        assert (await c.recv(timeout=30)).body == b"f2", "1001 arrives only after sub"
        await c.unsub([1001])
        await loop.run_in_executor(None, node.http, "POST", "/goim/push/mids?operation=1001&mids=21", b"f3")
        await loop.run_in_executor(None, node.http, "POST", "/goim/push/mids?operation=1000&mids=21", b"f4")
        assert (await c.recv(timeout=30)).body == b"f4"
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
        assert (await phone.recv(timeout=30)).body == b"to 31"
        assert (await desk.recv(timeout=30)).body == b"to 31"
        status, reply = await loop.run_in_executor(None, node.http, "POST", "/goim/push/keys?operation=1000&keys=phone-31", b"key")
        assert reply["data"]["targets"] == 1
        assert (await phone.recv(timeout=30)).body == b"key"
        status, reply = await loop.run_in_executor(None, node.http, "POST", "/goim/push/all?operation=1002", b"all")
        for c in (phone, desk, other):
            assert (await c.recv(timeout=30)).body == b"all"
        # the session registry: user 31 has two connections on this server
        status, reply = await loop.run_in_executor(None, node.http, "GET", "/session?uid=31")
        assert status == 200 and sorted(s["key"] for s in reply["data"]) == ["desk-31", "phone-31"]
        assert {s["server"] for s in reply["data"]} == {"test-node"}
        # one device leaves: a push by mid now reaches the other one only
        await desk.close()

        async def keys_of_31():
            _, r = await loop.run_in_executor(None, node.http, "GET", "/session?uid=31")
            return sorted(s["key"] for s in r["data"])

        await wait_until_async(keys_of_31, equals=["phone-31"], what="desk-31's session to go")
        status, reply = await loop.run_in_executor(None, node.http, "POST", "/goim/push/mids?operation=1000&mids=31,32", b"left")
        assert status == 200 and reply["data"]["targets"] == 2, reply
        assert (await phone.recv(timeout=30)).body == b"left"
        assert (await other.recv(timeout=30)).body == b"left", "nothing else was meant for it"
        for c in (phone, other):
            await c.close()
        await wait_until_async(keys_of_31, equals=[], what="user 31's last session to go")
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
        got = [await c.recv(timeout=30) for _ in range(9)]
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
        get = lambda p: loop.run_in_executor(None, node.http, "GET", p)

        async def top():  # proxies report and logic absorbs every online_interval
            return (await get("/goim/online/top?type=quiz&limit=10"))[1]["data"]

        await wait_until_async(top, equals=[{"room_id": "quiz://q1", "count": 3}, {"room_id": "quiz://q2", "count": 2}],
                               what="the quiz rooms' counts to be absorbed")
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
        wait_until(lambda: received, what="the upstream message to reach logic")
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


def test_auth_timeout():
    n = NodeThread(handshake_timeout=0.5).start()
    try:
        s = raw_tcp(n)
        notice = notice_of(read_until_closed(s))
        assert notice == {"reason": "auth timeout: the first frame must be auth (op 7)", "reconnect": False}
        s.close()
    finally:
        n.stop()


def test_heartbeat_timeout():
    n = NodeThread(heartbeat_timeout=2.0).start()
    try:
        async def go():
            # both connect together; only d beats (ten times per timeout period)
            c = await imclient.connect(n.tcp_url, mid=1, heartbeat=None)
            d = await imclient.connect(n.tcp_url, mid=2, heartbeat=0.2)
            with pytest.raises(imclient.ConnectionClosed):
                while True:
                    await c.recv(timeout=30)
            assert c.closed_reason == {"reason": "heartbeat timeout", "reconnect": True}
            # d has lived at least as long as c did, past the timeout that closed c: beating keeps it
            assert not d.closed and await d.heartbeat() == 0
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
        data = read_until_closed(s)
        s.close()
        return data

    assert upgrade(path="/nope").startswith(b"HTTP/1.1 404")
    assert upgrade(version="8").startswith(b"HTTP/1.1 426")
    assert upgrade(key="short").startswith(b"HTTP/1.1 400")
    assert_still_serving(node)


def test_websocket_binary_message_with_a_bad_goim_header(node):
    async def go():
        c = await imclient.connect(node.ws_url, mid=55, heartbeat=None)
        c.send_raw(b"\x00\x00\x00\x05garbage-not-a-frame")  # inside a binary message: bad goim header
        with pytest.raises(imclient.ConnectionClosed):
            while True:
                await c.recv(timeout=30)
        assert c.closed_reason["reason"].startswith("protocol error")

    run(go())
    assert_still_serving(node)


def test_slow_consumer_is_closed_with_op6_and_others_keep_receiving(node):
    """A client that never reads is cut off at its bound with op 6 "slow consumer"; a reading member of
    the room gets everything."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fill up sooner
    s.connect(("127.0.0.1", node.node.proxy.tcp_port))
    s.settimeout(30)
    s.sendall(encode_frame(7, 1, auth_body(mid=61, room="slow://r")))
    # the op-8 reply: the server has authenticated it (and put it in the room)
    assert recv_frame(s).op == 8
    before = node.stats()["slow_consumer_closes"]

    async def go():
        reader = await imclient.connect(node.tcp_url, mid=62, room_id="slow://r", heartbeat=None)
        loop = asyncio.get_running_loop()
        body = b"x" * 32000
        got = 0
        # the kernel's buffers absorb some first; then the 256 KiB queue bound is passed
        for i in range(600):
            await loop.run_in_executor(None, node.http, "POST", "/goim/push/room?operation=1000&type=slow&room=r", body)
            m = await reader.recv(timeout=30)
            assert m.body == body
            got += 1
            if node.stats()["slow_consumer_closes"] > before:
                break
        assert node.stats()["slow_consumer_closes"] == before + 1, f"not closed after {got} pushes"
        # the others keep receiving
        await loop.run_in_executor(None, node.http, "POST", "/goim/push/room?operation=1000&type=slow&room=r", b"after")
        assert (await reader.recv(timeout=30)).body == b"after"
        await reader.close()

    run(go())
    # the slow client's stream: whole pushes up to where it was cut, the op-6 notice, then the end (FIN)
    data = read_until_closed(s)
    frames = FrameDecoder(max_body=1 << 20).feed(data)
    assert frames, "nothing after the auth reply"
    assert all(f.op == 1000 and f.body == b"x" * 32000 for f in frames[:-1]), [f.op for f in frames]
    assert frames[-1].op == 6, f"the stream ended without the op-6 notice (last op {frames[-1].op})"
    assert json.loads(frames[-1].body) == {"reason": "slow consumer", "reconnect": True}
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
                got = [(await c.recv(timeout=30)).body for _ in range(5)]
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
            stopper = loop.run_in_executor(None, n.stop, 5.0)
            for c in cs:
                with pytest.raises(imclient.ConnectionClosed):
                    while True:
                        await c.recv(timeout=30)
                assert c.closed_reason == {"reason": "shutdown", "reconnect": True}
            await stopper

        run(go())
        stopped = True
    finally:
        if not stopped:
            n.stop()


def test_no_pushes_before_auth(node):
    """A connection that has not authenticated gets no broadcast (nor anything else)."""
    before = node.stats()["sockets"]
    s = raw_tcp(node)
    wait_until(lambda: node.stats()["sockets"] > before, what="the proxy to accept the socket")
    status, _ = node.http("POST", "/goim/push/all?operation=1000", b"for members only")
    assert status == 200
    # now authenticate: had the broadcast reached the socket, it would come before the auth reply
    s.sendall(encode_frame(7, 1, auth_body(mid=81, room="")))
    assert recv_frame(s).op == 8
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


# ---------------------------------------------------------------- refusals and the closes the server decides


def test_room_operations_refused_get_ok_false_replies_and_the_connection_keeps_working():
    """Ops 12/18/20 with an invalid room id, and 18 past max_rooms_per_conn: the 13/19/21 reply says
    "ok": false with the reason, nothing changes, the connection stays; imgate.client raises Refused."""
    n = NodeThread(max_rooms_per_conn=2).start()
    try:
        async def go():
            c = await imclient.connect(n.tcp_url, mid=1, room_id="lim://a", heartbeat=None)
            watcher = await imclient.connect(n.tcp_url, mid=2, room_id="lim://c", heartbeat=None)
            for op, reply_op in ((12, 13), (18, 19), (20, 21)):
                for bad in (b"no-scheme", b"://x", b"t://"):
                    r = await c.request(op, bad, reply_op=reply_op)
                    assert (r.op, r.seq) == (reply_op, r.seq)
                    assert json.loads(r.body) == {"ok": False, "error": f"room id must look like type://id, got {bad.decode()!r}"}
            for call in (c.change_room, c.join_room, c.leave_room):
                with pytest.raises(imclient.Refused, match="type://id"):
                    await call("bad")
            assert c.room_id == "lim://a" and await c.heartbeat() == 1, "still in lim://a alone"

            # the limit: lim://a (from auth) + lim://b is 2; a third join is refused and changes nothing
            r = await c.request(18, b"lim://b", reply_op=19)
            assert json.loads(r.body) == {"ok": True, "room_id": "lim://b"}
            r = await c.request(18, b"lim://c", reply_op=19)
            refusal = json.loads(r.body)
            assert refusal["ok"] is False and "max_rooms_per_conn" in refusal["error"], refusal
            with pytest.raises(imclient.Refused, match="max_rooms_per_conn"):
                await c.join_room("lim://c")
            assert await watcher.heartbeat() == 1, "the refused joins did not put c in lim://c"
            # change room swaps (leave one, join one), so it is not refused at the limit
            await c.change_room("lim://c")
            assert await watcher.heartbeat() == 2 and await c.heartbeat() == 2
            # leaving frees a place: the join refused before now succeeds
            r = await c.request(20, b"lim://b", reply_op=21)
            assert json.loads(r.body) == {"ok": True, "room_id": "lim://b"}
            await c.join_room("lim://d")
            status, reply = await asyncio.get_running_loop().run_in_executor(
                None, n.http, "POST", "/goim/push/room?operation=1000&type=lim&room=d", b"in d")
            assert status == 200, reply
            assert (await c.recv(timeout=30)).body == b"in d"
            await c.close()
            await watcher.close()

        run(go())
    finally:
        n.stop()


def test_session_lost_by_the_registry_is_registered_again_and_the_client_stays():
    """A heartbeat renews the session; if the registry no longer has it (expired during an outage, a
    cache fail-over) the proxy, which holds the open connection, registers it again: the client stays
    connected and a push by mid reaches it."""
    n = NodeThread(heartbeat_timeout=3.0).start()  # renewals at most every heartbeat_timeout / 3
    try:
        async def go():
            c = await imclient.connect(n.tcp_url, mid=501, heartbeat=None)
            conn_id = json.loads(c.auth_reply)["conn_id"]
            cache = n.node.cache

            def on_node(coro):
                return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, n.loop))

            assert await on_node(cache.del_session(501, conn_id))

            async def registered_after_a_beat():
                await c.heartbeat()
                found = await on_node(cache.sessions([501]))
                if [s.conn_id for s in found.get(501, [])] == [conn_id]:
                    return True
                await asyncio.sleep(0.2)
                return False

            await wait_until_async(registered_after_a_beat, what="the proxy to register the session again")
            status, reply = await asyncio.get_running_loop().run_in_executor(
                None, n.http, "POST", "/goim/push/mids?operation=1000&mids=501", b"still here")
            assert status == 200 and reply["data"]["targets"] == 1, reply
            assert (await c.recv(timeout=30)).body == b"still here"
            assert c.closed_reason is None
            await c.close()

        run(go())
    finally:
        n.stop()


def test_auth_with_the_registry_unreachable_is_closed_with_auth_unavailable(node):
    """Logic cannot register the session (its cache is down): op 6 "auth unavailable", reconnect true;
    the node keeps serving once the cache is back."""
    cache = node.node.cache

    async def down(*args, **kwargs):
        raise ConnectionError("injected: the session registry is unreachable")

    names = ("alloc_conn_id", "add_session")
    for name in names:
        setattr(cache, name, down)
    try:
        async def go():
            for url in urls(node):
                with pytest.raises(imclient.AuthRejected) as e:
                    await imclient.connect(url, mid=502, heartbeat=None)
                assert e.value.notice == {"reason": "auth unavailable", "reconnect": True}

        run(go())
    finally:
        for name in names:
            delattr(cache, name)
    assert_still_serving(node)


# ---------------------------------------------------------------- WebSocket messages that are not goim frames


def ws_open(node) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", node.node.proxy.ws_port), timeout=30)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET /sub HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)
        assert chunk, f"closed during the upgrade: {head!r}"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return s


def ws_client_message(payload: bytes, opcode: int) -> bytes:
    """One final, masked client frame (RFC 6455 5.2), written out by hand."""
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x80 | opcode]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def ws_server_messages(data: bytes) -> list[tuple[int, bytes]]:
    """The server's unmasked frames as (opcode, payload)."""
    out, i = [], 0
    while i < len(data):
        b0, b1 = data[i], data[i + 1]
        assert b0 & 0x80 and not b1 & 0x80, "server frames are final and unmasked"
        n, i = b1 & 0x7F, i + 2
        if n == 126:
            n, i = struct.unpack(">H", data[i:i + 2])[0], i + 2
        elif n == 127:
            n, i = struct.unpack(">Q", data[i:i + 8])[0], i + 8
        out.append((b0 & 0x0F, data[i:i + n]))
        i += n
    return out


@pytest.mark.parametrize("bad, notice, close_code", [
    (ws_client_message(b"hello as text", 0x1),
     "protocol error: text messages are not supported; send binary goim frames", 1003),
    (ws_client_message(encode_frame(2, 2, b"body")[:10], 0x2),
     "protocol error: a WebSocket message must carry whole goim frames", 1002),
], ids=["text-message", "partial-frame"])
def test_websocket_message_that_is_not_whole_goim_frames_gets_op6_and_close(node, bad, notice, close_code):
    s = ws_open(node)
    s.sendall(ws_client_message(encode_frame(7, 1, auth_body(mid=57, room="")), 0x2))
    head = recv_exact(s, 2)  # the op-8 reply: one binary message (16-bit length once it passes 125)
    assert head[0] == 0x82 and head[1] <= 126, head
    n = head[1] if head[1] < 126 else struct.unpack(">H", recv_exact(s, 2))[0]
    assert [f.op for f in FrameDecoder().feed(recv_exact(s, n))] == [8]
    s.sendall(bad)
    messages = ws_server_messages(read_until_closed(s))
    s.close()
    assert [op for op, _ in messages] == [0x2, 0x8], messages
    bye = FrameDecoder().feed(messages[0][1])
    assert [f.op for f in bye] == [6] and json.loads(bye[0].body) == {"reason": notice, "reconnect": False}
    assert struct.unpack(">H", messages[1][1][:2])[0] == close_code
    assert_still_serving(node)


# ---------------------------------------------------------------- push/all pacing


def test_push_all_with_speed_is_paced():
    """push/all?speed=10 sends to 10 connections per second: the 40 connections get it over about 4 s,
    so a unicast to all of them pushed right after the broadcast overtakes it at the later ones (which
    ones depends on the proxy's order, so the test counts them). Without pacing the broadcast is written
    to every socket before the HTTP call returns, and the unicast comes second everywhere."""
    n = NodeThread().start()
    try:
        async def go():
            cs = [await imclient.connect(n.tcp_url, mid=7000 + i, heartbeat=None) for i in range(40)]
            loop = asyncio.get_running_loop()
            status, reply = await loop.run_in_executor(None, n.http, "POST", "/goim/push/all?operation=1000&speed=10", b"paced")
            assert status == 200 and reply["code"] == 0, reply
            mids = ",".join(str(7000 + i) for i in range(40))
            status, reply = await loop.run_in_executor(None, n.http, "POST", f"/goim/push/mids?operation=1000&mids={mids}", b"unicast")
            assert status == 200 and reply["data"]["targets"] == 40, reply
            orders = [[(await c.recv(timeout=60)).body for _ in range(2)] for c in cs]
            assert all(sorted(o) == [b"paced", b"unicast"] for o in orders), orders  # each once
            overtaken = sum(o == [b"unicast", b"paced"] for o in orders)
            assert overtaken >= 1, "the broadcast was not paced: it reached every connection first"
            for c in cs:
                assert await c.heartbeat() == 0 and c.recv_nowait() is None, "nothing more"
                await c.close()

        run(go(), timeout=120)
    finally:
        n.stop()
