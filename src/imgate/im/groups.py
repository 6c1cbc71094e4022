"""Groups in imService (docs/im.md "Groups"): membership, the write fan-out consumer, read-mode pulls.

A mixin of :class:`imgate.im.service.ImService`. A group message is stored with its gseq; in write mode
(at most ``group_write_limit`` members) the same transaction writes the sender's own entry and queues
a fan-out job to the other members (the outbox), and the sender's 23 carries its own seq plus the
message's ``group`` and ``gseq``. The **consumer** (seed: consumerService) takes the jobs from the
store, oldest first, and has the store write each member's entry (one transaction per round of
jobs, which deletes them), then pushes the entries through the ordinary delivery path. Embedded, it
runs in the node's process; after a kill -9 it resumes from the outbox at start. In read mode the
message is stored once; its 23 has ``seq`` 0 (no inbox entry) and the ``gseq``; online members get it
pushed through the group's room, the others learn from SYNC's ``groups`` and pull with op 28.
"""

from __future__ import annotations

import asyncio
import json
import logging

from imgate.im.protocol import E_BAD_REQUEST, E_CONFLICT, E_UNKNOWN_RECEIVER, ImError, get_int
from imgate.im.protocol import OP_MSG_PUSH
from imgate.im.store import GroupLimits, Stored
from imgate.protocol import KIND_JOIN, KIND_LEAVE, KIND_ROOM, IM_ROOM_PREFIX, PushJob

log = logging.getLogger("imgate.im.groups")

MAX_NAME = 128
FANOUT_BATCH = 16  # jobs fanned out per round of the consumer (one transaction in SqliteStore)
# woken by a new job while sends keep arriving, the consumer waits this long so that the jobs of the
# next few sends share its round: jobs sharing a commit share the inbox pages they dirty (4 jobs a
# commit cost half the CPU per message of 1 in SqliteStore), which is worth more than the wait under load
FANOUT_LINGER = 0.01
# ... but only when its last round with jobs ended less than this long before the wake: a job after a
# pause has nothing to share its round with, so it goes at once
FANOUT_BUSY_GAP = 0.1


def group_room(group: int) -> str:
    """The room of a read-mode group on the proxies: its members' connections are in it."""
    return f"{IM_ROOM_PREFIX}g:{group}"


def _uids(body: dict, name: str, limit: int) -> list:
    v = body.get(name, [])
    if not isinstance(v, list):
        raise ImError(E_BAD_REQUEST, f"'{name}' must be a list of user ids")
    if len(v) > limit:
        raise ImError(E_CONFLICT, f"'{name}' holds {len(v)} users, beyond group_max_members ({limit})")
    out = []
    for u in v:
        if type(u) is float and u.is_integer():
            u = int(u)  # 5.0 is the integer 5 in JSON, as in get_int
        if isinstance(u, bool) or not isinstance(u, int) or not 0 < u < 1 << 63:
            raise ImError(E_BAD_REQUEST, f"'{name}' holds {json.dumps(u)[:40]}, not a user id (an integer > 0)")
        out.append(u)
    return out


