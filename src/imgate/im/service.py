"""The IM service: the IM operations (docs/im.md, ops 22-27 and 32) on top of a MessageStore.

The proxy hands IM frames to logic (``Logic.receive``), which calls :meth:`ImService.receive`; the
store's work runs off the event loop (see imgate.im.sqlite), so the proxy's loop never waits on disk.
A send is answered (op 23) only after its transaction committed. Delivery (op 24) goes through the
ordinary push path: the user's sessions from the cache service, one ``KIND_CONNS`` push job per
proxy on the bus. Each delivered entry is remembered per connection until the connection acks it
(op 25); it is pushed again after ``ack_timeout``, at most ``ack_retries`` times, and forgotten when
the connection closes: the inbox is the truth, a client that comes back syncs from it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from imgate.im.protocol import (
    E_BAD_REQUEST, E_FORBIDDEN, E_OUT_OF_RANGE, E_RATE_LIMITED, E_TOO_LARGE, E_UNAVAILABLE, OP_GROUP_ACK, OP_GROUP_PULL, OP_MSG_ACK,
    MAX_CMID, OP_MSG_PUSH, OP_MSG_SEND, OP_READ, OP_SYNC, ImError, error_body, get_int, parse_body, single_conv,
)
from imgate.im.groups import GroupsMixin
from imgate.im.store import INTERNAL_CMID_PREFIX, GroupLimits, MessageStore, NewMessage, Stored, digest_of
from imgate.protocol import KIND_CONNS, PushJob

log = logging.getLogger("imgate.im")

MAX_TYPE = 32
RESERVED_TYPES = frozenset({"read", "member", "mode"})  # made by the server only
MAX_DEPTH = 100  # nesting of a message's content (objects and arrays)
_HINTS_MAX = 100_000  # users whose newest seq is remembered (an ack at or below it needs no read)
_BUCKETS_MAX = 100_000  # users whose rate bucket is kept; past it the full (idle) buckets are forgotten


def _depth_within(value, limit: int) -> bool:
    """True when ``value`` (parsed JSON) nests objects and arrays at most ``limit`` levels deep."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return False
        for child in (item.values() if isinstance(item, dict) else item):
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
    return True


def _within(msgs: list, budget: int) -> list:
    """The first msgs (JSON texts) whose UTF-8 encoding fits ``budget`` bytes; at least one."""
    size = 0
    for i, m in enumerate(msgs):
        size += _nbytes(m) + 1
        if size > budget and i:
            return msgs[:i]
    return msgs


def _nbytes(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode())


