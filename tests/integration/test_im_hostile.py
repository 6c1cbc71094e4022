"""IM single chat against hostile clients and careless backends: a real node over real sockets.

Each test is the regression test of one finding of the hostile-input pass (docs/im.md "Errors"):
bad input gets a clear 4xx-like error, the connection (and everyone else) keeps being served, and
nobody reads or writes someone else's inbox.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from urllib.parse import quote as urlquote

import pytest

from imgate import client as imclient

from helpers import run
from imutil import api
from nodeutil import NodeThread, module_node
from polling import wait_until, wait_until_async

TRANSPORTS = ["tcp", "ws"]


node = module_node(heartbeat_timeout=30.0, ack_timeout=60.0, im_busy_timeout=30.0)


_next_user = [5000]


def users(n):
    """Fresh user ids, so that tests sharing the node never share an inbox."""
    first = _next_user[0]
    _next_user[0] += n
    return list(range(first, first + n))


def url(node, transport):
    return node.tcp_url if transport == "tcp" else node.ws_url


async def connect(node, transport, mid, **kw):
    return await imclient.connect(url(node, transport), mid=mid, heartbeat=None, **kw)


async def call(node, method, path, body=None):
    return await asyncio.get_running_loop().run_in_executor(None, api, node.http_base, method, path, body)


async def inbox(node, uid):
    """The (cmid, content) of every entry of ``uid``'s inbox, read over HTTP."""
    status, reply = await call(node, "GET", f"/im/sync?uid={uid}&after=0&limit=1000")
    assert status == 200, reply
    return [(m["cmid"], m["content"]) for m in reply["data"]["msgs"]]


async def reply_of(c, op, body, reply_op):
    if isinstance(body, str):
        body = body.encode()
    return json.loads((await c.request(op, body, reply_op)).body)


# ---------------------------------------------------------------- strings that are not UTF-8


# JSON escapes of lone UTF-16 surrogates: valid JSON text, but no UTF-8 encoding exists for them
SURROGATE_SENDS = [
    ('{"cmid": "s-content", "to": B, "content": "\\ud800"}', "s-content"),
    ('{"cmid": "s-key", "to": B, "content": {"\\udfff": 1}}', "s-key"),
    ('{"cmid": "\\udc00", "to": B, "content": "x"}', "\udc00"),
    ('{"cmid": "s-type", "to": B, "content": "x", "type": "\\ud83d"}', "s-type"),
]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_lone_surrogates_are_refused_with_400(node, transport):
    a, b = users(2)

    async def go():
        bc = await connect(node, transport, b)
        ac = await connect(node, transport, a)
        for body, cmid in SURROGATE_SENDS:
            reply = await reply_of(ac, 22, body.replace("B", str(b)), 23)
            assert reply["code"] == 400 and "UTF-8" in reply["error"], (body, reply)
            assert reply["cmid"] == cmid
            status, http = await call(node, "POST", f"/im/send?uid={a}", body.replace("B", str(b)).encode())
            assert status == 400 and http["code"] == -400 and "UTF-8" in http["message"], (body, status, http)
        assert (await ac.send_message(b, "fine", cmid="ok"))["seq"] == 1, "the connection serves on"
        assert await inbox(node, b) == [("ok", "fine")]
        await ac.close()
        await bc.close()

    run(go())


