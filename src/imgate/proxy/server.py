"""The edge proxy (goim's comet): TCP and WebSocket listeners, connections, rooms, delivery.

The proxy owns its sockets outright: it reads them with `loop.add_reader` and lets the compiled
RoomTable write them, so a broadcast never goes through a Python call per recipient. Everything else
per connection (auth, heartbeats, room changes) is plain Python on a small `Channel` object.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
import time
from typing import Protocol

from imgate.auth import MAX_ROOM_ID_LEN, AuthError
from imgate.proxy.limits import RATE_LIMITED, TOO_MANY_CONNECTIONS, Limits
from imgate.core import (
    FrameDecoder,
    ProtocolError,
    RoomTable,
    WebSocketError,
    WebSocketHandshake,
    WebSocketParser,
    encode_frame,
    encode_ws_close,
    encode_ws_frame,
    OP_AUTH,
    OP_AUTH_REPLY,
    OP_CHANGE_ROOM,
    OP_CHANGE_ROOM_REPLY,
    OP_DISCONNECT_REPLY,
    OP_HEARTBEAT,
    OP_HEARTBEAT_REPLY,
    OP_JOIN_ROOM,
    OP_JOIN_ROOM_REPLY,
    OP_LEAVE_ROOM,
    OP_LEAVE_ROOM_REPLY,
    OP_RAW,
    OP_SEND_MSG,
    OP_SEND_MSG_REPLY,
    OP_SUB,
    OP_SUB_REPLY,
    OP_UNSUB,
    OP_UNSUB_REPLY,
)

log = logging.getLogger("imgate.proxy")

# Slow consumers closed per event-loop iteration (the rest wait for the next one).
_CLOSE_SLICE = 64
# Channels checked per event-loop iteration by the deadline sweep.
_SWEEP_SLICE = 1000

WS_BINARY = 2

# channel states
S_HTTP = 0      # WebSocket: waiting for the upgrade request
S_AUTH = 1      # waiting for the first frame, which must be auth
S_AUTHING = 2   # auth sent to logic, reading paused
S_OPEN = 3
S_CLOSING = 4   # op 6 sent and FIN sent; draining input until the peer closes or the deadline passes

_INT32 = struct.Struct(">i")


class LogicAPI(Protocol):
    """What a proxy needs from logic: the Logic object itself in one process, an RPC client in a cluster."""

    async def connect(self, server: str, body: bytes): ...
    async def disconnect(self, server: str, conn_id: int, mid: int) -> None: ...
    async def heartbeat(self, server: str, conn_id: int, mid: int) -> bool: ...
    async def receive(self, server: str, conn_id: int, mid: int, op: int, seq: int, body: bytes) -> bytes: ...
    async def renew_online(self, server: str, rooms: dict, conns: int, ips: int) -> None: ...


def valid_room_id(room_id: str) -> bool:
    kind, sep, rid = room_id.partition("://")
    return bool(sep and kind and rid) and len(room_id) <= MAX_ROOM_ID_LEN


def room_of(body: bytes) -> tuple[str, str]:
    """(room id, "") from an op 12/18/20 body, or ("", what is wrong). Bounded as in auth: a long body
    is refused before it is decoded, and the error never echoes more than a few characters."""
    if len(body) > 4 * MAX_ROOM_ID_LEN:
        return "", f"room id is {len(body)} bytes long, the limit is {MAX_ROOM_ID_LEN} characters"
    room = body.decode("utf-8", "replace")
    if len(room) > MAX_ROOM_ID_LEN:
        return "", f"room id is {len(room)} characters long, the limit is {MAX_ROOM_ID_LEN}"
    if room and not valid_room_id(room):
        shown = room if len(room) <= 40 else room[:37] + "..."
        return "", f"room id must look like type://id, got {shown!r}"
    return room, ""


class Channel:
    """One client connection. Kept small: tens of thousands live in one process."""

    __slots__ = (
        "lid", "sock", "fd", "ws", "state", "decoder", "parser", "hs", "ip", "deadline", "last_seen",
        "conn_id", "mid", "key", "room_id", "accepts", "backlog", "renewed", "tokens", "refilled",
        "unsent",
    )

    def __init__(self, lid: int, sock: socket.socket, ws: bool, ip: str, deadline: float):
        self.lid = lid
        self.sock = sock
        self.fd = sock.fileno()
        self.ws = ws
        self.state = S_HTTP if ws else S_AUTH
        self.decoder = None
        self.parser = None
        self.hs = None
        self.ip = ip
        self.deadline = deadline
        self.last_seen = 0.0
        self.conn_id = 0
        self.mid = 0
        self.key = ""
        self.room_id = ""
        self.accepts = None  # None: every push op; else a set
        self.backlog = None
        self.renewed = 0.0
        self.tokens = 0.0    # the op-rate bucket (imgate.proxy.limits); the first frames fill it
        self.refilled = 0.0
        self.unsent = None   # closing: the rest of the op-6 notice the full socket did not take yet


def notice(reason: str, reconnect: bool) -> bytes:
    """The op-6 frame a client gets before the server closes its connection."""
    return encode_frame(OP_DISCONNECT_REPLY, 0, json.dumps({"reason": reason, "reconnect": reconnect}).encode())


class Proxy:
    def __init__(self, config, logic: LogicAPI, loop: asyncio.AbstractEventLoop | None = None):
        self.config = config
        self.server_id = config.server_id
        self.logic = logic
        self.loop = loop or asyncio.get_event_loop()
        self.table = RoomTable(
            self.loop,
            max_pending=config.max_pending,
            merge_window=config.merge_window,
            max_rooms_per_conn=config.max_rooms_per_conn,
            on_overflow=self._on_overflow,
            on_error=self._on_write_error,
        )
        self._channels: dict[int, Channel] = {}
        self._by_conn_id: dict[int, Channel] = {}
        self._ips: dict[str, int] = {}
        self._listeners: list[socket.socket] = []
        self._next_lid = 1
        self._rbuf = bytearray(65536)
        self._rview = memoryview(self._rbuf)
        self._room_frames: dict[str, list[bytes]] = {}
        self._room_flush_scheduled = False
        self._tasks: set[asyncio.Task] = set()
        self._sweeper: asyncio.Task | None = None
        self._reporter: asyncio.Task | None = None
        self._stopping = False
        self._final_disconnects: list = []  # sessions closed during stop(), told to logic at its end
        self._remote_online: dict[str, int] = {}  # room -> members on other proxies (from logic)
        self.stats_counters = dict(
            frames_in=0, bytes_in=0, drops=0, slow_consumer_closes=0, auth_failures=0, protocol_errors=0, handshake_timeouts=0,
            pushes=0, accepted=0, rate_limited=0, ip_limit_refusals=0,
            close_notices_late=0, close_notices_dropped=0,
        )
        self._overflowed: list[int] = []   # slow consumers waiting to be closed (see _on_overflow)
        self.limits = Limits.from_config(config)
        self.tcp_port = 0
        self.ws_port = 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        host, port = self.config.addr("tcp")
        self.tcp_port = self._listen(host, port, ws=False)
        host, port = self.config.addr("ws")
        self.ws_port = self._listen(host, port, ws=True)
        self._sweeper = self.loop.create_task(self._sweep_loop())
        self._reporter = self.loop.create_task(self._report_loop())
        log.info("proxy %s: tcp :%d, websocket :%d/sub", self.server_id, self.tcp_port, self.ws_port)

    def _listen(self, host: str, port: int, ws: bool) -> int:
        sock = socket.create_server((host, port), backlog=4096, reuse_port=False)
        sock.setblocking(False)
        self._listeners.append(sock)
        self.loop.add_reader(sock.fileno(), self._on_accept, sock, ws)
        return sock.getsockname()[1]

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting, tell every client (op 6 shutdown, reconnect), flush, close within `grace`."""
        if self._stopping:
            return
        self._stopping = True
        grace = self.config.shutdown_grace if grace is None else grace
        for sock in self._listeners:
            self.loop.remove_reader(sock.fileno())
            sock.close()
        self._listeners.clear()
        for task in (self._sweeper, self._reporter):
            if task is not None:
                task.cancel()
        bye = notice("shutdown", True)
        ws_bye = None
        for ch in list(self._channels.values()):
            if ch.state in (S_HTTP, S_CLOSING):
                continue
            if ch.ws:
                if ws_bye is None:
                    ws_bye = _ws_binary(bye) + encode_ws_close(1001, "shutdown")
                self.table.send_raw(ch.lid, ws_bye)
            else:
                self.table.send(ch.lid, bye)
        self.table.flush()
        deadline = self.loop.time() + grace
        while self.loop.time() < deadline and any(
            self.table.pending(ch.lid) for ch in self._channels.values() if ch.lid in self.table
        ):
            await asyncio.sleep(0.01)
        for ch in list(self._channels.values()):
            self._close_now(ch)  # _forget queues each session's disconnect in _final_disconnects
        disconnects, self._final_disconnects = self._final_disconnects, []
        if disconnects:
            await asyncio.gather(*disconnects, return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()

    # ------------------------------------------------------------------ accept and read

    def _on_accept(self, lsock: socket.socket, ws: bool) -> None:
        now = time.monotonic()
        for _ in range(128):  # bounded per callback so a storm cannot starve the loop
            try:
                sock, addr = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                # EMFILE/ENFILE: the listener stays readable, so pause it instead of spinning;
                # the kernel's backlog holds the waiting clients meanwhile
                log.warning("accept failed: %s; pausing accepts for 0.5 s", e)
                self.loop.remove_reader(lsock.fileno())
                self.loop.call_later(0.5, self._resume_accept, lsock, ws)
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            lid = self._next_lid
            self._next_lid += 1
            ip = addr[0] if isinstance(addr, tuple) else ""
            if not self.limits.admit(ip, self._ips.get(ip, 0)):
                self._refuse(sock, ws)
                continue
            ch = Channel(lid, sock, ws, ip, now + self.config.handshake_timeout)
            if ws:
                ch.hs = WebSocketHandshake()
            else:
                ch.decoder = FrameDecoder(self.config.max_frame_body)
                self.table.add(lid, sock)
                self.table.set_accepts(lid, ())  # no pushes before auth; replies (op -1) still pass
            self._channels[lid] = ch
            self._ips[ip] = self._ips.get(ip, 0) + 1
            self.stats_counters["accepted"] += 1
            self.loop.add_reader(ch.fd, self._on_readable, ch)

    def _refuse(self, sock: socket.socket, ws: bool) -> None:
        """A connection over the per-address limit: a notice into the fresh (empty) socket buffer,
        then close; it never becomes a channel."""
        self.stats_counters["ip_limit_refusals"] += 1
        body = json.dumps({"reason": TOO_MANY_CONNECTIONS, "reconnect": False}).encode()
        if ws:
            data = (b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
        else:
            data = encode_frame(OP_DISCONNECT_REPLY, 0, body)
        try:
            sock.send(data)
        except OSError:
            pass
        sock.close()

    def _resume_accept(self, lsock: socket.socket, ws: bool) -> None:
        if not self._stopping and lsock.fileno() >= 0:
            self.loop.add_reader(lsock.fileno(), self._on_accept, lsock, ws)

    def _on_readable(self, ch: Channel) -> None:
        try:
            n = ch.sock.recv_into(self._rbuf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            n = 0
        if n == 0:
            self._lost(ch)
            return
        self.stats_counters["bytes_in"] += n
        data = self._rview[:n]
        if ch.state == S_CLOSING:
            return  # draining: the peer's last bytes are discarded
        ch.last_seen = time.monotonic()
        if ch.ws:
            self._on_ws_data(ch, data)
        else:
            self._on_tcp_data(ch, data)

    def _on_tcp_data(self, ch: Channel, data) -> None:
        try:
            frames = ch.decoder.feed(data)
        except ProtocolError as e:
            self.stats_counters["protocol_errors"] += 1
            if e.frames and ch.state == S_OPEN:
                self._on_frames(ch, e.frames)  # what came before the bad header still counts
            self.close(ch, f"protocol error: {e}", reconnect=False)
            return
        self._on_frames(ch, frames)

    def _on_ws_data(self, ch: Channel, data) -> None:
        if ch.state == S_HTTP:
            if not ch.hs.feed(bytes(data)):
                return
            hs, ch.hs = ch.hs, None
            if hs.ok and hs.path != "/sub":
                body = f"no WebSocket endpoint at {hs.path}; use /sub".encode()
                self._send_direct(ch, b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                                  b"Connection: close\r\n\r\n%s" % (len(body), body))
                self._close_now(ch)
                return
            self._send_direct(ch, hs.response)
            if not hs.ok:
                self.stats_counters["protocol_errors"] += 1
                self._close_now(ch)
                return
            ch.state = S_AUTH
            ch.decoder = FrameDecoder(self.config.max_frame_body)
            ch.parser = WebSocketParser(self.config.max_frame_body + 16)
            self.table.add(ch.lid, ch.sock, websocket=True)
            self.table.set_accepts(ch.lid, ())  # no pushes before auth
            if not hs.leftover:
                return
            data = hs.leftover
        try:
            messages = ch.parser.feed(data)
        except WebSocketError as e:
            self.stats_counters["protocol_errors"] += 1
            self._close_ws(ch, f"protocol error: {e}", e.close_frame())
            return
        out = ch.parser.take_output()
        if out:
            self.table.send_raw(ch.lid, out)
        frames = []
        for opcode, payload in messages:
            if opcode != WS_BINARY:
                self.stats_counters["protocol_errors"] += 1
                self._close_ws(ch, "protocol error: text messages are not supported; send binary goim frames",
                               encode_ws_close(1003, "binary frames only"))
                return
            try:
                frames.extend(ch.decoder.feed(payload))
            except ProtocolError as e:
                self.stats_counters["protocol_errors"] += 1
                self._close_ws(ch, f"protocol error: {e}", encode_ws_close(1002, "bad frame"))
                return
            if ch.decoder.buffered:
                self.stats_counters["protocol_errors"] += 1
                self._close_ws(ch, "protocol error: a WebSocket message must carry whole goim frames",
                               encode_ws_close(1002, "partial frame"))
                return
        if frames:
            self._on_frames(ch, frames)
        if ch.parser is not None and ch.parser.closed and ch.state != S_CLOSING:
            # the client said goodbye; its close was echoed through take_output above
            self.table.flush()
            self._lost(ch)

    # ------------------------------------------------------------------ frames

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
        if ch.lid not in self._channels or ch.state != S_AUTHING:
            # the client vanished while logic was answering
            try:
                await self.logic.disconnect(self.server_id, c.conn_id, c.mid)
            except Exception as e:
                log.warning("disconnect of vanished conn %s failed: %s", c.conn_id, e)
            return
        ch.conn_id, ch.mid, ch.key = c.conn_id, c.mid, c.key
        ch.state = S_OPEN
        ch.last_seen = ch.renewed = time.monotonic()
        self._by_conn_id[c.conn_id] = ch
        self.table.set_user(ch.lid, c.mid)
        ch.accepts = set(c.accepts) if c.accepts else None
        self.table.set_accepts(ch.lid, ch.accepts)
        if c.room_id:
            ch.room_id = c.room_id
            self.table.join(ch.lid, c.room_id)
        reply = json.dumps({"conn_id": c.conn_id, "key": c.key, "mid": c.mid, "room_id": c.room_id,
                            "heartbeat": self.config.heartbeat_timeout / 3}).encode()
        self.table.send(ch.lid, encode_frame(OP_AUTH_REPLY, f.seq, reply))
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
            self.table.send(ch.lid, encode_frame(OP_HEARTBEAT_REPLY, f.seq, _INT32.pack(count)))
            now = ch.last_seen
            if now - ch.renewed > self.config.heartbeat_timeout / 3:
                ch.renewed = now
                self._spawn(self._renew(ch))
        elif op == OP_SEND_MSG:
            self._spawn(self._upstream(ch, f))
        elif op == OP_CHANGE_ROOM:
            room, problem = room_of(f.body)
            if problem:
                self._reply(ch, OP_CHANGE_ROOM_REPLY, f.seq, ok=False, error=problem)
                return
            self.table.move(ch.lid, ch.room_id or None, room or None)
            ch.room_id = room
            self._reply(ch, OP_CHANGE_ROOM_REPLY, f.seq, ok=True, room_id=room)
        elif op == OP_JOIN_ROOM or op == OP_LEAVE_ROOM:
            room, problem = room_of(f.body)
            reply_op = OP_JOIN_ROOM_REPLY if op == OP_JOIN_ROOM else OP_LEAVE_ROOM_REPLY
            if problem or not room:
                self._reply(ch, reply_op, f.seq, ok=False, error=problem or "room id must look like type://id, got ''")
                return
            try:
                if op == OP_JOIN_ROOM:
                    self.table.join(ch.lid, room)
                    if not ch.room_id:
                        ch.room_id = room
                else:
                    self.table.leave(ch.lid, room)
                    if ch.room_id == room:
                        ch.room_id = ""
            except ValueError as e:
                self._reply(ch, reply_op, f.seq, ok=False, error=str(e))
                return
            self._reply(ch, reply_op, f.seq, ok=True, room_id=room)
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
            self.table.set_accepts(ch.lid, ch.accepts)
            self._reply(ch, op + 1, f.seq, ok=True, accepts=sorted(ch.accepts) if ch.accepts is not None else None)
        elif op == OP_AUTH:
            pass  # already authenticated: a repeated auth is ignored
        else:
            self.stats_counters["protocol_errors"] += 1
            log.debug("conn %s sent unsupported op %d", ch.conn_id, op)

    async def _renew(self, ch: Channel) -> None:
        """Push the session's expiry forward; a session the registry lost (expired during an outage,
        a cache fail-over) leaves the client unreachable, so it is told to reconnect."""
        conn_id = ch.conn_id
        try:
            alive = await self.logic.heartbeat(self.server_id, conn_id, ch.mid)
        except Exception as e:
            log.warning("session renewal of conn %s failed: %s", conn_id, e)
            return
        if not alive and ch.conn_id == conn_id and ch.state == S_OPEN:
            self.close(ch, "session expired", reconnect=True)

    def _reply(self, ch: Channel, op: int, seq: int, **fields) -> None:
        self.table.send(ch.lid, encode_frame(op, seq, json.dumps(fields).encode()))

    async def _upstream(self, ch: Channel, f) -> None:
        try:
            body = await self.logic.receive(self.server_id, ch.conn_id, ch.mid, f.op, f.seq, f.body)
        except Exception as e:
            log.warning("upstream message from conn %s failed: %s", ch.conn_id, e)
            body = json.dumps({"ok": False, "error": "upstream unavailable"}).encode()
        if ch.lid in self.table:
            self.table.send(ch.lid, encode_frame(OP_SEND_MSG_REPLY, f.seq, body or b""))

    def _spawn(self, coro) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ pushes (called by push)

    def push_conns(self, conn_ids: list[int], op: int, body: bytes) -> int:
        """Unicast/multicast to connections of this proxy, filtered by each one's accepted ops."""
        self.stats_counters["pushes"] += 1
        lids = []
        for cid in conn_ids:
            ch = self._by_conn_id.get(cid)
            if ch is not None:
                lids.append(ch.lid)
        if not lids:
            return 0
        n = self.table.send_many(lids, encode_frame(op, 0, body), op)
        self.stats_counters["drops"] += len(lids) - n
        return n

    def push_mids(self, mids: list[int], op: int, body: bytes) -> int:
        """Unicast/multicast by user id to this proxy's connections (the table's user index), filtered
        by each one's accepted ops: the embedded node's logic resolves pushes by mid here."""
        self.stats_counters["pushes"] += 1
        return self.table.send_users(mids, encode_frame(op, 0, body), op)

    def push_room(self, room_id: str, op: int, body: bytes) -> int:
        """Room broadcast. Pushes to one room within an event-loop iteration (or the merge window)
        travel together as one op-9 batch: inner frames over TCP, one op-9 frame over WebSocket."""
        return self.push_room_batch(room_id, encode_frame(op, 0, body))

    def push_room_batch(self, room_id: str, frames: bytes) -> int:
        """Room broadcast of frames already encoded and merged by push (inner frames back to back)."""
        self.stats_counters["pushes"] += 1
        count = self.table.room_count(room_id)
        if not count or not frames:
            return 0
        self._room_frames.setdefault(room_id, []).append(frames)
        if not self._room_flush_scheduled:
            self._room_flush_scheduled = True
            if self.config.merge_window > 0:
                self.loop.call_later(self.config.merge_window, self._flush_rooms)
            else:
                self.loop.call_soon(self._flush_rooms)
        return count

    def rooms(self) -> dict:
        """This proxy's rooms and their online counts (push absorbs these periodically)."""
        return self.table.rooms()

    def _flush_rooms(self) -> None:
        self._room_flush_scheduled = False
        batches, self._room_frames = self._room_frames, {}
        for room_id, frames in batches.items():
            inner = b"".join(frames)
            self.table.broadcast(room_id, inner, ws_data=encode_frame(OP_RAW, 0, inner))

    def push_all(self, op: int, body: bytes, speed: int = 0) -> int:
        """Broadcast to every connection, filtered by accepted ops; `speed` caps connections per second."""
        self.stats_counters["pushes"] += 1
        frame = encode_frame(op, 0, body)
        if speed <= 0:
            return self.table.broadcast_all(frame, op)
        lids = [ch.lid for ch in self._channels.values() if ch.state == S_OPEN]
        self._spawn(self._paced(lids, frame, op, speed))
        return len(lids)

    async def _paced(self, lids: list[int], frame: bytes, op: int, speed: int) -> None:
        step = max(1, speed // 10)  # ten slices per second
        for i in range(0, len(lids), step):
            self.table.send_many([lid for lid in lids[i : i + step] if lid in self.table], frame, op)
            await asyncio.sleep(0.1)

    # ------------------------------------------------------------------ closing

    def close(self, ch: Channel, reason: str, reconnect: bool) -> None:
        """op 6 with the reason, then close (the server decided: protocol error, kicked, slow...)."""
        if ch.lid not in self._channels or ch.state == S_CLOSING:
            return
        if ch.ws:
            if ch.state == S_HTTP:
                self._close_now(ch)
                return
            short = reason.encode()[:120].decode("utf-8", "ignore")  # a close reason is at most 123 bytes
            self._close_ws(ch, reason, encode_ws_close(1008 if not reconnect else 1001, short), reconnect)
            return
        log.debug("closing conn %s (%s): %s", ch.conn_id or ch.lid, ch.ip, reason)
        rest = self.table.send_final(ch.lid, notice(reason, reconnect)) if ch.lid in self.table else b""
        self._half_close(ch, rest)

    def _close_ws(self, ch: Channel, reason: str, close_frame: bytes, reconnect: bool = False) -> None:
        rest = b""
        if ch.lid in self.table:
            rest = self.table.send_final(ch.lid, _ws_binary(notice(reason, reconnect)) + close_frame, raw=True)
        self._half_close(ch, rest)

    def _half_close(self, ch: Channel, rest: bytes = b"") -> None:
        # FIN now, then drain the peer briefly: closing with unread input would reset the
        # connection and could destroy the op-6 notice before the client reads it.
        self._forget(ch)
        was_authing = ch.state == S_AUTHING
        ch.state = S_CLOSING
        ch.deadline = time.monotonic() + 2.0
        if was_authing:  # reading was paused for auth; drain again so the peer's close is seen
            self.loop.add_reader(ch.fd, self._on_readable, ch)
        if rest:
            # the socket's buffer is full (a peer that stopped reading): the notice waits for room
            # until the deadline; FIN follows it
            ch.unsent = rest
            self.loop.add_writer(ch.fd, self._write_unsent, ch)
            return
        self._shutdown_write(ch)

    def _shutdown_write(self, ch: Channel) -> None:
        try:
            ch.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close_now(ch)

    def _write_unsent(self, ch: Channel) -> None:
        try:
            n = ch.sock.send(ch.unsent)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close_now(ch)
            return
        ch.unsent = ch.unsent[n:]
        if not ch.unsent:
            ch.unsent = None
            self.loop.remove_writer(ch.fd)
            self.stats_counters["close_notices_late"] += 1
            self._shutdown_write(ch)

    def _lost(self, ch: Channel) -> None:
        """The peer closed or reset the connection."""
        self._close_now(ch)

    def _forget(self, ch: Channel) -> None:
        """Unregister everywhere (table, session registry); the socket stays open."""
        if ch.lid in self.table:
            self.table.remove(ch.lid)
        if ch.conn_id and self._by_conn_id.get(ch.conn_id) is ch:
            del self._by_conn_id[ch.conn_id]
            if self._stopping:
                self._final_disconnects.append(self.logic.disconnect(self.server_id, ch.conn_id, ch.mid))
            else:
                self._spawn(self.logic.disconnect(self.server_id, ch.conn_id, ch.mid))
            ch.conn_id = 0

    def _close_now(self, ch: Channel) -> None:
        if self._channels.pop(ch.lid, None) is None:
            return
        self._forget(ch)
        n = self._ips.get(ch.ip, 0) - 1
        if n > 0:
            self._ips[ch.ip] = n
        else:
            self._ips.pop(ch.ip, None)
        if ch.state != S_AUTHING:
            self.loop.remove_reader(ch.fd)
        if ch.unsent is not None:  # the peer never made room for its op-6 notice
            self.loop.remove_writer(ch.fd)
            ch.unsent = None
            self.stats_counters["close_notices_dropped"] += 1
        ch.state = S_CLOSING
        ch.sock.close()

    def _send_direct(self, ch: Channel, data: bytes) -> None:
        try:
            ch.sock.send(data)
        except OSError:
            pass

    def _on_overflow(self, lid: int) -> None:
        # The table already stopped delivering to it; the close (notice, FIN, logic's disconnect)
        # waits for the next loop iterations, _CLOSE_SLICE at a time, so that a thousand slow
        # consumers overflowing in one broadcast do not hold every healthy client's push behind them.
        self._overflowed.append(lid)
        if len(self._overflowed) == 1:
            self.loop.call_soon(self._close_overflowed)

    def _close_overflowed(self) -> None:
        batch = self._overflowed[:_CLOSE_SLICE]
        del self._overflowed[:_CLOSE_SLICE]
        if self._overflowed:
            self.loop.call_soon(self._close_overflowed)
        for lid in batch:
            ch = self._channels.get(lid)
            if ch is not None:
                self.stats_counters["slow_consumer_closes"] += 1
                self.close(ch, "slow consumer", reconnect=True)

    def _on_write_error(self, lid: int, exc: OSError) -> None:
        ch = self._channels.get(lid)
        if ch is not None:
            self._close_now(ch)

    # ------------------------------------------------------------------ housekeeping

    async def _sweep_loop(self) -> None:
        """Handshake and heartbeat deadlines, checked in one pass instead of a timer per connection."""
        period = min(1.0, self.config.handshake_timeout / 2, self.config.heartbeat_timeout / 2)
        while True:
            await asyncio.sleep(period)
            hb = self.config.heartbeat_timeout
            channels = list(self._channels.values())
            for i, ch in enumerate(channels):
                if i % _SWEEP_SLICE == 0:
                    if i:
                        # let the loop serve between slices: a pass over 10,000 channels in one go
                        # held every push behind it for a millisecond or two, once a second
                        await asyncio.sleep(0)
                    now = time.monotonic()
                if ch.lid not in self._channels:
                    continue  # gone while we yielded
                st = ch.state
                if st == S_OPEN:
                    if now - ch.last_seen > hb:
                        self.close(ch, "heartbeat timeout", reconnect=True)
                elif st == S_CLOSING:
                    if now > ch.deadline:
                        self._close_now(ch)
                elif st != S_AUTHING and now > ch.deadline:
                    self.stats_counters["handshake_timeouts"] += 1
                    self.close(ch, "auth timeout: the first frame must be auth (op 7)", reconnect=False)

    async def _report_loop(self) -> None:
        """Report room counts to logic periodically (seed 5.3: counters are absorbed, not queried)."""
        while True:
            try:
                rooms = self.table.rooms()
                counts = await self.logic.renew_online(self.server_id, rooms, len(self._by_conn_id), len(self._ips))
                # what the other proxies hold; heartbeats add this proxy's live count to it
                self._remote_online = {r: max(0, counts.get(r, n) - n) for r, n in rooms.items()} if counts else {}
            except Exception as e:
                log.warning("renew online failed: %s", e)
            await asyncio.sleep(self.config.online_interval)

    # ------------------------------------------------------------------ queries

    def stats(self) -> dict:
        t = self.table.stats()
        return dict(
            self.stats_counters,
            connections=len(self._by_conn_id),
            sockets=len(self._channels),
            rooms=t["rooms"],
            frames_out=t["frames_out"],
            bytes_out=t["bytes_out"],
            write_calls=t["write_calls"],
            overflows=t["overflows"],
        )


def _ws_binary(payload: bytes) -> bytes:
    return encode_ws_frame(payload, WS_BINARY)