def _utf8(text: str, what: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError:
        raise ImError(E_BAD_REQUEST, f"{what} is not valid UTF-8 text (it holds a lone surrogate)") from None


class _Unacked:
    """Entries pushed to one connection and not acked yet: seq -> [msg JSON, due, tries]."""

    __slots__ = ("mid", "entries")

    def __init__(self, mid: int):
        self.mid = mid
        self.entries: dict[int, list] = {}


class ImService(GroupsMixin):
    def __init__(self, store: MessageStore, cache, bus, *, max_message_bytes: int = 16384,
                 ack_timeout: float = 5.0, ack_retries: int = 3, max_unacked: int = 1000,
                 sync_max_limit: int = 1000, max_page_bytes: int = 512 * 1024, groups: GroupLimits | None = None,
                 consumer: bool = True, user_rate: float = 0.0, user_burst: float = 1.0):
        self.store = store
        self.cache = cache
        self.bus = bus
        self.max_message_bytes = max_message_bytes
        self.ack_timeout = ack_timeout
        self.ack_retries = ack_retries
        self.max_unacked = max_unacked
        self.sync_max_limit = sync_max_limit
        # a SYNC page or a resend frame holds at most this many bytes of msgs (and at least one msg):
        # it must fit what the proxy queues for one connection (max_pending) and the client's max body
        self.max_page_bytes = max_page_bytes
        self._unacked: dict[tuple, _Unacked] = {}   # (server, conn_id) -> what it has not acked
        self._seq_hint: dict[int, int] = {}         # mid -> a seq known to exist in its inbox
        # cache and bus in this process (the embedded node): delivery needs no coroutine
        self._publish_now = bus.publish_nowait if getattr(bus, "nowait", False) else None
        self._sessions_now = cache.sessions_nowait if getattr(cache, "nowait", False) else None
        self._resender: asyncio.Task | None = None
        # sends and reads per user (ops 22, 32), whichever connection or proxy they come from
        self.user_rate = user_rate
        self.user_burst = user_burst
        self._buckets: dict[int, list] = {}       # mid -> [tokens, when last refilled]
        self.counters = {"sent": 0, "duplicates": 0, "delivered": 0, "resent": 0, "gave_up": 0, "errors": 0,
                         "rate_limited": 0}
        self._groups_init(groups, consumer)

    async def start(self) -> None:
        self._resender = asyncio.get_running_loop().create_task(self._resend_loop())
        await self._start_groups()

    async def stop(self) -> None:
        if self._resender is not None:
            self._resender.cancel()
            self._resender = None
        self._stop_consumer()

    # ------------------------------------------------------------------ connections

    async def on_connect(self, mid: int) -> int | None:
        """A user authenticated: make sure it has an inbox; its newest seq (op 8's ``inbox_seq``).
        None for mid 0: every anonymous connection has it, so it is nobody's inbox."""
        if mid < 1:
            return None
        seq = await self.store.open_inbox(mid)
        self._hint(mid, seq)
        return seq

    def on_disconnect(self, server: str, conn_id: int) -> None:
        self._unacked.pop((server, conn_id), None)  # nothing kept for a closed connection

    # ------------------------------------------------------------------ frames from the proxy

    async def receive(self, server: str, conn_id: int, mid: int, op: int, seq: int, body: bytes,
                      quiet: bool = False) -> bytes:
        """One IM frame; the body of its reply (empty: no reply). Never raises: errors are replies.
        ``quiet``: an ack whose reply nobody reads (imgate.rpc.im), so it is not checked against the store."""
        cmid = None
        try:
            req = parse_body(body)
            if mid < 1:
                if op == OP_MSG_SEND and isinstance(req.get("cmid"), str):
                    cmid = req["cmid"]
                raise ImError(E_FORBIDDEN, "IM needs a user id: this connection authenticated without one (mid 0)")
            if (op == OP_MSG_SEND or op == OP_READ) and self.user_rate and not self._admit(mid):
                if op == OP_MSG_SEND and isinstance(req.get("cmid"), str):
                    cmid = req["cmid"]
                self.counters["rate_limited"] += 1
                raise ImError(E_RATE_LIMITED, f"rate limited: user {mid} sends and reads more than {self.user_rate:g} "
                                              f"per second (im_user_rate); nothing stored, retry later")
            if op == OP_MSG_SEND:
                cmid = req.get("cmid") if isinstance(req.get("cmid"), str) else None
                return json.dumps(await self.send(mid, req, origin=(server, conn_id))).encode()
            if op == OP_SYNC:
                return await self.sync(mid, req)
            if op == OP_MSG_ACK:
                await self.ack(server, conn_id, mid, req, check=not quiet)
                return b""
            if op == OP_READ:
                return json.dumps(await self.read(mid, req, origin=(server, conn_id))).encode()
            if op == OP_GROUP_PULL:
                return await self.group_pull(mid, req)
            if op == OP_GROUP_ACK:
                await self.group_ack(mid, req)
                return b""
            raise ImError(E_BAD_REQUEST, f"op {op} is not an IM operation")
        except ImError as e:
            self.counters["errors"] += 1
            return error_body(e.code, e.message, **({"cmid": cmid} if cmid is not None else {}))
        except Exception:
            self.counters["errors"] += 1
            log.exception("IM op %d from user %d failed", op, mid)
            # (it may have come after the store committed: the resend with the same cmid is answered)
            return error_body(E_UNAVAILABLE, "internal error, may or may not be stored",
                              **({"cmid": cmid} if cmid is not None else {}))

    def _admit(self, mid: int) -> bool:
        """Take one token from the user's bucket; False when it is empty."""
        now = time.monotonic()
        bucket = self._buckets.get(mid)
        if bucket is None:
            if len(self._buckets) >= _BUCKETS_MAX:
                self._forget_full_buckets(now)
            bucket = self._buckets[mid] = [self.user_burst, now]
        tokens = min(self.user_burst, bucket[0] + (now - bucket[1]) * self.user_rate)
        bucket[1] = now
        if tokens < 1:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - 1
        return True

    def _forget_full_buckets(self, now: float) -> None:
        """A bucket refilled to the brim says nothing a new one would not: drop those."""
        rate, burst = self.user_rate, self.user_burst
        for mid in [m for m, (t, last) in self._buckets.items() if t + (now - last) * rate >= burst]:
            del self._buckets[mid]

    # ------------------------------------------------------------------ operations

    async def send(self, sender: int, req: dict, origin: tuple | None = None) -> dict:
        """MSG_SEND as ``sender``; the MSG_SEND_REPLY object once the message is durable. ``origin``
        is the sending connection, which learns the seq from the reply and gets no push."""
        msg = self._new_message(sender, req)
        stored = await self.store.send(msg)
        if stored.duplicate:
            self.counters["duplicates"] += 1
        else:
            self.counters["sent"] += 1
            if msg.group is not None:
                await self._after_group_store(stored, origin)
            else:
                await self._deliver(stored, origin)
        reply = {"cmid": msg.cmid, "msg_id": str(stored.msg_id), "seq": stored.seqs[sender], "ts": stored.ts}
        if msg.group is not None:
            reply["group"] = msg.group
            reply["gseq"] = stored.gseq
        return reply

    def _new_message(self, sender: int, req: dict) -> NewMessage:
        cmid = req.get("cmid")
        if not isinstance(cmid, str) or not cmid:
            raise ImError(E_BAD_REQUEST, "missing field 'cmid' (a non-empty string chosen by the client)")
        if len(cmid) > MAX_CMID or cmid.startswith(INTERNAL_CMID_PREFIX):
            raise ImError(E_BAD_REQUEST, f"cmid must be at most {MAX_CMID} characters and not start with "
                                         f"{INTERNAL_CMID_PREFIX!r}")
        if "group" in req:
            if not self.store.supports_groups:
                raise ImError(E_UNAVAILABLE, f"groups are not implemented by {type(self.store).__name__} yet")
            if "to" in req:
                raise ImError(E_BAD_REQUEST, "a message has either 'to' or 'group', not both")
            group, to = get_int(req, "group", lo=1), None
        else:
            group, to = None, get_int(req, "to", lo=1)
            if to == sender:
                raise ImError(E_BAD_REQUEST, "'to' is the sender itself")
        type_ = req.get("type", "text")
        if not isinstance(type_, str) or not 0 < len(type_) <= MAX_TYPE or type_ in RESERVED_TYPES:
            raise ImError(E_BAD_REQUEST, f"'type' must be a string of 1-{MAX_TYPE} characters other than "
                                         f"{', '.join(sorted(RESERVED_TYPES))}")
        if req.get("content") is None:
            raise ImError(E_BAD_REQUEST, "missing field 'content'")
        if isinstance(req["content"], (dict, list)) and not _depth_within(req["content"], MAX_DEPTH):
            # bounded: every client must be able to decode what lands in its inbox
            raise ImError(E_BAD_REQUEST, f"content is nested more than {MAX_DEPTH} levels deep")
        try:  # canonical, so that a resend's digest matches; NaN and Infinity are not JSON
            content = json.dumps(req["content"], separators=(",", ":"), sort_keys=True, ensure_ascii=False,
                                 allow_nan=False)
        except ValueError as e:
            raise ImError(E_BAD_REQUEST, f"content is not plain JSON: {e}") from None
        # a JSON escape of a lone surrogate ("\ud800") parses, but has no UTF-8: refused here, before the
        # store, whose batch it would fail for every other send committed with it
        size = len(_utf8(content, "content"))
        _utf8(cmid, "cmid")
        _utf8(type_, "type")
        if size > self.max_message_bytes:
            raise ImError(E_TOO_LARGE, f"content is {size} bytes, over max_message_bytes "
                                       f"({self.max_message_bytes})")
        if group is not None:
            return NewMessage(sender, cmid, f"g:{group}", None, group, type_, content,
                              digest_of(None, group, type_, content), (sender,))
        return NewMessage(sender, cmid, single_conv(sender, to), to, None, type_, content,
                          digest_of(to, None, type_, content), (sender, to))

    async def sync(self, uid: int, req: dict) -> bytes:
        """SYNC: the SYNC_REPLY body (JSON text)."""
        after = get_int(req, "after", lo=0)
        limit = get_int(req, "limit", lo=1, hi=self.sync_max_limit, default=min(100, self.sync_max_limit))
        page = await self.store.sync(uid, after, limit)
        self._hint(uid, page.max_seq)
        msgs, has_more = page.msgs, page.has_more
        if 4 * sum(map(len, msgs)) > self.max_page_bytes:  # may be over (a character is 1-4 bytes)
            msgs = _within(msgs, self.max_page_bytes)
            has_more = has_more or len(msgs) < len(page.msgs)
        head = (f'{{"has_more":{"true" if has_more else "false"},"max_seq":{page.max_seq},'
                f'"min_seq":{page.min_seq},"truncated":{"true" if page.truncated(after) else "false"},'
                f'"groups":{await self.sync_groups(uid)},"msgs":[')
        return (head + ",".join(msgs) + "]}").encode()

    async def ack(self, server: str, conn_id: int, mid: int, req: dict, check: bool = True) -> None:
        """Forget what the connection acked; ``check``: refuse an ack beyond the inbox (a store read when
        this process has not seen the user's newest seq)."""
        seq = get_int(req, "seq", lo=0)
        if check and seq > self._seq_hint.get(mid, 0):
            newest = await self.store.max_seq(mid)
            self._hint(mid, newest)
            if seq > newest:
                raise ImError(E_OUT_OF_RANGE, f"ack of seq {seq} is beyond the inbox (max_seq {newest})")
        pending = self._unacked.get((server, conn_id))
        if pending is not None:
            for s in [s for s in pending.entries if s <= seq]:
                del pending.entries[s]
            if not pending.entries:
                del self._unacked[(server, conn_id)]

    async def read(self, uid: int, req: dict, origin: tuple | None = None) -> dict:
        conv = req.get("conv")
        if not isinstance(conv, str):
            raise ImError(E_BAD_REQUEST, "missing field 'conv' (a conversation id such as 'u:1:2')")
        seq = get_int(req, "seq", lo=0)
        result = await self.store.mark_read(uid, conv, seq)
        if result.notice is not None and not result.notice.duplicate:
            await self._deliver(result.notice, origin)
        return {"conv": conv, "seq": result.read_seq}

    async def conversations(self, uid: int, limit: int) -> str:
        return await self.store.conversations(uid, limit)

    # ------------------------------------------------------------------ delivery and resend

    def _hint(self, mid: int, seq: int) -> None:
        if seq > self._seq_hint.get(mid, 0):
            if len(self._seq_hint) >= _HINTS_MAX:
                self._seq_hint.clear()
            self._seq_hint[mid] = seq

    async def _deliver(self, stored: Stored, origin: tuple | None) -> None:
        """Op 24 to every connection of every owner of the entries, except the sending one."""
        owners = list(stored.entries)
        for owner, seq in stored.seqs.items():
            self._hint(owner, seq)
        if self._sessions_now is not None:
            found = self._sessions_now(owners)
        else:
            try:
                found = await self.cache.sessions(owners)
            except Exception as e:  # the message is stored; its owners will sync
                log.warning("delivery of msg %d skipped, sessions unavailable: %s", stored.msg_id, e)
                return
        due = time.monotonic() + self.ack_timeout
        for owner in owners:
            entry = stored.entries[owner]
            seq = stored.seqs[owner]
            by_server: dict[str, list[int]] = {}
            for s in found.get(owner, ()):
                if (s.server, s.conn_id) == origin:
                    continue
                by_server.setdefault(s.server, []).append(s.conn_id)
                self._track(s.server, s.conn_id, owner, seq, entry, due)
            if by_server:
                body = ('{"msgs":[' + entry + "]}").encode()
                for server, conn_ids in by_server.items():
                    await self._push(server, conn_ids, body)

    def _track(self, server: str, conn_id: int, mid: int, seq: int, entry: str, due: float) -> None:
        pending = self._unacked.get((server, conn_id))
        if pending is None:
            pending = self._unacked[(server, conn_id)] = _Unacked(mid)
        if len(pending.entries) >= self.max_unacked:
            # bounded: the oldest is forgotten; the client sees the gap in seq and syncs
            del pending.entries[next(iter(pending.entries))]
            self.counters["gave_up"] += 1
        pending.entries[seq] = [entry, due, 0]

    async def _push(self, server: str, conn_ids: list[int], body: bytes) -> None:
        job = PushJob(KIND_CONNS, OP_MSG_PUSH, body, server, conn_ids)
        try:
            if self._publish_now is not None:
                self._publish_now(job)
            else:
                await self.bus.publish(job)
            self.counters["delivered"] += len(conn_ids)
        except Exception as e:  # stored already: the resend or the client's sync brings it
            log.warning("push of op 24 to %s failed: %s", server, e)

    async def _resend_loop(self) -> None:
        period = max(0.05, min(1.0, self.ack_timeout / 4))
        while True:
            await asyncio.sleep(period)
            try:
                await self.resend_due(time.monotonic())
            except Exception:
                log.exception("IM resend pass failed")

    async def resend_due(self, now: float) -> None:
        """Push again what is due; give up on entries pushed ``ack_retries`` times. At most
        ``max_page_bytes`` per connection and pass: the rest stays due for the next pass."""
        for key, pending in list(self._unacked.items()):
            again = []
            size = 0
            for seq, item in list(pending.entries.items()):
                if item[1] > now:
                    continue
                if item[2] >= self.ack_retries:
                    del pending.entries[seq]
                    self.counters["gave_up"] += 1
                    continue
                n = _nbytes(item[0]) + 1
                if again and size + n > self.max_page_bytes:
                    break
                item[1] = now + self.ack_timeout
                item[2] += 1
                again.append(item[0])
                size += n
            if not pending.entries:
                self._unacked.pop(key, None)
            if again:
                self.counters["resent"] += len(again)
                await self._push(key[0], [key[1]], ('{"msgs":[' + ",".join(again) + "]}").encode())

    def stats(self) -> dict:
        """The numbers ``/metrics`` exports (imgate.metrics)."""
        c = self.counters
        store = getattr(self.store, "counters", {})
        return {"im_unacked": sum(len(p.entries) for p in self._unacked.values()), "im_messages": c["sent"],
                "im_duplicates": c["duplicates"], "im_resent": c["resent"], "im_gave_up": c["gave_up"],
                "im_errors": c["errors"], "im_rate_limited": c["rate_limited"], "im_commits": store.get("commits", 0),
                "im_store_writes": store.get("writes", 0), "im_failed_batches": store.get("failed_batches", 0)}

    def unacked(self, server: str, conn_id: int) -> list[int]:
        """Seqs pushed to a connection and not acked (tests, debugging)."""
        pending = self._unacked.get((server, conn_id))
        return sorted(pending.entries) if pending else []


__all__ = ["ImService"]
