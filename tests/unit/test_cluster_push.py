"""The push router, one suite for both deployments: in-process proxies handed each job at once (the
embedded node's MemoryBus) and proxies behind awaitable clients handed a batch (the push role's Kafka
consumer). Which proxy gets which call, in which order."""

from __future__ import annotations

import asyncio

from imgate.core import FrameDecoder, encode_frame
from imgate.protocol import KIND_ALL, KIND_CONNS, KIND_ROOM, PushJob
from imgate.protocol.interfaces import ProxyAPI
from imgate.push import MemoryBus, PushRouter


class LocalProxy(ProxyAPI):
    """Stands for a Proxy in this process: records the calls, holds some rooms."""

    nowait = True

    def __init__(self, server_id, rooms=()):
        self.server_id = server_id
        self.room_set = set(rooms)
        self.calls = []

    def push_conns_nowait(self, conn_ids, op, body):
        self.calls.append(("conns", list(conn_ids), op, body))
        return len(conn_ids)

    def push_room_batch_nowait(self, room_id, frames):
        self.calls.append(("room", room_id, frames))
        return 1 if room_id in self.room_set else 0

    def push_all_nowait(self, op, body, speed=0):
        self.calls.append(("all", op, body, speed))  # speed too: each proxy paces its own connections
        return 1


class RemoteProxy(LocalProxy):
    """Stands for a ProxyClient: the same, awaitable only."""

    nowait = False

    async def push_conns(self, conn_ids, op, body):
        await asyncio.sleep(0)
        return LocalProxy.push_conns_nowait(self, conn_ids, op, body)

    async def push_room_batch(self, room_id, frames):
        await asyncio.sleep(0)
        return LocalProxy.push_room_batch_nowait(self, room_id, frames)

    async def push_all(self, op, body, speed=0):
        await asyncio.sleep(0)
        return LocalProxy.push_all_nowait(self, op, body, speed)

    push_conns_nowait = push_room_batch_nowait = push_all_nowait = ProxyAPI.push_conns_nowait


def room_frames(calls, room_id):
    """The frames a proxy got for a room, in order, however they were batched."""
    data = b"".join(c[2] for c in calls if c[:2] == ("room", room_id))
    return [(f.op, f.body) for f in FrameDecoder().feed(data)]


class RouterCases:
    """Cases every deployment passes; a subclass says how proxies are made and jobs delivered."""

    def test_room_job_reaches_a_proxy_whose_room_is_new(self):
        # the member joined proxy b a moment ago: no report of b's rooms says so yet
        a, b = self.proxy("a", rooms=["live://1"]), self.proxy("b")
        b.room_set.add("new://1")
        self.deliver([a, b], [PushJob(KIND_ROOM, 1000, b"hi", room_id="new://1")])
        assert b.calls == a.calls == [("room", "new://1", encode_frame(1000, 0, b"hi"))]

    def test_conns_job_goes_to_its_proxy_only_and_all_to_every_proxy(self):
        a, b = self.proxy("a"), self.proxy("b")
        router = self.deliver([a, b], [
            PushJob(KIND_CONNS, 1000, b"one", server="b", conn_ids=[7, 8]),
            PushJob(KIND_CONNS, 1000, b"lost", server="gone", conn_ids=[9]),
            PushJob(KIND_ALL, 1000, b"everyone"),
            PushJob(KIND_ALL, 1001, b"paced", speed=250),
        ])
        # push/all?speed= reaches every proxy with its speed
        assert b.calls == [("conns", [7, 8], 1000, b"one"), ("all", 1000, b"everyone", 0), ("all", 1001, b"paced", 250)]
        assert a.calls == [("all", 1000, b"everyone", 0), ("all", 1001, b"paced", 250)]
        assert router.skipped == 1

    def test_a_proxys_calls_keep_the_jobs_order(self):
        a = self.proxy("a", rooms=["r://1"])
        self.deliver([a], [
            PushJob(KIND_CONNS, 1001, b"first", server="a", conn_ids=[1]),
            PushJob(KIND_ROOM, 1000, b"r1", room_id="r://1"),
            PushJob(KIND_ROOM, 1000, b"r2", room_id="r://1"),
            PushJob(KIND_ALL, 1002, b"all"),
        ])
        assert [c[0] for c in a.calls][0] == "conns" and a.calls[-1] == ("all", 1002, b"all", 0)
        assert room_frames(a.calls, "r://1") == [(1000, b"r1"), (1000, b"r2")]


class TestEmbedded(RouterCases):
    def proxy(self, server_id, rooms=()):
        return LocalProxy(server_id, rooms)

    def deliver(self, proxies, jobs):
        router = PushRouter({p.server_id: p for p in proxies})
        bus = MemoryBus(router)
        for job in jobs:
            bus.publish_nowait(job)
        return router


class TestCluster(RouterCases):
    def proxy(self, server_id, rooms=()):
        return RemoteProxy(server_id, rooms)

    def deliver(self, proxies, jobs):
        router = PushRouter({p.server_id: p for p in proxies})
        asyncio.run(router.route(jobs))
        return router

    def test_room_jobs_of_one_batch_travel_as_one_call(self):
        a = self.proxy("a", rooms=["r://1"])
        self.deliver([a], [PushJob(KIND_ROOM, 1000, b"x%d" % i, room_id="r://1") for i in range(3)])
        assert a.calls == [("room", "r://1", b"".join(encode_frame(1000, 0, b"x%d" % i) for i in range(3)))]
