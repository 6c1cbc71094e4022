"""Groups in the MariaDB store: the contract of imgate.im.store, as imgate.im.sqlite_groups does it.

A mixin of :class:`imgate.im.mysql.MariaDbStore`; every method is one transaction run by its ``_run``
(retried on conflicts and failover). The group's row is locked first (``SELECT ... FOR UPDATE``) by every
write that touches the group, so that sends, membership changes and switches of one group are ordered
by it: gseq is ``max_gseq + 1`` under that lock, handed out only in the transaction that stores the
message. Reads inside a write are locking reads: they see the newest commit, not the snapshot the
transaction's first read took (REPEATABLE READ), which may predate the change that held the lock
before. A fan-out job locks its outbox row: a second consumer waits, then finds it gone (on the other
Galera node the second commit fails certification instead, and its re-run finds it gone).
"""

from __future__ import annotations

import json
import os
import time

from imgate.im.membership import create_note, plan_change, plan_create, switch_mark, system_message
from imgate.im.protocol import E_FORBIDDEN, E_OUT_OF_RANGE, E_UNKNOWN_RECEIVER, ImError
from imgate.im.store import INTERNAL_CMID_PREFIX, GroupLimits, NewMessage, Stored, msg_json


class MariaDbGroupsMixin:
    supports_groups = True

    # ------------------------------------------------------------------ writes (inside _run)

    async def _group_row(self, cur, group: int) -> tuple:
        await cur.execute("SELECT owner, members, mode, max_gseq FROM `groups` WHERE id = %s FOR UPDATE", (group,))
        row = await cur.fetchone()
        if row is None:
            raise ImError(E_UNKNOWN_RECEIVER, f"group {group} does not exist")
        return row

    async def _member_role(self, cur, group: int, uid: int) -> str | None:
        await cur.execute("SELECT role FROM group_members WHERE grp = %s AND uid = %s LOCK IN SHARE MODE", (group, uid))
        row = await cur.fetchone()
        return row[0] if row else None

    async def _members(self, cur, group: int) -> list:
        await cur.execute("SELECT uid FROM group_members WHERE grp = %s LOCK IN SHARE MODE", (group,))
        return [u for (u,) in await cur.fetchall()]

    async def _store_group(self, cur, m: NewMessage) -> Stored:
        """A group message whose cmid is new: its gseq, and in write mode its fan-out job."""
        _, _, mode, _ = await self._group_row(cur, m.group)
        if await self._member_role(cur, m.group, m.sender) is None and not m.cmid.startswith(INTERNAL_CMID_PREFIX):
            raise ImError(E_FORBIDDEN, f"user {m.sender} is not a member of group {m.group}")
        if mode == "read":
            return await self._group_message(cur, m, mode, [])
        owners = await self._members(cur, m.group)
        earlier = await self._owed_to(cur, m.group)
        stored = await self._group_message(cur, m, mode, owners, own_entry=m.sender in owners)
        stored.earlier = earlier
        return stored

    async def _owed_to(self, cur, group: int) -> list:
        """The group's jobs not fanned out yet, done in this transaction before the new message, so that
        the sender's entry of it (written now, its 23 carries the seq) follows them in every inbox. (The
        SQLite store takes only the sender off them; here a send of a group whose consumer is behind
        does the whole of it: simpler, and the jobs are few while the consumers keep up.)"""
        await cur.execute("SELECT id FROM group_outbox WHERE grp = %s ORDER BY gseq FOR UPDATE", (group,))
        done = []
        for (j,) in await cur.fetchall():
            stored = await self._fan_out_one(cur, j)
            if stored is not None and stored.entries:
                done.append(stored)
        return done

    async def _group_message(self, cur, m: NewMessage, mode: str, owners: list, own_entry: bool = False) -> Stored:
        """Store ``m`` in the group's timeline (the group's row is locked); in write mode queue the
        fan-out to ``owners``; ``own_entry``: the sender's entry now (its 23 carries the seq), not in the job."""
        ts = self._now_ms()
        await cur.execute("UPDATE `groups` SET max_gseq = LAST_INSERT_ID(max_gseq + 1) WHERE id = %s", (m.group,))
        gseq = cur.lastrowid
        own = own_entry and mode == "write"
        seqs = {m.sender: await self._next_seq(cur, m.sender) if own else 0}
        await cur.execute(
            "INSERT INTO messages (sender, cmid, conv, receiver, grp, type, content, digest, sender_seq, ts, gseq)"
            " VALUES (%s, %s, %s, NULL, %s, %s, %s, %s, %s, %s, %s)",
            (m.sender, m.cmid, m.conv, m.group, m.type, m.content, m.digest, seqs[m.sender], ts, gseq))
        msg_id = cur.lastrowid
        stored = Stored(msg_id=msg_id, ts=ts, seqs=seqs, gseq=gseq, group=m.group)
        if mode == "write":
            if own:
                stored.entries = await self._add_entries(cur, seqs, msg_id, m.sender, m.conv, None, m.group, m.type,
                                                         m.content, ts, m.cmid, gseq)
                owners = [u for u in owners if u != m.sender]
            if owners:
                await cur.execute("INSERT INTO group_outbox (msg_id, grp, gseq, owners, created)"
                                  " VALUES (%s, %s, %s, %s, %s)", (msg_id, m.group, gseq, json.dumps(sorted(owners)), ts))
                stored.job = cur.lastrowid
        else:
            stored.msg = msg_json(0, msg_id, m.conv, m.sender, None, m.group, m.type, m.content, ts, m.cmid, gseq)
        return stored

    async def _system_message(self, cur, group: int, sender: int, type_: str, body: dict, mode: str,
                              owners: list, token: str = "") -> Stored:
        await cur.execute("SELECT max_gseq + 1 FROM `groups` WHERE id = %s FOR UPDATE", (group,))
        gseq_next = (await cur.fetchone())[0]
        m = system_message(group, sender, type_, body, gseq_next, token)
        return await self._group_message(cur, m, mode, owners)

    async def _open_users(self, cur, uids, ts: int) -> None:
        if uids:
            await cur.executemany("INSERT INTO users (uid, created) VALUES (%s, %s) ON DUPLICATE KEY UPDATE uid = uid",
                                  [(u, ts) for u in uids])  # (INSERT IGNORE would log a warning per known user)

    async def _create_group(self, cur, owner: int, name: str, members: list, limits: GroupLimits, token: bytes,
                            resumed: bool = False) -> tuple:
        """``token``: this request's, stored with the group; a re-run after a lost connection (the COMMIT
        may have happened) looks it up and answers the group it finds instead of making another."""
        if resumed:
            await cur.execute("SELECT id FROM `groups` WHERE create_token = %s", (token,))
            row = await cur.fetchone()
            if row is not None:
                return row[0], await self._created_again(cur, row[0])
        new = plan_create(owner, members, limits)
        ts = int(time.time() * 1000)
        await cur.execute("INSERT INTO `groups` (name, owner, members, mode, created, create_token)"
                          " VALUES (%s, %s, %s, %s, %s, %s)", (name, owner, len(new.members), new.mode, ts, token))
        gid = cur.lastrowid
        await self._open_users(cur, new.members, ts)
        await cur.executemany("INSERT INTO group_members (grp, uid, role, joined_gseq) VALUES (%s, %s, %s, 0)",
                              [(gid, u, new.role(u, owner)) for u in new.members])
        stored = await self._system_message(cur, gid, owner, "member", create_note(owner, name, new), new.mode,
                                            new.members)
        return gid, stored

    async def _created_again(self, cur, group: int) -> Stored:
        """The opening message of a group an earlier attempt created, as that attempt would have answered
        it (its answer was lost: nothing that follows a commit happened): the fan-out job if still
        waiting (the consumer does it once either way), the msg in read mode (pushed to the room)."""
        await cur.execute("SELECT m.id, m.sender, m.conv, m.type, m.content, m.ts, m.cmid, m.gseq, o.id, g.mode"
                          " FROM messages m JOIN `groups` g ON g.id = m.grp LEFT JOIN group_outbox o ON o.msg_id = m.id"
                          " WHERE m.grp = %s AND m.gseq = 1", (group,))
        row = await cur.fetchone()
        return _stored_again(group, row[:-1], row[-1] == "read")

    async def _changed_again(self, cur, group: int, by: int, token: str, mode: str) -> tuple:
        """([Stored], switched) of the change an earlier attempt with ``token`` committed (its answer
        was lost), as that attempt would have answered; ([], False) if it did not commit. ``mode``:
        the group's mode now."""
        cmids = [system_message(group, by, t, {}, 0, token).cmid for t in ("member", "mode")]
        await cur.execute("SELECT m.id, m.sender, m.conv, m.type, m.content, m.ts, m.cmid, m.gseq, o.id"
                          " FROM messages m LEFT JOIN group_outbox o ON o.msg_id = m.id"
                          " WHERE m.sender = %s AND m.cmid IN (%s, %s) ORDER BY m.gseq", (by, *cmids))
        rows = await cur.fetchall()
        switched = any(r[3] == "mode" for r in rows)
        before = ("write" if mode == "read" else "read") if switched else mode  # the member note's mode
        return [_stored_again(group, r, r[3] == "member" and before == "read") for r in rows], switched

    async def _change_members(self, cur, group: int, actor: int | None, add: list, remove: list, admins: list,
                              limits: GroupLimits, token: str, resumed: bool = False) -> tuple:
        """``token``: this request's, in the cmids of its messages; a re-run after a lost connection
        (the COMMIT may have happened) answers the change it finds instead of planning it again on
        the changed members (which would find nothing to do and answer no messages, no switch)."""
        owner, count, mode, max_gseq = await self._group_row(cur, group)
        if resumed:
            stored, switched = await self._changed_again(cur, group, owner if actor is None else actor, token, mode)
            if stored:
                return count, mode, stored, switched
        role = None if actor is None else await self._member_role(cur, group, actor)
        c = plan_change(group, owner, count, mode, actor, role, await self._members(cur, group), add, remove,
                        admins, limits)
        ts = int(time.time() * 1000)
        await self._open_users(cur, c.added, ts)
        if c.added:  # joined after the message that announces the join: a member sees nothing from before it
            await cur.executemany("INSERT INTO group_members (grp, uid, role, joined_gseq) VALUES (%s, %s, 'member', %s)",
                                  [(group, u, max_gseq) for u in c.added])
        if c.removed:
            await cur.executemany("DELETE FROM group_members WHERE grp = %s AND uid = %s", [(group, u) for u in c.removed])
        if c.admins:
            await cur.executemany("UPDATE group_members SET role = 'admin' WHERE grp = %s AND uid = %s AND role = 'member'",
                                  [(group, u) for u in c.admins])
        await cur.execute("UPDATE `groups` SET members = %s WHERE id = %s", (c.count, group))
        out = []
        note = c.member_note()
        if note is not None:
            out.append(await self._system_message(cur, group, c.by, "member", note[0], mode, note[1], token))
        if c.switched:
            await cur.execute("UPDATE `groups` SET mode = %s WHERE id = %s", (c.mode, group))
            switch = await self._system_message(cur, group, c.by, "mode", c.mode_note(), "write", c.members, token)
            column, value = switch_mark(c.mode, switch.gseq)
            await cur.execute(f"UPDATE `groups` SET {column} = %s WHERE id = %s", (value, group))
            out.append(switch)
        return c.count, c.mode, out, c.switched

    async def _fan_out(self, cur, job: int, resumed: bool = False) -> Stored | None:
        """The job and, first, its group's older jobs still pending (locked in gseq order: a concurrent
        fan-out of one of them finishes first, and then it is gone)."""
        await cur.execute("SELECT grp, gseq FROM group_outbox WHERE id = %s", (job,))
        row = await cur.fetchone()
        if row is None:
            return None  # done before (another consumer, a redelivery, the sweep)
        await cur.execute("SELECT id FROM group_outbox WHERE grp = %s AND gseq <= %s ORDER BY gseq FOR UPDATE", row)
        done = []
        for (j,) in await cur.fetchall():
            stored = await self._fan_out_one(cur, j)
            if stored is not None:
                done.append(stored)
        if not done or done[-1].job != job:
            return None
        done[-1].before = done[:-1]
        return done[-1]

    async def _fan_out_one(self, cur, job: int) -> Stored | None:
        await cur.execute("SELECT o.owners, m.id, m.sender, m.conv, m.grp, m.type, m.content, m.ts, m.cmid, m.gseq"
                          " FROM group_outbox o JOIN messages m ON m.id = o.msg_id WHERE o.id = %s FOR UPDATE", (job,))
        row = await cur.fetchone()
        if row is None:
            return None  # done before (another consumer, a redelivery, the sweep)
        owners, msg_id, sender, conv, group, type_, content, ts, cmid, gseq = row
        seqs = {}
        for u in sorted(json.loads(owners)):  # one lock order for every transaction
            seq = await self._next_seq(cur, u)
            if seq is None:  # an inbox removed by hand: the member gets one
                await cur.execute("INSERT INTO users (uid, max_seq, created) VALUES (%s, 1, %s)", (u, ts))
                seq = 1
            seqs[u] = seq
        entries = await self._add_entries(cur, seqs, msg_id, sender, conv, None, group, type_, content, ts, cmid, gseq)
        await cur.execute("DELETE FROM group_outbox WHERE id = %s", (job,))
        return Stored(msg_id=msg_id, ts=ts, seqs=seqs, entries=entries, gseq=gseq, group=group, job=job)

    async def _group_ack(self, cur, uid: int, group: int, gseq: int, resumed: bool = False) -> int:
        await cur.execute("SELECT max_gseq FROM `groups` WHERE id = %s", (group,))
        row = await cur.fetchone()
        if row is None:
            raise ImError(E_UNKNOWN_RECEIVER, f"group {group} does not exist")
        if gseq > row[0]:
            raise ImError(E_OUT_OF_RANGE, f"gseq {gseq} is beyond group {group}'s timeline (max_gseq {row[0]})")
        await cur.execute("UPDATE group_members SET read_gseq = GREATEST(read_gseq, %s) WHERE grp = %s AND uid = %s",
                          (gseq, group, uid))
        await cur.execute("SELECT read_gseq FROM group_members WHERE grp = %s AND uid = %s", (group, uid))
        row = await cur.fetchone()
        if row is None:
            raise ImError(E_FORBIDDEN, f"user {uid} is not a member of group {group}")
        return row[0]

    # ------------------------------------------------------------------ reads (inside _run)

    async def _group_info_now(self, cur, group: int, resumed: bool = False) -> dict | None:
        await cur.execute("SELECT name, owner, members, mode, max_gseq FROM `groups` WHERE id = %s", (group,))
        row = await cur.fetchone()
        if row is None:
            return None
        await cur.execute("SELECT uid FROM group_members WHERE grp = %s AND role = 'admin' ORDER BY uid", (group,))
        admins = [u for (u,) in await cur.fetchall()]
        return {"group": group, "name": row[0], "owner": row[1], "admins": admins, "members": row[2],
                "mode": row[3], "max_gseq": row[4]}

    async def _group_members_now(self, cur, group: int, gseq: int, resumed: bool = False) -> list:
        await cur.execute("SELECT uid FROM group_members WHERE grp = %s AND joined_gseq < %s", (group, gseq))
        return [u for (u,) in await cur.fetchall()]

    async def _jobs_now(self, cur, sql: str, args: tuple, resumed: bool = False) -> list:
        await cur.execute(sql, args)
        return [j for (j,) in await cur.fetchall()]

    async def _group_pull_now(self, cur, uid: int, group: int, after: int, limit: int, resumed: bool = False) -> tuple:
        await cur.execute("SELECT g.max_gseq, gm.joined_gseq FROM `groups` g LEFT JOIN group_members gm"
                          " ON gm.grp = g.id AND gm.uid = %s WHERE g.id = %s", (uid, group))
        row = await cur.fetchone()  # (REPEATABLE READ: the page below comes from the same snapshot)
        if row is None:
            raise ImError(E_UNKNOWN_RECEIVER, f"group {group} does not exist")
        max_gseq, joined = row
        if joined is None:
            raise ImError(E_FORBIDDEN, f"user {uid} is not a member of group {group}")
        if after > max_gseq:
            raise ImError(E_OUT_OF_RANGE, f"after {after} is beyond group {group}'s timeline (max_gseq {max_gseq})")
        await cur.execute("SELECT 0, id, conv, sender, receiver, grp, type, content, ts, cmid, gseq FROM messages"
                          " WHERE grp = %s AND gseq > %s ORDER BY gseq LIMIT %s", (group, max(after, joined), limit + 1))
        rows = await cur.fetchall()
        return [msg_json(*r) for r in rows[:limit]], len(rows) > limit, max_gseq

    async def _read_groups_now(self, cur, uid: int, resumed: bool = False) -> list:
        await cur.execute(
            "SELECT g.id, CASE g.mode WHEN 'read' THEN g.max_gseq ELSE g.read_until END,"
            " GREATEST(gm.read_gseq, gm.joined_gseq, g.read_from), g.mode FROM group_members gm"
            " JOIN `groups` g ON g.id = gm.grp WHERE gm.uid = %s AND (g.mode = 'read' OR g.read_until > 0)"
            " ORDER BY g.id", (uid,))
        return [{"group": g, "max_gseq": m, "cursor": c, "mode": mode} for g, m, c, mode in await cur.fetchall()]

    # ------------------------------------------------------------------ the interface

    async def create_group(self, owner: int, name: str, members: list, limits: GroupLimits) -> tuple:
        return await self._run(self._create_group, owner, name, members, limits, os.urandom(16))

    async def change_members(self, group: int, actor: int | None, add: list, remove: list, admins: list,
                             limits: GroupLimits) -> tuple:
        return await self._run(self._change_members, group, actor, add, remove, admins, limits, os.urandom(8).hex())

    async def group_info(self, group: int) -> dict | None:
        return await self._run(self._group_info_now, group)

    async def group_members(self, group: int, gseq: int) -> list:
        return await self._run(self._group_members_now, group, gseq)

    async def fanout_jobs(self, limit: int) -> list:
        return await self._run(self._jobs_now, "SELECT id FROM group_outbox ORDER BY created, id LIMIT %s", (limit,))

    async def fanout_jobs_older(self, age: float, limit: int) -> list:
        cutoff = int((time.time() - age) * 1000)
        return await self._run(self._jobs_now, "SELECT id FROM group_outbox WHERE created < %s ORDER BY created, id"
                                               " LIMIT %s", (cutoff, limit))

    async def fan_out(self, job: int) -> Stored | None:
        return await self._run(self._fan_out, job)

    async def group_pull(self, uid: int, group: int, after: int, limit: int) -> tuple:
        return await self._run(self._group_pull_now, uid, group, after, limit)

    async def group_ack(self, uid: int, group: int, gseq: int) -> int:
        return await self._run(self._group_ack, uid, group, gseq)

    async def has_read_groups(self) -> bool:
        return bool(await self._run(self._jobs_now, "SELECT 1 FROM `groups` WHERE mode = 'read' LIMIT 1", ()))

    async def read_groups(self, uid: int) -> list:
        return await self._run(self._read_groups_now, uid)


__all__ = ["MariaDbGroupsMixin"]


def _stored_again(group: int, row: tuple, read_mode: bool) -> Stored:
    """A group message an earlier attempt stored, as its Stored: the fan-out job if still waiting (the
    consumer does it once either way), the msg to push to the room if it was stored in read mode."""
    msg_id, sender, conv, type_, content, ts, cmid, gseq, job = row
    msg = msg_json(0, msg_id, conv, sender, None, group, type_, content, ts, cmid, gseq) if read_mode else None
    return Stored(msg_id=msg_id, ts=ts, seqs={sender: 0}, gseq=gseq, job=job, group=group, msg=msg)
