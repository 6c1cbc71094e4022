"""The `MessageStore` contract (tests/im_store_contract.py) against SqliteStore, plus SQLite's own faults:
commit batching, a locked database, a full disk, overload, a failing write, migrations."""

from __future__ import annotations

import asyncio
import json
import sqlite3

import pytest

from im_store_contract import *  # noqa: F401,F403 - the contract's tests, collected here against SQLite
from im_store_contract import StoreBackend, all_msgs, new_message
from helpers import run
from imgate.im.protocol import E_UNAVAILABLE, ImError
from imgate.im.sqlite import SqliteStore, migrate


class SqliteBackend(StoreBackend):
    def __init__(self, tmp_path_factory):
        self.factory = tmp_path_factory
        self.path = None

    async def open(self, fresh=True, **kw):
        if fresh or self.path is None:
            self.path = self.factory.mktemp("db") / "im.db"
        return await opened(self.path, **kw)


@pytest.fixture
def backend(tmp_path_factory):
    return SqliteBackend(tmp_path_factory)


async def opened(path, **kw) -> SqliteStore:
    store = SqliteStore(path, **kw)
    await store.start()
    return store


def test_concurrent_sends_share_commits(tmp_path):
    async def go():
        store = await opened(tmp_path / "im.db")
        for u in range(1, 11):
            await store.open_inbox(u)
        before = dict(store.counters)
        sends = [store.send(new_message(s, r, f"{s}-{r}-{i}", i))
                 for i in range(50) for s in range(1, 11) for r in range(1, 11) if s != r]
        results = await asyncio.gather(*sends)
        assert len(results) == 4500
        commits = store.counters["commits"] - before["commits"]
        assert commits < 4500 / 4, f"{commits} commits for 4500 sends: the writer does not batch"
        await store.close()

    run(go())


def test_inboxes_opened_together_are_one_write_and_each_caller_gets_its_own_seq(tmp_path):
    """A storm of first connections: the opens of one loop iteration reach the writer as one write;
    a user with messages gets its newest seq, a new one 0, a cancelled caller costs the others nothing,
    and every inbox exists afterwards (read back from the database file by another connection)."""
    async def go():
        store = await opened(tmp_path / "im.db")
        await store.open_inbox(1)
        await store.open_inbox(2)
        for i in range(3):
            await store.send(new_message(1, 2, f"m{i}", i))
        store._seen.clear()  # as after a restart: the store has to look
        before = store.counters["writes"]
        calls = [asyncio.ensure_future(store.open_inbox(u)) for u in (2, 100, 101, 2, 102)]
        await asyncio.sleep(0)  # each has asked; the write is not made yet
        calls[-1].cancel()
        done = await asyncio.gather(*calls, return_exceptions=True)
        assert done[:4] == [3, 0, 0, 3] and isinstance(done[4], asyncio.CancelledError)
        assert store.counters["writes"] - before == 1
        await store.close()
        conn = sqlite3.connect(tmp_path / "im.db")
        rows = dict(conn.execute("SELECT uid, max_seq FROM users").fetchall())
        conn.close()
        assert rows == {1: 3, 2: 3, 100: 0, 101: 0, 102: 0}

    run(go())


def test_migrations_are_idempotent(tmp_path):
    async def go():
        store = await opened(tmp_path / "im.db")
        await store.close()

    run(go())
    conn = sqlite3.connect(tmp_path / "im.db")
    assert migrate(conn) == 2  # the newest schema (0002: groups)
    conn.close()


def test_locked_database_refuses_and_stores_nothing(tmp_path):
    async def go():
        store = await opened(tmp_path / "im.db", busy_timeout=0.2)
        await store.open_inbox(2)
        other = sqlite3.connect(tmp_path / "im.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another writer holds the database
        with pytest.raises(ImError) as e:
            await store.send(new_message(1, 2, "locked", "x"))
        assert e.value.code == E_UNAVAILABLE and "locked" in e.value.message
        other.execute("ROLLBACK")
        other.close()
        assert await all_msgs(store, 2) == []
        ok = await store.send(new_message(1, 2, "locked", "x"))  # the resend goes through, once
        assert not ok.duplicate and [m["cmid"] for m in await all_msgs(store, 2)] == ["locked"]
        await store.close()

    run(go())


def test_full_disk_refuses_and_stores_nothing(tmp_path):
    conns = []

    async def go():
        store = SqliteStore(tmp_path / "im.db")
        store.on_write_conn = conns.append
        await store.start()
        await store.open_inbox(2)
        pages = conns[0].execute("PRAGMA page_count").fetchone()[0]
        conns[0].execute(f"PRAGMA max_page_count = {pages + 1}")  # the "disk" is full after one page
        big = "x" * 20000
        with pytest.raises(ImError) as e:
            await store.send(new_message(1, 2, "big", big))
        assert e.value.code == E_UNAVAILABLE and "full" in e.value.message
        assert await all_msgs(store, 2) == []
        await store.close()

    run(go())


def test_overload_is_refused_not_queued_forever(tmp_path):
    async def go():
        store = await opened(tmp_path / "im.db", max_queue=10)
        await store.open_inbox(2)
        results = await asyncio.gather(*(store.send(new_message(1, 2, f"c{i}", i)) for i in range(30)),
                                       return_exceptions=True)
        refused = [r for r in results if isinstance(r, ImError)]
        assert refused and all(r.code == E_UNAVAILABLE for r in refused)
        stored = [r for r in results if not isinstance(r, Exception)]
        assert [json.loads(m)["cmid"] for m in (await store.sync(2, 0, 100)).msgs] == \
               [f"c{i}" for i, r in enumerate(results) if not isinstance(r, Exception)]
        assert len(stored) >= 10
        await store.close()

    run(go())


def test_a_failing_write_refuses_its_batch_and_the_writer_carries_on(tmp_path):
    async def go():
        store = await opened(tmp_path / "im.db")
        await store.open_inbox(2)

        def broken(conn, *args):
            raise TypeError("a bug in a write")

        with pytest.raises(ImError) as e:
            await store._write(broken)
        assert e.value.code == E_UNAVAILABLE
        assert not (await store.send(new_message(1, 2, "after", 1))).duplicate
        assert [m["cmid"] for m in await all_msgs(store, 2)] == ["after"]
        await store.close()

    run(go())


def test_the_wal_is_checkpointed_off_the_writer(tmp_path):
    async def go():
        store = await opened(tmp_path / "im.db")
        await store.open_inbox(2)
        for i in range(120):  # one commit each: past the checkpoint period several times
            await store.send(new_message(1, 2, f"c{i}", "x" * 500))
        await wait_until_async(lambda: store.counters["checkpoints"] >= 2, what="checkpoints by the checkpointer")
        await store.close()
        # every committed entry is in the database file itself once the last connection is gone
        conn = sqlite3.connect(tmp_path / "im.db")
        assert conn.execute("SELECT COUNT(*) FROM inbox WHERE owner = 2").fetchone()[0] == 120
        conn.close()

    run(go())