def test_a_bad_string_does_not_fail_other_users_sends_committed_with_it(node):
    """The store commits queued sends together: one hostile send must not make the batch fail."""
    a, b, h = users(3)
    store = node.node.im_store

    async def go():
        bc = await connect(node, "tcp", b)
        ac = await connect(node, "tcp", a)
        hc = await connect(node, "ws", h)
        lock = sqlite3.connect(Path(node.config.data_dir) / "im.db", isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")  # the writer waits: what is sent meanwhile queues up together
        try:
            first = asyncio.ensure_future(ac.send_message(b, "first", cmid="first"))
            await wait_until_async(lambda: store._queued, equals=1, what="the first send to be queued")
            hostile = [asyncio.ensure_future(reply_of(hc, 22, body.replace("B", str(b)), 23))
                       for body, _ in SURROGATE_SENDS]
            good = asyncio.ensure_future(ac.send_message(b, "second", cmid="second"))
            # every hostile send is answered or waits for the writer, and so does the good one
            await wait_until_async(lambda: store._queued + sum(f.done() for f in hostile) == len(hostile) + 2,
                                   what="the sends to be queued behind the locked database")
            assert not first.done() and not good.done()
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        assert (await first)["seq"] == 1
        assert (await good)["seq"] == 2, "a hostile send queued with it made it fail"
        for reply in await asyncio.gather(*hostile):
            assert reply["code"] == 400, reply
        assert await inbox(node, b) == [("first", "first"), ("second", "second")]
        for c in (ac, bc, hc):
            await c.close()

    run(go())


# ---------------------------------------------------------------- deeply nested content


def nested(depth):
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_deep_content_is_refused_and_never_poisons_the_receivers_inbox(node, transport):
    """Content nested near the parser's recursion limit used to be stored (then no Python client of the
    receiver could decode a sync page holding it) or to fail with a 5xx while being re-encoded."""
    a, b = users(2)

    async def go():
        bc = await connect(node, transport, b)
        ac = await connect(node, transport, a)
        accepted = []
        for depth in [2, 100, 101, 500] + list(range(950, 1000)):
            body = f'{{"cmid": "w{depth}", "to": {b}, "content": {nested(depth)}}}'
            reply = await reply_of(ac, 22, body, 23)
            status, http = await call(node, "POST", f"/im/send?uid={a}", body.replace('"w', '"h').encode())
            if "seq" in reply:
                accepted.append(depth)
                assert status == 200, (depth, http)
            else:
                assert reply["code"] == 400 and "nested" in reply["error"], (depth, reply)
                assert status == 400 and "nested" in http["message"], (depth, status, http)
        assert accepted == [2, 100], "content nested up to 100 levels is stored, deeper is refused"
        page = await bc.sync(0, 100)  # the receiver's client decodes what was stored
        assert [(m["cmid"], m["content"]) for m in page["msgs"]] == \
               [(f"{p}{d}", json.loads(nested(d))) for d in (2, 100) for p in "wh"]
        await ac.close()
        await bc.close()

    run(go())


# ---------------------------------------------------------------- pages larger than a connection's queue


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_sync_page_of_large_messages_fits_the_connection(node, transport):
    """100 messages of 15 KB (each under max_message_bytes) make a 1.5 MB page: more than the proxy
    queues for one connection (max_pending, 1 MiB), which closed the receiver as a slow consumer at
    every attempt. The page is cut by size instead (has_more), and the client catches up."""
    a, b = users(2)
    big = "x" * 15000

    async def go():
        await (await connect(node, transport, b)).close()
        for i in range(100):
            status, reply = await call(node, "POST", f"/im/send?uid={a}", {"cmid": f"b{i}", "to": b, "content": big})
            assert status == 200, reply
        bc = await connect(node, transport, b)
        assert bc.inbox_seq == 100
        got, after = [], 0
        while True:
            page = await bc.sync(after, 100)
            assert page["msgs"], page
            got += [m["seq"] for m in page["msgs"]]
            after = got[-1]
            if not page["has_more"]:
                break
        assert got == list(range(1, 101)) and not bc.closed
        stream = bc.messages(after=0)
        seen = [(await asyncio.wait_for(stream.__anext__(), 30))["seq"] for _ in range(100)]
        assert seen == list(range(1, 101))
        assert await bc.heartbeat() >= 0, "the connection is still open"
        await bc.close()

    run(go())


# ---------------------------------------------------------------- whose inbox


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_anonymous_connections_share_no_inbox(node, transport):
    """Every connection that authenticates without a user id is mid 0 (goim's anonymous user): they
    are different people, so none of them may own, read or write an inbox."""
    [b] = users(1)

    async def go():
        bc = await connect(node, transport, b)
        alice = await imclient.connect(url(node, transport), heartbeat=None)  # anonymous
        mallory = await imclient.connect(url(node, "ws" if transport == "tcp" else "tcp"), heartbeat=None)
        assert json.loads(alice.auth_reply)["mid"] == 0
        assert "inbox_seq" not in json.loads(mallory.auth_reply), "mid 0 has no inbox"
        with pytest.raises(imclient.ImRejected) as e:
            await alice.send_message(b, "from alice", cmid="anon")
        assert e.value.code == 403 and "user id" in e.value.error
        for c in (alice, mallory):
            for op, body, reply_op in ((26, {"after": 0, "limit": 10}, 27), (32, {"conv": f"u:0:{b}", "seq": 1}, 33)):
                reply = await reply_of(c, op, json.dumps(body), reply_op)
                assert reply["code"] == 403 and "user id" in reply["error"], (op, reply)
        assert await inbox(node, b) == [], "nothing reached b from an anonymous connection"
        status, reply = await call(node, "GET", "/im/sync?uid=0")
        assert status == 400, reply
        assert await alice.heartbeat() >= 0 and await mallory.heartbeat() >= 0, "they stay connected"
        for c in (alice, mallory, bc):
            await c.close()

    run(go())


# ---------------------------------------------------------------- configuration edges


def test_a_sync_without_limit_works_when_the_largest_page_is_below_the_default():
    n = NodeThread(im_sync_max_limit=5).start()
    try:
        async def go():
            await (await imclient.connect(n.tcp_url, mid=2, heartbeat=None)).close()
            a = await imclient.connect(n.tcp_url, mid=1, heartbeat=None)
            for i in range(7):
                await a.send_message(2, i)
            b = await imclient.connect(n.ws_url, mid=2, heartbeat=None)
            reply = await reply_of(b, 26, '{"after": 0}', 27)
            assert [m["content"] for m in reply["msgs"]] == [0, 1, 2, 3, 4] and reply["has_more"], reply
            status, reply = await asyncio.get_running_loop().run_in_executor(
                None, api, n.http_base, "GET", "/im/sync?uid=2&after=0")
            assert status == 200 and [m["content"] for m in reply["data"]["msgs"]] == [0, 1, 2, 3, 4], reply
            await a.close()
            await b.close()

        run(go())
    finally:
        n.stop()


# ---------------------------------------------------------------- bodies in other encodings


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_bodies_that_are_not_utf8_are_refused(node, transport):
    """json.loads(bytes) guesses UTF-16 and UTF-32 from the NUL bytes: such a body was stored."""
    a, b = users(2)

    async def go():
        bc = await connect(node, transport, b)
        ac = await connect(node, transport, a)
        for codec in ("utf-16-le", "utf-16-be", "utf-16", "utf-32"):
            body = json.dumps({"cmid": codec, "to": b, "content": "x"}).encode(codec)
            reply = await reply_of(ac, 22, body, 23)
            assert reply["code"] == 400 and "UTF-8" in reply["error"], (codec, reply)
            status, http = await call(node, "POST", f"/im/send?uid={a}", body)
            assert status == 400 and "UTF-8" in http["message"], (codec, status, http)
        reply = await reply_of(ac, 26, json.dumps({"after": 0}).encode("utf-16"), 27)
        assert reply["code"] == 400, reply
        assert await inbox(node, b) == []
        assert (await ac.send_message(b, "ü", cmid="utf8"))["seq"] == 1, "UTF-8 (non-ASCII too) is fine"
        assert await inbox(node, b) == [("utf8", "ü")]
        await ac.close()
        await bc.close()

    run(go())


# ---------------------------------------------------------------- operations of the next issue


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_group_operations_on_an_unknown_group_get_a_clear_error(node, transport):
    """GROUP_PULL (28) is a request of the BRIEF: it was dropped without an answer (the client waited
    for its 29 forever) and GROUP_ACK (30) vanished silently. A group that does not exist is a 404."""
    [a] = users(1)

    async def go():
        ac = await connect(node, transport, a)
        reply = await reply_of(ac, 28, json.dumps({"group": 999_999, "after": 0, "limit": 10}), 29)
        assert reply["code"] == 404 and "group" in reply["error"], reply
        ack = ac.send_frame(30, json.dumps({"group": 999_999, "gseq": 1}))
        await wait_until_async(lambda: ac.queued, what="the error reply to the group ack")
        err = ac.recv_nowait()
        assert (err.op, err.seq, json.loads(err.body)["code"]) == (29, ack, 404)
        assert await ac.heartbeat() >= 0, "the connection stays open"
        await ac.close()

    run(go())


# ---------------------------------------------------------------- HTTP query parameters


def test_http_integers_are_ascii_digits_only(node):
    """int() also reads "１" (a fullwidth digit) and "1_0": uid=１ read user 1's inbox."""
    a, b = users(2)

    async def go():
        await (await connect(node, "tcp", b)).close()  # b has an inbox
        status, reply = await call(node, "POST", f"/im/send?uid={a}", {"cmid": "p", "to": b, "content": 1})
        assert status == 200, reply
        fullwidth = "".join(chr(0xFF10 + int(d)) for d in str(b))
        underscored = str(b)[0] + "_" + str(b)[1:]
        for path in (f"/im/sync?uid={urlquote(fullwidth)}", f"/im/sync?uid={underscored}",
                     f"/im/sync?uid={b}&after=0_0", f"/im/conversations?uid={urlquote(fullwidth)}",
                     f"/im/sync?uid={b}&limit=%D9%A1"):  # an Arabic-Indic one
            status, reply = await call(node, "GET", path)
            assert status == 400 and "integer" in reply["message"], (path, status, reply)
        status, reply = await call(node, "POST", f"/im/send?uid={urlquote(fullwidth)}", {"cmid": "q", "to": a, "content": 1})
        assert status == 400, reply
        status, reply = await call(node, "GET", f"/im/sync?uid=+{b}&after=%200%20")  # Go's ParseInt takes a sign
        assert status == 200 and len(reply["data"]["msgs"]) == 1, reply
        for mids in (urlquote(fullwidth), f"{a},{urlquote(fullwidth)}", underscored):  # the push API's lists too
            status, reply = await call(node, "POST", f"/goim/push/mids?operation=1000&mids={mids}", b"x")
            assert status == 400 and "integer" in reply["message"], (mids, status, reply)

    run(go())


# ---------------------------------------------------------------- a careless backend


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_push_api_cannot_forge_inbox_entries(node, transport):
    """A backend's goim push with operation 24 reached the client as an inbox entry: one with a high
    seq made the client's stream drop every real message after it. IM ops are not the push API's."""
    a, b = users(2)
    forged = json.dumps({"msgs": [{"seq": 10**6, "msg_id": "1", "conv": f"u:{a}:{b}", "from": a, "to": b,
                                   "type": "text", "content": "forged", "ts": 0, "cmid": "f"}]}).encode()

    async def go():
        bc = await connect(node, transport, b)
        ac = await connect(node, transport, a)
        stream = bc.messages()
        for path in (f"/goim/push/mids?operation=24&mids={b}", f"/goim/push/mids?mids={b},{a}&operation=24",
                     "/goim/push/keys?operation=24&keys=k", "/goim/push/room?operation=27&type=live&room=1",
                     "/goim/push/all?operation=33"):
            status, reply = await call(node, "POST", path, forged)
            assert status == 400 and "reserved" in reply["message"], (path, status, reply)
        await ac.send_message(b, "real")
        m = await asyncio.wait_for(stream.__anext__(), 10)
        assert (m["seq"], m["content"]) == (1, "real")
        status, reply = await call(node, "POST", f"/goim/push/mids?operation=1000&mids={b}", b"business")
        assert status == 200 and reply["data"]["targets"] == 1, "other operations are pushed as before"
        await ac.close()
        await bc.close()

    run(go())


def test_http_sync_ranges_answer_the_same_code_as_the_wire(node):
    """docs/im.md: the HTTP API answers the code of the wire protocol as its status."""
    [b] = users(1)

    async def go():
        bc = await connect(node, "tcp", b)
        for query, body in (("after=-1", {"after": -1}), ("after=5", {"after": 5}),
                            ("after=0&limit=0", {"after": 0, "limit": 0}),
                            ("after=0&limit=-3", {"after": 0, "limit": -3}),
                            ("after=0&limit=1001", {"after": 0, "limit": 1001})):
            wire = await reply_of(bc, 26, json.dumps(body), 27)
            status, http = await call(node, "GET", f"/im/sync?uid={b}&{query}")
            assert wire["code"] == 416 and (status, http["code"]) == (416, -416), (query, wire, status, http)
        await bc.close()

    run(go())


# ---------------------------------------------------------------- floods from one user


def test_a_read_flood_does_not_grow_the_peers_inbox(node):
    """Each READ that moved the position stored a read notice in both inboxes, the reader's too; reading
    up to that notice, again and again, grew the peer's inbox by one entry per READ without end."""
    a, b = users(2)

    async def go():
        ac = await connect(node, "tcp", a)
        bc = await connect(node, "tcp", b)
        assert "seq" in await reply_of(bc, 22, json.dumps({"cmid": "m0", "to": a, "content": "hi"}), 23)
        conv = f"u:{a}:{b}"
        for _ in range(30):
            top = (await reply_of(ac, 26, '{"after": 0, "limit": 1}', 27))["max_seq"]
            assert (await reply_of(ac, 32, json.dumps({"conv": conv, "seq": top}), 33))["seq"] == top
        assert [cmid for cmid, _ in await inbox(node, b)] == ["m0", f"~read:{conv}:1"], "one notice, for m0"
        await ac.close()
        await bc.close()

    run(go())


def test_a_users_sends_are_rate_limited_across_its_connections():
    """The per-connection op bucket let a user with many connections send as fast as all of them
    together; the user's own bucket refuses past its burst with 429 and the cmid, stores nothing of
    it, keeps every connection open, and leaves other users alone."""
    n = NodeThread(heartbeat_timeout=30.0, im_user_rate=0.01, im_user_burst=10).start()
    a, b, c = users(3)

    async def go():
        conns = [await connect(n, t, a) for t in ("tcp", "ws", "tcp")]
        bc = await connect(n, "tcp", b)
        replies = []
        for i in range(12):
            body = json.dumps({"cmid": f"f{i}", "to": b, "content": i})
            replies.append(await reply_of(conns[i % 3], 22, body, 23))
        stored = [r["cmid"] for r in replies if "seq" in r]
        refused = [r for r in replies if "seq" not in r]
        assert len(stored) == 10 and len(refused) == 2, replies
        assert all(r["code"] == 429 and "rate limited" in r["error"] for r in refused), refused
        assert {r["cmid"] for r in refused} == {"f10", "f11"}
        assert [cmid for cmid, _ in await inbox(n, b)] == stored, "nothing of the refused sends stored"
        for conn in conns:
            assert await conn.heartbeat() >= 0, "the connections stay open"
        cc = await connect(n, "ws", c)
        assert "seq" in await reply_of(cc, 22, json.dumps({"cmid": "c0", "to": b, "content": 1}), 23)
        metrics = (await call(n, "GET", "/metrics"))[1]
        assert "imgate_im_rate_limited_total 2.0" in (metrics if isinstance(metrics, str) else metrics.decode())
        for conn in conns + [bc, cc]:
            await conn.close()

    try:
        run(go())
    finally:
        n.stop()
