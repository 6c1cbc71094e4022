"""The embedded message store: SQLite in ``--data-dir`` (WAL), one writer thread that commits
queued writes in batches.

Why one writer thread: SQLite has one writer at a time anyway, and a commit costs one fsync
(``synchronous=FULL``) whatever it holds. The thread takes everything queued since its last commit
(up to ``batch_max`` writes) and runs it in one transaction, so under load many sends share one
fsync; an idle store commits a lone send at once. Each awaiting coroutine is woken only after the
COMMIT returned. If the transaction fails (database locked past ``busy_timeout``, disk full), every
write of the batch is refused with E_UNAVAILABLE: nothing of it is stored, nothing is acknowledged.

Reads (sync, conversations, inbox lookups) run on a small thread pool with their own connections;
WAL lets them read while the writer writes. Nothing here runs SQL on the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path

from imgate.im.protocol import (
    E_CMID_CONFLICT, E_OUT_OF_RANGE, E_UNAVAILABLE, E_UNKNOWN_RECEIVER, E_BAD_REQUEST, ImError,
    conv_members,
)
from imgate.im.sqlite_groups import GroupsMixin
from imgate.im.store import (
    INTERNAL_CMID_PREFIX, MessageStore, NewMessage, ReadResult, Stored, SyncPage, digest_of, msg_json,
)

log = logging.getLogger("imgate.im.sqlite")

CHECKPOINT_EVERY = 20  # commits between WAL checkpoints (a commit of a busy batch adds a few dozen pages)
_MSG_COLUMNS = "i.seq, m.id, m.conv, m.sender, m.receiver, m.grp, m.type, m.content, m.ts, m.cmid, m.gseq"


def migrations() -> list[tuple[int, str]]:
    """(version, SQL) of every schema file in ``imgate/im/schema``, in order."""
    out = []
    for item in resources.files("imgate.im").joinpath("schema").iterdir():
        name = item.name
        if name.endswith(".sql") and name[:4].isdigit():
            out.append((int(name[:4]), item.read_text()))
    return sorted(out)


def statements(sql: str) -> list[str]:
    """The statements of a schema file (whole-line ``--`` comments dropped)."""
    out, buf = [], ""
    for line in sql.splitlines():
        if line.lstrip().startswith("--"):
            continue
        buf += line + "\n"
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the database to the newest schema; returns its version."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    for v, sql in migrations():
        if v <= version:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            for stmt in statements(sql):
                conn.execute(stmt)
            conn.execute(f"PRAGMA user_version = {v}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        version = v
    return version


class SqliteStore(GroupsMixin, MessageStore):
    supports_groups = True

    def __init__(self, path: str | os.PathLike, *, synchronous: str = "full", busy_timeout: float = 5.0,
                 batch_max: int = 512, max_queue: int = 20000, retention_days: float = 0,
                 retention_entries: int = 0, prune_interval: float = 3600.0, readers: int = 2,
                 seen_max: int = 200_000, max_bytes: int = 0):
        if synchronous not in ("full", "normal"):
            raise ValueError(f"synchronous must be 'full' or 'normal', got {synchronous!r}")
        self.path = Path(path)
        self.synchronous = synchronous
        self.busy_timeout = busy_timeout
        self.batch_max = batch_max
        self.max_queue = max_queue
        self.retention_days = retention_days
        self.retention_entries = retention_entries
        self.prune_interval = prune_interval
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._queued = 0                      # writes submitted and not yet answered (loop thread only)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writer: threading.Thread | None = None
        self._readers = ThreadPoolExecutor(readers, thread_name_prefix="imgate-im-read")
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._last_ts = 0
        # uid -> newest committed seq, for users this process has seen (it is the database's only
        # writer): a returning user's auth needs no database round trip. Written by the writer thread
        # after each COMMIT, read by the loop; a stale value is only older, never newer.
        self._seen: dict[int, int] = {}
        self._batch_seqs: dict[int, int] = {}
        self._opening: dict[int, list[asyncio.Future]] = {}  # open_inbox calls of this loop iteration
        self.seen_max = seen_max
        self.max_bytes = max_bytes  # 0: as large as the disk allows
        self.counters = {"commits": 0, "writes": 0, "failed_batches": 0, "checkpoints": 0}
        # WAL checkpoints run on their own thread and connection, so that copying pages into the
        # database file (and its fsync) never holds up a commit; the writer only signals.
        self._checkpoint_due = threading.Event()
        self._checkpointer: threading.Thread | None = None
        self.on_write_conn = None             # tests: called with the writer's connection once open

    # ------------------------------------------------------------------ lifecycle

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                               timeout=self.busy_timeout)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous.upper()}")
        conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
        return conn

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        ready = self._loop.create_future()
        self._writer = threading.Thread(target=self._writer_main, args=(ready,), name="imgate-im-write",
                                        daemon=True)
        self._writer.start()
        await ready  # the schema is migrated before anything reads
        self._checkpointer = threading.Thread(target=self._checkpointer_main, name="imgate-im-checkpoint",
                                              daemon=True)
        self._checkpointer.start()

    async def close(self) -> None:
        writer, self._writer = self._writer, None  # from now on writes are refused, not queued behind the end
        if writer is None:
            return
        self._queue.put(None)  # after everything already queued
        await self._loop.run_in_executor(None, writer.join)
        checkpointer, self._checkpointer = self._checkpointer, None
        if checkpointer is not None:
            self._checkpoint_due.set()  # with the writer gone: one last checkpoint, then it ends
            await self._loop.run_in_executor(None, checkpointer.join)
        self._readers.shutdown(wait=True)
        for conn in self._reader_conns:
            conn.close()

    # ------------------------------------------------------------------ the writer thread

    def _writer_main(self, ready: asyncio.Future) -> None:
        loop = self._loop
        try:
            conn = self._connect()
            conn.execute("PRAGMA wal_autocheckpoint = 0")  # the checkpointer thread does it
            # a batch holding group fan-outs touches thousands of pages: with the default 2 MB cache
            # SQLite spills them to the WAL before the commit, writing them twice
            conn.execute("PRAGMA cache_size = -32768")
            # a statement that may fail half-way inside the batch's transaction (a fan-out's INSERT ...
            # SELECT of one entry per member) first saves each page it changes in a statement journal,
            # a temporary file past 64 KB: two write calls per page, over half of a fan-out's cost.
            # In memory instead; its size is the pages one statement changes (a group's members' pages,
            # the retention sweep's UPDATE of users), all of them in the page cache anyway.
            conn.execute("PRAGMA temp_store = MEMORY")
            migrate(conn)
            if self.max_bytes:  # a write that would grow the file past it fails like a full disk
                page = conn.execute("PRAGMA page_size").fetchone()[0]
                conn.execute(f"PRAGMA max_page_count = {max(1, self.max_bytes // page)}")
            if self.on_write_conn is not None:
                self.on_write_conn(conn)
        except BaseException as e:
            loop.call_soon_threadsafe(_settle, ready, None, e)
            return
        loop.call_soon_threadsafe(_settle, ready, None, None)
        next_prune = time.monotonic() + self.prune_interval
        stop = False
        while not stop:
            try:
                item = self._queue.get(timeout=max(0.01, next_prune - time.monotonic()))
            except queue.Empty:
                item = False
            batch = []
            if item is None:
                stop = True
            elif item is not False:
                batch.append(item)
                while len(batch) < self.batch_max:  # whatever queued meanwhile shares the commit
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        stop = True
                        break
                    batch.append(item)
            if batch:
                results = self._commit(conn, batch)
                loop.call_soon_threadsafe(self._answer, batch, results)
            if time.monotonic() >= next_prune:
                next_prune = time.monotonic() + self.prune_interval
                self._prune(conn)
        conn.close()

    def _commit(self, conn: sqlite3.Connection, batch: list) -> list:
        """Run a batch in one transaction; per item (ok, value). A refused item wrote nothing."""
        results = []
        self._batch_seqs = {}
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for fn, args, _ in batch:
                    try:
                        results.append((True, fn(conn, *args)))
                    except ImError as e:
                        results.append((False, e))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except Exception as e:  # the writer must outlive any failure, or every later send would hang
            self.counters["failed_batches"] += 1
            if isinstance(e, sqlite3.Error):
                log.warning("message store: a batch of %d writes failed and was refused: %s", len(batch), e)
            else:
                log.exception("message store: a batch of %d writes failed and was refused", len(batch))
            err = ImError(E_UNAVAILABLE, f"message store unavailable, nothing stored: {e}")
            return [(False, err)] * len(batch)
        self.counters["commits"] += 1
        self.counters["writes"] += len(batch)
        if self.counters["commits"] % CHECKPOINT_EVERY == 0:
            self._checkpoint_due.set()
        if len(self._seen) + len(self._batch_seqs) > self.seen_max:
            self._seen = {}  # bounded: start over rather than track every user ever seen
        self._seen.update(self._batch_seqs)
        return results

    def _answer(self, batch: list, results: list) -> None:
        self._queued -= len(batch)
        for (_, _, fut), (ok, value) in zip(batch, results):
            _settle(fut, value if ok else None, None if ok else value)

    async def _write(self, fn, *args):
        if self._writer is None:
            raise ImError(E_UNAVAILABLE, "message store is closed")
        if self._queued >= self.max_queue:
            raise ImError(E_UNAVAILABLE, f"message store is overloaded ({self._queued} writes queued)")
        fut = self._loop.create_future()
        self._queued += 1
        self._queue.put((fn, args, fut))
        return await fut

    def _now_ms(self) -> int:
        ts = int(time.time() * 1000)
        if ts <= self._last_ts:  # messages keep the order of their ids even if the clock steps back
            ts = self._last_ts
        self._last_ts = ts
        return ts

    # ------------------------------------------------------------------ writes (writer thread)

    def _store(self, conn: sqlite3.Connection, m: NewMessage) -> Stored:
        row = conn.execute("SELECT id, digest, sender_seq, ts, gseq FROM messages WHERE sender=? AND cmid=?",
                           (m.sender, m.cmid)).fetchone()
        if row is not None:
            if row[1] != m.digest:
                raise ImError(E_CMID_CONFLICT, f"cmid {m.cmid!r} was used before for a different message")
            return Stored(msg_id=row[0], ts=row[3], seqs={m.sender: row[2]}, duplicate=True, gseq=row[4],
                          group=m.group)
        if m.group is not None:
            return self._store_group(conn, m)
        for owner in m.owners:
            if owner != m.sender and conn.execute("SELECT 1 FROM users WHERE uid=?", (owner,)).fetchone() is None:
                raise ImError(E_UNKNOWN_RECEIVER, f"user {owner} has no inbox (unknown receiver)")
        ts = self._now_ms()
        conn.execute("INSERT OR IGNORE INTO users (uid, created) VALUES (?, ?)", (m.sender, ts))
        seqs = {}
        for owner in m.owners:
            seqs[owner] = self._next_seq(conn, owner)
        cur = conn.execute(
            "INSERT INTO messages (sender, cmid, conv, receiver, grp, type, content, digest, sender_seq, ts)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (m.sender, m.cmid, m.conv, m.to, m.group, m.type, m.content, m.digest, seqs[m.sender], ts))
        msg_id = cur.lastrowid
        entries = self._add_entries(conn, seqs, msg_id, m.sender, m.conv, m.to, None, m.type, m.content, ts,
                                    m.cmid, None)
        return Stored(msg_id=msg_id, ts=ts, seqs=seqs, entries=entries)

    def _add_entries(self, conn, seqs: dict, msg_id: int, sender: int, conv: str, to, group, type_: str,
                     content, ts: int, cmid: str, gseq) -> dict:
        """One inbox entry per owner (with the seq given) and its conversation row; owner -> msg JSON."""
        counts = type_ != "read"  # read notices are neither unread nor a conversation's last message
        entries = {}
        for owner, seq in seqs.items():
            unread = 1 if counts and owner != sender else 0
            conn.execute("INSERT INTO inbox (owner, seq, msg_id, conv, unread, ts) VALUES (?, ?, ?, ?, ?, ?)",
                         (owner, seq, msg_id, conv, unread, ts))
            if counts:
                peer = group if group is not None else (to if owner == sender else sender)
                conn.execute(
                    "INSERT INTO conversations (owner, conv, peer, last_seq, last_msg_id, unread)"
                    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (owner, conv) DO UPDATE SET"
                    " last_seq = excluded.last_seq, last_msg_id = excluded.last_msg_id,"
                    " unread = unread + excluded.unread",
                    (owner, conv, peer, seq, msg_id, unread))
            entries[owner] = msg_json(seq, msg_id, conv, sender, to, group, type_, content, ts, cmid, gseq)
        return entries

    def _next_seq(self, conn: sqlite3.Connection, owner: int) -> int:
        seq, min_seq = conn.execute(
            "UPDATE users SET max_seq = max_seq + 1 WHERE uid = ? RETURNING max_seq, min_seq", (owner,)).fetchone()
        keep = self.retention_entries
        if keep and seq - min_seq + 1 > keep:
            self._retain(conn, owner, seq)
        self._batch_seqs[owner] = seq
        return seq

    def _retain(self, conn: sqlite3.Connection, owner: int, seq: int) -> None:
        """The oldest entries beyond ``retention_entries`` go; the seq range stays gapless."""
        new_min = seq - self.retention_entries + 1
        if new_min > 1:
            conn.execute("DELETE FROM inbox WHERE owner = ? AND seq < ?", (owner, new_min))
            conn.execute("UPDATE users SET min_seq = MAX(min_seq, ?) WHERE uid = ?", (new_min, owner))

    def _open_inboxes(self, conn: sqlite3.Connection, uids: list[int]) -> dict[int, int]:
        """uid -> its newest seq, each inbox made if it was not there: two statements per 500 users."""
        now = int(time.time() * 1000)
        conn.executemany("INSERT OR IGNORE INTO users (uid, created) VALUES (?, ?)", [(uid, now) for uid in uids])
        seqs: dict[int, int] = {}
        for i in range(0, len(uids), 500):  # well below SQLite's limit of bound variables
            part = uids[i:i + 500]
            seqs.update(conn.execute(f"SELECT uid, max_seq FROM users WHERE uid IN ({','.join('?' * len(part))})",
                                     part).fetchall())
        for uid, seq in seqs.items():
            self._batch_seqs.setdefault(uid, seq)
        return seqs

    def _mark_read(self, conn: sqlite3.Connection, uid: int, conv: str, seq: int) -> ReadResult:
        members = conv_members(conv)
        group = conv.startswith("g:")  # its conversation row exists if the user has entries of it
        if not group and (members is None or uid not in members):
            raise ImError(E_BAD_REQUEST, f"conv {conv!r} is not a conversation of user {uid}")
        user = conn.execute("SELECT max_seq FROM users WHERE uid = ?", (uid,)).fetchone()
        max_seq = user[0] if user else 0
        if seq > max_seq:
            raise ImError(E_OUT_OF_RANGE, f"seq {seq} is beyond the inbox (max_seq {max_seq})")
        row = conn.execute("SELECT read_seq, peer FROM conversations WHERE owner = ? AND conv = ?",
                           (uid, conv)).fetchone()
        if row is None:
            raise ImError(E_BAD_REQUEST, f"user {uid} has no conversation {conv!r}")
        read_seq, peer = row
        if seq <= read_seq:
            return ReadResult(read_seq, None, peer)
        unread = conn.execute("SELECT COUNT(*) FROM inbox WHERE owner = ? AND conv = ? AND seq > ? AND unread = 1",
                              (uid, conv, seq)).fetchone()[0]
        conn.execute("UPDATE conversations SET read_seq = ?, unread = ? WHERE owner = ? AND conv = ?",
                     (seq, unread, uid, conv))
        # a notice only when the read passes a message from the peer: each read notice lands in the reader's
        # inbox too, so reading up to one's own notices would grow the peer's inbox without end
        passed = conn.execute("SELECT 1 FROM inbox WHERE owner = ? AND conv = ? AND seq > ? AND seq <= ? AND unread = 1"
                              " LIMIT 1", (uid, conv, read_seq, seq)).fetchone()
        if group or passed is None:  # no read notice to a whole group: the reader's position and unread count only
            return ReadResult(seq, None, peer)
        last = conn.execute("SELECT msg_id FROM inbox WHERE owner = ? AND conv = ? AND seq <= ? ORDER BY seq DESC"
                            " LIMIT 1", (uid, conv, seq)).fetchone()
        content = json.dumps({"reader": uid, "seq": seq, "msg_id": str(last[0]) if last else None},
                             separators=(",", ":"))
        cmid = f"{INTERNAL_CMID_PREFIX}read:{conv}:{seq}"
        notice = self._store(conn, NewMessage(uid, cmid, conv, peer, None, "read", content,
                                              digest_of(peer, None, "read", content), (uid, peer)))
        return ReadResult(seq, notice, peer)

    def _checkpointer_main(self) -> None:
        """Copy the WAL into the database file when the writer says so (PASSIVE: it never blocks the
        writer or a reader; what a reader still needs is copied next time)."""
        conn = None
        while True:
            self._checkpoint_due.wait()
            self._checkpoint_due.clear()
            try:
                if conn is None:
                    conn = self._connect()
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                self.counters["checkpoints"] += 1
            except sqlite3.Error as e:  # tried again at the next signal; the WAL only grows meanwhile
                log.warning("message store: WAL checkpoint failed: %s", e)
            if self._writer is None and self._queue.empty():
                break
        if conn is not None:
            conn.close()

    def _prune(self, conn: sqlite3.Connection) -> None:
        """Retention by age: inbox entries older than ``retention_days`` go, message bodies nobody keeps
        are emptied (the row stays: its (sender, cmid) still answers a resend)."""
        if not self.retention_days:
            return
        cutoff = int((time.time() - self.retention_days * 86400) * 1000)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("DELETE FROM inbox WHERE ts < ?", (cutoff,))
            conn.execute("UPDATE users SET min_seq = COALESCE((SELECT MIN(seq) FROM inbox WHERE owner = uid),"
                         " max_seq + 1)")
            conn.execute("UPDATE messages SET content = NULL WHERE ts < ? AND content IS NOT NULL", (cutoff,))
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            log.warning("message store: retention sweep failed (retried next period): %s", e)

    # ------------------------------------------------------------------ reads (reader threads)

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
            conn.execute("PRAGMA query_only=ON")
            self._reader_conns.append(conn)
        return conn

    async def _read(self, fn, *args):
        try:
            return await self._loop.run_in_executor(self._readers, fn, *args)
        except sqlite3.Error as e:
            raise ImError(E_UNAVAILABLE, f"message store unavailable: {e}") from None

    def _max_seq_now(self, uid: int) -> int | None:
        row = self._reader().execute("SELECT max_seq FROM users WHERE uid = ?", (uid,)).fetchone()
        return row[0] if row else None

    def _sync_now(self, uid: int, after: int, limit: int) -> SyncPage:
        conn = self._reader()
        conn.execute("BEGIN")  # one snapshot for the bounds and the page
        try:
            row = conn.execute("SELECT max_seq, min_seq FROM users WHERE uid = ?", (uid,)).fetchone()
            max_seq, min_seq = row if row else (0, 1)
            if after > max_seq:
                raise ImError(E_OUT_OF_RANGE, f"after {after} is beyond the inbox (max_seq {max_seq})")
            rows = conn.execute(
                f"SELECT {_MSG_COLUMNS} FROM inbox i JOIN messages m ON m.id = i.msg_id"
                " WHERE i.owner = ? AND i.seq > ? ORDER BY i.seq LIMIT ?", (uid, after, limit + 1)).fetchall()
        finally:
            conn.execute("COMMIT")
        has_more = len(rows) > limit
        return SyncPage([msg_json(*r) for r in rows[:limit]], has_more, max_seq, min_seq)

    def _conversations_now(self, uid: int, limit: int) -> str:
        rows = self._reader().execute(
            "SELECT c.conv, c.peer, c.unread, c.read_seq, c.last_seq, m.id, m.conv, m.sender, m.receiver, m.grp,"
            " m.type, m.content, m.ts, m.cmid, m.gseq FROM conversations c JOIN messages m ON m.id = c.last_msg_id"
            " WHERE c.owner = ? ORDER BY c.last_seq DESC LIMIT ?", (uid, limit)).fetchall()
        items = [f'{{"conv":{json.dumps(r[0])},"peer":{r[1]},"unread":{r[2]},"read_seq":{r[3]},'
                 f'"last":{msg_json(*r[4:])}}}' for r in rows]
        return "[" + ",".join(items) + "]"

    # ------------------------------------------------------------------ the interface

    async def open_inbox(self, uid: int) -> int:
        seq = self._seen.get(uid)
        if seq is not None:
            return seq
        # the inboxes asked for within one loop iteration (a storm of first connections) go to the
        # writer as one write: one hand-over to its thread and one answer back for all of them
        fut = self._loop.create_future()
        if not self._opening:
            self._loop.call_soon(self._open_queued)
        self._opening.setdefault(uid, []).append(fut)
        return await fut

    def _open_queued(self) -> None:
        opening, self._opening = self._opening, {}
        if self._writer is None:
            err = ImError(E_UNAVAILABLE, "message store is closed")
        elif self._queued >= self.max_queue:
            err = ImError(E_UNAVAILABLE, f"message store is overloaded ({self._queued} writes queued)")
        else:
            done = self._loop.create_future()
            done.add_done_callback(lambda f: self._opened(opening, f))
            self._queued += 1
            self._queue.put((self._open_inboxes, (list(opening),), done))
            return
        for waiters in opening.values():
            for fut in waiters:
                _settle(fut, None, err)

    @staticmethod
    def _opened(opening: dict, done: asyncio.Future) -> None:
        err = done.exception()
        seqs = done.result() if err is None else {}
        for uid, waiters in opening.items():
            for fut in waiters:  # one per caller: a caller cancelled leaves the others their answer
                _settle(fut, seqs.get(uid), err)

    async def has_inbox(self, uid: int) -> bool:
        return uid in self._seen or await self._read(self._max_seq_now, uid) is not None

    async def max_seq(self, uid: int) -> int:
        return await self._read(self._max_seq_now, uid) or 0

    async def send(self, msg: NewMessage) -> Stored:
        return await self._write(self._store, msg)

    async def sync(self, uid: int, after: int, limit: int) -> SyncPage:
        return await self._read(self._sync_now, uid, after, limit)

    async def mark_read(self, uid: int, conv: str, seq: int) -> ReadResult:
        return await self._write(self._mark_read, uid, conv, seq)

    async def conversations(self, uid: int, limit: int) -> str:
        return await self._read(self._conversations_now, uid, limit)


def _settle(fut: asyncio.Future, result, exc) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)
