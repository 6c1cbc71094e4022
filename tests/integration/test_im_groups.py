"""IM groups end to end against a real `imgate serve` process over real sockets, and kill -9 of it
during a write fan-out. The oracle: every member's inbox is 1..N without gap, and holds each group
message it must see (by gseq) exactly once."""

from __future__ import annotations

import asyncio
import json
import sqlite3

import pytest

from imgate import client as imclient

from groupmodel import expected_inboxes, told
from helpers import run
from imutil import api, serve  # noqa: F401 (serve is a fixture)
from polling import wait_until_async


async def call(proc, method, path, body=None):
    status, reply = await asyncio.get_running_loop().run_in_executor(None, api, proc.http_base, method, path, body)
    return status, reply


async def ok(proc, method, path, body=None):
    status, reply = await call(proc, method, path, body)
    assert status == 200, reply
    return reply["data"]


async def connect(proc, mid, transport="tcp"):
    return await imclient.connect(proc.tcp_url if transport == "tcp" else proc.ws_url, mid=mid, heartbeat=None)


async def inbox(proc, uid):
    msgs, after = [], 0
    while True:
        page = await ok(proc, "GET", f"/im/sync?uid={uid}&after={after}&limit=1000")
        msgs += page["msgs"]
        if not page["has_more"]:
            return msgs
        after = msgs[-1]["seq"]


def group_gseqs(msgs, group):
    seqs = [m["seq"] for m in msgs]
    assert seqs == list(range(1, len(seqs) + 1)), f"inbox not gapless: {seqs[:50]}"
    return [m["gseq"] for m in msgs if m.get("group") == group]


async def pushed(c, timeout=10.0):
    f = await c.recv(timeout=timeout)
    assert f.op == 24, f"expected op 24, got op {f.op}: {f.body[:200]!r}"
    msgs = json.loads(f.body)["msgs"]
    assert len(msgs) == 1, msgs
    return msgs


def test_small_and_large_group_delivery_and_membership(serve):
    proc = serve(group_write_limit=4, group_hysteresis=1, ack_timeout=60.0)

    async def go():
        a, b = await connect(proc, 1), await connect(proc, 2, "ws")
        g = (await ok(proc, "POST", "/im/groups?uid=1", {"name": "team", "members": [2, 3]}))["group"]
        assert await ok(proc, "GET", f"/im/groups?group={g}") == {
            "group": g, "name": "team", "owner": 1, "admins": [], "members": 3, "mode": "write", "max_gseq": 1}
        for c in (a, b):  # the creation is the group's first message, in every member's inbox
            [m] = await pushed(c)
            assert (m["type"], m["gseq"], m["seq"], m["content"]["add"]) == ("member", 1, 1, [1, 2, 3])
        a2 = await connect(proc, 1, "ws")  # the sender's other device
        reply = await a.send_group(g, "hello", cmid="h")
        # write mode: the 23 carries the sender's own seq (its entry is written with the message)
        assert (reply["seq"], reply["gseq"], reply["group"]) == (2, 2, g)
        assert await a.send_group(g, "hello", cmid="h") == reply  # a resend: the same answer
        for c, want_seq in ((a2, 2), (b, 2)):  # each member's own seq; the sending connection has its 23
            [m] = await pushed(c)
            assert (m["seq"], m["gseq"], m["from"], m["content"], m["conv"]) == (want_seq, 2, 1, "hello", f"g:{g}")
        await a.heartbeat()  # answered in order: a push of its own entry would be queued before it
        assert a.queued == 0, f"the sending connection got {a.recv_nowait()}"
        # member 3 was offline: it syncs both
        assert group_gseqs(await inbox(proc, 3), g) == [1, 2]
        # errors: not a member, the owner, a non-admin actor, beyond the cap
        outsider = await connect(proc, 9)
        with pytest.raises(imclient.ImRejected) as e:
            await outsider.send_group(g, "x")
        assert e.value.code == 403
        assert (await call(proc, "POST", f"/im/groups/members?group={g}", {"remove": [1]}))[0] == 409
        assert (await call(proc, "POST", f"/im/groups/members?group={g}&uid=2", {"add": [5]}))[0] == 403
        assert (await call(proc, "POST", f"/im/groups/members?group={g}",
                           {"add": list(range(100, 100_200))}))[0] == 409
        assert (await call(proc, "GET", "/im/groups?group=999"))[0] == 404
        # beyond group_write_limit (4): read mode, announced in the inboxes
        assert await ok(proc, "POST", f"/im/groups/members?group={g}", {"add": [4, 5]}) == \
            {"members": 5, "mode": "read"}
        for c in (a, b):
            assert [m["type"] for m in await pushed(c)] == ["member"]
            assert [(m["type"], m["content"]["mode"]) for m in await pushed(c)] == [("mode", "read")]
        await a2.close()
        reply = await b.send_group(g, "big now")
        assert (reply["seq"], reply["gseq"]) == (0, 5)  # read mode: no inbox entry, the gseq says where
        for c in (a, b):  # online members get it pushed, seq 0: it is in the group's timeline only
            [m] = await pushed(c)
            assert (m["seq"], m["gseq"], m["content"]) == (0, 5, "big now")
        # the offline member 4 learns from SYNC's groups and pulls (it sees nothing from before its join)
        d = await connect(proc, 4)
        page = await d.sync(0, 100)
        assert page["groups"] == [{"group": g, "max_gseq": 5, "cursor": 4}]
        pulled = await d.group_pull(g, 0)
        assert [m["gseq"] for m in pulled["msgs"]] == [3, 4, 5] and not pulled["has_more"]
        d.group_ack(g, 5)
        await wait_until_async(lambda: _no_news(d), what="op 30 to move the read position")
        # d joined the group's room at auth: it gets the next one live
        await a.send_group(g, "to the room")
        for c in (a, b, d):
            assert [m["gseq"] for m in await pushed(c)] == [6]
        # a removed member leaves the room and cannot pull any more
        await ok(proc, "POST", f"/im/groups/members?group={g}", {"remove": [4]})
        for c in (a, b):
            assert [m["type"] for m in await pushed(c)] == ["member"]
        await a.send_group(g, "after the removal")
        for c in (a, b):
            assert [m["gseq"] for m in await pushed(c)] == [8]
        await d.heartbeat()  # the server answers in order: anything pushed to d is queued before it
        assert d.queued == 0, f"a removed member got {d.recv_nowait()}"
        with pytest.raises(imclient.ImRejected) as e:
            await d.group_pull(g, 0)
        assert e.value.code == 403
        # clients cannot join a group's room themselves
        with pytest.raises(Exception, match="IM service"):
            await d.join_room(f"im://g:{g}")
        for c in (a, b, d, outsider):
            await c.close()

    run(go())


