"""ImService's own bounds with a real SQLite store and an in-memory cache and bus stand-in."""

from __future__ import annotations

import asyncio
import json

from imgate.cache import Session
from imgate.im.service import ImService
from imgate.im.sqlite import SqliteStore

from helpers import run


class Sessions:
    """The cache's ``sessions`` call: user -> its connections."""

    nowait = False

    def __init__(self, conns: dict):
        self.conns = conns

    async def sessions(self, mids):
        return {m: [Session(conn_id=c, mid=m, key=f"k{c}", server="p1", room_id="", platform="",
                            connected_at=0.0) for c in self.conns.get(m, ())] for m in mids}


class Jobs:
    nowait = False

    def __init__(self):
        self.jobs = []

    async def publish(self, job):
        self.jobs.append(job)


def test_a_resend_pass_sends_at_most_a_page_of_bytes_per_connection(tmp_path):
    """100 unacked 15 KB entries all due at once were resent as one 1.5 MB frame: more than the proxy
    queues for a connection (it closes it as a slow consumer) and than a client accepts as one body."""
    async def go():
        store = SqliteStore(tmp_path / "im.db")
        await store.start()
        bus = Jobs()
        svc = ImService(store, Sessions({2: [7]}), bus, ack_timeout=10.0, ack_retries=3,
                        max_page_bytes=256 * 1024)
        await store.open_inbox(2)
        for i in range(100):
            await svc.send(1, {"cmid": f"c{i}", "to": 2, "content": "x" * 15000})
        assert len(bus.jobs) == 100 and svc.unacked("p1", 7) == list(range(1, 101))
        bus.jobs.clear()
        now = asyncio.get_running_loop().time() + 1000  # everything is due
        resent = []
        for _ in range(100):
            await svc.resend_due(now)
            for job in bus.jobs:
                assert job.conn_ids == [7] and job.op == 24
                assert len(job.body) <= 256 * 1024, len(job.body)
                resent += [m["seq"] for m in json.loads(job.body)["msgs"]]
            bus.jobs.clear()
            if len(resent) >= 100:
                break
        assert resent == list(range(1, 101)), "every due entry is resent once, in order, over a few passes"
        await store.close()

    run(go())


def test_a_users_sends_and_reads_are_rate_limited_across_its_connections(tmp_path, monkeypatch):
    """One user on many connections could send as fast as all their per-connection buckets together;
    the bucket is the user's: past im_user_burst the sixth request, from a fresh connection, gets 429
    with its cmid and stores nothing, another user is untouched, and time refills it."""
    from types import SimpleNamespace

    import imgate.im.service as service

    clock = [1000.0]
    monkeypatch.setattr(service, "time", SimpleNamespace(monotonic=lambda: clock[0]))

    async def go():
        store = SqliteStore(tmp_path / "im.db")
        await store.start()
        svc = ImService(store, Sessions({}), Jobs(), user_rate=2.0, user_burst=5)
        for uid in (1, 2, 3):
            await store.open_inbox(uid)

        async def send(conn, sender, cmid, to=2):
            body = json.dumps({"cmid": cmid, "to": to, "content": "hi"}).encode()
            return json.loads(await svc.receive("p1", conn, sender, 22, 1, body))

        for i in range(4):
            assert "seq" in await send(10 + i, 1, f"c{i}"), "within the burst, on four connections"
        assert json.loads(await svc.receive("p1", 20, 1, 32, 1, b'{"conv": "u:1:2", "seq": 4}'))["seq"] == 4
        refused = await send(30, 1, "c4")
        assert refused["code"] == 429 and refused["cmid"] == "c4" and "rate limited" in refused["error"]
        read = json.loads(await svc.receive("p1", 31, 1, 32, 1, b'{"conv": "u:1:2", "seq": 4}'))
        assert read["code"] == 429
        assert await store.max_seq(1) == 4, "nothing stored for the refused send"
        assert "seq" in await send(40, 3, "d0", to=1), "another user has a bucket of its own"
        assert json.loads(await svc.receive("p1", 30, 1, 26, 1, b'{"after": 0}'))["max_seq"] == 5, "syncs are not limited"
        clock[0] += 0.5   # one token back at 2 per second
        assert "seq" in await send(30, 1, "c4")
        assert (await send(30, 1, "c5"))["code"] == 429
        assert svc.stats()["im_rate_limited"] == 3
        await store.close()

    run(go())


def test_a_quiet_ack_forgets_what_it_acks_without_reading_the_store(tmp_path):
    """The copies of an ack to the im roles other than the proxy's first are quiet (imgate.rpc.im): they
    drop the acked entries and read nothing; the checked ack still refuses a seq beyond the inbox."""
    async def go():
        store = SqliteStore(tmp_path / "im.db")
        await store.start()
        svc = ImService(store, Sessions({2: [7]}), Jobs(), ack_timeout=10.0)
        await store.open_inbox(2)
        for i in range(3):
            await svc.send(1, {"cmid": f"c{i}", "to": 2, "content": "x"})
        assert svc.unacked("p1", 7) == [1, 2, 3]
        other = ImService(store, Sessions({}), Jobs())  # an im that never saw user 2's seqs
        reads = []
        real = store.max_seq

        async def counted(uid):
            reads.append(uid)
            return await real(uid)

        store.max_seq = counted
        assert await svc.receive("p1", 7, 2, 25, 1, b'{"seq":2}', quiet=True) == b""
        assert svc.unacked("p1", 7) == [3]
        assert await other.receive("p1", 7, 2, 25, 1, b'{"seq":500}', quiet=True) == b""
        assert reads == [], "a quiet ack reads nothing"
        reply = json.loads(await other.receive("p1", 7, 2, 25, 2, b'{"seq":500}'))
        assert reply["code"] == 416 and reads == [2], "the checked one reads the inbox's newest seq and refuses"
        await store.close()

    run(go())
