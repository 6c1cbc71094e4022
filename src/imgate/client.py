"""An asyncio client for imgate and goim v2 gateways, over TCP or WebSocket.

Used by the tests, the benchmarks and the README example::

    from imgate.client import connect

    client = await connect("ws://127.0.0.1:3102/sub", mid=1, room_id="live://1000", token=token)
    online = await client.heartbeat()          # op 2 -> op 3: online count of the room
    await client.join_room("live://2000")     # op 18 -> 19
    async for push in client:                 # pushed frames, op-9 batches unpacked
        print(push.op, push.seq, push.body)

URLs: ``tcp://host:port`` (default port 3101), ``ws://host:port/path`` (default port 3102, path
``/sub``), ``wss://host:port/path`` (default port 3103) and ``tls://host:port`` (goim TCP over TLS,
default port 3104); for the TLS ones pass ``ssl=`` for a custom context, e.g.
``ssl.create_default_context(cafile="ca.crt")`` with the CA of ``imgate cert dev``.

How frames are told apart. A frame whose (seq, op) answers a request in flight (op 2 -> 3, 4 -> 5,
7 -> 8, 12 -> 13, 14 -> 15, 16 -> 17, 18 -> 19, 20 -> 21, or any ``request(op, reply_op=...)``)
resolves that request. Replies of those goim/imgate operations that match nothing (e.g. of a server that
does not echo seq) resolve the oldest request waiting for that operation, or are dropped. Op 6 is the
server's notice before it closes (kept in :attr:`Client.closed_reason`). Op 9 is a batch whose body is
whole frames back to back; its inner frames are dispatched in order. Everything else is a push: queued
for :meth:`Client.recv` (or handed to :attr:`Client.on_push` if set).

The receive path is an :class:`asyncio.Protocol` feeding the compiled :class:`imgate.core.FrameDecoder`;
WebSocket frames are the core codec's too (:class:`imgate.core.WebSocketParser` in client mode, which
answers pings and echoes a close with masked frames, and :func:`imgate.core.encode_ws_frame` with a
mask); only the upgrade request and its check are written here. Works on uvloop.

Errors: :class:`ClientError` and its subclasses :class:`AuthRejected` (op 6 or a close instead of the
auth reply), :class:`ConnectionClosed` (the connection is gone; carries the op-6 notice if any),
:class:`Refused` (the server answered a room or sub operation with ``"ok": false``; the connection
stays open) and :class:`ClientTimeout` (also a :class:`TimeoutError`). Connecting to a closed port raises the
:class:`OSError` of the socket.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import ssl as _ssl
from collections import deque
from typing import Any, Callable, Iterable
from urllib.parse import urlsplit

from imgate.core import (
    WS_OP_BINARY, WS_OP_CLOSE, WS_OP_TEXT, Frame, FrameDecoder, ProtocolError, WebSocketError, WebSocketParser,
    encode_frame, encode_ws_frame, ws_accept_key,
)
from imgate.protocol.ops import (  # noqa: F401  (goim operations, re-exported for callers of the client)
    OP_AUTH, OP_AUTH_REPLY, OP_CHANGE_ROOM, OP_CHANGE_ROOM_REPLY, OP_HEARTBEAT, OP_HEARTBEAT_REPLY,
    OP_JOIN_ROOM, OP_JOIN_ROOM_REPLY, OP_LEAVE_ROOM, OP_LEAVE_ROOM_REPLY, OP_RAW, OP_SEND_MSG,
    OP_SEND_MSG_REPLY, OP_SUB, OP_SUB_REPLY, OP_UNSUB, OP_UNSUB_REPLY,
)
from imgate.protocol.ops import OP_DISCONNECT_REPLY as OP_DISCONNECT
from imgate.protocol.ops import (
    OP_GROUP_ACK, OP_GROUP_PULL, OP_GROUP_PULL_REPLY, OP_MSG_ACK, OP_MSG_PUSH, OP_MSG_SEND, OP_MSG_SEND_REPLY,
    OP_READ, OP_READ_REPLY, OP_SYNC, OP_SYNC_REPLY,
)

__all__ = [
    "AuthRejected",
    "Client",
    "ClientError",
    "ClientTimeout",
    "ConnectionClosed",
    "connect_with_retry",
    "ImRejected",
    "Refused",
    "connect",
]


# replies that are never pushes: dropped when they answer nothing
_REPLY_OPS = frozenset({OP_HEARTBEAT_REPLY, OP_SEND_MSG_REPLY, OP_AUTH_REPLY, OP_CHANGE_ROOM_REPLY,
                        OP_SUB_REPLY, OP_UNSUB_REPLY, OP_JOIN_ROOM_REPLY, OP_LEAVE_ROOM_REPLY})
_CONTROL_OPS = _REPLY_OPS | {OP_DISCONNECT}

_DEFAULT_PORTS = {"tcp": 3101, "ws": 3102, "wss": 3103, "tls": 3104}  # tls: goim TCP over TLS
_MAX_RESPONSE_HEAD = 16384


class ClientError(Exception):
    """Base of the client's errors."""


