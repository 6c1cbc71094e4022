"""End-to-end: a real node (proxy + logic + push + cache + HTTP API) over real sockets, TCP and WebSocket."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from imgate import client as imclient
from imgate.auth import mint_token
from imgate.core import encode_frame

from helpers import run
from nodeutil import NodeThread, auth_body, module_node, raw_tcp, recv_frame
from polling import wait_until, wait_until_async


# a handshake timeout far above what a raw test needs to authenticate, even on a busy machine
node = module_node(handshake_timeout=30.0, heartbeat_timeout=30.0, max_pending=256 * 1024)


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


def metric(node, name):
    """One number of the node's /metrics (what a scraper reads)."""
    status, text = node.http("GET", "/metrics")
    assert status == 200
    for line in text.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} is not in /metrics")


def test_unicasts_are_counted_at_scrape_time(node):
    """Each unicast by mid counts one push at the proxy and, when its connection does not accept the
    op, one drop (the compiled unicast counts in C; a scrape reads them); logic counts it too."""
    async def go():
        c = await imclient.connect(node.tcp_url, mid=77, accepts=[1000], heartbeat=None)
        loop = asyncio.get_running_loop()
        pushes, drops = metric(node, "imgate_pushes_total"), metric(node, "imgate_drops_total")
        logic_pushes = node.node.logic.counters["pushes"]
        for op, targets in ((1000, 1), (1001, 0), (1000, 1)):
            status, reply = await loop.run_in_executor(None, node.http, "POST", f"/goim/push/mids?operation={op}&mids=77", b"x")
            assert status == 200 and reply["data"]["targets"] == targets, reply
        assert [(await c.recv(timeout=30)).body for _ in range(2)] == [b"x", b"x"]
        assert metric(node, "imgate_pushes_total") == pushes + 3
        assert metric(node, "imgate_drops_total") == drops + 1, "op 1001 is not among its accepted ops"
        assert node.node.logic.counters["pushes"] == logic_pushes + 3
        await c.close()

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


def test_anonymous_viewers_are_reached_by_room_and_key_never_by_mid_0(node):
    """mid 0 is goim's anonymous client (a live room's viewers): nobody. A push by mid 0 reaches none
    of them, as in goim (answer: 0 targets), alone or beside a real user; a room push and a push by
    key do reach them. /list shows them; /goim/online/total does not count them as users."""
    async def go():
        loop = asyncio.get_running_loop()

        async def http(method, path, body=b""):
            status, reply = await loop.run_in_executor(None, node.http, method, path, body)
            assert status == 200 and reply["code"] == 0, reply
            return reply["data"]

        viewers = [await imclient.connect(node.tcp_url if i % 2 else node.ws_url, key=f"anon-{i}",
                                          room_id="live://anon-show", heartbeat=None) for i in range(6)]
        user = await imclient.connect(node.tcp_url, mid=41, key="user-41", room_id="live://anon-show", heartbeat=None)
        assert (await http("POST", "/goim/push/mids?operation=1000&mids=0", b"by mid 0"))["targets"] == 0
        assert (await http("POST", "/goim/push/mids?operation=1000&mids=0,41", b"to 41"))["targets"] == 1
        assert (await user.recv(timeout=30)).body == b"to 41"
        await http("POST", "/goim/push/room?operation=1000&type=live&room=anon-show", b"room")
        assert (await http("POST", "/goim/push/keys?operation=1000&keys=anon-3", b"key"))["targets"] == 1
        for i, c in enumerate(viewers):  # the room push is the first thing each viewer gets
            assert (await c.recv(timeout=30)).body == b"room", f"viewer {i}"
        assert (await viewers[3].recv(timeout=30)).body == b"key"
        assert (await user.recv(timeout=30)).body == b"room"
        listed = await http("GET", "/list?limit=1000")
        assert {s["key"] for s in listed} >= {f"anon-{i}" for i in range(6)} | {"user-41"}
        assert all(s["mid"] == 0 for s in listed if s["key"].startswith("anon-"))
        assert await http("GET", "/session?uid=0") == [], "mid 0 is nobody's sessions"

        async def users_once_all_counted():  # one absorb reads the conns, then the users, of the cache
            total = await http("GET", "/goim/online/total")
            return total["user_count"] if total["conn_count"] == 7 else None

        users = await wait_until_async(users_once_all_counted, what="the 7 connections in one absorb")
        assert users == 1, "six viewers and user 41 are one user"
        # heartbeats renew them by conn id; leaving removes them, one by one, the user staying
        assert await viewers[0].heartbeat() == 7
        for c in viewers:
            await c.close()

        async def anon_listed():
            return sorted(s["key"] for s in await http("GET", "/list?limit=1000") if s["key"].startswith("anon-"))

        await wait_until_async(anon_listed, equals=[], what="the viewers' sessions to go")
        assert (await http("POST", "/goim/push/keys?operation=1000&keys=user-41", b"still"))["targets"] == 1
        assert (await user.recv(timeout=30)).body == b"still"
        await user.close()

    run(go())
