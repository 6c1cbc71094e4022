"""The operations a client sends once connected: auth first, then heartbeats, rooms, subscriptions and
upstream messages (goim's ops 2-20); each is answered on the same connection with the request's seq."""

from __future__ import annotations

import json
import logging
import struct
import time

from imgate.strings import share
from imgate.auth import AuthError
from imgate.core import encode_frame
from imgate.im.protocol import MAX_CMID
from imgate.protocol.ops import (
    OP_AUTH,
    OP_AUTH_REPLY,
    OP_CHANGE_ROOM,
    OP_CHANGE_ROOM_REPLY,
    OP_HEARTBEAT,
    OP_HEARTBEAT_REPLY,
    OP_JOIN_ROOM,
    OP_JOIN_ROOM_REPLY,
    OP_LEAVE_ROOM,
    OP_LEAVE_ROOM_REPLY,
    OP_MSG_SEND,
    OP_SEND_MSG,
    OP_SUB,
    OP_UNSUB,
    IM_OPS,
    IM_REPLY_OP,
)
from imgate.proxy.channel import S_AUTH, S_AUTHING, S_OPEN, Channel, room_of
from imgate.proxy.eager import start
from imgate.proxy.limits import RATE_LIMITED

log = logging.getLogger("imgate.proxy")

_INT32 = struct.Struct(">i")


def im_failure(e: Exception, op: int, request: bytes) -> bytes:
    """The 503 a client gets when the IM service did not answer its request. It says only what is
    true: "nothing stored" when the request certainly never reached the service (an RPC error with
    ``sent`` False: refused before it was written); after a timeout or a connection lost in flight
    the service may have stored it, and the client must resend it with the same cmid (it is then
    answered as stored, not stored twice). A send's reply carries its cmid, like the service's."""
    if getattr(e, "sent", None) is False:
        fields = {"code": 503, "error": "IM service unavailable, nothing stored: resend it later"}
    elif isinstance(e, TimeoutError):
        fields = {"code": 503, "error": "IM service did not answer in time; the message may be stored: "
                                        "resend it with the same cmid"}
    else:
        fields = {"code": 503, "error": "IM service failed before answering; the message may be stored: "
                                        "resend it with the same cmid"}
    if op == OP_MSG_SEND:
        try:  # the client's own body (checked by the service, not here): only a plain cmid is echoed
            cmid = json.loads(request).get("cmid")
        except (ValueError, UnicodeDecodeError, AttributeError, RecursionError):
            cmid = None
        if isinstance(cmid, str) and 0 < len(cmid) <= MAX_CMID:
            fields["cmid"] = cmid
    return json.dumps(fields).encode()


