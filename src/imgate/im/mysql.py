"""The cluster's message store: MariaDB (a Galera pair, or one server) through asyncmy.

Same contract as :class:`imgate.im.sqlite.SqliteStore` (tests/im_store_contract.py runs against both):
each send is one transaction that checks (sender, cmid) (a single-chat send leaves that to the unique key
and reads the original only when the key refuses it), hands every owner the next seq of its inbox
(``UPDATE users SET max_seq = LAST_INSERT_ID(max_seq + 1)``: the row lock orders concurrent senders,
a rollback gives the seq back) and inserts the message, the inbox entries and the conversation rows;
PRIMARY KEY (owner, seq) and UNIQUE (sender, cmid) are the last guards. Many im processes may write at
once: the database, not the process, serialises them.

Failover and retries (docs/cluster.md "Message store"). ``addrs`` lists the servers in order of
preference; every connection goes to the current one, and a connection error (the server died, refused,
timed out) moves the store to the next. Every operation is a whole transaction re-run from its start
until it succeeds or ``failover_timeout`` passes:

- error 1213 (a deadlock, or a Galera certification conflict with a write on the other node), 1205
  (lock wait timeout), 1062 (a concurrent send of the same cmid won: the re-run finds it), 1047 (the
  node is not part of the primary component yet): the transaction was rolled back; run it again.
- a connection lost during the transaction, COMMIT included: the outcome may be unknown. Re-running is
  safe for every write here: a send is found again by its cmid (and then answered as stored, with its
  entries, so it is still delivered), open_inbox is idempotent, a read position only moves up.
- anything else (a bug, a full disk) is refused at once with E_UNAVAILABLE: nothing was stored.

On Galera every connection sets ``wsrep_sync_wait=7``: the first statement of every transaction, read or
write, waits until the node has applied what the group committed before it (one wait per transaction:
Galera waits only where no transaction is open, and not for a SAVEPOINT, so a batch starts with BEGIN).
So a send retried on the other node finds its first attempt, a sync sees what another im process just
stored, and a seq UPDATE on the node that took over finds an inbox the failed node made a moment before
(with 1, reads only, it did not: a false 404).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from importlib import resources

from imgate.im.protocol import (
    E_BAD_REQUEST, E_CMID_CONFLICT, E_OUT_OF_RANGE, E_UNAVAILABLE, E_UNKNOWN_RECEIVER, ImError, conv_members,
)
from imgate.im.mysql_groups import MariaDbGroupsMixin
from imgate.im.store import (
    INTERNAL_CMID_PREFIX, MessageStore, NewMessage, ReadResult, Stored, SyncPage, digest_of, msg_json,
)

log = logging.getLogger("imgate.im.mysql")

_MSG_COLUMNS = "i.seq, m.id, m.conv, m.sender, m.receiver, m.grp, m.type, m.content, m.ts, m.cmid, m.gseq"
RETRY_CODES = {1213, 1205, 1062, 1047, 1180, 1181}  # rolled back by the server: run the transaction again
SWITCH_CODES = {1047}  # this node can't take queries now: try the next one too
MAX_CMID = 255  # VARCHAR(255) in the schema
MAX_TYPE = 64


def migrations() -> list[tuple[int, str]]:
    """(version, SQL) of every file in ``imgate/im/schema/mysql``, in order."""
    out = []
    for item in resources.files("imgate.im").joinpath("schema", "mysql").iterdir():
        if item.name.endswith(".sql") and item.name[:4].isdigit():
            out.append((int(item.name[:4]), item.read_text()))
    return sorted(out)


def statements(sql: str) -> list[str]:
    """The statements of a schema file: ``--`` comments dropped, split at the ``;`` that ends a line."""
    lines = [line.split("--", 1)[0].rstrip() for line in sql.splitlines()]
    out, buf = [], []
    for line in lines:
        if not line:
            continue
        buf.append(line)
        if line.endswith(";"):
            out.append("\n".join(buf)[:-1])
            buf = []
    return out


def parse_addrs(addrs) -> list[tuple[str, int]]:
    """``"h1:3306,h2:3306"`` or a list of ``"host:port"`` -> [(host, port)]."""
    if isinstance(addrs, str):
        addrs = [a for a in addrs.split(",") if a.strip()]
    out = []
    for a in addrs:
        host, _, port = a.strip().rpartition(":")
        out.append((host or "127.0.0.1", int(port or 3306)))
    if not out:
        raise ValueError("no MariaDB address given")
    return out


class _Lost(Exception):
    """The connection broke (the server died, timed out or refused): the outcome may be unknown."""


class _Duplicate(Exception):
    """A send stored without looking for its cmid first met one (1062 on sender_cmid): look, then answer."""


class MariaDbStore(MariaDbGroupsMixin, MessageStore):
    shared = True

    def __init__(self, addrs, *, user: str = "imgate", password: str = "", database: str = "im",
                 pool_size: int = 16, connect_timeout: float = 2.0, query_timeout: float = 10.0,
                 failover_timeout: float = 20.0, retention_days: float = 0, retention_entries: int = 0,
                 prune_interval: float = 3600.0, batch_max: int = 64, max_queue: int = 20000):
        self.addrs = parse_addrs(addrs)
        self.user, self.password, self.database = user, password, database
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        self.query_timeout = query_timeout
        self.failover_timeout = failover_timeout
        self.retention_days = retention_days
        self.retention_entries = retention_entries
        self.prune_interval = prune_interval
        self.batch_max = batch_max
        self.max_queue = max_queue
        self._queued: list = []          # sends waiting for a writer: (NewMessage, future)
        self._writers = 0                # writer tasks running (at most pool_size)
        self._writer_tasks: set = set()
        self.node = 0                    # index in addrs of the server every connection goes to
        self._idle: list = []            # connections to self.node, ready for a transaction
        self._slots: asyncio.Semaphore | None = None
        self._closed = True
        self._prune_task: asyncio.Task | None = None
        self._last_ts = 0
        self.counters = {"commits": 0, "writes": 0, "failed_batches": 0, "retries": 0, "failovers": 0}

    # ------------------------------------------------------------------ lifecycle and connections

    async def start(self) -> None:
        self._slots = asyncio.Semaphore(self.pool_size)
        self._closed = False
        await self._run(self._migrate)
        if self.retention_days:
            self._prune_task = asyncio.get_running_loop().create_task(self._prune_loop())

    async def close(self) -> None:
        self._closed = True
        if self._prune_task is not None:
            self._prune_task.cancel()
            self._prune_task = None
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    async def _connect(self, node: int):
        import asyncmy  # the cluster extra: only a node configured for MariaDB needs it
        host, port = self.addrs[node]
        try:
            conn = await asyncmy.connect(host=host, port=port, user=self.user, password=self.password,
                                         db=self.database, autocommit=False, charset="utf8mb4",
                                         connect_timeout=self.connect_timeout, read_timeout=self.query_timeout)
        except Exception as e:
            raise _Lost(f"connect to {host}:{port}: {e}") from None
        conn._imgate_node = node
        try:
            async with conn.cursor() as cur:
                await cur.execute("SELECT @@wsrep_on")
                if (await cur.fetchone())[0]:
                    await cur.execute("SET SESSION wsrep_sync_wait = 7")
            await conn.commit()
        except asyncio.CancelledError:
            conn.close()
            raise
        except Exception as e:
            conn.close()
            raise _Lost(f"set up {host}:{port}: {e}") from None
        return conn

    async def _acquire(self):
        while self._idle:
            conn = self._idle.pop()
            if conn._imgate_node == self.node and conn.connected:
                return conn
            conn.close()  # left over from the node before a failover
        return await self._connect(self.node)

    def _failover(self, node: int, why: str) -> None:
        """The server ``node`` failed: move to the next one (once per failure, whoever noticed first)."""
        if node != self.node or len(self.addrs) == 1:
            return
        self.node = (node + 1) % len(self.addrs)
        self.counters["failovers"] += 1
        log.warning("message store: %s:%d failed (%s); using %s:%d", *self.addrs[node], why, *self.addrs[self.node])
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    async def _run(self, fn, *args, **kw):
        """Run ``fn(cur, *args, resumed=R)`` in one transaction, again on a retryable failure (module doc);
        ``resumed``: an earlier attempt lost its connection, so it may have committed."""
        if self._closed:
            raise ImError(E_UNAVAILABLE, "message store is closed")
        deadline = time.monotonic() + self.failover_timeout
        resumed, delay, last = False, 0.01, None
        async with self._slots:
            while True:
                node, conn = self.node, None
                try:
                    conn = await self._acquire()
                    node = conn._imgate_node
                    try:
                        async with conn.cursor() as cur:
                            result = await fn(cur, *args, resumed=resumed, **kw)
                        await conn.commit()
                    except asyncio.CancelledError:
                        # mid-transaction: closed, the server rolls it back now and frees its locks, where a
                        # connection left open would hold them until the garbage collector closed it
                        conn.close()
                        raise
                    self._idle.append(conn)
                    return result
                except ImError:
                    await self._rollback(conn)
                    raise
                except _Lost as e:
                    last = str(e)
                    resumed = True
                    self._failover(node, last)
                except Exception as e:
                    code = e.args[0] if e.args and isinstance(e.args[0], int) else 0
                    last = f"{type(e).__name__}: {e}"
                    if _link_broke(e, code):
                        if conn is not None:
                            conn.close()
                        resumed = True
                        self._failover(node, last)
                    elif code in RETRY_CODES:
                        await self._rollback(conn)
                        if code in SWITCH_CODES:
                            self._failover(node, last)
                    else:
                        await self._rollback(conn)
                        self.counters["failed_batches"] += 1
                        log.warning("message store: %s refused: %s", fn.__name__, last)
                        raise ImError(E_UNAVAILABLE, f"message store error, {_outcome(resumed)}: {last}") from None
                self.counters["retries"] += 1
                if time.monotonic() + delay > deadline:
                    self.counters["failed_batches"] += 1
                    raise ImError(E_UNAVAILABLE, f"message store unavailable for {self.failover_timeout:.0f}s, "
                                                 f"{_outcome(resumed)}: {last}")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)

    async def _rollback(self, conn) -> None:
        if conn is None:
            return
        try:
            await conn.rollback()
        except asyncio.CancelledError:
            conn.close()
            raise
        except Exception:
            conn.close()
            return
        self._idle.append(conn)

    async def _migrate(self, cur, resumed: bool = False) -> int:
        await cur.execute("CREATE TABLE IF NOT EXISTS schema_version (id TINYINT PRIMARY KEY, version INT NOT NULL)"
                          " ENGINE=InnoDB")
        await cur.execute("INSERT IGNORE INTO schema_version VALUES (1, 0)")
        await cur.execute("SELECT version FROM schema_version WHERE id = 1 FOR UPDATE")
        version = (await cur.fetchone())[0]
        for v, sql in migrations():  # DDL commits by itself in MySQL: each statement is idempotent instead
            if v > version:
                for stmt in statements(sql):
                    await cur.execute(stmt)
                await cur.execute("UPDATE schema_version SET version = %s WHERE id = 1", (v,))
                version = v
        return version

    def _now_ms(self) -> int:
        ts = int(time.time() * 1000)
        if ts <= self._last_ts:
            ts = self._last_ts
        self._last_ts = ts
        return ts

    # ------------------------------------------------------------------ writes (one transaction each)

    async def _store(self, cur, m: NewMessage, resumed: bool = False, look: bool = True) -> Stored:
        """``look=False`` (a single-chat send, not resumed): no read of (sender, cmid) first, one round trip
        less (the transaction's Galera causality wait moves to its first UPDATE); a duplicate is refused by
        the unique key instead (``_Duplicate``) and the caller runs it again looking."""
        if len(m.cmid) > MAX_CMID or len(m.type) > MAX_TYPE:
            raise ImError(E_BAD_REQUEST, f"cmid (at most {MAX_CMID} characters) or type ({MAX_TYPE}) too long")
        row = None
        if look or resumed or m.group is not None:
            await cur.execute("SELECT id, digest, sender_seq, ts, gseq FROM messages WHERE sender = %s AND cmid = %s",
                              (m.sender, m.cmid))
            row = await cur.fetchone()
        if row is not None:
            if bytes(row[1]) != m.digest:
                raise ImError(E_CMID_CONFLICT, f"cmid {m.cmid!r} was used before for a different message")
            if resumed and m.group is None:  # an earlier attempt may have committed it: answer it as stored
                return await self._stored_again(cur, row[0], row[3])
            # (a group message's fan-out job stays in the outbox: the consumer does it either way)
            return Stored(msg_id=row[0], ts=row[3], seqs={m.sender: row[2]}, duplicate=True, gseq=row[4],
                          group=m.group)
        if m.group is not None:
            return await self._store_group(cur, m)
        ts = self._now_ms()
        seqs = {}
        for owner in sorted(set(m.owners)):  # one lock order for every transaction: fewer deadlocks
            seq = await self._next_seq(cur, owner)
            if seq is None:  # no inbox: the sender gets one (its first seq), a receiver is unknown
                if owner != m.sender:
                    raise ImError(E_UNKNOWN_RECEIVER, f"user {owner} has no inbox (unknown receiver)")
                await cur.execute("INSERT INTO users (uid, max_seq, created) VALUES (%s, 1, %s)", (owner, ts))
                seq = 1
            seqs[owner] = seq
        try:
            await cur.execute(
                "INSERT INTO messages (sender, cmid, conv, receiver, grp, type, content, digest, sender_seq, ts)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (m.sender, m.cmid, m.conv, m.to, m.group, m.type, m.content, m.digest, seqs[m.sender], ts))
        except Exception as e:
            if not look and e.args and e.args[0] == 1062 and "sender_cmid" in str(e):
                raise _Duplicate() from None
            raise
        msg_id = cur.lastrowid
        seqs = {o: seqs[o] for o in m.owners}
        entries = await self._add_entries(cur, seqs, msg_id, m.sender, m.conv, m.to, None, m.type, m.content, ts,
                                          m.cmid, None)
        return Stored(msg_id=msg_id, ts=ts, seqs=seqs, entries=entries)

    async def _add_entries(self, cur, seqs: dict, msg_id: int, sender: int, conv: str, to, group, type_: str,
                           content, ts: int, cmid: str, gseq) -> dict:
        """One inbox entry per owner (with the seq given) and its conversation row; owner -> msg JSON."""
        counts = type_ != "read"  # read notices are neither unread nor a conversation's last message
        entries, rows, convs = {}, [], []
        for owner, seq in seqs.items():
            unread = 1 if counts and owner != sender else 0
            rows.append((owner, seq, msg_id, conv, unread, ts))
            if counts:
                peer = group if group is not None else (to if owner == sender else sender)
                convs.append((owner, conv, peer, seq, msg_id, unread))
            entries[owner] = msg_json(seq, msg_id, conv, sender, to, group, type_, content, ts, cmid, gseq)
        # executemany sends each as one multi-row INSERT: one round trip for all owners
        await cur.executemany("INSERT INTO inbox (owner, seq, msg_id, conv, unread, ts) VALUES (%s, %s, %s, %s, %s, %s)",
                              rows)
        if convs:
            await cur.executemany(
                "INSERT INTO conversations (owner, conv, peer, last_seq, last_msg_id, unread)"
                " VALUES (%s, %s, %s, %s, %s, %s) ON DUPLICATE KEY UPDATE last_seq = VALUES(last_seq),"
                " last_msg_id = VALUES(last_msg_id), unread = unread + VALUES(unread)", convs)
        return entries

    async def _stored_again(self, cur, msg_id: int, ts: int) -> Stored:
        await cur.execute(f"SELECT i.owner, {_MSG_COLUMNS} FROM inbox i JOIN messages m ON m.id = i.msg_id"
                          " WHERE i.msg_id = %s", (msg_id,))
        rows = await cur.fetchall()
        return Stored(msg_id=msg_id, ts=ts, seqs={r[0]: r[1] for r in rows},
                      entries={r[0]: msg_json(*r[1:]) for r in rows})

    async def _next_seq(self, cur, owner: int) -> int | None:
        """The owner's next seq (its row stays locked until the transaction ends); None: no inbox."""
        await cur.execute("UPDATE users SET max_seq = LAST_INSERT_ID(max_seq + 1) WHERE uid = %s", (owner,))
        if cur.rowcount == 0:
            return None
        seq = cur.lastrowid  # the OK packet carries LAST_INSERT_ID(): no SELECT round trip
        keep = self.retention_entries
        if keep and seq > keep:
            await cur.execute("SELECT min_seq FROM users WHERE uid = %s", (owner,))
            min_seq = (await cur.fetchone())[0]
            if seq - min_seq + 1 > keep:  # the oldest entries go; the seq range stays gapless
                new_min = seq - keep + 1
                await cur.execute("DELETE FROM inbox WHERE owner = %s AND seq < %s", (owner, new_min))
                await cur.execute("UPDATE users SET min_seq = %s WHERE uid = %s", (new_min, owner))
        return seq

    async def _open_inbox(self, cur, uid: int, resumed: bool = False) -> int:
        await cur.execute("INSERT IGNORE INTO users (uid, created) VALUES (%s, %s)", (uid, int(time.time() * 1000)))
        await cur.execute("SELECT max_seq FROM users WHERE uid = %s", (uid,))
        return (await cur.fetchone())[0]

    async def _mark_read(self, cur, uid: int, conv: str, seq: int, resumed: bool = False) -> ReadResult:
        members = conv_members(conv)
        group = conv.startswith("g:")  # its conversation row exists if the user has entries of it
        if not group and (members is None or uid not in members):
            raise ImError(E_BAD_REQUEST, f"conv {conv!r} is not a conversation of user {uid}")
        await cur.execute("SELECT max_seq FROM users WHERE uid = %s", (uid,))
        user = await cur.fetchone()
        max_seq = user[0] if user else 0
        if seq > max_seq:
            raise ImError(E_OUT_OF_RANGE, f"seq {seq} is beyond the inbox (max_seq {max_seq})")
        await cur.execute("SELECT read_seq, peer FROM conversations WHERE owner = %s AND conv = %s FOR UPDATE",
                          (uid, conv))
        row = await cur.fetchone()
        if row is None:
            raise ImError(E_BAD_REQUEST, f"user {uid} has no conversation {conv!r}")
        read_seq, peer = row
        if seq <= read_seq:
            return ReadResult(read_seq, None, peer)
        await cur.execute("SELECT COUNT(*) FROM inbox WHERE owner = %s AND conv = %s AND seq > %s AND unread = 1",
                          (uid, conv, seq))
        unread = (await cur.fetchone())[0]
        await cur.execute("UPDATE conversations SET read_seq = %s, unread = %s WHERE owner = %s AND conv = %s",
                          (seq, unread, uid, conv))
        if group:  # no read notice to a whole group: the reader's position and unread count only
            return ReadResult(seq, None, peer)
        # a notice only when the read passes a message from the peer (as SqliteStore._mark_read)
        await cur.execute("SELECT 1 FROM inbox WHERE owner = %s AND conv = %s AND seq > %s AND seq <= %s AND unread = 1"
                          " LIMIT 1", (uid, conv, read_seq, seq))
        if await cur.fetchone() is None:
            return ReadResult(seq, None, peer)
        await cur.execute("SELECT msg_id FROM inbox WHERE owner = %s AND conv = %s AND seq <= %s"
                          " ORDER BY seq DESC LIMIT 1", (uid, conv, seq))
        last = await cur.fetchone()
        content = json.dumps({"reader": uid, "seq": seq, "msg_id": str(last[0]) if last else None},
                             separators=(",", ":"))
        cmid = f"{INTERNAL_CMID_PREFIX}read:{conv}:{seq}"
        notice = await self._store(cur, NewMessage(uid, cmid, conv, peer, None, "read", content,
                                                   digest_of(peer, None, "read", content), (uid, peer)))
        return ReadResult(seq, notice, peer)

    async def _prune(self, cur, resumed: bool = False) -> None:
        """Retention by age (as SqliteStore._prune): old entries go, bodies nobody keeps are emptied."""
        cutoff = int((time.time() - self.retention_days * 86400) * 1000)
        await cur.execute("DELETE FROM inbox WHERE ts < %s", (cutoff,))
        await cur.execute("UPDATE users u SET min_seq = COALESCE((SELECT MIN(seq) FROM inbox i WHERE i.owner = u.uid),"
                          " u.max_seq + 1)")
        await cur.execute("UPDATE messages SET content = NULL WHERE ts < %s AND content IS NOT NULL", (cutoff,))

    async def _prune_loop(self) -> None:
        while True:
            await asyncio.sleep(self.prune_interval)
            try:
                await self._run(self._prune)
            except ImError as e:
                log.warning("message store: retention sweep failed (retried next period): %s", e.message)

    # ------------------------------------------------------------------ reads

    async def _max_seq_now(self, cur, uid: int, resumed: bool = False) -> int | None:
        await cur.execute("SELECT max_seq FROM users WHERE uid = %s", (uid,))
        row = await cur.fetchone()
        return row[0] if row else None

    async def _sync_now(self, cur, uid: int, after: int, limit: int, resumed: bool = False) -> SyncPage:
        await cur.execute("SELECT max_seq, min_seq FROM users WHERE uid = %s", (uid,))
        row = await cur.fetchone()  # (REPEATABLE READ: the page below comes from the same snapshot)
        max_seq, min_seq = row if row else (0, 1)
        if after > max_seq:
            raise ImError(E_OUT_OF_RANGE, f"after {after} is beyond the inbox (max_seq {max_seq})")
        await cur.execute(f"SELECT {_MSG_COLUMNS} FROM inbox i JOIN messages m ON m.id = i.msg_id"
                          " WHERE i.owner = %s AND i.seq > %s ORDER BY i.seq LIMIT %s", (uid, after, limit + 1))
        rows = await cur.fetchall()
        has_more = len(rows) > limit
        return SyncPage([msg_json(*r) for r in rows[:limit]], has_more, max_seq, min_seq)

    async def _conversations_now(self, cur, uid: int, limit: int, resumed: bool = False) -> str:
        await cur.execute(
            "SELECT c.conv, c.peer, c.unread, c.read_seq, c.last_seq, m.id, m.conv, m.sender, m.receiver, m.grp,"
            " m.type, m.content, m.ts, m.cmid, m.gseq FROM conversations c JOIN messages m ON m.id = c.last_msg_id"
            " WHERE c.owner = %s ORDER BY c.last_seq DESC LIMIT %s", (uid, limit))
        rows = await cur.fetchall()
        items = [f'{{"conv":{json.dumps(r[0])},"peer":{r[1]},"unread":{r[2]},"read_seq":{r[3]},'
                 f'"last":{msg_json(*r[4:])}}}' for r in rows]
        return "[" + ",".join(items) + "]"

    # ------------------------------------------------------------------ the interface

    async def open_inbox(self, uid: int) -> int:
        return await self._run(self._open_inbox, uid)

    async def has_inbox(self, uid: int) -> bool:
        return await self._run(self._max_seq_now, uid) is not None

    async def max_seq(self, uid: int) -> int:
        return await self._run(self._max_seq_now, uid) or 0

    async def send(self, msg: NewMessage) -> Stored:
        """Queued for a writer; answered once the transaction that holds it committed (module doc)."""
        if self._closed:
            raise ImError(E_UNAVAILABLE, "message store is closed")
        if len(self._queued) >= self.max_queue:
            raise ImError(E_UNAVAILABLE, f"message store is overloaded ({len(self._queued)} sends queued), nothing stored")
        fut = asyncio.get_running_loop().create_future()
        self._queued.append((msg, fut))
        if self._writers < self.pool_size:
            self._writers += 1
            task = asyncio.get_running_loop().create_task(self._writer())
            self._writer_tasks.add(task)
            task.add_done_callback(self._writer_tasks.discard)
        return await fut

    async def _writer(self) -> None:
        """Take a share of what is queued into one transaction, until nothing is. The share spreads the
        queue over every connection (up to batch_max each): a send is several round trips, so one
        transaction of all of them would run them one after the other while the pool idles; a few
        each share the commit (a Galera round, an fsync) and keep the pool busy."""
        try:
            while self._queued:
                n = min(self.batch_max, -(-len(self._queued) // self.pool_size))
                batch, self._queued = self._queued[:n], self._queued[n:]
                try:
                    results = await self._run(self._store_batch, batch)
                    self.counters["commits"] += 1
                    self.counters["writes"] += sum(1 for ok, _ in results if ok)  # committed, not attempted
                except ImError as e:  # the batch failed as a whole: nothing of it is stored
                    results = [(False, e)] * len(batch)
                except Exception as e:  # noqa: BLE001 - the writer must answer every send
                    log.exception("message store: a batch of %d sends failed", len(batch))
                    results = [(False, ImError(E_UNAVAILABLE, f"message store error, {_outcome(True)}: {e}"))] * len(batch)
                for (_, fut), (ok, value) in zip(batch, results):
                    if not fut.done():
                        fut.set_result(value) if ok else fut.set_exception(value)
        finally:
            self._writers -= 1

    async def _store_batch(self, cur, batch: list, resumed: bool = False) -> list:
        """The sends of one transaction, (ok, Stored or ImError) each. A send the store refuses is rolled
        back to its savepoint, the others stay; a lone send needs none (its refusal ends the transaction)."""
        if len(batch) == 1:
            try:
                return [(True, await self._store(cur, batch[0][0], resumed=resumed, look=False))]
            except _Duplicate:  # nothing else in this transaction: start it again, looking first
                await cur.execute("ROLLBACK")
                return [(True, await self._store(cur, batch[0][0], resumed=resumed))]
        # BEGIN first: a transaction that starts with SAVEPOINT never gets Galera's causality wait (module doc)
        await cur.execute("BEGIN")
        results = []
        for msg, _ in batch:
            await cur.execute("SAVEPOINT one_send")
            try:
                try:
                    results.append((True, await self._store(cur, msg, resumed=resumed, look=False)))
                except _Duplicate:
                    await cur.execute("ROLLBACK TO SAVEPOINT one_send")
                    results.append((True, await self._store(cur, msg, resumed=resumed)))
            except ImError as e:
                await cur.execute("ROLLBACK TO SAVEPOINT one_send")
                results.append((False, e))
        return results

    async def sync(self, uid: int, after: int, limit: int) -> SyncPage:
        return await self._run(self._sync_now, uid, after, limit)

    async def mark_read(self, uid: int, conv: str, seq: int) -> ReadResult:
        return await self._run(self._mark_read, uid, conv, seq)

    async def conversations(self, uid: int, limit: int) -> str:
        return await self._run(self._conversations_now, uid, limit)


def _outcome(resumed: bool) -> str:
    """What a refusal says was stored: after an attempt that lost its connection (its COMMIT may have
    happened) it cannot know; the client's resend with the same cmid is answered either way."""
    return "may or may not be stored (resend with the same cmid)" if resumed else "nothing stored"


def _link_broke(e: Exception, code: int) -> bool:
    """The connection failed (client-side codes 2000-2999, a socket error), not the statement."""
    from asyncmy.errors import InterfaceError, MySQLError
    if isinstance(e, MySQLError):
        return code >= 2000 or isinstance(e, InterfaceError)
    return isinstance(e, (OSError, EOFError, asyncio.IncompleteReadError, asyncio.TimeoutError))
