"""Groups in the SQLite store (the contract is in imgate.im.store, the design in docs/im.md "Groups").

A mixin of :class:`imgate.im.sqlite.SqliteStore`: writes run on its writer thread (``self._write``),
reads on its reader threads (``self._read``). Every group message takes the group's next gseq; in
write mode its transaction also stores the sender's inbox entry and an outbox row (the fan-out job)
naming the other members at that moment, and ``fan_out`` writes their entries and deletes the row in
one transaction: a job is done exactly once, even across a kill -9.
"""

from __future__ import annotations

import json
import sqlite3
import time

from imgate.im.membership import create_note, plan_change, plan_create, switch_mark, system_message
from imgate.im.protocol import E_FORBIDDEN, E_OUT_OF_RANGE, E_UNKNOWN_RECEIVER, ImError
from imgate.im.store import INTERNAL_CMID_PREFIX, GroupLimits, NewMessage, Stored, msg_json


OWED_SCAN_MAX = 4  # waiting jobs of a group a send takes its sender off; beyond, it fans them out


class GroupsMixin:
    # ------------------------------------------------------------------ writes (writer thread)

    def _group_row(self, conn: sqlite3.Connection, group: int) -> tuple:
        row = conn.execute("SELECT owner, members, mode, max_gseq FROM groups WHERE id = ?", (group,)).fetchone()
        if row is None:
            raise ImError(E_UNKNOWN_RECEIVER, f"group {group} does not exist")
        return row

    def _member_role(self, conn: sqlite3.Connection, group: int, uid: int) -> str | None:
        row = conn.execute("SELECT role FROM group_members WHERE grp = ? AND uid = ?", (group, uid)).fetchone()
        return row[0] if row else None

    def _store_group(self, conn: sqlite3.Connection, m: NewMessage) -> Stored:
        """A member's group message (the cmid is new): its gseq; in write mode the sender's own entry
        and the fan-out job to the other members."""
        _, _, mode, _ = self._group_row(conn, m.group)
        if self._member_role(conn, m.group, m.sender) is None and not m.cmid.startswith(INTERNAL_CMID_PREFIX):
            raise ImError(E_FORBIDDEN, f"user {m.sender} is not a member of group {m.group}")
        if mode == "read":  # stored once, whatever the number of members: nothing per member here
            return self._group_message(conn, m, mode, [])
        owners = [u for (u,) in conn.execute("SELECT uid FROM group_members WHERE grp = ?", (m.group,))]
        earlier = self._owed_to(conn, m.group, m.sender)
        stored = self._group_message(conn, m, mode, owners, own_entry=m.sender in owners)
        stored.earlier = earlier
        return stored

    def _owed_to(self, conn: sqlite3.Connection, group: int, uid: int) -> list:
        """Write ``uid``'s entries of the group's jobs not fanned out yet and take it off them, so that
        its next entry follows them: every inbox keeps the group's gseq order. The rest of those jobs
        stays with the consumer, whose rounds share a commit (the JSON is handled in SQL). Past
        OWED_SCAN_MAX waiting jobs (the consumer is behind) they are fanned out here instead, in this
        commit: scanning their owner lists on every send would only make it fall further behind."""
        jobs = conn.execute("SELECT o.id FROM group_outbox o JOIN messages m ON m.id = o.msg_id WHERE m.grp = ?"
                            " ORDER BY o.id", (group,)).fetchall()
        if len(jobs) > OWED_SCAN_MAX:
            return [s for s in (self._fan_out(conn, j) for (j,) in jobs) if s is not None]
        out = []
        rows = conn.execute(
            "SELECT o.id, m.id, m.sender, m.conv, m.type, m.content, m.ts, m.cmid, m.gseq FROM group_outbox o"
            " JOIN messages m ON m.id = o.msg_id WHERE m.grp = ?"
            " AND EXISTS (SELECT 1 FROM json_each(o.owners) WHERE value = ?) ORDER BY o.id", (group, uid)).fetchall()
        for job, msg_id, sender, conv, type_, content, ts, cmid, gseq in rows:
            conn.execute("UPDATE group_outbox SET owners = (SELECT json_group_array(value) FROM json_each(owners)"
                         " WHERE value != ?) WHERE id = ?", (uid, job))
            seqs = {uid: self._next_seq(conn, uid)}
            entries = self._add_entries(conn, seqs, msg_id, sender, conv, None, group, type_, content, ts, cmid, gseq)
            out.append(Stored(msg_id=msg_id, ts=ts, seqs=seqs, entries=entries, gseq=gseq, group=group))
        return out

    def _group_message(self, conn: sqlite3.Connection, m: NewMessage, mode: str, owners: list,
                       own_entry: bool = False) -> Stored:
        """Store ``m`` in the group's timeline; in write mode queue the fan-out to ``owners``, where
        ``own_entry`` writes the sender's entry now (its 23 carries that seq) and leaves it out of
        the job. Jobs are done in id order, so every inbox follows gseq order."""
        ts = self._now_ms()
        gseq = conn.execute("UPDATE groups SET max_gseq = max_gseq + 1 WHERE id = ? RETURNING max_gseq",
                            (m.group,)).fetchone()[0]
        own = own_entry and mode == "write"
        seqs = {m.sender: self._next_seq(conn, m.sender) if own else 0}
        cur = conn.execute(
            "INSERT INTO messages (sender, cmid, conv, receiver, grp, type, content, digest, sender_seq, ts, gseq)"
            " VALUES (?, ?, ?, NULL, ?, ?, ?, ?, ?, ?, ?)",
            (m.sender, m.cmid, m.conv, m.group, m.type, m.content, m.digest, seqs[m.sender], ts, gseq))
        msg_id = cur.lastrowid
        stored = Stored(msg_id=msg_id, ts=ts, seqs=seqs, gseq=gseq, group=m.group)
        if mode == "write":
            if own:
                stored.entries = self._add_entries(conn, seqs, msg_id, m.sender, m.conv, None, m.group, m.type,
                                                   m.content, ts, m.cmid, gseq)
                owners = [u for u in owners if u != m.sender]
            if owners:
                stored.job = conn.execute("INSERT INTO group_outbox (msg_id, owners) VALUES (?, ?)",
                                          (msg_id, json.dumps(sorted(owners)))).lastrowid
        else:
            stored.msg = msg_json(0, msg_id, m.conv, m.sender, None, m.group, m.type, m.content, ts, m.cmid, gseq)
        return stored

    def _system_message(self, conn, group: int, sender: int, type_: str, body: dict, mode: str,
                        owners: list) -> Stored:
        gseq_next = conn.execute("SELECT max_gseq + 1 FROM groups WHERE id = ?", (group,)).fetchone()[0]
        return self._group_message(conn, system_message(group, sender, type_, body, gseq_next), mode, owners)

    def _create_group(self, conn: sqlite3.Connection, owner: int, name: str, members: list,
                      limits: GroupLimits) -> tuple:
        new = plan_create(owner, members, limits)
        ts = int(time.time() * 1000)
        gid = conn.execute("INSERT INTO groups (name, owner, members, mode, created) VALUES (?, ?, ?, ?, ?)",
                           (name, owner, len(new.members), new.mode, ts)).lastrowid
        conn.executemany("INSERT OR IGNORE INTO users (uid, created) VALUES (?, ?)", [(u, ts) for u in new.members])
        conn.executemany("INSERT INTO group_members (grp, uid, role, joined_gseq) VALUES (?, ?, ?, 0)",
                         [(gid, u, new.role(u, owner)) for u in new.members])
        stored = self._system_message(conn, gid, owner, "member", create_note(owner, name, new), new.mode,
                                      new.members)
        return gid, stored

    def _change_members(self, conn: sqlite3.Connection, group: int, actor: int | None, add: list, remove: list,
                        admins: list, limits: GroupLimits) -> tuple:
        owner, count, mode, max_gseq = self._group_row(conn, group)
        role = None if actor is None else self._member_role(conn, group, actor)
        old = [u for (u,) in conn.execute("SELECT uid FROM group_members WHERE grp = ?", (group,))]
        c = plan_change(group, owner, count, mode, actor, role, old, add, remove, admins, limits)
        ts = int(time.time() * 1000)
        # joined after the message that announces the join: a member sees nothing from before it
        conn.executemany("INSERT OR IGNORE INTO users (uid, created) VALUES (?, ?)", [(u, ts) for u in c.added])
        conn.executemany("INSERT INTO group_members (grp, uid, role, joined_gseq) VALUES (?, ?, 'member', ?)",
                         [(group, u, max_gseq) for u in c.added])
        conn.executemany("DELETE FROM group_members WHERE grp = ? AND uid = ?", [(group, u) for u in c.removed])
        conn.executemany("UPDATE group_members SET role = 'admin' WHERE grp = ? AND uid = ? AND role = 'member'",
                         [(group, u) for u in c.admins])
        conn.execute("UPDATE groups SET members = ? WHERE id = ?", (c.count, group))
        out = []
        note = c.member_note()
        if note is not None:
            out.append(self._system_message(conn, group, c.by, "member", note[0], mode, note[1]))
        if c.switched:
            conn.execute("UPDATE groups SET mode = ? WHERE id = ?", (c.mode, group))
            switch = self._system_message(conn, group, c.by, "mode", c.mode_note(), "write", c.members)
            column, value = switch_mark(c.mode, switch.gseq)
            conn.execute(f"UPDATE groups SET {column} = ? WHERE id = ?", (value, group))
            out.append(switch)
        return c.count, c.mode, out, c.switched

    def _fan_out(self, conn: sqlite3.Connection, job: int) -> Stored | None:
        row = conn.execute("SELECT o.owners, m.id, m.sender, m.conv, m.grp, m.type, m.content, m.ts, m.cmid, m.gseq"
                           " FROM group_outbox o JOIN messages m ON m.id = o.msg_id WHERE o.id = ?", (job,)).fetchone()
        if row is None:
            return None  # done before (a second consumer, or a resumed job)
        owners, msg_id, sender, conv, group, type_, content, ts, cmid, gseq = row
        # statements per job, not per member: one UPDATE ... RETURNING gives every owner its next seq
        rows = conn.execute("UPDATE users SET max_seq = max_seq + 1 WHERE uid IN (SELECT value FROM json_each(?))"
                            " RETURNING uid, max_seq, min_seq", (owners,)).fetchall()
        seqs = {u: seq for u, seq, _ in rows}
        keep = self.retention_entries
        for u, seq, min_seq in rows if keep else ():
            if seq - min_seq + 1 > keep:
                self._retain(conn, u, seq)
        self._batch_seqs.update(seqs)
        # the entries and conversation rows from users.max_seq as just updated: no row crosses Python
        unread = 0 if type_ == "read" else 1
        conn.execute("INSERT INTO inbox (owner, seq, msg_id, conv, unread, ts)"
                     " SELECT uid, max_seq, ?, ?, CASE WHEN uid = ? THEN 0 ELSE ? END, ? FROM users"
                     " WHERE uid IN (SELECT value FROM json_each(?))", (msg_id, conv, sender, unread, ts, owners))
        if type_ != "read":
            conn.execute(
                "INSERT INTO conversations (owner, conv, peer, last_seq, last_msg_id, unread)"
                " SELECT uid, ?, ?, max_seq, ?, uid != ? FROM users WHERE uid IN (SELECT value FROM json_each(?))"
                " ON CONFLICT (owner, conv) DO UPDATE SET last_seq = excluded.last_seq,"
                " last_msg_id = excluded.last_msg_id, unread = unread + excluded.unread",
                (conv, group, msg_id, sender, owners))
        conn.execute("DELETE FROM group_outbox WHERE id = ?", (job,))
        # every entry is the same msg but for its leading seq
        tail = msg_json(0, msg_id, conv, sender, None, group, type_, content, ts, cmid, gseq)[len('{"seq":0'):]
        entries = {u: f'{{"seq":{seq}{tail}' for u, seq in seqs.items()}
        return Stored(msg_id=msg_id, ts=ts, seqs=seqs, entries=entries, gseq=gseq, group=group, job=job)

    def _fan_out_next(self, conn: sqlite3.Connection, limit: int) -> list:
        jobs = [j for (j,) in conn.execute("SELECT id FROM group_outbox ORDER BY id LIMIT ?", (limit,))]
        return [s for s in map(lambda j: self._fan_out(conn, j), jobs) if s is not None]

    def _group_ack(self, conn: sqlite3.Connection, uid: int, group: int, gseq: int) -> int:
        _, _, _, max_gseq = self._group_row(conn, group)
        if gseq > max_gseq:
            raise ImError(E_OUT_OF_RANGE, f"gseq {gseq} is beyond group {group}'s timeline (max_gseq {max_gseq})")
        row = conn.execute("UPDATE group_members SET read_gseq = MAX(read_gseq, ?) WHERE grp = ? AND uid = ?"
                           " RETURNING read_gseq", (gseq, group, uid)).fetchone()
        if row is None:
            raise ImError(E_FORBIDDEN, f"user {uid} is not a member of group {group}")
        return row[0]

    # ------------------------------------------------------------------ reads (reader threads)

    def _group_info_now(self, group: int) -> dict | None:
        conn = self._reader()
        row = conn.execute("SELECT name, owner, members, mode, max_gseq FROM groups WHERE id = ?", (group,)).fetchone()
        if row is None:
            return None
        admins = [u for (u,) in conn.execute("SELECT uid FROM group_members WHERE grp = ? AND role = 'admin'"
                                             " ORDER BY uid", (group,))]
        return {"group": group, "name": row[0], "owner": row[1], "admins": admins, "members": row[2],
                "mode": row[3], "max_gseq": row[4]}

    def _group_members_now(self, group: int, gseq: int) -> list:
        return [u for (u,) in self._reader().execute("SELECT uid FROM group_members WHERE grp = ? AND joined_gseq < ?",
                                                     (group, gseq))]

    def _fanout_jobs_now(self, limit: int) -> list:
        return [j for (j,) in self._reader().execute("SELECT id FROM group_outbox ORDER BY id LIMIT ?", (limit,))]

    def _group_pull_now(self, uid: int, group: int, after: int, limit: int) -> tuple:
        conn = self._reader()
        conn.execute("BEGIN")  # one snapshot for membership and the page
        try:
            row = conn.execute("SELECT g.max_gseq, gm.joined_gseq FROM groups g LEFT JOIN group_members gm"
                               " ON gm.grp = g.id AND gm.uid = ? WHERE g.id = ?", (uid, group)).fetchone()
            if row is None:
                raise ImError(E_UNKNOWN_RECEIVER, f"group {group} does not exist")
            max_gseq, joined = row
            if joined is None:
                raise ImError(E_FORBIDDEN, f"user {uid} is not a member of group {group}")
            if after > max_gseq:
                raise ImError(E_OUT_OF_RANGE, f"after {after} is beyond group {group}'s timeline (max_gseq {max_gseq})")
            rows = conn.execute(
                "SELECT 0, id, conv, sender, receiver, grp, type, content, ts, cmid, gseq FROM messages"
                " WHERE grp = ? AND gseq > ? ORDER BY gseq LIMIT ?", (group, max(after, joined), limit + 1)).fetchall()
        finally:
            conn.execute("COMMIT")
        return [msg_json(*r) for r in rows[:limit]], len(rows) > limit, max_gseq

    def _read_groups_now(self, uid: int) -> list:
        """Groups with messages in their timeline only: read mode, or back in write mode with the read
        mode's messages not pulled yet; ``max_gseq`` is the last of those."""
        rows = self._reader().execute(
            "SELECT g.id, CASE g.mode WHEN 'read' THEN g.max_gseq ELSE g.read_until END,"
            " MAX(gm.read_gseq, gm.joined_gseq, g.read_from), g.mode FROM group_members gm"
            " JOIN groups g ON g.id = gm.grp WHERE gm.uid = ? AND (g.mode = 'read' OR g.read_until > 0)"
            " ORDER BY g.id", (uid,)).fetchall()
        return [{"group": g, "max_gseq": m, "cursor": c, "mode": mode} for g, m, c, mode in rows]

    # ------------------------------------------------------------------ the interface

    async def create_group(self, owner: int, name: str, members: list, limits: GroupLimits) -> tuple:
        return await self._write(self._create_group, owner, name, members, limits)

    async def change_members(self, group: int, actor: int | None, add: list, remove: list, admins: list,
                             limits: GroupLimits) -> tuple:
        return await self._write(self._change_members, group, actor, add, remove, admins, limits)

    async def group_info(self, group: int) -> dict | None:
        return await self._read(self._group_info_now, group)

    async def group_members(self, group: int, gseq: int) -> list:
        return await self._read(self._group_members_now, group, gseq)

    async def fanout_jobs(self, limit: int) -> list:
        return await self._read(self._fanout_jobs_now, limit)

    async def fan_out(self, job: int) -> Stored | None:
        return await self._write(self._fan_out, job)

    async def fan_out_next(self, limit: int) -> list:
        return await self._write(self._fan_out_next, limit)

    async def group_pull(self, uid: int, group: int, after: int, limit: int) -> tuple:
        return await self._read(self._group_pull_now, uid, group, after, limit)

    async def group_ack(self, uid: int, group: int, gseq: int) -> int:
        return await self._write(self._group_ack, uid, group, gseq)

    async def has_read_groups(self) -> bool:
        return await self._read(lambda: self._reader().execute(
            "SELECT 1 FROM groups WHERE mode = 'read' LIMIT 1").fetchone() is not None)

    async def read_groups(self, uid: int) -> list:
        return await self._read(self._read_groups_now, uid)
