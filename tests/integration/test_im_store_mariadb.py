"""The `MessageStore` contract (tests/im_store_contract.py) against MariaDbStore on the session's real
Galera pair, plus what only a replicated server shows: writes on both nodes at once (certification
conflicts), a commit whose answer is lost, and one node killed -9 in the middle of a stream of sends."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import pytest

pytest.importorskip("asyncmy")

from im_store_contract import *  # noqa: E402,F401,F403 - the contract's tests, collected here against MariaDB
from im_store_contract import StoreBackend, all_msgs, model_test, new_message  # noqa: E402
from helpers import free_port, run  # noqa: E402
from imgate.im.mysql import MariaDbStore  # noqa: E402
from imgate.im.protocol import E_UNAVAILABLE, ImError  # noqa: E402
from polling import wait_until_async  # noqa: E402
from services import create_database, galera  # noqa: E402

test_store_matches_the_model = model_test(25)  # every example makes a database: fewer than SQLite's 100


class MariaDbBackend(StoreBackend):
    rounds = 10

    def __init__(self, addrs):
        self.addrs = addrs
        self.db = None

    async def open(self, fresh=True, **kw):
        if fresh or self.db is None:
            self.db = f"t_{uuid.uuid4().hex[:12]}"
            await asyncio.to_thread(create_database, self.addrs, self.db)
        return await opened(self.addrs, self.db, **kw)


async def opened(addrs, db, **kw) -> MariaDbStore:
    store = MariaDbStore(addrs, user="test", database=db, **kw)
    await store.start()
    return store


def break_next_commit(store, broken: list) -> None:
    """The next transaction's COMMIT reaches the server, then its connection dies before the OK."""
    acquire = store._acquire

    async def acquire_breaking_commit():
        conn = await acquire()
        if not broken:
            real_commit = conn.commit

            async def commit():
                await real_commit()
                conn.close()
                broken.append(conn)
                raise ConnectionResetError("the OK of the COMMIT was lost")

            conn.commit = commit
        return conn

    store._acquire = acquire_breaking_commit


@pytest.fixture
def backend(mariadb_addrs):
    return MariaDbBackend(mariadb_addrs)


def test_writes_on_both_nodes_at_once_stay_gapless(mariadb_addrs, backend):
    """Two stores, one writing on each node, to the same inboxes: Galera's certification conflicts
    (error 1213) are retried, and every inbox is still 1..N."""
    async def go():
        one = await backend.open()
        two = await opened(list(reversed(mariadb_addrs)), backend.db)
        users = range(1, 7)
        for u in users:
            await one.open_inbox(u)
        sends = [(one if i % 2 else two).send(new_message(s, r, f"{s}-{r}-{i}", i))
                 for i in range(8) for s in users for r in users if s != r]
        results = await asyncio.gather(*sends)
        assert not any(r.duplicate for r in results)
        for u in users:
            msgs = await all_msgs(two, u)
            assert [m["seq"] for m in msgs] == list(range(1, 2 * 5 * 8 + 1))
        await one.close()
        await two.close()
        return one.counters["retries"] + two.counters["retries"]

    retries = run(go())
    print(f"retries after conflicts: {retries}")


async def raw(addr: str, db: str):
    """A plain autocommit connection of user test to ``db`` on ``addr``, bounded both ways."""
    import asyncmy

    host, _, port = addr.rpartition(":")
    return await asyncmy.connect(host=host, port=int(port), user="test", db=db, autocommit=True,
                                 connect_timeout=10, read_timeout=60)


async def execute(conn, sql: str, args=()):
    async with conn.cursor() as cur:
        await cur.execute(sql, args)
        return await cur.fetchall()