class AuthRejected(ClientError):
    """The server answered the auth frame with op 6, or closed, instead of op 8."""

    def __init__(self, reason: str, notice: dict | None = None):
        super().__init__(reason)
        self.reason = reason
        self.notice = notice


class ConnectionClosed(ClientError):
    """The connection is closed; ``notice`` is the server's op-6 body (a dict) if it sent one."""

    def __init__(self, reason: str, notice: dict | None = None, ws_code: int | None = None):
        super().__init__(reason)
        self.reason = reason
        self.notice = notice
        self.ws_code = ws_code


class Refused(ClientError):
    """The server refused an operation (its reply says ``"ok": false``): an invalid room id, the
    connection's room limit, bad sub/unsub ops. The connection stays open; ``error`` is the server's
    reason, ``reply`` the reply's JSON body."""

    def __init__(self, op: int, error: str, reply: dict):
        super().__init__(f"op {op} refused: {error}")
        self.op = op
        self.error = error
        self.reply = reply


class ImRejected(ClientError):
    """The server answered an IM request with an error (``code``, ``error``); the connection stays."""

    def __init__(self, code: int, error: str, reply: dict):
        super().__init__(f"{code}: {error}")
        self.code = code
        self.error = error
        self.reply = reply


def _im_reply(body: bytes) -> dict:
    reply = json.loads(body)
    if reply.get("code"):
        raise ImRejected(reply["code"], reply.get("error", ""), reply)
    return reply


class ClientTimeout(ClientError, TimeoutError):
    """No answer within the timeout."""


def _expire(fut: asyncio.Future, what: str, timeout: float) -> None:
    if not fut.done():
        fut.set_exception(ClientTimeout(f"no {what} within {timeout:g} s"))


def _ws_client_frame(payload: bytes | bytearray | memoryview, opcode: int = WS_OP_BINARY) -> bytes:
    """One final client frame, masked with a fresh random mask (RFC 6455 5.3)."""
    return encode_ws_frame(payload, opcode, True, os.urandom(4))


def _parse_notice(body: bytes) -> dict:
    try:
        notice = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        notice = None
    if not isinstance(notice, dict):
        notice = {"reason": body.decode("utf-8", "replace"), "reconnect": False}
    notice.setdefault("reason", "")
    return notice