async def _no_news(c):
    return (await c.sync(0, 1))["groups"] == []


def test_kill_during_write_fan_out_loses_and_repeats_nothing(serve):
    """kill -9 while the outbox still holds jobs: after restart every member has every message once,
    and each sender's entries (written with its sends, ahead of the older jobs' rest) are in gseq
    order. The consumer is off until the kill, so that the jobs surely are left then."""
    proc = serve(group_consumer=False)
    members = list(range(1, 201))  # 200: write mode

    async def before():
        groups = [(await ok(proc, "POST", "/im/groups?uid=1", {"name": f"k{i}", "members": members}))["group"]
                  for i in range(4)]
        senders = [await connect(proc, m) for m in (1, 2, 3, 4)]
        replies = await asyncio.gather(*(
            senders[i % 4].send_group(groups[i // 15], i, cmid=f"m{i}") for i in range(60)))
        for c in senders:
            c.abort()
        return groups, replies

    groups, replies = run(before())
    proc.kill()  # every 23 was answered: messages and jobs durable, fan-out unfinished
    db = sqlite3.connect(proc.config["data_dir"] + "/im.db")
    left = db.execute("SELECT COUNT(*) FROM group_outbox").fetchone()[0]
    db.close()
    assert left >= 4, left  # at least each group's last message
    proc.config["group_consumer"] = True
    proc.start()

    async def after():
        async def done():
            return len(await inbox(proc, 200)) == 4 * 16
        await wait_until_async(done, timeout=120, what="the resumed fan-out")
        for u in members:
            msgs = await inbox(proc, u)
            for g in groups:
                assert group_gseqs(msgs, g) == list(range(1, 17)), (u, g)
        for i, r in enumerate(replies):  # each 23's seq is the sender's entry of that message
            sender = 1 + i % 4
            [m] = [m for m in await inbox(proc, sender) if m["seq"] == r["seq"]]
            assert (m["group"], m["gseq"], m["content"]) == (groups[i // 15], r["gseq"], i)

    run(after())


def test_the_client_stream_follows_a_group_through_both_modes(serve):
    """Client.messages() hands out a group's messages in either mode, once each, in gseq order,
    pulling what a read-mode group sent while the member was away."""
    proc = serve(group_write_limit=3, group_hysteresis=1, ack_timeout=60.0)

    async def go():
        g = (await ok(proc, "POST", "/im/groups?uid=1", {"name": "s", "members": [2, 3]}))["group"]
        a = await connect(proc, 1)
        b = await connect(proc, 2, "ws")
        stream = b.messages(after=0)
        got = []

        async def take(n):
            for _ in range(n):
                try:
                    m = await asyncio.wait_for(stream.__anext__(), 20)
                except TimeoutError:
                    raise AssertionError(f"stuck after {got}; sync: {await b.sync(0, 100)}") from None
                got.append((m["gseq"], m["type"], m["content"] if m["type"] == "text" else None))

        await a.send_group(g, "w1")
        await take(2)  # the creation and w1, from the inbox
        await ok(proc, "POST", f"/im/groups/members?group={g}", {"add": [4, 5]})  # read mode
        await take(2)  # member, mode (fanned out)
        await a.send_group(g, "r1")
        await take(1)  # pushed from the timeline
        await b.close()
        for i in range(3):  # b is away
            await a.send_group(g, f"r{i + 2}")
        await ok(proc, "POST", f"/im/groups/members?group={g}", {"remove": [3, 4, 5]})  # write mode again (2 <= 3 - 1)
        await a.send_group(g, "w2")
        b = await connect(proc, 2)
        first, got[:] = got[:], []
        stream = b.messages(after=4)  # b's inbox held 4 entries when it left
        # r1 again (the first stream had not sent its op 30 yet: at least once), r2-r4 and the member
        # msg pulled from the timeline, then the mode msg and w2 from the inbox
        await take(7)
        assert first == [(1, "member", None), (2, "text", "w1"), (3, "member", None), (4, "mode", None),
                         (5, "text", "r1")]
        assert got == [(5, "text", "r1"), (6, "text", "r2"), (7, "text", "r3"), (8, "text", "r4"),
                       (9, "member", None), (10, "mode", None), (11, "text", "w2")], got
        waiting = asyncio.ensure_future(stream.__anext__())  # the stream acks once it waits for more
        await wait_until_async(lambda: _no_news(b), what="the stream's op 30")
        waiting.cancel()
        for c in (a, b):
            await c.close()

    run(go())


def test_the_client_stream_pulls_read_mode_news_at_start(serve):
    """A member back online whose inbox has nothing new, but whose read-mode group got messages while
    it was away: its stream pulls them at once (the auth put it in the group's room, so it SYNCs),
    without waiting for a push."""
    proc = serve(group_write_limit=2, group_hysteresis=1, ack_timeout=60.0)

    async def go():
        g = (await ok(proc, "POST", "/im/groups?uid=1", {"name": "r", "members": [2, 3]}))["group"]  # read mode
        a = await connect(proc, 1)
        b = await connect(proc, 2, "ws")
        seen = b.inbox_seq  # the creation: read mode, not in the inbox
        await b.close()
        for i in range(2):
            await a.send_group(g, f"away {i}")
        b = await connect(proc, 2)
        assert b.inbox_seq == seen
        stream = b.messages()
        got = [await asyncio.wait_for(stream.__anext__(), 20) for _ in range(3)]
        assert [(m["gseq"], m["content"] if m["type"] == "text" else m["type"]) for m in got] == \
            [(1, "member"), (2, "away 0"), (3, "away 1")]
        for c in (a, b):
            await c.close()

    run(go())


def test_switches_both_ways_with_messages_in_flight(serve):
    """Members send over their connections while the backend adds and removes members so that the
    group switches to read mode and back three times. Afterwards every inbox is gapless and holds
    exactly what the reference model derives from the timeline, and no connection was pushed a
    message from before its user's join or after its removal."""
    proc = serve(group_write_limit=8, group_hysteresis=2, ack_timeout=60.0)
    users = list(range(1, 21))

    async def go():
        g = (await ok(proc, "POST", "/im/groups?uid=1", {"name": "f", "members": [2, 3, 4, 5]}))["group"]
        conns = {u: await connect(proc, u, "tcp" if u % 2 else "ws") for u in users}
        pushed = {u: [] for u in users}
        for u, c in conns.items():
            c.on_push = lambda f, u=u: pushed[u].extend(
                m["gseq"] for m in json.loads(f.body)["msgs"] if m.get("group") == g) if f.op == 24 else None

        async def sender(u):
            for i in range(10):
                try:
                    await conns[u].send_group(g, i, cmid=f"{u}-{i}", timeout=60)
                except imclient.ImRejected as e:
                    assert e.code == 403, e  # not a member at that moment

        async def changer():
            for step in range(6):
                change = {"add": list(range(6, 14))} if step % 2 == 0 else {"remove": list(range(6, 14))}
                await ok(proc, "POST", f"/im/groups/members?group={g}", change)

        await asyncio.gather(changer(), *(sender(u) for u in users))
        await wait_until_async(lambda: _outbox_empty(proc), timeout=120, what="the fan-out to finish")
        timeline = (await ok_pull(conns[1], g))
        assert [m["gseq"] for m in timeline] == list(range(1, len(timeline) + 1))
        assert [m["content"]["mode"] for m in timeline if m["type"] == "mode"] == ["read", "write"] * 3
        want = expected_inboxes(timeline, "write")
        for u in users:
            assert group_gseqs(await inbox(proc, u), g) == want.get(u, []), u
        for c in conns.values():
            await c.heartbeat()  # answered in order: what was pushed before has arrived
        for gseq, who, _ in told(timeline, "write"):
            for u in users:
                if u not in who:
                    assert gseq not in pushed[u], (u, gseq)
        for c in conns.values():
            await c.close()

    run(go())


async def ok_pull(c, group):
    msgs = []
    while True:
        page = await c.group_pull(group, msgs[-1]["gseq"] if msgs else 0, 1000)
        msgs += page["msgs"]
        if not page["has_more"]:
            return msgs


async def _outbox_empty(proc):
    db = sqlite3.connect(proc.config["data_dir"] + "/im.db")
    try:
        return db.execute("SELECT COUNT(*) FROM group_outbox").fetchone()[0] == 0
    finally:
        db.close()


def test_kill_during_a_switch_to_read_mode(serve):
    """kill -9 right after the membership change that switches the group (its fan-out of the write-mode
    messages, the member and the mode messages unfinished): after restart every member's inbox holds
    exactly what it must, and the timeline is pullable from each member's join. The consumer is off
    until the kill, so that the outbox surely holds the switch's jobs then."""
    proc = serve(group_write_limit=60, group_hysteresis=10, group_consumer=False)
    first = list(range(1, 51))

    async def before():
        g = (await ok(proc, "POST", "/im/groups?uid=1", {"name": "s", "members": first}))["group"]
        c = await connect(proc, 1)
        await asyncio.gather(*(c.send_group(g, i) for i in range(30)))  # gseq 2..31, write mode
        assert await ok(proc, "POST", f"/im/groups/members?group={g}", {"add": list(range(51, 71))}) == \
            {"members": 70, "mode": "read"}  # the member msg (32) and the mode msg (33), fanned out
        c.abort()
        return g

    g = run(before())
    proc.kill()
    db = sqlite3.connect(proc.config["data_dir"] + "/im.db")
    left = [g for (g,) in db.execute("SELECT m.gseq FROM group_outbox o JOIN messages m ON m.id = o.msg_id"
                                     " ORDER BY o.id")]
    db.close()
    proc.config["group_consumer"] = True
    proc.start()

    async def after():
        async def done():
            return len(await inbox(proc, 70)) == 2 and len(await inbox(proc, 50)) == 33
        await wait_until_async(done, timeout=120, what="the resumed fan-out")
        for u in first:
            assert group_gseqs(await inbox(proc, u), g) == list(range(1, 34)), u
        for u in range(51, 71):
            assert group_gseqs(await inbox(proc, u), g) == [32, 33], u
        c, other = await connect(proc, 60), await connect(proc, 61, "ws")
        await c.send_group(g, "after the restart")  # read mode: the timeline only
        # the restarted node knows there are read-mode groups: the auth put both in the group's room
        for conn in (c, other):
            assert [(m["seq"], m["gseq"]) for m in await pushed(conn)] == [(0, 34)]
        pulled = await c.group_pull(g, 0)
        assert [m["gseq"] for m in pulled["msgs"]] == [32, 33, 34]
        assert group_gseqs(await inbox(proc, 60), g) == [32, 33]
        for conn in (c, other):
            await conn.close()

    run(after())
    assert left[-3:] == [31, 32, 33], left  # the last message, the member and the mode messages at least
