"""IM single chat end to end: a real node over real sockets (TCP and WebSocket), the real client."""

from __future__ import annotations

import asyncio
import json

import pytest

from imgate import client as imclient
from imgate.core import encode_frame

from helpers import run
from imutil import api
from polling import wait_until_async
from nodeutil import NodeThread, module_node

TRANSPORTS = ["tcp", "ws"]


node = module_node(heartbeat_timeout=30.0, ack_timeout=60.0, max_message_bytes=1000, im_sync_max_limit=100)


@pytest.fixture(scope="module")
def quick_node():
    """A node that resends an unacked push after 0.3 s, twice at most."""
    n = NodeThread(heartbeat_timeout=30.0, ack_timeout=0.3, ack_retries=2).start()
    yield n
    n.stop()


def url(node, transport):
    return node.tcp_url if transport == "tcp" else node.ws_url


_next_user = [1000]


def users(n):
    """Fresh user ids, so that tests sharing the node never share an inbox."""
    first = _next_user[0]
    _next_user[0] += n
    return list(range(first, first + n))


async def connect(node, transport, mid, **kw):
    return await imclient.connect(url(node, transport), mid=mid, heartbeat=None, **kw)


async def pushed(c, timeout=10.0):
    """The msgs of the next op-24 push."""
    f = await c.recv(timeout=timeout)
    assert f.op == 24, f"expected op 24, got op {f.op}: {f.body[:200]!r}"
    return json.loads(f.body)["msgs"]


async def call(node, method, path, body=None):
    return await asyncio.get_running_loop().run_in_executor(None, api, node.http_base, method, path, body)


async def nothing_pushed(c):
    """No push is waiting on ``c`` once a round trip has been made (the server answers in order)."""
    await c.heartbeat()
    assert c.queued == 0, f"unexpected push: {c.recv_nowait()}"