@pytest.mark.parametrize("batched", [False, True], ids=["alone", "in-a-batch"])
def test_a_send_through_the_node_behind_waits_for_an_inbox_made_on_the_other(mariadb_addrs, backend, batched):
    """User 77's inbox is made on n1 while n2's applier is held up (a table it must write next is locked
    on n2): a send to 77 through n2, alone in its transaction or sharing it with another, waits until n2
    has it and is stored there, instead of being refused as an unknown receiver (red with
    wsrep_sync_wait=1, reads only, and for the batch without its BEGIN: a SAVEPOINT does not wait)."""
    async def go():
        ahead = await backend.open()                                           # n1
        behind = await opened(list(reversed(mariadb_addrs)), backend.db)        # n2
        behind.pool_size = 1  # one writer: sends gathered at once share its next transaction
        await ahead.open_inbox(1)
        await ahead.open_inbox(2)
        await wait_until_async(lambda: behind.has_inbox(2), what="the inboxes of 1 and 2 on n2")
        # a write of its own on n2 first: which SAVEPOINT-led transaction waits depends on the one before
        # (in one session the first may, none after a write did): the batch must wait for its own reason
        await behind.send(new_message(1, 2, "before", "hi"))
        lock, probe = await raw(mariadb_addrs[1], backend.db), await raw(mariadb_addrs[1], backend.db)
        await execute(lock, "CREATE TABLE hold (id INT PRIMARY KEY) ENGINE=InnoDB")  # DDL: on both nodes at once
        await execute(lock, "LOCK TABLES hold WRITE")
        try:
            await ahead._run(lambda cur, resumed=False: cur.execute("INSERT INTO hold VALUES (1)"))  # n2 stops here
            await ahead.open_inbox(77)
            commits = behind.counters["commits"]
            sends = [behind.send(new_message(1, 77, "behind", "hi"))]
            if batched:
                sends.append(behind.send(new_message(1, 2, "beside", "hi")))
            task = asyncio.ensure_future(asyncio.gather(*sends))

            async def answered_or_waiting():  # a statement of the store in flight on n2 (not the probe's)
                if task.done():
                    return True
                [(n,)] = await execute(probe, "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = %s"
                                              " AND COMMAND = 'Query' AND ID <> CONNECTION_ID()", (backend.db,))
                return n > 0

            await wait_until_async(answered_or_waiting, what="the send answered or waiting on n2")
        finally:  # n2's applier must go on whatever happened: a closed connection's locks are gone too
            try:
                await execute(lock, "UNLOCK TABLES")
            finally:
                lock.close()
                probe.close()
        stored = await task
        assert stored[0].seqs[77] == 1 and not stored[0].duplicate
        assert sorted(s.seqs[1] for s in stored) == list(range(2, len(sends) + 2))
        assert behind.counters["commits"] - commits == 1, "the sends did not share one transaction"
        assert [m["cmid"] for m in await all_msgs(ahead, 77)] == ["behind"]
        await ahead.close()
        await behind.close()

    run(go())


def test_a_commit_whose_answer_is_lost_is_answered_and_delivered_once(backend):
    """The COMMIT reaches the server but the connection dies before the OK: the store runs the send
    again, finds it by its cmid, and answers it as stored (with the entries to deliver), not twice."""
    async def go():
        store = await backend.open()
        await store.open_inbox(2)
        broken = []
        break_next_commit(store, broken)
        got = await store.send(new_message(1, 2, "lost-ok", "hi"))
        assert broken, "the fault was not injected"
        assert not got.duplicate and set(got.entries) == {1, 2} and got.seqs == {1: 1, 2: 1}
        assert json.loads(got.entries[2])["cmid"] == "lost-ok"
        assert [m["cmid"] for m in await all_msgs(store, 2)] == ["lost-ok"]
        again = await store.send(new_message(1, 2, "lost-ok", "hi"))  # a client resend is a duplicate
        assert again.duplicate and again.msg_id == got.msg_id
        await store.close()

    run(go())


def test_a_refusal_after_a_lost_commit_answer_says_it_may_be_stored_and_the_resend_is_answered(backend):
    """The COMMIT reaches the server, its OK is lost, and the re-run fails for another reason: the
    refusal cannot say "nothing stored" (it is stored); the client's resend with the same cmid gets
    the original message back, and the inbox holds it once."""
    from asyncmy.errors import OperationalError

    async def go():
        store = await backend.open()
        await store.open_inbox(2)
        store_one = store._store

        async def failing_rerun(cur, m, resumed=False, **kw):
            if resumed:
                raise OperationalError(1366, "Incorrect string value (injected)")
            return await store_one(cur, m, resumed=resumed, **kw)

        store._store = failing_rerun
        broken = []
        break_next_commit(store, broken)
        with pytest.raises(ImError) as e:
            await store.send(new_message(1, 2, "maybe", "hi"))
        assert broken, "the fault was not injected"
        assert e.value.code == E_UNAVAILABLE and "may or may not be stored" in e.value.message, e.value.message
        assert "nothing stored" not in e.value.message
        store._store = store_one
        again = await store.send(new_message(1, 2, "maybe", "hi"))
        assert again.duplicate and again.seqs == {1: 1}
        assert [(m["seq"], m["cmid"]) for m in await all_msgs(store, 2)] == [(1, "maybe")]
        await store.close()

    run(go())


