"""Groups in ImService with the real SQLite store, checked against a reference model of membership.

The model: a group's timeline is every message in gseq order; a member sees exactly the messages
stored while it was a member, the messages announcing its join and its removal included. In write mode each of those is an inbox entry with the member's next seq; in read mode it
is in the timeline only (op 28).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from imgate.im.protocol import ImError
from imgate.im.service import ImService
from imgate.im.sqlite import SqliteStore
from imgate.im.store import GroupLimits

from groupmodel import expected_inboxes
from test_im_service import Jobs, Sessions

from helpers import run


class Model:
    """Who is in the group after each gseq, from the operations the test did."""

    def __init__(self):
        self.members: set = set()
        self.visible: dict = {}  # uid -> gseqs it must see

    def message(self, gseq: int, changed=()) -> None:
        """A message; ``changed``: the users a membership message adds or removes see it too."""
        for u in self.members | set(changed):
            self.visible.setdefault(u, []).append(gseq)


async def inbox_group_gseqs(svc, uid, group):
    page = json.loads(await svc.sync(uid, {"after": 0, "limit": 1000}))
    seqs = [m["seq"] for m in page["msgs"]]
    assert seqs == list(range(1, len(seqs) + 1)), f"inbox of {uid} is not gapless: {seqs}"
    return [m["gseq"] for m in page["msgs"] if m.get("group") == group]


async def drained(svc):
    for _ in range(500):
        if not await svc.store.fanout_jobs(1):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("fan-out jobs left in the outbox")


async def started(tmp_path, limits=GroupLimits(max_members=10, write_limit=4, hysteresis=1), conns=None):
    """The service on a fresh store: SQLite in ``tmp_path``, or what a store backend of the contract
    (tests/im_store_contract.py) opens when the test runs against another store."""
    if not isinstance(tmp_path, Path):
        store = await tmp_path.open()
    else:
        store = SqliteStore(tmp_path / "im.db")
        await store.start()
    bus = Jobs()
    svc = ImService(store, Sessions(conns or {}), bus, groups=limits)
    await svc.start()
    return svc, bus


def test_write_mode_membership_and_switch_both_ways(tmp_path):
    async def go():
        svc, _ = await started(tmp_path)
        model = Model()
        g = (await svc.create_group(1, {"name": "g", "members": [2, 3]}))["group"]
        model.members = {1, 2, 3}
        model.message(1)
        gseq = 1
        replies = []
        for i, sender in enumerate([1, 2, 3, 2]):
            reply = await svc.send(sender, {"cmid": f"a{i}", "group": g, "content": i})
            gseq += 1
            assert reply["gseq"] == gseq and reply["seq"] > 0  # the sender's own entry, written with it
            replies.append((sender, reply))
            model.message(gseq)
        # the 23's seq is the sender's entry of that gseq, and a resend of the cmid answers it again
        for i, (sender, reply) in enumerate(replies):
            again = await svc.send(sender, {"cmid": f"a{i}", "group": g, "content": i})
            assert again == reply
            page = json.loads(await svc.sync(sender, {"after": reply["seq"] - 1, "limit": 1}))
            assert [(m["seq"], m["gseq"]) for m in page["msgs"]] == [(reply["seq"], reply["gseq"])]
        r = await svc.change_members(g, None, {"add": [4], "remove": [3]})
        assert r == {"members": 3, "mode": "write"}
        gseq += 1
        model.message(gseq, changed=[3, 4])
        model.members = {1, 2, 4}
        await svc.send(4, {"cmid": "b", "group": g, "content": "hi"})
        gseq += 1
        model.message(gseq)
        with pytest.raises(ImError) as e:
            await svc.send(3, {"cmid": "c", "group": g, "content": "gone"})
        assert e.value.code == 403
        # 5 members > write_limit 4: read mode, announced (the announcement still fanned out)
        r = await svc.change_members(g, 1, {"add": [5, 6]})
        assert r == {"members": 5, "mode": "read"}
        model.message(gseq + 1, changed=[5, 6])
        model.members |= {5, 6}
        model.message(gseq + 2)
        gseq += 2
        reply = await svc.send(5, {"cmid": "d", "group": g, "content": "read mode"})
        assert reply["seq"] == 0 and reply["gseq"] == gseq + 1
        gseq += 1
        model.message(gseq)
        read_only = [gseq]  # in the timeline, not in inboxes
        await drained(svc)
        for u in (1, 2, 3, 4, 5, 6):
            want = [s for s in model.visible.get(u, []) if s not in read_only]
            assert await inbox_group_gseqs(svc, u, g) == want, u
        page = json.loads(await svc.sync(6, {"after": 0}))
        assert page["groups"] == [{"group": g, "max_gseq": gseq, "cursor": gseq - 1}]
        pulled = json.loads(await svc.group_pull(6, {"group": g, "after": 0}))
        assert [m["gseq"] for m in pulled["msgs"]] == model.visible[6] and not pulled["has_more"]
        await svc.group_ack(6, {"group": g, "gseq": gseq})
        assert json.loads(await svc.sync(6, {"after": 0}))["groups"] == []
        with pytest.raises(ImError) as e:
            await svc.group_pull(3, {"group": g, "after": 0})
        assert e.value.code == 403
        # back under write_limit - hysteresis (3 members): write mode again, history still pullable
        r = await svc.change_members(g, None, {"remove": [5, 6]})
        assert r == {"members": 3, "mode": "write"}
        await svc.send(2, {"cmid": "e", "group": g, "content": "write again"})
        await drained(svc)
        gs = await inbox_group_gseqs(svc, 4, g)
        assert gs[-2:] == [gseq + 2, gseq + 3], gs  # the mode msg, the message (the member msg: read mode)
        news = json.loads(await svc.sync(4, {"after": 0}))["groups"]
        assert news == [{"group": g, "max_gseq": gseq + 1, "cursor": gseq - 1}]  # 10 and 11 to pull
        await svc.group_ack(4, {"group": g, "gseq": gseq + 1})
        assert json.loads(await svc.sync(4, {"after": 0}))["groups"] == []
        pulled = json.loads(await svc.group_pull(1, {"group": g, "after": 0, "limit": 100}))
        assert [m["gseq"] for m in pulled["msgs"]] == list(range(1, gseq + 4))
        await svc.stop()
        await svc.store.close()

    run(go())


def test_membership_rules(tmp_path):
    async def go():
        svc, _ = await started(tmp_path)
        g = (await svc.create_group(1, {"name": "g", "members": [2]}))["group"]
        cases = [
            (svc.change_members(g, None, {"remove": [1]}), 409),                # the owner
            (svc.change_members(g, 2, {"add": [3]}), 403),                      # not an admin
            (svc.change_members(g, None, {"add": list(range(10, 20))}), 409),   # beyond the cap
            (svc.change_members(99, None, {"add": [3]}), 404),
            (svc.send(7, {"cmid": "x", "group": g, "content": 1}), 403),
            (svc.send(1, {"cmid": "x", "group": g, "type": "member", "content": 1}), 400),
            (svc.create_group(1, {"members": list(range(2, 13))}), 409),
            (svc.create_group(1, {"members": ["a"]}), 400),
        ]
        for coro, code in cases:
            with pytest.raises(ImError) as e:
                await coro
            assert e.value.code == code, e.value.message
        assert (await svc.change_members(g, None, {"admins": [2]}))["members"] == 2
        assert (await svc.change_members(g, 2, {"add": [3]}))["members"] == 3
        assert (await svc.group_info(g))["admins"] == [2]
        await svc.stop()
        await svc.store.close()

    run(go())


def test_an_unfinished_fan_out_is_resumed_once(tmp_path):
    async def go():
        store = SqliteStore(tmp_path / "im.db")
        await store.start()
        svc = ImService(store, Sessions({}), Jobs(), groups=GroupLimits(write_limit=50))
        # not started: no consumer, the jobs stay in the outbox as after a kill -9
        g = (await svc.create_group(1, {"members": list(range(2, 30))}))["group"]
        for i in range(20):  # a send takes its sender off the older jobs (or, past a few, fans them out)
            await svc.send(1 + i % 5, {"cmid": f"m{i}", "group": g, "content": i})
        waiting = len(await store.fanout_jobs(100))
        assert waiting >= 1
        for k in range(10):  # members join while jobs wait: they get nothing from before their join
            await svc.change_members(g, None, {"add": [100 + k]})
        assert len(await store.fanout_jobs(100)) == waiting + 10
        await store.close()
        svc, _ = await started(tmp_path, GroupLimits(write_limit=50), {3: [1]})
        await drained(svc)
        for u in range(1, 30):
            assert await inbox_group_gseqs(svc, u, g) == list(range(1, 32)), u
        for k in range(10):  # from the message announcing its join
            assert await inbox_group_gseqs(svc, 100 + k, g) == list(range(22 + k, 32)), k
        assert await svc.store.fan_out(1) is None  # done once
        await svc.stop()
        await svc.store.close()

    run(go())


def test_read_mode_goes_through_the_group_room(tmp_path):
    """A read-mode group's members' connections join its room (at auth and as membership changes);
    a message is one room push with seq 0; the removed leave the room before anything else is pushed."""
    async def go():
        svc, bus = await started(tmp_path, GroupLimits(max_members=10, write_limit=2, hysteresis=1),
                                 {1: [11], 2: [12], 3: [13], 4: [14], 9: [19]})
        g = (await svc.create_group(1, {"members": [2, 3]}))["group"]  # 3 members: read mode at once
        assert (await svc.group_info(g))["mode"] == "read"
        room = f"im://g:{g}"
        [join] = [j for j in bus.jobs if j.kind == "join"]
        assert (join.server, sorted(join.conn_ids), join.room_id) == ("p1", [11, 12, 13], room)
        bus.jobs.clear()
        reply = await svc.send(2, {"cmid": "x", "group": g, "content": "hi"})
        [job] = bus.jobs
        assert (job.kind, job.room_id, job.op) == ("room", room, 24)
        [m] = json.loads(job.body)["msgs"]
        assert (m["seq"], m["gseq"], m["content"]) == (0, reply["gseq"], "hi")
        bus.jobs.clear()
        await svc.change_members(g, None, {"add": [4], "remove": [3]})
        kinds = [(j.kind, sorted(j.conn_ids)) for j in bus.jobs]
        assert kinds == [("leave", [13]), ("join", [14]), ("room", [])], kinds  # the member msg last
        assert await svc.group_rooms(4) == [room] and await svc.group_rooms(3) == []
        assert sorted(await svc.store.group_members(g, reply["gseq"])) == [1, 2]  # 4 came later, 3 left
        bus.jobs.clear()
        await svc.change_members(g, None, {"remove": [4, 2]})  # 1 member <= 2 - 1: write mode
        assert [(j.kind, sorted(j.conn_ids)) for j in bus.jobs][0] == ("leave", [11, 12, 14])
        assert await svc.group_rooms(1) == []
        await svc.stop()
        await svc.store.close()

    run(go())


def test_switches_both_ways_with_messages_in_flight(tmp_path):
    """Sends from many members race membership changes that switch the mode up and down; afterwards
    every inbox is gapless and holds exactly what the reference model derives from the timeline."""
    async def go():
        svc, _ = await started(tmp_path, GroupLimits(max_members=100, write_limit=8, hysteresis=2))
        g = (await svc.create_group(1, {"members": [2, 3, 4, 5]}))["group"]
        users = list(range(1, 21))

        async def sender(u):
            for i in range(15):
                try:
                    await svc.send(u, {"cmid": f"{u}-{i}", "group": g, "content": i})
                except ImError as e:
                    assert e.code == 403  # not a member at that moment
                await asyncio.sleep(0)

        async def changer():
            for step in range(6):
                grow = step % 2 == 0
                await svc.change_members(g, None, {"add": list(range(6, 14))} if grow else {"remove": list(range(6, 14))})
                await asyncio.sleep(0.005)

        await asyncio.gather(changer(), *(sender(u) for u in users))
        await drained(svc)
        timeline = json.loads(await svc.group_pull(1, {"group": g, "after": 0, "limit": 1000}))["msgs"]
        assert [m["gseq"] for m in timeline] == list(range(1, len(timeline) + 1))
        modes = [m["content"]["mode"] for m in timeline if m["type"] == "mode"]
        assert modes == ["read", "write"] * 3, modes
        want = expected_inboxes(timeline, "write")
        for u in users:
            got = await inbox_group_gseqs(svc, u, g)
            assert got == want.get(u, []), (u, got, [(m["gseq"], m["type"], m["from"], m["content"]) for m in timeline
                                                     if m["gseq"] in set(got) ^ set(want.get(u, []))])
        await svc.stop()
        await svc.store.close()

    run(go())


def test_group_unread_counts_and_read_position(tmp_path):
    async def go():
        svc, _ = await started(tmp_path)
        g = (await svc.create_group(1, {"members": [2]}))["group"]
        for i in range(3):
            await svc.send(1, {"cmid": f"u{i}", "group": g, "content": i})
        await drained(svc)
        [conv] = json.loads(await svc.conversations(2, 10))
        assert (conv["conv"], conv["peer"], conv["unread"]) == (f"g:{g}", g, 4)  # the member msg and 3
        assert (await svc.read(2, {"conv": f"g:{g}", "seq": 2})) == {"conv": f"g:{g}", "seq": 2}
        [conv] = json.loads(await svc.conversations(2, 10))
        assert (conv["unread"], conv["read_seq"]) == (2, 2)
        with pytest.raises(ImError):
            await svc.read(3, {"conv": f"g:{g}", "seq": 0})  # no such conversation for 3
        await svc.stop()
        await svc.store.close()

    run(go())
