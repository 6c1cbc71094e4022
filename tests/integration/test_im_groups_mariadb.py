"""The group tests of the SQLite store (tests/unit/test_im_group_store.py: the service with the real store,
against a reference model of membership) run against MariaDbStore on the session's Galera pair, plus
what only a store shared by several processes shows: two consumers doing one group's jobs at once, out
of order, and jobs delivered twice."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("asyncmy")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "unit"))  # the SQLite module's helpers

from helpers import run  # noqa: E402
from imgate.im.fanout import FanoutWorker  # noqa: E402
from imgate.im.service import ImService  # noqa: E402
from imgate.im.store import GroupLimits  # noqa: E402
from test_im_group_store import (  # noqa: E402,F401 - collected here against MariaDB
    Jobs, Sessions, inbox_group_gseqs, test_group_unread_counts_and_read_position, test_membership_rules,
    test_read_mode_goes_through_the_group_room, test_switches_both_ways_with_messages_in_flight,
    test_write_mode_membership_and_switch_both_ways,
)
from test_im_store_mariadb import MariaDbBackend, break_next_commit, opened  # noqa: E402


@pytest.fixture
def tmp_path(mariadb_addrs):
    """Where the imported tests' store lives: here a fresh MariaDB database (test_im_group_store.started)."""
    return MariaDbBackend(mariadb_addrs)


def test_two_consumers_out_of_order_and_twice_write_each_entry_once_in_gseq_order(mariadb_addrs):
    """Jobs of one group handed to two services on the two Galera nodes in reverse order, each job twice
    (a Kafka redelivery): every member's inbox holds each message once, in gseq order, gapless."""
    async def go():
        backend = MariaDbBackend(mariadb_addrs)
        store = await backend.open()
        other = await opened(list(reversed(mariadb_addrs)), backend.db)
        one = ImService(store, Sessions({}), Jobs(), groups=GroupLimits(write_limit=50), consumer=False)
        two = ImService(other, Sessions({}), Jobs(), groups=GroupLimits(write_limit=50), consumer=False)
        for svc in (one, two):
            await svc.start()
        g = (await one.create_group(1, {"name": "g", "members": [2, 3, 4]}))["group"]
        for i in range(15):  # membership messages queue jobs (a member's send would do them first)
            await one.change_members(g, None, {"add": [5]} if i % 2 == 0 else {"remove": [5]})
        jobs = await store.fanout_jobs(100)
        assert len(jobs) == 16

        async def consume(svc, order):
            for job in order:
                await FanoutWorker(svc).fan_out(job)

        await asyncio.gather(consume(one, list(reversed(jobs)) * 2), consume(two, jobs[::2] + jobs[1::2] + jobs))
        assert await store.fanout_jobs(100) == []
        for uid in (1, 2, 3, 4):
            assert await inbox_group_gseqs(one, uid, g) == list(range(1, 17))
        await one.send(2, {"cmid": "after", "group": g, "content": 1})
        page = json.loads(await two.sync(2, {"after": 0, "limit": 1000}))  # its own entry at once
        assert [m["gseq"] for m in page["msgs"]] == list(range(1, 18))
        for svc in (one, two):
            await svc.stop()
            await svc.store.close()

    run(go())


@pytest.mark.parametrize("write_limit", [200, 2], ids=["write-mode", "read-mode"])
def test_a_create_group_whose_commit_answer_is_lost_makes_one_group(mariadb_addrs, write_limit):
    """The store re-runs a create_group whose COMMIT answer was lost: it answers the group the first
    attempt made (its opening message and fan-out job), and makes no second one."""
    async def go():
        store = await MariaDbBackend(mariadb_addrs).open()
        limits = GroupLimits(write_limit=write_limit, hysteresis=1)
        broken = []
        break_next_commit(store, broken)
        gid, stored = await store.create_group(1, "lost", [2, 3], limits)
        assert broken, "the fault was not injected"
        groups = await store._run(store._jobs_now, "SELECT id FROM `groups`", ())
        assert groups == [gid], f"{len(groups)} groups made by one request"
        assert (await store.group_info(gid))["members"] == 3 and stored.gseq == 1 and stored.group == gid
        if write_limit == 200:  # the job is there to be done once, with an entry per member
            assert stored.job is not None and await store.fanout_jobs(10) == [stored.job]
            done = await store.fan_out(stored.job)
            assert sorted(done.seqs) == [1, 2, 3] and await store.fan_out(stored.job) is None
        else:  # read mode: the opening message to push to the group's room
            msg = json.loads(stored.msg)
            assert (msg["group"], msg["gseq"], msg["type"], msg["content"]["add"]) == (gid, 1, "member", [1, 2, 3])
            assert stored.job is None and await store.fanout_jobs(10) == []
        gid2, _ = await store.create_group(1, "lost", [2, 3], limits)  # a new request is a new group
        assert gid2 != gid
        await store.close()

    run(go())


def test_a_change_members_whose_commit_answer_is_lost_is_applied_once_and_answered_as_done(mariadb_addrs):
    """The store re-runs a change_members whose COMMIT answer was lost: the re-run finds the change the
    first attempt made and answers it as that attempt would have (its "member" message, the switch to
    read mode and its "mode" message, so the service still moves the rooms), and applies nothing twice."""
    async def go():
        store = await MariaDbBackend(mariadb_addrs).open()
        limits = GroupLimits(write_limit=3, hysteresis=1)
        gid, _ = await store.create_group(1, "g", [2, 3], limits)
        broken = []
        break_next_commit(store, broken)
        count, mode, stored, switched = await store.change_members(gid, None, [4, 5], [2], [], limits)
        assert broken, "the fault was not injected"
        assert (count, mode, switched) == (4, "read", True)
        assert [s.gseq for s in stored] == [2, 3] and all(s.group == gid for s in stored)
        info = await store.group_info(gid)
        assert (info["members"], info["mode"], info["max_gseq"]) == (4, "read", 3)
        timeline, _more, _max = await store.group_pull(1, gid, 0, 100)
        kinds = [(m["gseq"], m["type"]) for m in map(json.loads, timeline)]
        assert kinds == [(1, "member"), (2, "member"), (3, "mode")], kinds
        assert json.loads(timeline[1])["content"] == {"add": [4, 5], "remove": [2], "by": 1}
        assert sorted(await store.group_members(gid, 1 << 62)) == [1, 3, 4, 5]
        # the same request again (a new one, not a re-run) changes nothing and says so
        assert await store.change_members(gid, None, [4, 5], [2], [], limits) == (4, "read", [], False)
        await store.close()

    run(go())


def test_the_login_question_any_read_mode_group_reads_an_index_not_the_table(mariadb_addrs):
    """Every login asks a shared store whether a read-mode group exists (while none does): with many
    write-mode groups that must be one index probe, not a scan of the groups table."""
    async def explain(cur, resumed=False):
        await cur.execute("EXPLAIN SELECT 1 FROM `groups` WHERE mode = 'read' LIMIT 1")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row)) for row in await cur.fetchall()]

    async def go():
        store = await MariaDbBackend(mariadb_addrs).open()
        svc = ImService(store, Sessions({}), Jobs(), groups=GroupLimits(write_limit=50), consumer=False)
        await svc.start()
        for i in range(40):
            await svc.create_group(1, {"name": f"g{i}", "members": [2, 3]})
        assert await store.has_read_groups() is False
        (plan,) = await store._run(explain)
        assert plan["key"] == "groups_mode", plan
        await svc.stop()
        await store.close()

    run(go())