def test_a_failing_write_is_refused_at_once_and_the_store_carries_on(backend):
    async def go():
        store = await backend.open()
        await store.open_inbox(2)

        async def broken(cur, resumed=False):
            await cur.execute("INSERT INTO users (uid, created) VALUES (%s, %s)", (77, 0))
            raise TypeError("a bug in a write")

        with pytest.raises(ImError) as e:
            await store._run(broken)
        assert e.value.code == E_UNAVAILABLE and store.counters["retries"] == 0, "a bug is not retried"
        assert not await store.has_inbox(77), "the failed transaction was rolled back"
        with pytest.raises(ImError) as e:
            await store._run(lambda cur, resumed=False: cur.execute("SELECT * FROM no_such_table"))
        assert e.value.code == E_UNAVAILABLE and store.counters["retries"] == 0
        assert not (await store.send(new_message(1, 2, "after", 1))).duplicate
        assert [m["cmid"] for m in await all_msgs(store, 2)] == ["after"]
        await store.close()

    run(go())


def test_a_transaction_cancelled_mid_way_frees_its_locks_at_once(backend):
    """A store call cancelled inside its transaction (a send whose caller gave up, a consumer stopped)
    closes its connection, so the server rolls back and frees the rows it locked: another transaction
    gets them at once instead of waiting until the garbage collector closes the socket."""
    async def go():
        store = await backend.open()
        await store.open_inbox(5)
        locked = asyncio.Event()

        async def holds_the_inbox(cur, resumed=False):
            await cur.execute("SELECT uid FROM users WHERE uid = 5 FOR UPDATE")
            locked.set()
            await asyncio.Event().wait()  # until cancelled

        task = asyncio.create_task(store._run(holds_the_inbox))
        await wait_until_async(locked.is_set, what="the row lock taken")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

        async def lock_now(cur, resumed=False):  # NOWAIT: refused while another transaction holds it
            await cur.execute("SELECT uid FROM users WHERE uid = 5 FOR UPDATE NOWAIT")
            return await cur.fetchall()

        # each try is refused at once while the lock is held; the server sees the closed socket a moment later
        other = await opened(backend.addrs, backend.db, failover_timeout=0.01)
        try:
            await wait_until_async(lambda: other._run(lock_now), equals=((5,),), ignore=(ImError,),
                                   timeout=60, what="the cancelled transaction's row lock freed")
        finally:
            await other.close()
            await store.close()

    run(go())


def test_concurrent_sends_share_transactions(backend):
    """Sends arriving while the writers are busy are committed together: fewer commits than sends, and
    each send still gets its own answer (a refused one among them does not touch the others)."""
    async def go():
        store = await backend.open()
        store.pool_size = 2
        for u in range(1, 11):
            await store.open_inbox(u)
        sends = [store.send(new_message(s, r, f"c{s}-{r}", [s, r])) for s in range(1, 11) for r in range(1, 11)
                 if s != r]
        sends.append(store.send(new_message(1, 999, "to-nobody", 0)))  # unknown receiver: refused alone
        results = await asyncio.gather(*sends, return_exceptions=True)
        assert isinstance(results[-1], ImError) and results[-1].code == 404
        assert not any(isinstance(r, BaseException) for r in results[:-1])
        for u in range(1, 11):
            msgs = await all_msgs(store, u)
            assert [m["seq"] for m in msgs] == list(range(1, 19))
            assert sorted(m["cmid"] for m in msgs) == sorted([f"c{u}-{r}" for r in range(1, 11) if r != u]
                                                             + [f"c{s}-{u}" for s in range(1, 11) if s != u])
        assert store.counters["writes"] == 90 and store.counters["commits"] < 30, store.counters
        await store.close()

    run(go())


async def selects(addr: str) -> int:
    """The server's count of SELECT statements so far (every client's)."""
    import asyncmy

    host, _, port = addr.rpartition(":")
    conn = await asyncmy.connect(host=host, port=int(port), user="test", autocommit=True,
                                 connect_timeout=10, read_timeout=60)
    try:
        async with conn.cursor() as cur:
            await cur.execute("SHOW GLOBAL STATUS LIKE 'Com_select'")
            return int((await cur.fetchone())[1])
    finally:
        conn.close()


