"""ClusterPush (the push role's router) with in-memory proxy clients: which proxy gets which call."""

from __future__ import annotations

import asyncio

from imgate.push.cluster import ClusterPush
from imgate.push.jobs import KIND_ALL, KIND_CONNS, KIND_ROOM, PushJob


class FakeProxy:
    """Stands for a ProxyClient: records the calls, holds some rooms."""

    def __init__(self, rooms=()):
        self.room_set = set(rooms)
        self.calls = []

    async def rooms(self):
        return sorted(self.room_set)

    async def push_conns(self, conn_ids, op, body):
        self.calls.append(("conns", list(conn_ids), op, body))
        return len(conn_ids)

    async def push_room_batch(self, room_id, frames):
        self.calls.append(("room", room_id, frames))
        return 1 if room_id in self.room_set else 0

    async def push_all(self, op, body, speed=0):
        self.calls.append(("all", op, body, speed))
        return 1


def run(coro):
    return asyncio.run(coro)


def test_room_job_reaches_a_proxy_whose_room_is_new():
    # the member joined proxy b a moment ago: no report of b's rooms says so yet
    a, b = FakeProxy(rooms=["live://1"]), FakeProxy()

    async def go():
        push = ClusterPush({"a": a, "b": b})
        await push.start()
        b.room_set.add("new://1")
        await push.deliver([PushJob(KIND_ROOM, 1000, b"hi", room_id="new://1")])
        await push.stop()

    run(go())
    assert [c[:2] for c in b.calls] == [("room", "new://1")]
    assert [c[:2] for c in a.calls] == [("room", "new://1")]  # answers 0: not a member there


def test_conns_job_goes_to_its_proxy_only_and_all_to_every_proxy():
    a, b = FakeProxy(), FakeProxy()

    async def go():
        push = ClusterPush({"a": a, "b": b})
        await push.deliver([
            PushJob(KIND_CONNS, 1000, b"one", server="b", conn_ids=[7, 8]),
            PushJob(KIND_CONNS, 1000, b"lost", server="gone", conn_ids=[9]),
            PushJob(KIND_ALL, 1000, b"everyone"),
            PushJob(KIND_ALL, 1001, b"paced", speed=250),
        ])
        return push

    push = run(go())
    # push/all?speed= reaches every proxy with its speed: each proxy paces its own connections
    assert b.calls == [("conns", [7, 8], 1000, b"one"), ("all", 1000, b"everyone", 0), ("all", 1001, b"paced", 250)]
    assert a.calls == [("all", 1000, b"everyone", 0), ("all", 1001, b"paced", 250)]
    assert push.skipped == 1