# ---------------------------------------------------------------- delivery


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_online_delivery_to_every_device(node, transport):
    a, b = users(2)

    async def go():
        a1 = await connect(node, transport, a)
        a2 = await connect(node, "ws" if transport == "tcp" else "tcp", a)
        b1 = await connect(node, transport, b)
        b2 = await connect(node, transport, b)
        assert a1.inbox_seq == 0 and b1.inbox_seq == 0
        reply = await a1.send_message(b, {"text": "hi"}, cmid="m1")
        assert reply["cmid"] == "m1" and reply["seq"] == 1 and int(reply["msg_id"]) > 0
        for c in (b1, b2):
            [m] = await pushed(c)
            assert (m["seq"], m["from"], m["to"], m["content"], m["conv"], m["cmid"]) == \
                   (1, a, b, {"text": "hi"}, f"u:{a}:{b}", "m1")
            assert m["msg_id"] == reply["msg_id"] and m["ts"] == reply["ts"]
        [m] = await pushed(a2)  # the sender's other device gets the sender's entry
        assert (m["seq"], m["from"], m["msg_id"]) == (1, a, reply["msg_id"])
        await nothing_pushed(a1)  # the sending connection learned everything from its 23
        # b answers: a's inbox seq 2, b's seq 2
        r2 = await b2.send_message(a, "yo")
        assert r2["seq"] == 2
        assert [m["seq"] for m in await pushed(a1)] == [2]
        assert [m["seq"] for m in await pushed(b1)] == [2]
        a3 = await connect(node, transport, a)
        assert a3.inbox_seq == 2, "op 8 carries the user's newest seq"
        for c in (a1, a2, a3, b1, b2):
            await c.close()

    run(go())


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_offline_then_paged_sync(node, transport):
    a, b = users(2)

    async def go():
        bc = await connect(node, transport, b)  # b has an inbox, then goes away
        await bc.close()
        ac = await connect(node, transport, a)
        sent = [await ac.send_message(b, i, cmid=f"c{i}") for i in range(23)]
        bc = await connect(node, transport, b)
        assert bc.inbox_seq == 23
        got, after = [], 0
        while True:
            page = await bc.sync(after, 10)
            assert page["max_seq"] == 23 and page["truncated"] is False and page["groups"] == []
            got += page["msgs"]
            if not page["has_more"]:
                break
            after = page["msgs"][-1]["seq"]
        assert [m["seq"] for m in got] == list(range(1, 24))
        assert [m["content"] for m in got] == list(range(23))
        assert [m["msg_id"] for m in got] == [r["msg_id"] for r in sent]
        await ac.close()
        await bc.close()

    run(go())


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_message_stream_fills_a_gap_with_sync(node, transport):
    a, b = users(2)

    async def go():
        ac = await connect(node, transport, a)
        bc = await connect(node, transport, b)
        await ac.send_message(b, "one")
        lost = await pushed(bc)  # the application never sees this push: a lost delivery
        assert lost[0]["seq"] == 1
        stream = bc.messages(after=0)
        await ac.send_message(b, "two")
        first = await asyncio.wait_for(stream.__anext__(), 10)
        second = await asyncio.wait_for(stream.__anext__(), 10)
        assert [(first["seq"], first["content"]), (second["seq"], second["content"])] == [(1, "one"), (2, "two")]
        assert stream.syncs >= 1, "seq 2 after nothing made the stream sync"
        await ac.send_message(b, "three")
        third = await asyncio.wait_for(stream.__anext__(), 10)
        assert (third["seq"], third["content"]) == (3, "three")
        # the stream acked what it handed out: the server stops resending it
        svc = node.node.im
        await wait_until_async(lambda: not {1, 2} & set(svc.unacked("test-node", bc_conn(bc))),
                               what="acks of seqs 1-2")
        await ac.close()
        await bc.close()

    run(go())


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_message_stream_catches_up_after_being_offline_then_goes_live(node, transport):
    a, b = users(2)

    async def go():
        await (await connect(node, transport, b)).close()
        ac = await connect(node, transport, a)
        for i in range(7):
            await ac.send_message(b, i)
        bc = await connect(node, transport, b)
        stream = bc.messages(after=2)  # the last seq this device saw before it went offline
        got = [await asyncio.wait_for(stream.__anext__(), 10) for _ in range(5)]
        assert [(m["seq"], m["content"]) for m in got] == [(s, s - 1) for s in range(3, 8)]
        await ac.send_message(b, "live")
        m = await asyncio.wait_for(stream.__anext__(), 10)
        assert (m["seq"], m["content"]) == (8, "live")
        await ac.close()
        await bc.close()

    run(go())


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_message_stream_gets_its_own_sends_without_a_sync(node, transport):
    a, b = users(2)

    async def go():
        ac = await connect(node, transport, a)
        bc = await connect(node, transport, b)
        stream = bc.messages()
        await ac.send_message(b, "question")
        await bc.send_message(a, "answer")
        got = [await asyncio.wait_for(stream.__anext__(), 10) for _ in range(2)]
        assert [(m["seq"], m["from"], m["content"]) for m in got] == [(1, a, "question"), (2, b, "answer")]
        assert stream.syncs == 0
        await ac.close()
        await bc.close()

    run(go())