def test_a_new_send_reads_nothing_and_a_resend_alone_or_batched_gets_its_original(backend, mariadb_addrs):
    """A single-chat send leaves the (sender, cmid) check to the unique key: no SELECT (one round trip
    less). A resend is refused by the key, looked up and answered as the
    original, without using up a seq, whether it is alone in its transaction or shares one."""
    async def go():
        store = await backend.open()
        store.pool_size = 1  # one writer: the sends gathered below queue behind the first, one transaction
        await store.open_inbox(2)
        before = await selects(mariadb_addrs[0])
        first = await store.send(new_message(1, 2, "d0", 0))
        assert await selects(mariadb_addrs[0]) - before == 0, "a new send reads nothing"
        again = await store.send(new_message(1, 2, "d0", 0))
        assert again.duplicate and again.msg_id == first.msg_id and again.seqs == {1: 1}
        results = await asyncio.gather(*[store.send(new_message(1, 2, c, 0)) for c in ("d1", "d0", "d2", "d1")])
        assert [r.duplicate for r in results] == [False, True, False, True]
        assert results[1].msg_id == first.msg_id and results[3].msg_id == results[0].msg_id
        assert [(m["seq"], m["cmid"]) for m in await all_msgs(store, 2)] == [(1, "d0"), (2, "d1"), (3, "d2")]
        await store.close()

    run(go())


def test_a_failed_batch_refuses_every_send_in_it(backend):
    """A transaction that fails for a reason other than the request (here a server error the store does
    not retry) refuses all of its sends with 503, and none of them is stored."""
    from asyncmy.errors import OperationalError

    async def go():
        store = await backend.open()
        store.pool_size = 1  # one writer: the ten sends below queue while it starts, one transaction
        await store.open_inbox(2)
        store_one = store._store

        async def failing_store(cur, m, resumed=False, **kw):
            if m.cmid == "b5":
                raise OperationalError(1366, "Incorrect string value (injected)")
            return await store_one(cur, m, resumed=resumed, **kw)

        store._store = failing_store
        results = await asyncio.gather(*[store.send(new_message(1, 2, f"b{i}", i)) for i in range(10)],
                                       return_exceptions=True)
        assert all(isinstance(r, ImError) and r.code == E_UNAVAILABLE for r in results), results
        assert "nothing stored" in results[0].message
        store._store = store_one
        assert await all_msgs(store, 2) == [] and await store.max_seq(2) == 0
        assert (await store.send(new_message(1, 2, "b0", 0))).seqs == {1: 1, 2: 1}  # the store carries on
        await store.close()

    run(go())


def test_a_dead_server_is_refused_after_the_failover_timeout():
    async def go():
        store = MariaDbStore([f"127.0.0.1:{free_port()}"], user="test", failover_timeout=0.5, connect_timeout=0.2)
        with pytest.raises(ImError) as e:  # after failover_timeout (run() bounds a hang)
            await store.start()
        assert e.value.code == E_UNAVAILABLE and "unavailable" in e.value.message
        with pytest.raises(ImError) as e:
            await store.send(new_message(1, 2, "x", 1))
        assert e.value.code == E_UNAVAILABLE
        await store.close()

    run(go())


def test_one_node_killed_mid_stream_loses_nothing_and_sends_resume(galera_process, backend):
    """kill -9 of the node every store writes to, while 6 senders stream messages and resend (same
    cmid) whatever was refused, as a client does. Every acknowledged message is in both inboxes with
    the seq its reply gave, every inbox is 1..N, and sends resume on the other node within 10 s."""
    users = list(range(1, 7))
    acked: dict[str, tuple] = {}           # cmid -> (sender, receiver, msg_id, sender seq)
    stall = {"longest": 0.0}

    async def sender(store, s, stop: asyncio.Event):
        i = 0
        while not stop.is_set():
            r = users[(users.index(s) + 1 + i % 5) % len(users)]
            cmid = f"{s}-{i}"
            began = time.monotonic()
            while True:  # the client's resend loop: same cmid until a reply
                try:
                    got = await store.send(new_message(s, r, cmid, i))
                    break
                except ImError as e:
                    assert e.code == E_UNAVAILABLE
                    await asyncio.sleep(0.05)
            stall["longest"] = max(stall["longest"], time.monotonic() - began)
            acked[cmid] = (s, r, got.msg_id, got.seqs[s])
            i += 1

    async def go():
        store = await backend.open(failover_timeout=15)
        for u in users:
            await store.open_inbox(u)
        stop = asyncio.Event()
        tasks = [asyncio.create_task(sender(store, s, stop)) for s in users]
        await wait_until_async(lambda: len(acked) >= 300, what="300 acknowledged sends before the kill")
        before = len(acked)
        await asyncio.to_thread(galera_process.kill, "n1")
        await wait_until_async(lambda: len(acked) >= before + 300, what="300 more sends, on the surviving node")
        stop.set()
        await asyncio.gather(*tasks)
        assert store.counters["failovers"] >= 1 and store.node == 1
        await store.close()

        check = await opened([galera_process.addrs[1]], backend.db)  # only the survivor
        inboxes = {u: await all_msgs(check, u) for u in users}
        await check.close()
        return before, inboxes

    try:
        before, inboxes = run(go())
    finally:
        galera_process.start()  # n1 rejoins (state transfer): the pair is whole for the next tests
    assert stall["longest"] < 10, f"a send waited {stall['longest']:.1f}s across the failover"
    for u, msgs in inboxes.items():
        assert [m["seq"] for m in msgs] == list(range(1, len(msgs) + 1)), f"user {u}: a seq skipped or reused"
    where = {(u, m["cmid"]): (m["seq"], int(m["msg_id"])) for u, msgs in inboxes.items() for m in msgs}
    for cmid, (s, r, msg_id, seq) in acked.items():
        assert where.get((s, cmid)) == (seq, msg_id), f"acknowledged {cmid} lost from the sender's inbox"
        assert (r, cmid) in where, f"acknowledged {cmid} lost from the receiver's inbox"
    stored = sum(len(msgs) for msgs in inboxes.values())
    assert stored == 2 * len(acked), "a message stored twice, or one stored but never acknowledged"
    print(f"{len(acked)} acknowledged ({before} before the kill), longest send {stall['longest']:.2f}s")