class _Protocol(asyncio.Protocol):
    """Bytes in -> frames -> Client._dispatch. TCP, or WebSocket (handshake, then frames)."""

    def __init__(self, client: Client, max_body: int, ws_key: str | None):
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.decoder = FrameDecoder(max_body)
        self.failed = False
        # WebSocket state (ws_key is None over TCP)
        self.ws = ws_key is not None
        self.ws_expected_accept = ws_key and ws_accept_key(ws_key)
        self.ws_head: bytearray | None = bytearray() if self.ws else None
        self.ws_parser = WebSocketParser(max_body + 16, client=True) if self.ws else None
        self.ws_closed = False
        # resolved once the 101 is checked (made here: the response may come with connection_made)
        self.handshake: asyncio.Future | None = client._loop.create_future() if self.ws else None

    # asyncio callbacks ---------------------------------------------------------------------
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        if self.failed:
            return
        if not self.ws:
            try:
                frames = self.decoder.feed(data)
            except ProtocolError as e:
                self.fail(f"protocol error: {e}")
                return
            if frames:
                self.client._dispatch(frames)
            return
        if self.ws_head is not None:
            data = self._handshake_data(data)
            if not data:
                return
        if not self.ws_closed:
            self._ws_feed(data)

    def eof_received(self):
        return False  # close the transport

    def connection_lost(self, exc):
        hs = self.handshake
        if hs is not None and not hs.done():
            hs.set_exception(ClientError("connection closed during the websocket upgrade"
                                         + (f": {exc}" if exc else "")))
        self.client._on_lost(exc)

    def pause_writing(self):
        self.client._write_paused = True

    def resume_writing(self):
        self.client._resume_writing()

    # failure -------------------------------------------------------------------------------
    def fail(self, reason: str):
        """A violation by the server: the stream cannot be trusted any more; drop it."""
        if self.failed:
            return
        self.failed = True
        self.client._fail_reason = reason
        hs = self.handshake
        if hs is not None and not hs.done():
            hs.set_exception(ClientError(reason))
        if self.transport is not None:
            self.transport.abort()

    # WebSocket -----------------------------------------------------------------------------
    def _handshake_data(self, data: bytes) -> bytes:
        head = self.ws_head
        head += data
        end = head.find(b"\r\n\r\n")
        if end < 0:
            if len(head) > _MAX_RESPONSE_HEAD:
                self.fail(f"websocket upgrade: response head is over {_MAX_RESPONSE_HEAD} bytes")
            return b""
        self.ws_head = None
        rest = bytes(head[end + 4:])
        error = self._check_response(bytes(head[:end]), rest)
        if error:
            self.fail(error)
            return b""
        if self.handshake is not None and not self.handshake.done():
            self.handshake.set_result(None)
        return rest

    def _check_response(self, head: bytes, rest: bytes) -> str | None:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            return f"websocket upgrade: not an HTTP response: {lines[0][:80]!r}"
        status = int(parts[1])
        if status != 101:
            reason = parts[2] if len(parts) > 2 else ""
            detail = rest[:200].decode("utf-8", "replace").strip()
            return (f"websocket upgrade refused: HTTP {status} {reason}".rstrip()
                    + (f": {detail}" if detail else ""))
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        if headers.get("upgrade", "").lower() != "websocket":
            return "websocket upgrade: the 101 response has no 'Upgrade: websocket'"
        tokens = [t.strip().lower() for t in headers.get("connection", "").split(",")]
        if "upgrade" not in tokens:
            return "websocket upgrade: the 101 response has no 'Connection: Upgrade'"
        accept = headers.get("sec-websocket-accept")
        if accept != self.ws_expected_accept:
            return (f"websocket upgrade: Sec-WebSocket-Accept is {accept!r}, "
                    f"expected {self.ws_expected_accept!r}")
        return None

    def _ws_feed(self, data) -> None:
        """The server's frames, parsed by the core codec; data messages go to the frame decoder."""
        parser = self.ws_parser
        try:
            messages = parser.feed(data)
        except WebSocketError as e:
            self.fail(f"websocket: {e}")
            return
        for opcode, payload in messages:
            if opcode == WS_OP_BINARY or opcode == WS_OP_TEXT:
                self._on_message(payload)
                if self.failed:
                    return
        replies = parser.take_output()  # pongs, and the echo of a close
        if replies and not self.client._ws_close_sent:
            self.client._ws_close_sent = parser.closed
            self.transport.write(replies)
        if parser.closed:
            self._on_close()

    def _on_message(self, payload) -> None:
        """One WebSocket message: exactly one goim frame."""
        try:
            frames = self.decoder.feed(payload)
        except ProtocolError as e:
            self.fail(f"protocol error: {e}")
            return
        if len(frames) != 1 or self.decoder.buffered:
            self.fail(f"protocol error: a websocket message must carry exactly one frame "
                      f"({len(payload)} bytes gave {len(frames)} whole frames)")
            return
        self.client._dispatch(frames)

    def _on_close(self) -> None:
        self.ws_closed = True
        client = self.client
        parser = self.ws_parser
        client.ws_close_code = parser.close_code if parser.close_code is not None else 1005
        client.ws_close_reason = parser.close_reason
        # the server closes the TCP connection first (RFC 6455 7.1.1); don't wait for it
        self.transport.close()


