"""The connection: frames out, replies matched to requests, pushes queued, the heartbeat, closing."""

from __future__ import annotations

import asyncio
import json
from collections import deque
from typing import TYPE_CHECKING, Any, Callable

from imgate.client.errors import AuthRejected, ClientError, ClientTimeout, ConnectionClosed, _expire
from imgate.client.goim import GoimOps
from imgate.client.im import ImOps
from imgate.client.websocket import _ws_client_frame
from imgate.core import WS_OP_CLOSE, Frame, FrameDecoder, ProtocolError, encode_frame
from imgate.protocol.ops import (
    OP_AUTH_REPLY, OP_CHANGE_ROOM_REPLY, OP_HEARTBEAT, OP_HEARTBEAT_REPLY, OP_JOIN_ROOM_REPLY,
    OP_LEAVE_ROOM_REPLY, OP_RAW, OP_SEND_MSG_REPLY, OP_SUB_REPLY, OP_UNSUB_REPLY,
)
from imgate.protocol.ops import OP_DISCONNECT_REPLY as OP_DISCONNECT

if TYPE_CHECKING:
    from imgate.client.protocol import _Protocol

# replies that are never pushes: dropped when they answer nothing
_REPLY_OPS = frozenset({OP_HEARTBEAT_REPLY, OP_SEND_MSG_REPLY, OP_AUTH_REPLY, OP_CHANGE_ROOM_REPLY,
                        OP_SUB_REPLY, OP_UNSUB_REPLY, OP_JOIN_ROOM_REPLY, OP_LEAVE_ROOM_REPLY})
_CONTROL_OPS = _REPLY_OPS | {OP_DISCONNECT}


def _parse_notice(body: bytes) -> dict:
    try:
        notice = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        notice = None
    if not isinstance(notice, dict):
        notice = {"reason": body.decode("utf-8", "replace"), "reconnect": False}
    notice.setdefault("reason", "")
    return notice


class Client(GoimOps, ImOps):
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