def test_session_pair_is_whole(galera_process):
    assert galera().running and galera_process.member_pid("n1") and galera_process.member_pid("n2")


def test_two_nodes_share_the_store_through_the_http_api(backend, mariadb_addrs):
    """`imgate serve` with im_store = "mariadb": a message sent through one node's /im/send (on n1) is
    synced through another node's /im/sync (on n2), and a resend through the other node is the same one."""
    from nodeutil import NodeThread

    run(backend.open())  # a fresh database with its tables
    common = dict(im_store="mariadb", mariadb_user="test", mariadb_database=backend.db)
    a = NodeThread(mariadb_addrs=list(mariadb_addrs), **common).start()
    b = NodeThread(mariadb_addrs=list(reversed(mariadb_addrs)), server_id="test-node-b", **common).start()
    try:
        b.call(b.node.im_store.open_inbox(2))
        body = json.dumps({"cmid": "c1", "to": 2, "content": {"text": "hi"}}).encode()
        status, sent = a.http("POST", "/im/send?uid=1", body)
        assert status == 200 and sent["code"] == 0, sent
        status, page = b.http("GET", "/im/sync?uid=2&after=0&limit=10")
        assert status == 200, page
        msgs = page["data"]["msgs"]
        assert [(m["from"], m["seq"], m["content"], m["msg_id"]) for m in msgs] == \
               [(1, 1, {"text": "hi"}, sent["data"]["msg_id"])]
        status, again = b.http("POST", "/im/send?uid=1", body)
        assert status == 200 and again["data"] == sent["data"]
    finally:
        a.stop()
        b.stop()


def test_one_plain_server_and_the_script_that_runs_it():
    """`services.sh start-mariadb` (one node, no Galera): the store works there too; a busy port is
    refused clearly; `stop` ends it."""
    from services import ServiceError, ensure_installed, run_script

    ensure_installed("mariadb")
    # not pytest's tmp_path: its parents are closed to the mysql user that mariadbd runs as under root
    tmp_path = Path(tempfile.mkdtemp(prefix="imgate-mariadb-"))
    port = free_port()
    run_script("start-mariadb", str(port), str(tmp_path))
    try:
        pid = int((tmp_path / "mariadb" / "mariadb.pid").read_text())
        with pytest.raises(ServiceError, match="already in use"):
            run_script("start-galera", str(port), str(free_port()), str(tmp_path / "other"))
        addrs = [f"127.0.0.1:{port}"]
        create_database(addrs, "plain")

        async def go():
            store = await opened(addrs, "plain")
            await store.open_inbox(2)
            first = await store.send(new_message(1, 2, "a", "x"))
            assert (await store.send(new_message(1, 2, "a", "x"))).duplicate
            assert [m["seq"] for m in await all_msgs(store, 2)] == [first.seqs[2]] == [1]
            await store.close()

        run(go())
    finally:
        run_script("stop", str(tmp_path))
    assert not (tmp_path / "mariadb" / "mariadb.pid").exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    shutil.rmtree(tmp_path, ignore_errors=True)