class Operations:
    """Part of :class:`~imgate.proxy.server.Proxy`: the per-connection state machine."""

    def _on_frames(self, ch: Channel, frames: list) -> None:
        self.stats_counters["frames_in"] += len(frames)
        if ch.state == S_OPEN and not self.limits.take(ch, len(frames), ch.last_seen):
            self.stats_counters["rate_limited"] += 1
            self.close(ch, RATE_LIMITED, reconnect=False)
            return
        for i, f in enumerate(frames):
            if ch.state == S_OPEN:
                self._on_frame(ch, f)
            elif ch.state == S_AUTH:
                if self._stopping:
                    self.close(ch, "shutdown", reconnect=True)
                    return
                if f.op != OP_AUTH:
                    self.stats_counters["protocol_errors"] += 1
                    self.close(ch, f"the first frame must be auth (op 7), got op {f.op}", reconnect=False)
                    return
                if not self.admission.admit():  # a storm: logic gets no more than the rate
                    self.stats_counters["busy"] += 1
                    self.close(ch, "busy", reconnect=True, extra={"retry_ms": self.admission.retry_ms()})
                    return
                ch.state = S_AUTHING
                self.loop.remove_reader(ch.fd)  # nothing else is read until logic answers
                ch.backlog = frames[i + 1 :] or None
                self._spawn(self._auth(ch, f))
                return
            else:
                return

    async def _auth(self, ch: Channel, f) -> None:
        try:
            c = await self.logic.connect(self.server_id, f.body)
        except AuthError as e:
            self.stats_counters["auth_failures"] += 1
            self.close(ch, f"auth failed: {e}", reconnect=False)
            return
        except Exception as e:  # logic unreachable: the client should retry elsewhere
            log.warning("auth call failed: %s", e)
            self.close(ch, "auth unavailable", reconnect=True)
            return
        if ch not in self._channels or ch.state != S_AUTHING:
            # the client vanished while logic was answering
            try:
                await self.logic.disconnect(self.server_id, c.conn_id, c.mid)
            except Exception as e:
                log.warning("disconnect of vanished conn %s failed: %s", c.conn_id, e)
            return
        # one string per room and platform, however many connections (logic's may come over the RPC)
        ch.conn_id, ch.mid, ch.key, ch.platform = c.conn_id, c.mid, c.key, share(c.platform)
        ch.state = S_OPEN
        self._unopened.discard(ch)
        ch.last_seen = ch.renewed = time.monotonic()
        self._by_conn_id[c.conn_id] = ch
        self.conns_delivery.bind(c.conn_id, ch)
        ch.accepts = set(c.accepts) if c.accepts else None
        self.table.set_accepts(ch, ch.accepts)
        if c.room_id:
            ch.room_id = share(c.room_id)
            self.table.join(ch, ch.room_id)
        reply = {"conn_id": c.conn_id, "key": c.key, "mid": c.mid, "room_id": c.room_id,
                 "heartbeat": self.config.heartbeat_timeout / 3}
        if c.rooms:  # named by an auth service; bounded by max_rooms_per_conn like op 18
            try:
                for room in c.rooms:
                    self.table.join(ch, room)
            except ValueError as e:
                log.warning("conn %s: auth rooms cut short: %s", c.conn_id, e)
            reply["rooms"] = list(self.table.rooms_of(ch))
        if getattr(c, "inbox_seq", None) is not None:
            reply["inbox_seq"] = c.inbox_seq
        reply = json.dumps(reply).encode()
        self.table.send(ch, encode_frame(OP_AUTH_REPLY, f.seq, reply))
        self.loop.add_reader(ch.fd, self._on_readable, ch)
        backlog, ch.backlog = ch.backlog, None
        if backlog:
            self._on_frames(ch, backlog)

    def _on_frame(self, ch: Channel, f) -> None:
        op = f.op
        if op == OP_HEARTBEAT:
            room = ch.room_id
            count = 0
            if room:
                count = self.table.room_count(room) + self._remote_online.get(room, 0)
            self.table.send(ch, encode_frame(OP_HEARTBEAT_REPLY, f.seq, _INT32.pack(count)))
            now = ch.last_seen
            if now - ch.renewed > self.config.heartbeat_timeout / 3:
                ch.renewed = now
                self._spawn(self._renew(ch))
        elif op == OP_SEND_MSG:
            self._send_upstream(ch, f)
        elif op == OP_CHANGE_ROOM:
            room, problem = room_of(f.body)
            if problem:
                self._reply(ch, OP_CHANGE_ROOM_REPLY, f.seq, ok=False, error=problem)
                return
            self.table.move(ch, ch.room_id or None, room or None)
            ch.room_id = room
            self._reply(ch, OP_CHANGE_ROOM_REPLY, f.seq, ok=True, room_id=room)
            self._room_event(ch, "change", room)
        elif op == OP_JOIN_ROOM or op == OP_LEAVE_ROOM:
            room, problem = room_of(f.body)
            reply_op = OP_JOIN_ROOM_REPLY if op == OP_JOIN_ROOM else OP_LEAVE_ROOM_REPLY
            if problem or not room:
                self._reply(ch, reply_op, f.seq, ok=False, error=problem or "room id must look like type://id, got ''")
                return
            try:
                if op == OP_JOIN_ROOM:
                    self.table.join(ch, room)
                    if not ch.room_id:
                        ch.room_id = room
                else:
                    self.table.leave(ch, room)
                    if ch.room_id == room:
                        ch.room_id = ""
            except ValueError as e:
                self._reply(ch, reply_op, f.seq, ok=False, error=str(e))
                return
            self._reply(ch, reply_op, f.seq, ok=True, room_id=room)
            self._room_event(ch, "join" if op == OP_JOIN_ROOM else "leave", room)
        elif op == OP_SUB or op == OP_UNSUB:
            try:
                ops = {int(x) for x in f.body.decode().split(",") if x.strip()}
                if any(not -(2**31) <= x < 2**31 for x in ops):
                    raise ValueError
            except (ValueError, UnicodeDecodeError):
                self._reply(ch, op + 1, f.seq, ok=False, error="body must be comma-separated int32 operation numbers")
                return
            # a connection that authenticated with no accepts gets every op (goim would get none);
            # sub/unsub then change nothing: to filter, authenticate with an accepts list
            if ch.accepts is not None:
                ch.accepts = ch.accepts | ops if op == OP_SUB else ch.accepts - ops
            self.table.set_accepts(ch, ch.accepts)
            self._reply(ch, op + 1, f.seq, ok=True, accepts=sorted(ch.accepts) if ch.accepts is not None else None)
        elif op in IM_OPS:
            if ch.im_inflight >= self.config.im_max_inflight:  # bounded: one client cannot fill the store's queue
                self.table.send(ch, encode_frame(IM_REPLY_OP[op], f.seq, b'{"code": 429, "error": "too many IM '
                                                     b'requests in flight on this connection, nothing stored"}'))
                return
            ch.im_inflight += 1
            start(self._im(ch, f), self._spawn)  # an ack is settled here and now, with no task
        elif op == OP_AUTH:
            pass  # already authenticated: a repeated auth is ignored
        elif 100 <= op < 1000:  # business upstream ops: routed by logic like op 4 (docs/upstream.md)
            self._send_upstream(ch, f)
        else:
            self.stats_counters["protocol_errors"] += 1
            log.debug("conn %s sent unsupported op %d", ch.conn_id, op)

    def _room_event(self, ch: Channel, action: str, room: str) -> None:
        """Tell logic of a room change when it sends webhooks (``webhook_url``); nobody waits for it."""
        if self.config.webhook_url:
            self._spawn(self._send_room_event(ch.conn_id, ch.mid, action, room))

    async def _send_room_event(self, conn_id: int, mid: int, action: str, room: str) -> None:
        try:
            await self.logic.room_event(self.server_id, conn_id, mid, action, room)
        except Exception as e:
            log.warning("room event of conn %s not reported: %s", conn_id, e)

    async def _renew(self, ch: Channel) -> None:
        """Push the session's expiry forward; a session the registry lost (expired during an outage,
        a cache fail-over) is registered again: the connection is here and open."""
        conn_id = ch.conn_id
        try:
            alive = await self.logic.heartbeat(self.server_id, conn_id, ch.mid)
        except Exception as e:
            log.warning("session renewal of conn %s failed: %s", conn_id, e)
            return
        if not alive and ch.conn_id == conn_id and ch.state == S_OPEN:
            await self._restore_one(ch)

    def _reply(self, ch: Channel, op: int, seq: int, **fields) -> None:
        self.table.send(ch, encode_frame(op, seq, json.dumps(fields).encode()))

    def _send_upstream(self, ch: Channel, f) -> None:
        """To logic, at most ``upstream_conn_limit`` at a time per connection (logic bounds them too, but
        a logic that is slow to answer must not grow a queue here)."""
        limit = self.config.upstream_conn_limit
        if ch.up_inflight >= limit:
            self.stats_counters["upstream_busy"] += 1
            self.table.send(ch, encode_frame(f.op + 1, f.seq, json.dumps({
                "ok": False, "code": "busy",
                "error": f"too many requests in flight on this connection (limit {limit})"}).encode()))
            return
        ch.up_inflight += 1
        self._spawn(self._upstream(ch, f))

    async def _upstream(self, ch: Channel, f) -> None:
        try:
            body = await self.logic.receive(self.server_id, ch.conn_id, ch.mid, f.op, f.seq, f.body,
                                            key=ch.key, room_id=ch.room_id, platform=ch.platform)
        except Exception as e:
            log.warning("upstream message from conn %s failed: %s", ch.conn_id, e)
            body = json.dumps({"ok": False, "code": "unavailable", "error": "logic unavailable"}).encode()
        finally:
            ch.up_inflight -= 1
        if ch in self.table:  # the reply op is the request's + 1 (op 4 -> 5)
            self.table.send(ch, encode_frame(f.op + 1, f.seq, body or b""))

    async def _im(self, ch: Channel, f) -> None:
        """An IM operation (22-32): the IM service answers (logic's, or the im roles' when ``im_api`` is
        their client); the reply op follows the request's."""
        try:
            body = await self.im_api.receive(self.server_id, ch.conn_id, ch.mid, f.op, f.seq, f.body)
        except Exception as e:
            log.warning("IM op %d from conn %s failed: %s", f.op, ch.conn_id, e)
            body = im_failure(e, f.op, f.body)
        finally:
            ch.im_inflight -= 1
        if body and ch in self.table:
            self.table.send(ch, encode_frame(IM_REPLY_OP[f.op], f.seq, body))

    def _spawn(self, coro) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