class Client:
    """A connected, authenticated session. Make one with :func:`connect`."""

    #: if set, pushes are passed to this callable (in order) instead of being queued for recv()
    on_push: Callable[[Frame], Any] | None

    def __init__(self, loop: asyncio.AbstractEventLoop, url: str, *, websocket: bool,
                 timeout: float, max_body: int):
        self._loop = loop
        self.url = url
        self.websocket = websocket
        self.timeout = timeout
        self._max_body = max_body
        self._proto: _Protocol | None = None
        self._transport: asyncio.Transport | None = None
        self._queue: deque[Frame] = deque()
        self._waiter: asyncio.Future | None = None
        self._pending: dict[int, tuple[int, asyncio.Future | None]] = {}
        self._seq = 0
        self._auth_fut: asyncio.Future | None = None
        self._beat_task: asyncio.Task | None = None
        self._beat_seq = 0
        self._lost = loop.create_future()
        self._closed = False
        self._closing = False
        self._fail_reason: str | None = None
        self._error: ConnectionClosed | None = None
        self._write_paused = False
        self._drain_waiters: list[asyncio.Future] = []
        self._ws_close_sent = False
        self.on_push = None
        self._own_entries = False  # messages() is in use: this connection's own sends are fed to it
        #: the op-6 notice (dict with "reason", "reconnect") if the server sent one
        self.closed_reason: dict | None = None
        #: the body of the op-8 auth reply
        self.auth_reply: bytes = b""
        self.ws_close_code: int | None = None
        self.ws_close_reason: str = ""
        self.mid = 0
        self.key = ""
        self.room_id = ""

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Client {self.url} mid={self.mid} {state} queued={len(self._queue)}>"

    # properties ----------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        """True once the connection is gone (queued pushes can still be read)."""
        return self._closed

    @property
    def queued(self) -> int:
        """Number of pushes waiting for recv()."""
        return len(self._queue)

    # receiving -----------------------------------------------------------------------------
    def _dispatch(self, frames) -> None:
        pending = self._pending
        queue = self._queue
        on_push = self.on_push
        pushed = False
        for f in frames:
            op = f.op
            if op == OP_RAW:
                self._dispatch_batch(f.body)
                continue
            if pending:
                entry = pending.get(f.seq)
                if entry is not None and entry[0] == op:
                    del pending[f.seq]
                    fut = entry[1]
                    if fut is not None and not fut.done():
                        fut.set_result(f)
                    continue
            if op in _CONTROL_OPS:
                self._control(f)
                continue
            if on_push is not None:
                on_push(f)
            else:
                queue.append(f)
                pushed = True
        if pushed:
            w = self._waiter
            if w is not None and not w.done():
                w.set_result(True)

    def _dispatch_batch(self, body: bytes) -> None:
        decoder = FrameDecoder(self._max_body)
        try:
            inner = decoder.feed(body)
        except ProtocolError as e:
            self._proto.fail(f"protocol error in an op-9 batch: {e}")
            return
        if decoder.buffered:
            self._proto.fail("protocol error: an op-9 batch ends inside a frame")
            return
        self._dispatch(inner)

    def _control(self, f: Frame) -> None:
        op = f.op
        if op == OP_DISCONNECT:
            notice = _parse_notice(f.body)
            self.closed_reason = notice
            auth = self._auth_fut
            if auth is not None and not auth.done():
                auth.set_exception(AuthRejected(str(notice.get("reason") or "rejected"), notice))
            return
        # a reply that answers no (seq, op): the oldest request waiting for this op, if any
        for seq, (reply_op, fut) in self._pending.items():
            if reply_op == op:
                del self._pending[seq]
                if fut is not None and not fut.done():
                    fut.set_result(f)
                return

    async def recv(self, timeout: float | None = None) -> Frame:
        """The next push (a :class:`imgate.core.Frame`: ``op``, ``seq``, ``body``), in order.

        Raises :class:`ConnectionClosed` once the connection is gone and the queue is empty, and
        :class:`ClientTimeout` if nothing arrives within ``timeout`` seconds.
        """
        queue = self._queue
        if queue:
            return queue.popleft()
        if self._closed:
            raise self._closed_error()
        if self._waiter is not None:
            raise ClientError("recv() is already being awaited by another task")
        fut = self._loop.create_future()
        self._waiter = fut
        handle = None
        if timeout is not None:
            handle = self._loop.call_later(timeout, _expire, fut, "push", timeout)
        try:
            await fut
        finally:
            self._waiter = None
            if handle is not None:
                handle.cancel()
        if queue:
            return queue.popleft()
        raise self._closed_error()

    def recv_nowait(self) -> Frame | None:
        """A queued push, or None."""
        return self._queue.popleft() if self._queue else None

    def __aiter__(self):
        return self

    async def __anext__(self) -> Frame:
        try:
            return await self.recv()
        except ConnectionClosed:
            raise StopAsyncIteration from None

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    # sending -------------------------------------------------------------------------------
    def _next_seq(self) -> int:
        seq = self._seq + 1
        if seq > 0x7FFFFFFF:
            seq = 1
        self._seq = seq
        return seq

    def _write(self, data: bytes) -> None:
        transport = self._transport
        if self._closed or self._closing or transport.is_closing():
            raise self._closed_error()
        if self.websocket:
            data = _ws_client_frame(data)
        transport.write(data)

    def send_raw(self, data: bytes | bytearray | memoryview) -> None:
        """Write bytes as they are (TCP) or as one masked binary message (WebSocket). For tests."""
        self._write(bytes(data))

    def send_frame(self, op: int, body: bytes | str = b"", seq: int | None = None) -> int:
        """Write one frame without waiting for anything; returns its seq."""
        if seq is None:
            seq = self._next_seq()
        self._write(encode_frame(op, seq, body))
        return seq

    async def request(self, op: int, body: bytes | str = b"", reply_op: int | None = None,
                      timeout: float | None = None) -> Frame:
        """Send a frame with a fresh seq and wait for the frame ``reply_op`` (default op + 1) that
        echoes that seq."""
        if reply_op is None:
            reply_op = op + 1
        seq = self._next_seq()
        data = encode_frame(op, seq, body)
        fut = self._loop.create_future()
        self._write(data)
        self._pending[seq] = (reply_op, fut)
        t = self.timeout if timeout is None else timeout
        handle = self._loop.call_later(t, _expire, fut, f"reply op {reply_op} to op {op}", t)
        try:
            return await fut
        finally:
            handle.cancel()
            entry = self._pending.get(seq)
            if entry is not None and entry[1] is fut:
                del self._pending[seq]

    async def heartbeat(self, timeout: float | None = None) -> int:
        """Op 2 -> op 3; returns the online count of the connection's room (int32 big-endian)."""
        reply = await self.request(OP_HEARTBEAT, b"", OP_HEARTBEAT_REPLY, timeout)
        body = reply.body
        return int.from_bytes(body[:4], "big", signed=True) if len(body) >= 4 else 0

    async def _checked(self, op: int, body: bytes, reply_op: int, timeout: float | None) -> None:
        """A request whose JSON reply carries ``ok``; ``"ok": false`` raises :class:`Refused`."""
        reply = await self.request(op, body, reply_op, timeout)
        try:
            fields = json.loads(reply.body) if reply.body else {}
        except (ValueError, UnicodeDecodeError):
            fields = None
        if not isinstance(fields, dict):  # a goim server answers with an empty or non-JSON body
            return
        if fields.get("ok") is False:
            raise Refused(op, str(fields.get("error") or "refused by the server"), fields)

    async def change_room(self, room_id: str, timeout: float | None = None) -> None:
        """Op 12 -> 13: move the connection to ``room_id`` (``""`` leaves every room).
        Raises :class:`Refused` if the server refuses (the connection stays where it was)."""
        await self._checked(OP_CHANGE_ROOM, room_id.encode(), OP_CHANGE_ROOM_REPLY, timeout)
        self.room_id = room_id

    async def join_room(self, room_id: str, timeout: float | None = None) -> None:
        """Op 18 -> 19: join one more room. Raises :class:`Refused` if the server refuses."""
        await self._checked(OP_JOIN_ROOM, room_id.encode(), OP_JOIN_ROOM_REPLY, timeout)

    async def leave_room(self, room_id: str, timeout: float | None = None) -> None:
        """Op 20 -> 21: leave one room. Raises :class:`Refused` if the server refuses."""
        await self._checked(OP_LEAVE_ROOM, room_id.encode(), OP_LEAVE_ROOM_REPLY, timeout)

    async def sub(self, ops: Iterable[int], timeout: float | None = None) -> None:
        """Op 14 -> 15: also accept these push operations. Raises :class:`Refused` if refused."""
        await self._checked(OP_SUB, _ops_body(ops), OP_SUB_REPLY, timeout)

    async def unsub(self, ops: Iterable[int], timeout: float | None = None) -> None:
        """Op 16 -> 17: stop accepting these push operations. Raises :class:`Refused` if refused."""
        await self._checked(OP_UNSUB, _ops_body(ops), OP_UNSUB_REPLY, timeout)

    async def send(self, body: bytes | str, op: int = OP_SEND_MSG,
                   timeout: float | None = None) -> bytes:
        """Send a message (op 4 by default) and return the body of its reply (op + 1, same seq)."""
        reply = await self.request(op, body, op + 1, timeout)
        return reply.body

    # IM (docs/im.md) ---------------------------------------------------------------------------
    @property
    def inbox_seq(self) -> int:
        """The newest seq of the user's inbox when the connection authenticated (op 8)."""
        try:
            return int(json.loads(self.auth_reply).get("inbox_seq", 0))
        except (ValueError, AttributeError):
            return 0

    async def send_message(self, to: int, content: Any, *, type: str = "text", cmid: str | None = None,
                           timeout: float | None = None) -> dict:
        """Op 22 -> 23: store a message for user ``to``; the reply ``{"cmid", "msg_id", "seq", "ts"}``
        once it is durable. Resending with the same ``cmid`` after a lost reply stores nothing new.
        Raises :class:`ImRejected` for an error reply."""
        req = {"cmid": cmid or os.urandom(12).hex(), "to": to, "type": type, "content": content}
        reply = _im_reply((await self.request(OP_MSG_SEND, json.dumps(req), OP_MSG_SEND_REPLY, timeout)).body)
        if self._own_entries:
            # the sending connection gets no op 24 for its own entry: hand it to messages() as if pushed
            lo, hi = sorted((self.mid, to))
            msg = dict(reply, conv=f"u:{lo}:{hi}", to=to, type=type, content=content)
            msg["from"] = self.mid
            self._dispatch([Frame(OP_MSG_PUSH, 0, json.dumps({"msgs": [msg]}).encode())])
        return reply

    async def send_group(self, group: int, content: Any, *, type: str = "text", cmid: str | None = None,
                         timeout: float | None = None) -> dict:
        """Op 22 -> 23 to a group: the reply ``{"cmid", "msg_id", "seq", "group", "gseq", "ts"}`` once the
        message (and in write mode its fan-out job) is durable. ``seq`` is the sender's own inbox entry
        in write mode, 0 in read mode (the message is in the group's timeline only, pushed to every
        online member, this connection too). Raises :class:`ImRejected` for an error reply."""
        req = {"cmid": cmid or os.urandom(12).hex(), "group": group, "type": type, "content": content}
        reply = _im_reply((await self.request(OP_MSG_SEND, json.dumps(req), OP_MSG_SEND_REPLY, timeout)).body)
        if self._own_entries and reply.get("seq"):
            # write mode: no op 24 of its own entry comes to this connection; hand it to messages()
            msg = dict(reply, conv=f"g:{group}", type=type, content=content)
            msg["from"] = self.mid
            self._dispatch([Frame(OP_MSG_PUSH, 0, json.dumps({"msgs": [msg]}).encode())])
        return reply

    async def group_pull(self, group: int, after: int = 0, limit: int = 100, timeout: float | None = None) -> dict:
        """Op 28 -> 29: a group's timeline after ``after`` (gseq), from the member's join on."""
        body = json.dumps({"group": group, "after": after, "limit": limit})
        return _im_reply((await self.request(OP_GROUP_PULL, body, OP_GROUP_PULL_REPLY, timeout)).body)

    def group_ack(self, group: int, gseq: int) -> None:
        """Op 30: the read position in a read-mode group moves up to ``gseq`` (no reply)."""
        self.send_frame(OP_GROUP_ACK, json.dumps({"group": group, "gseq": gseq}))

    async def sync(self, after: int = 0, limit: int = 100, timeout: float | None = None) -> dict:
        """Op 26 -> 27: inbox entries after seq ``after`` (``msgs`` are dicts)."""
        reply = await self.request(OP_SYNC, json.dumps({"after": after, "limit": limit}), OP_SYNC_REPLY, timeout)
        return _im_reply(reply.body)

    def ack(self, seq: int) -> None:
        """Op 25: every inbox entry up to ``seq`` has reached this connection (no reply)."""
        self.send_frame(OP_MSG_ACK, json.dumps({"seq": seq}))

    async def read(self, conv: str, seq: int, timeout: float | None = None) -> dict:
        """Op 32 -> 33: the read position in ``conv`` moves up to ``seq`` (the peer is told)."""
        reply = await self.request(OP_READ, json.dumps({"conv": conv, "seq": seq}), OP_READ_REPLY, timeout)
        return _im_reply(reply.body)

    def messages(self, after: int | None = None):
        """An async iterator of the inbox's messages (dicts) from seq ``after + 1`` (default: what
        arrives after the auth), in order, each once; it fills gaps with SYNC and acks. It takes the
        connection's pushes for itself (other operations go to its ``others``)."""
        from imgate.im.stream import MessageStream

        self._own_entries = True
        return MessageStream(self, self.inbox_seq if after is None else after)

    async def drain(self) -> None:
        """Wait until the transport's write buffer is below its high-water mark."""
        if self._write_paused and not self._closed:
            fut = self._loop.create_future()
            self._drain_waiters.append(fut)
            await fut

    def _resume_writing(self) -> None:
        self._write_paused = False
        waiters, self._drain_waiters = self._drain_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    # heartbeat task ------------------------------------------------------------------------
    async def _beat(self, interval: float) -> None:
        while not (self._closed or self._closing):
            await asyncio.sleep(interval)
            if self._closed or self._closing:
                return
            self._pending.pop(self._beat_seq, None)  # at most one unanswered automatic beat
            seq = self._next_seq()
            self._beat_seq = seq
            self._pending[seq] = (OP_HEARTBEAT_REPLY, None)
            try:
                self._write(encode_frame(OP_HEARTBEAT, seq))
            except ClientError:
                return

    # closing -------------------------------------------------------------------------------
    def _closed_error(self) -> ConnectionClosed:
        if self._error is not None:
            return self._error
        notice = self.closed_reason
        if self._closing:
            reason = "closed by the client"
        elif notice is not None and notice.get("reason"):
            reason = str(notice["reason"])
        else:
            reason = self._fail_reason or "connection is closing"
        return ConnectionClosed(reason, notice, self.ws_close_code)

    def _on_lost(self, exc: BaseException | None) -> None:
        if self._closed:
            return
        self._closed = True
        notice = self.closed_reason
        if notice is not None and notice.get("reason"):
            reason = str(notice["reason"])
        elif self._fail_reason:
            reason = self._fail_reason
        elif self._closing:
            reason = "closed by the client"
        elif exc is not None:
            reason = f"connection lost: {exc}"
        elif self.ws_close_code is not None:
            reason = f"websocket closed by the server (code {self.ws_close_code}" + (
                f": {self.ws_close_reason})" if self.ws_close_reason else ")")
        else:
            reason = "connection closed by the server"
        self._error = err = ConnectionClosed(reason, notice, self.ws_close_code)
        auth = self._auth_fut
        pending, self._pending = self._pending, {}
        for _, fut in pending.values():
            if fut is not None and not fut.done():
                if fut is auth:
                    fut.set_exception(AuthRejected(reason, notice))
                else:
                    fut.set_exception(err)
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(False)
        self._resume_writing()
        if self._beat_task is not None:
            self._beat_task.cancel()
        if not self._lost.done():
            self._lost.set_result(None)

    async def wait_closed(self, timeout: float | None = None) -> None:
        """Wait until the connection is gone (e.g. after the server's op 6)."""
        if timeout is None:
            await asyncio.shield(self._lost)
        else:
            try:
                await asyncio.wait_for(asyncio.shield(self._lost), timeout)
            except asyncio.TimeoutError:
                raise ClientTimeout(f"connection still open after {timeout:g} s") from None

    def abort(self) -> None:
        """Drop the connection at once (no close handshake)."""
        self._closing = True
        if self._beat_task is not None:
            self._beat_task.cancel()
        if self._transport is not None:
            self._transport.abort()

    async def close(self, timeout: float = 1.0) -> None:
        """Close: a WebSocket close handshake (waiting up to ``timeout`` for the server), then the
        socket. Pushes already queued stay readable; then recv() raises ConnectionClosed."""
        if self._closed:
            return
        self._closing = True
        if self._beat_task is not None:
            self._beat_task.cancel()
        transport = self._transport
        if transport is None:
            return
        if self.websocket and not self._ws_close_sent and not transport.is_closing():
            self._ws_close_sent = True
            transport.write(_ws_client_frame(b"\x03\xe8", WS_OP_CLOSE))
            try:
                await asyncio.wait_for(asyncio.shield(self._lost), timeout)
            except asyncio.TimeoutError:
                pass
        if not self._lost.done():
            transport.close()
            try:
                await asyncio.wait_for(asyncio.shield(self._lost), timeout)
            except asyncio.TimeoutError:
                transport.abort()
                await asyncio.shield(self._lost)


