"""The push job (compiled: imgate/protocol/_job.pyx) and the job logic makes for a unicast."""

from __future__ import annotations

import asyncio

import pytest

from imgate.auth import Authenticator
from imgate.cache import MemoryCache, Session
from imgate.logic.service import Logic
from imgate.protocol import KIND_ALL, KIND_CONNS, KIND_JOIN, KIND_LEAVE, KIND_ROOM, PushJob


def test_defaults_and_fields():
    job = PushJob(KIND_ALL, 1000, b"x")
    assert (job.kind, job.op, job.body, job.server, job.conn_ids, job.room_id, job.speed) == \
        ("all", 1000, b"x", "", [], "", 0)
    other = PushJob(KIND_ALL, 1000, b"x")
    other.conn_ids.append(1)
    assert job.conn_ids == []  # each job its own list


def test_equality_by_value_and_repr():
    a = PushJob(KIND_CONNS, 1000, b"x", server="p1", conn_ids=[1, 2])
    assert a == PushJob("conns", 1000, b"x", "p1", [1, 2])
    for changed in (PushJob(KIND_CONNS, 1001, b"x", "p1", [1, 2]), PushJob(KIND_CONNS, 1000, b"y", "p1", [1, 2]),
                    PushJob(KIND_CONNS, 1000, b"x", "p2", [1, 2]), PushJob(KIND_CONNS, 1000, b"x", "p1", [1]),
                    PushJob(KIND_CONNS, 1000, b"x", "p1", [1, 2], room_id="r"),
                    PushJob(KIND_CONNS, 1000, b"x", "p1", [1, 2], speed=1)):
        assert a != changed
    assert a != ("conns", 1000, b"x", "p1", [1, 2], "", 0)
    with pytest.raises(TypeError):
        hash(a)
    assert repr(a) == "PushJob(kind='conns', op=1000, body=b'x', server='p1', conn_ids=[1, 2], room_id='', speed=0)"


def test_ordering_key():
    assert PushJob(KIND_ROOM, 1, b"", room_id="live://1").ordering_key() == "room:live://1"
    assert PushJob(KIND_CONNS, 1, b"", server="p1").ordering_key() == "server:p1"
    for kind in (KIND_JOIN, KIND_LEAVE):  # with the room's pushes: a join precedes the room's next push
        assert PushJob(kind, 0, b"", server="p1", room_id="im://g:1").ordering_key() == "room:im://g:1"
    assert PushJob(KIND_ALL, 1, b"").ordering_key() == "all"


class RecordingBus:
    nowait = True

    def __init__(self):
        self.jobs = []

    def publish_nowait(self, job):
        self.jobs.append(job)
        return len(job.conn_ids)


def test_a_unicast_publishes_one_conns_job_per_proxy():
    cache, bus = MemoryCache(), RecordingBus()
    logic = Logic(cache, bus, Authenticator())

    async def sessions():
        for conn_id, mid, server in ((7, 1, "p1"), (8, 2, "p1"), (9, 2, "p2"), (10, 2, "p1")):
            await cache.add_session(Session(conn_id=conn_id, mid=mid, key=f"k{conn_id}", server=server), 60.0)

    asyncio.run(sessions())
    assert logic.push_mids_nowait(1000, [1], b"one") == 1
    assert logic.push_mids_nowait(1001, [2], b"two") == 3
    assert logic.push_mids_nowait(1002, [404], b"nobody") == 0
    assert bus.jobs == [PushJob(KIND_CONNS, 1000, b"one", "p1", [7]),
                        PushJob(KIND_CONNS, 1001, b"two", "p1", [8, 10]),
                        PushJob(KIND_CONNS, 1001, b"two", "p2", [9])]
    assert logic.counters["pushes"] == 3