def bc_conn(c):
    return json.loads(c.auth_reply)["conn_id"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_lost_reply_resend_stores_one_message(node, transport):
    a, b = users(2)

    async def go():
        ac = await connect(node, transport, a)
        bc = await connect(node, transport, b)
        body = json.dumps({"cmid": "same", "to": b, "content": "once"})
        ac.send_frame(22, body)  # the 23 of this one is "lost": nobody waits for it
        again = await ac.request(22, body, 23)
        first = json.loads(again.body)
        third = await ac.send_message(b, "once", cmid="same")
        assert (third["msg_id"], third["seq"]) == (first["msg_id"], first["seq"]) == (third["msg_id"], 1)
        page = await bc.sync(0, 10)
        assert [m["cmid"] for m in page["msgs"]] == ["same"] and page["max_seq"] == 1
        await ac.close()
        await bc.close()

    run(go())


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_server_resends_unacked_push_until_acked(quick_node, transport):
    node = quick_node
    a, b = users(2)

    async def go():
        ac = await connect(node, transport, a)
        bc = await connect(node, transport, b)
        await ac.send_message(b, "r")
        first = await pushed(bc)
        again = await pushed(bc)  # ack_timeout 0.3 s: the same entry comes again
        assert again == first
        bc.ack(first[0]["seq"])
        conn_id = bc_conn(bc)
        await wait_until_async(lambda: node.node.im.unacked("test-node", conn_id), equals=[],
                               what="the ack to clear the entry")
        await bc.heartbeat()  # a resend that crossed the ack is queued by now: nothing else may be
        while bc.queued:
            assert json.loads(bc.recv_nowait().body)["msgs"] == first
        # bounded: an entry never acked is pushed ack_retries (2) more times, then given up
        await ac.send_message(b, "never acked")
        seen = [await pushed(bc) for _ in range(3)]
        assert all(s == seen[0] for s in seen)
        await wait_until_async(lambda: node.node.im.unacked("test-node", conn_id), equals=[],
                               what="giving up after the retries")
        await nothing_pushed(bc)  # every resend was written before the entry was given up
        await ac.close()
        await bc.close()
        await wait_until_async(lambda: ("test-node", conn_id) not in node.node.im._unacked,
                               what="nothing kept once closed")

    run(go())


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_read_positions_and_unread_counts(node, transport):
    a, b = users(2)
    conv = f"u:{a}:{b}"

    async def go():
        ac = await connect(node, transport, a)
        bc = await connect(node, transport, b)
        for i in range(3):
            await ac.send_message(b, i)
        status, reply = await call(node, "GET", f"/im/conversations?uid={b}")
        assert status == 200 and reply["code"] == 0, reply
        [c] = reply["data"]
        assert (c["conv"], c["peer"], c["unread"], c["read_seq"], c["last"]["content"]) == (conv, a, 3, 0, 2)
        for _ in range(3):
            await pushed(bc)
        assert await bc.read(conv, 2) == {"conv": conv, "seq": 2}
        [notice] = await pushed(ac)  # the peer is told with a msg of type "read"
        assert notice["type"] == "read" and notice["from"] == b and notice["seq"] == 4
        assert notice["content"]["seq"] == 2
        status, reply = await call(node, "GET", f"/im/conversations?uid={b}")
        assert reply["data"][0]["unread"] == 1 and reply["data"][0]["read_seq"] == 2
        assert await bc.read(conv, 1) == {"conv": conv, "seq": 2}, "a read position never goes back"
        status, reply = await call(node, "GET", f"/im/conversations?uid={a}")
        assert reply["data"][0]["unread"] == 0, "a's own messages and b's read notice are not unread"
        await ac.close()
        await bc.close()

    run(go())


# ---------------------------------------------------------------- bad input


BAD_SENDS = [
    (b"not json", 400, None),
    (b"[1, 2]", 400, None),
    (json.dumps({"to": "B", "content": "x"}).encode(), 400, None),                  # no cmid
    (json.dumps({"cmid": "k1", "to": 999999999, "content": "x"}).encode(), 404, "k1"),  # unknown receiver
    (json.dumps({"cmid": "k2", "to": "B"}).encode(), 400, "k2"),                     # no content
    (json.dumps({"cmid": "k3", "to": "B", "content": "x" * 2000}).encode(), 413, "k3"),
    (json.dumps({"cmid": "k4", "to": "B", "content": "x", "type": "read"}).encode(), 400, "k4"),
    (json.dumps({"cmid": "k5", "to": -3, "content": "x"}).encode(), 416, "k5"),
    (b'{"cmid": "k6", "to": "B", "content": NaN}', 400, "k6"),
    (b"[" * 30000 + b"]" * 30000, 400, None),
]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_bad_input_gets_an_error_and_the_connection_stays(node, transport):
    a, b = users(2)

    async def go():
        bc = await connect(node, transport, b)
        ac = await connect(node, transport, a)
        for body, code, cmid in BAD_SENDS:
            body = body.replace(b'"B"', str(b).encode())
            reply = json.loads((await ac.request(22, body, 23)).body)
            assert reply["code"] == code and reply["error"], (body, reply)
            assert reply.get("cmid") == cmid
        await ac.send_message(b, "first", cmid="dup")
        with pytest.raises(imclient.ImRejected) as e:
            await ac.send_message(b, "changed", cmid="dup")
        assert e.value.code == 409
        for req, code in (({"after": -1, "limit": 5}, 416), ({"after": 0, "limit": 101}, 416),
                          ({"after": 0, "limit": 0}, 416), ({"after": 99, "limit": 5}, 416),
                          ({"after": "x"}, 400)):
            reply = json.loads((await ac.request(26, json.dumps(req), 27)).body)
            assert reply["code"] == code and reply["error"], (req, reply)
        ack = ac.send_frame(25, json.dumps({"seq": 500}))  # beyond the inbox (max_seq 1)
        await wait_until_async(lambda: ac.queued, what="the error reply to the ack")
        err = ac.recv_nowait()
        assert (err.op, err.seq, json.loads(err.body)["code"]) == (27, ack, 416)
        for req, code in (({"conv": "u:1:2", "seq": 1}, 400), ({"conv": f"u:{a}:{b}", "seq": 99}, 416),
                          ({"seq": 1}, 400)):
            reply = json.loads((await ac.request(32, json.dumps(req), 33)).body)
            assert reply["code"] == code, (req, reply)
        # still serving, and nothing bad was stored
        assert (await ac.send_message(b, "after all that"))["seq"] == 2
        page = await bc.sync(0, 10)
        assert [m["content"] for m in page["msgs"]] == ["first", "after all that"]
        await ac.close()
        await bc.close()

    run(go())


def test_requests_in_flight_per_connection_are_bounded():
    n = NodeThread(im_max_inflight=1).start()
    try:
        async def go():
            b = await imclient.connect(n.tcp_url, mid=2, heartbeat=None)
            a = await imclient.connect(n.tcp_url, mid=1, heartbeat=None)
            frames = b"".join(encode_frame(22, 100 + i, json.dumps({"cmid": f"f{i}", "to": 2, "content": i}))
                              for i in range(5))
            a.send_raw(frames)  # one write: the proxy reads the five frames together
            replies = {}
            while len(replies) < 5:
                f = await a.recv(timeout=10)
                assert f.op == 23
                replies[f.seq] = json.loads(f.body)
            assert replies[100]["seq"] == 1
            assert [replies[s]["code"] for s in range(101, 105)] == [429] * 4
            assert (await a.send_message(2, "after", cmid="later"))["seq"] == 2, "the connection serves on"
            assert [m["cmid"] for m in (await b.sync(0, 10))["msgs"]] == ["f0", "later"]
            await a.close()
            await b.close()

        run(go())
    finally:
        n.stop()


def test_sync_below_the_retained_range_says_so():
    n = NodeThread(im_retention_entries=5).start()
    try:
        async def go():
            await (await imclient.connect(n.ws_url, mid=2, heartbeat=None)).close()
            a = await imclient.connect(n.ws_url, mid=1, heartbeat=None)
            for i in range(8):
                await a.send_message(2, i)
            b = await imclient.connect(n.ws_url, mid=2, heartbeat=None)
            page = await b.sync(0, 100)
            assert (page["truncated"], page["min_seq"], page["max_seq"]) == (True, 4, 8)
            assert [m["content"] for m in page["msgs"]] == [3, 4, 5, 6, 7]
            page = await b.sync(3, 100)
            assert page["truncated"] is False and len(page["msgs"]) == 5
            await a.close()
            await b.close()

        run(go())
    finally:
        n.stop()


# ---------------------------------------------------------------- HTTP API for backends


def test_http_send_sync_and_conversations(node):
    a, b = users(2)

    async def go():
        bc = await connect(node, "tcp", b)
        status, reply = await call(node, "POST", f"/im/send?uid={a}",
                                   {"cmid": "h1", "to": b, "content": "from a backend"})
        assert status == 200 and reply["code"] == 0, reply
        assert reply["data"]["seq"] == 1 and reply["data"]["cmid"] == "h1"
        [m] = await pushed(bc)
        assert (m["from"], m["content"]) == (a, "from a backend")
        status, reply = await call(node, "GET", f"/im/sync?uid={b}&after=0&limit=10")
        assert status == 200 and [m["content"] for m in reply["data"]["msgs"]] == ["from a backend"]
        for path, body, status_want in (
            (f"/im/send?uid={a}", b"nope", 400),
            (f"/im/send?uid={a}", {"cmid": "h2", "to": 99999999, "content": 1}, 404),
            (f"/im/send?uid={a}", {"cmid": "h1", "to": b, "content": "other"}, 409),
            ("/im/send", {"cmid": "h3", "to": b, "content": 1}, 400),
        ):
            status, reply = await call(node, "POST", path, body)
            assert status == status_want and reply["code"] != 0 and reply["message"], (path, reply)
        for path in (f"/im/sync?uid={b}&after=-1", f"/im/sync?uid={b}&after=5", "/im/sync?after=0",
                     f"/im/sync?uid={b}&limit=100000", "/im/conversations"):
            status, reply = await call(node, "GET", path)
            assert 400 <= status < 500 and reply["code"] != 0 and reply["message"], (path, reply)
        status, doc = await call(node, "GET", "/openapi.json")
        assert {"/im/send", "/im/sync", "/im/conversations"} <= set(doc["paths"])
        status, text = await call(node, "GET", "/metrics")
        counts = {line.split()[0]: float(line.split()[1]) for line in text.decode().splitlines()
                  if line.startswith("imgate_im_")}
        assert counts["imgate_im_messages_total"] >= 1 and counts["imgate_im_errors_total"] >= 3
        assert 1 <= counts["imgate_im_commits_total"] <= counts["imgate_im_store_writes_total"]
        await bc.close()

    run(go())


# ---------------------------------------------------------------- load


def test_ten_thousand_messages_among_a_hundred_users_keep_every_inbox_gapless(node):
    ids = users(100)

    async def go():
        conns = [await connect(node, "tcp" if i % 2 else "ws", mid) for i, mid in enumerate(ids)]

        async def sender(i, c):
            me = ids[i]
            pending = []
            for k in range(100):
                to = ids[(i + 1 + k % 99) % 100]
                pending.append(c.send_message(to, k, cmid=f"{me}-{k}"))
                if len(pending) == 20:  # 20 sends in flight per connection
                    await asyncio.gather(*pending)
                    pending = []
            await asyncio.gather(*pending)

        await asyncio.gather(*(sender(i, c) for i, c in enumerate(conns)))
        store = node.node.im_store
        want = {mid: set() for mid in ids}  # inbox -> (from, cmid) of every entry it must hold
        for i, me in enumerate(ids):
            for k in range(100):
                to = ids[(i + 1 + k % 99) % 100]
                want[me].add((me, f"{me}-{k}"))
                want[to].add((me, f"{me}-{k}"))
        for mid in ids:
            page = await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(store.sync(mid, 0, 100000), node.loop))
            msgs = [json.loads(m) for m in page.msgs]
            assert [m["seq"] for m in msgs] == list(range(1, len(msgs) + 1)) and page.max_seq == len(msgs), mid
            assert len(msgs) == len(want[mid]) and {(m["from"], m["cmid"]) for m in msgs} == want[mid], mid
        assert sum(len(w) for w in want.values()) == 2 * 10000
        for c in conns:
            await c.close()

    run(go(), timeout=300)


def test_a_logic_without_im_service_answers_ims_ops_with_an_error():
    from imgate.auth import make_authenticator
    from imgate.cache import MemoryCache
    from imgate.logic import Logic
    from imgate.push import MemoryBus, PushRouter

    logic = Logic(MemoryCache(), MemoryBus(PushRouter()), make_authenticator("none", ""))
    body = asyncio.run(logic.receive("p", 1, 1, 22, 1, b'{"cmid": "x", "to": 2, "content": 1}'))
    assert json.loads(body)["code"] == 503


def test_a_node_without_im_answers_im_ops_and_routes_with_503():
    n = NodeThread(im=False).start()
    try:
        async def go():
            c = await imclient.connect(n.tcp_url, mid=1, heartbeat=None)
            assert "inbox_seq" not in json.loads(c.auth_reply)
            with pytest.raises(imclient.ImRejected) as e:
                await c.send_message(2, "x")
            assert e.value.code == 503
            status, reply = await call(n, "GET", "/im/sync?uid=1")
            assert status == 503 and reply["code"] != 0
            await c.close()

        run(go())
    finally:
        n.stop()