class GroupsMixin:
    groups: GroupLimits

    def _groups_init(self, groups: GroupLimits | None, consumer: bool) -> None:
        self.groups = groups or GroupLimits()
        self.run_consumer = consumer
        # until the store says none is: then auths skip the room lookup (a shared store is asked again)
        self._any_read_mode = True
        self._fanout_wake = asyncio.Event()
        self.fanout_linger = FANOUT_LINGER
        self.fanout_busy_gap = FANOUT_BUSY_GAP
        self._fanout_busy_at = float("-inf")  # loop time the last round that found jobs ended
        self._consumer: asyncio.Task | None = None
        # another process fans out (the consumer role): async fn(stored) that tells it (imgate.im.fanout)
        self.fanout_publish = None
        self.counters.update({"fanout_jobs": 0, "fanout_entries": 0})

    async def _start_groups(self) -> None:
        self._any_read_mode = await self.store.has_read_groups()
        if self.run_consumer:
            self._consumer = asyncio.get_running_loop().create_task(self._consume())

    def _stop_consumer(self) -> None:
        if self._consumer is not None:
            self._consumer.cancel()
            self._consumer = None

    # ------------------------------------------------------------------ the consumer role

    async def _consume(self) -> None:
        """Fan out every job in the outbox, those left by a crash first; then wait for new ones."""
        while True:
            self._fanout_wake.clear()  # before reading: a job queued meanwhile wakes the next round
            try:
                done = await self.store.fan_out_next(FANOUT_BATCH)
            except Exception as e:  # the store is away: the jobs stay in the outbox, retried
                log.warning("group fan-out round failed (retried): %s", e)
                await asyncio.sleep(1.0)
                continue
            for stored in [d for s in done for d in s.before + [s]]:  # a store's older jobs done first
                self.counters["fanout_jobs"] += 1
                self.counters["fanout_entries"] += len(stored.entries)
                await self._deliver(stored, None)
            loop = asyncio.get_running_loop()
            if done:
                self._fanout_busy_at = loop.time()
                continue
            await self._fanout_wake.wait()
            if loop.time() - self._fanout_busy_at < self.fanout_busy_gap:  # sends keep arriving
                await asyncio.sleep(self.fanout_linger)

    async def _after_group_store(self, stored: Stored, origin: tuple | None) -> None:
        """What follows a new group message's commit: in write mode the entries of the older jobs its
        transaction fanned out, then the sender's own entry to its other connections (the sending one
        learns the seq from its 23), and the consumer wakes for the job; in read mode the push to the
        group's room."""
        if stored.job is not None:
            self._fanout_wake.set()
            if self.fanout_publish is not None:
                await self.fanout_publish(stored)
        for older in stored.earlier:
            await self._deliver(older, None)
        if stored.entries:
            await self._deliver(stored, origin)
        elif stored.msg is not None:  # the sending connection too: its 23 has no seq to go by
            await self._deliver_read_mode(stored)

    async def _deliver_read_mode(self, stored: Stored) -> None:
        """Op 24 to the group's room on the proxies: one encode and one walk of the room per proxy,
        whatever the number of members (their connections joined it, see _rooms)."""
        job = PushJob(KIND_ROOM, OP_MSG_PUSH, ('{"msgs":[' + stored.msg + "]}").encode(), room_id=group_room(stored.group))
        try:
            if self._publish_now is not None:
                self._publish_now(job)
            else:
                await self.bus.publish(job)
        except Exception as e:  # stored: members learn from SYNC's groups
            log.warning("push of group msg %d failed: %s", stored.msg_id, e)

    async def _rooms(self, group: int, kind: str, uids) -> None:
        """The online connections of ``uids`` join (KIND_JOIN) or leave (KIND_LEAVE) the group's room,
        in order with the pushes on each proxy."""
        uids = list(uids)
        if not uids:
            return
        try:
            found = self._sessions_now(uids) if self._sessions_now is not None else await self.cache.sessions(uids)
            by_server: dict[str, list[int]] = {}
            for sessions in found.values():
                for s in sessions:
                    by_server.setdefault(s.server, []).append(s.conn_id)
            for server, conn_ids in by_server.items():
                job = PushJob(kind, 0, b"", server, conn_ids, group_room(group))
                if self._publish_now is not None:
                    self._publish_now(job)
                else:
                    await self.bus.publish(job)
        except Exception as e:  # their clients still learn of the group's news from SYNC
            log.warning("room %s of group %d not updated for %d users: %s", kind, group, len(uids), e)

    async def group_rooms(self, uid: int) -> list:
        """The rooms a new connection of ``uid`` joins at auth: those of its read-mode groups."""
        if uid < 1:
            return []
        if not self._any_read_mode:
            if not self.store.shared:
                return []
            # another process (an im or logic role) may have made one since: ask until the store says
            # so; from then on every auth looks its user's groups up
            self._any_read_mode = await self.store.has_read_groups()
            if not self._any_read_mode:
                return []
        return [group_room(g["group"]) for g in await self.store.read_groups(uid) if g["mode"] == "read"]

    # ------------------------------------------------------------------ operations

    async def create_group(self, owner: int, body: dict) -> dict:
        name = body.get("name", "")
        if not isinstance(name, str) or len(name) > MAX_NAME:
            raise ImError(E_BAD_REQUEST, f"'name' must be a string of at most {MAX_NAME} characters")
        try:  # before the store: a lone surrogate would fail its whole batch
            name.encode()
        except UnicodeEncodeError:
            raise ImError(E_BAD_REQUEST, "'name' is not valid UTF-8 text (it holds a lone surrogate)") from None
        members = _uids(body, "members", self.groups.max_members)
        gid, stored = await self.store.create_group(owner, name, members, self.groups)
        if stored.msg is not None:  # large at once: read mode; rooms first, so the creation reaches them
            self._any_read_mode = True
            await self._rooms(gid, KIND_JOIN, set(members) | {owner})
        await self._after_group_store(stored, None)
        return {"group": gid}

    async def change_members(self, group: int, actor: int | None, body: dict) -> dict:
        add = _uids(body, "add", self.groups.max_members)
        remove = _uids(body, "remove", self.groups.max_members)
        admins = _uids(body, "admins", self.groups.max_members)
        count, mode, stored, switched = await self.store.change_members(group, actor, add, remove, admins,
                                                                         self.groups)
        if mode == "read":
            self._any_read_mode = True
        # rooms first: in read mode the announcement goes through the room, to the new members too
        if mode == "read" and switched:
            await self._rooms(group, KIND_JOIN, await self.store.group_members(group, 1 << 62))
        elif mode == "read":
            await self._rooms(group, KIND_LEAVE, remove)
            await self._rooms(group, KIND_JOIN, add)
        elif switched:
            await self._rooms(group, KIND_LEAVE, set(remove) | set(await self.store.group_members(group, 1 << 62)))
        for s in stored:
            await self._after_group_store(s, None)
        return {"members": count, "mode": mode}

    async def group_info(self, group: int) -> dict:
        info = await self.store.group_info(group)
        if info is None:
            raise ImError(E_UNKNOWN_RECEIVER, f"group {group} does not exist")
        return info

    async def group_pull(self, uid: int, req: dict) -> bytes:
        group = get_int(req, "group", lo=1)
        after = get_int(req, "after", lo=0, default=0)
        limit = get_int(req, "limit", lo=1, hi=self.sync_max_limit, default=min(100, self.sync_max_limit))
        msgs, has_more, max_gseq = await self.store.group_pull(uid, group, after, limit)
        return (f'{{"group":{group},"has_more":{"true" if has_more else "false"},"max_gseq":{max_gseq},'
                f'"msgs":[' + ",".join(msgs) + "]}").encode()

    async def group_ack(self, uid: int, req: dict) -> None:
        group = get_int(req, "group", lo=1)
        gseq = get_int(req, "gseq", lo=0)
        await self.store.group_ack(uid, group, gseq)

    async def sync_groups(self, uid: int) -> str:
        """SYNC's ``groups``: the member's read-mode groups with news (max_gseq beyond the cursor)."""
        groups = await self.store.read_groups(uid)
        return json.dumps([{"group": g["group"], "max_gseq": g["max_gseq"], "cursor": g["cursor"]}
                           for g in groups if g["max_gseq"] > g["cursor"]], separators=(",", ":"))


__all__ = ["GroupsMixin"]