def _ops_body(ops: Iterable[int]) -> bytes:
    return ",".join(str(int(op)) for op in ops).encode()


async def connect(url: str, *, mid: int = 0, key: str = "", room_id: str = "",
                  platform: str = "python", accepts: Iterable[int] = (), token: str = "",
                  heartbeat: float | None = 30.0, timeout: float = 5.0,
                  max_body: int = 1 << 22, ssl: _ssl.SSLContext | None = None) -> Client:
    """Connect, authenticate (op 7 -> op 8) and start the heartbeat (op 2 every ``heartbeat`` s;
    None disables it). ``timeout`` bounds the connect, the upgrade, the auth and, by default, every
    request. ``max_body`` bounds a frame's body from the server (an op-9 batch included).

    Raises :class:`AuthRejected` if the server answers the auth with op 6 or closes,
    :class:`ClientTimeout`, :class:`ClientError` (failed upgrade, protocol error) or the socket's
    :class:`OSError`.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(f"url must be tcp://host:port, tls://host:port, ws://host:port/sub or wss://..., got {url!r}")
    host = parts.hostname
    if not host:
        raise ValueError(f"url has no host: {url!r}")
    port = parts.port or _DEFAULT_PORTS[scheme]  # ValueError if the port is not a number
    websocket = scheme in ("ws", "wss")
    if ssl is None and scheme in ("wss", "tls"):
        ssl = _ssl.create_default_context()
    loop = asyncio.get_running_loop()
    client = Client(loop, url, websocket=websocket, timeout=timeout, max_body=max_body)
    ws_key = base64.b64encode(os.urandom(16)).decode() if websocket else None
    proto = _Protocol(client, max_body, ws_key)
    client._proto = proto
    try:
        transport, _ = await asyncio.wait_for(
            loop.create_connection(lambda: proto, host, port, ssl=ssl), timeout)
    except asyncio.TimeoutError:
        raise ClientTimeout(f"connect to {host}:{port} took over {timeout:g} s") from None
    client._transport = transport
    try:
        if websocket:
            path = parts.path or "/sub"
            if parts.query:
                path += "?" + parts.query
            host_header = f"[{host}]" if ":" in host else host
            if parts.port:
                host_header += f":{parts.port}"
            if not transport.is_closing():  # the server may have answered (and failed) already
                transport.write(
                    f"GET {path} HTTP/1.1\r\nHost: {host_header}\r\nUpgrade: websocket\r\n"
                    f"Connection: Upgrade\r\nSec-WebSocket-Key: {ws_key}\r\n"
                    f"Sec-WebSocket-Version: 13\r\n\r\n".encode())
            handle = loop.call_later(timeout, _expire, proto.handshake, "websocket upgrade", timeout)
            try:
                await proto.handshake
            finally:
                handle.cancel()

        auth: dict[str, Any] = {"mid": mid, "key": key, "room_id": room_id, "platform": platform,
                                "accepts": [int(op) for op in accepts]}
        if token:
            auth["token"] = token
        seq = client._next_seq()
        client._write(encode_frame(OP_AUTH, seq, json.dumps(auth, separators=(",", ":"))))
        fut = loop.create_future()
        client._auth_fut = fut
        client._pending[seq] = (OP_AUTH_REPLY, fut)
        handle = loop.call_later(timeout, _expire, fut, "auth reply", timeout)
        try:
            reply = await fut
        finally:
            handle.cancel()
            client._pending.pop(seq, None)
            client._auth_fut = None
    except BaseException as e:
        client.abort()
        if isinstance(e, ConnectionClosed):  # the server closed during the upgrade
            raise AuthRejected(e.reason, e.notice) from None
        raise
    client.auth_reply = reply.body
    client.mid, client.key, client.room_id = mid, key, room_id
    if heartbeat:
        client._beat_task = loop.create_task(client._beat(float(heartbeat)))
    return client


async def connect_with_retry(url: str, *, deadline: float = 60.0, backoff: float = 0.1,
                             max_backoff: float = 10.0, on_busy: Callable[[dict], None] | None = None,
                             **kwargs) -> Client:
    """:func:`connect`, again and again until it succeeds or ``deadline`` seconds have passed.

    A server that is too busy to authenticate (op 6 ``{"reason": "busy", "reconnect": true,
    "retry_ms": N}``) is tried again after ``retry_ms``, which the server spreads so that a storm of
    returning clients arrives at the rate it can take; ``on_busy`` sees each such notice. Any other
    notice with ``"reconnect": true``, a timeout or a refused connection is retried with jittered
    exponential backoff from ``backoff`` to ``max_backoff`` seconds. A refusal without
    ``reconnect`` (a bad token) is raised at once, as is the last error once the deadline passes.
    """
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    delay = backoff
    while True:
        try:
            return await connect(url, **kwargs)
        except AuthRejected as e:
            notice = e.notice or {}
            if not notice.get("reconnect"):
                raise
            if notice.get("reason") == "busy" and isinstance(notice.get("retry_ms"), (int, float)):
                if on_busy is not None:
                    on_busy(notice)
                wait = max(0.0, notice["retry_ms"] / 1000)
            else:
                wait, delay = delay * random.uniform(0.5, 1.0), min(max_backoff, delay * 2)
            err: Exception = e
        except (ClientTimeout, ConnectionError, OSError) as e:
            wait, delay = delay * random.uniform(0.5, 1.0), min(max_backoff, delay * 2)
            err = e
        if loop.time() + wait >= end:
            raise err
        await asyncio.sleep(wait)
