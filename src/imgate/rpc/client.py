"""One RPC client connection: pipelined requests matched by seq, writes coalesced per loop iteration.

Why one connection is not a bottleneck:

- **Pipelining.** Many requests are in flight per connection; replies are matched by seq and may come
  back in any order, because the server runs each request as its own task (synchronous handlers are
  answered inline). A slow request never holds up the others.
- **Batching.** Frames written within one event-loop iteration go out as one ``transport.write`` (on
  both sides), so N concurrent calls cost one syscall, not N.
- **Bounded.** At most ``max_in_flight`` requests per connection (callers wait past that); a server
  stops reading a connection whose handlers pile up or whose replies the client does not read.
- **One-way requests** (:meth:`RpcClient.send`, seq 0): no reply, no future, no entry in flight; the
  server answers one only if the handler failed (an error frame with seq 0, counted and logged here).
  Pushes the caller need not wait for cost one frame in a shared write. Bounded by ``max_unread``: past
  that many bytes waiting for the peer, ``send`` refuses with :class:`RpcUnavailable`.
- **Packed one-way requests** (:meth:`RpcClient.send_packed`): consecutive ones of one method share
  one frame, their bodies back to back (``imgate.rpc.packed``), so the peer decodes one frame per
  write, not one per push.
- **Write window** (``write_window`` seconds, 0 by default): one-way requests that follow a write
  within the window wait for the window's end and leave together, so a caller that sends one push at a
  time (a business server answered before its next request) pays one write and one wake-up of the peer
  per window, not per push. The first one-way request after a quiet window goes out in the iteration's
  write as usual; requests awaiting a reply never wait (they take whatever is held with them).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from imgate.core import FrameDecoder, ProtocolError, encode_frame
from imgate.protocol import pb
from imgate.rpc.wire import (
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_BODY, DEFAULT_MAX_IN_FLIGHT, DEFAULT_MAX_UNREAD, DEFAULT_TIMEOUT,
    DEFAULT_WRITE_BATCH, ERROR_OP, PROTOCOL_VERSION, REPLY_FLAG, SEQ_MAX, SWEEP_INTERVAL, RpcError, RpcTimeout,
    RpcUnavailable, method_name, remote_error, tune,
)

log = logging.getLogger("imgate.rpc")


class RpcClient(asyncio.Protocol):
    """One client connection: pipelined requests, replies matched by seq, writes coalesced per
    event-loop iteration, at most ``max_in_flight`` requests outstanding.

    Open with ``await RpcClient.connect(host, port, service)``; it returns after the HELLO exchange.
    """

    def __init__(self, service: str, *, client_id: str = "", server_id: str = "",
                 max_body: int = DEFAULT_MAX_BODY, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
                 write_batch: int = DEFAULT_WRITE_BATCH, max_unread: int = DEFAULT_MAX_UNREAD,
                 write_window: float = 0.0, on_lost: Callable[["RpcClient"], None] | None = None):
        self.service = service
        self.client_id = client_id
        self.expect_server_id = server_id
        self.max_in_flight = max_in_flight
        self.write_batch = max(1, write_batch)
        self.max_unread = max_unread
        self.write_window = write_window
        self.on_lost = on_lost
        self.peer = ""
        self.remote: pb.HelloReply | None = None
        self.close_reason = ""
        self._loop = asyncio.get_running_loop()
        self._decoder = FrameDecoder(max_body=max_body)
        self._transport: asyncio.Transport | None = None
        self._pending: dict[int, tuple] = {}  # seq -> (future, deadline, write generation, method)
        self._seq = 0
        self._wbuf: list = []  # frames (bytes) and packed runs (lists, see send_packed)
        self._run: list | None = None  # the packed run at the tail of _wbuf, which may grow
        self._runs = False  # _wbuf holds packed runs
        self._wbytes = 0  # bytes in _wbuf
        self._gen = 0  # incremented at every flush: a request whose generation is older was written
        self._flush_scheduled = False
        self._held: asyncio.TimerHandle | None = None  # the write window's end, while frames wait for it
        self._last_write = float("-inf")  # loop time of the last write (kept only with a write window)
        self._sweeper: asyncio.TimerHandle | None = None
        self._waiters: list[asyncio.Future] = []
        self._paused = False
        self._closed = False
        self.requests = 0  # requests sent on this connection (stats)
        self.oneway_errors = 0  # one-way requests the server reported failed
        self.last_oneway_error = ""
        self.max_request_body = DEFAULT_MAX_BODY  # the server's limit, learnt from HELLO
        self.closed: asyncio.Future = self._loop.create_future()

    @classmethod
    async def connect(cls, host: str, port: int, service: str, *, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
                      ssl=None, path: str = "", **kw) -> "RpcClient":
        """``ssl``: a client ``SSLContext`` for TLS (``imgate.rpc.tls``); ``path``: a unix socket
        instead of host:port (the workers of one host)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + connect_timeout
        where = f"unix:{path}" if path else f"{host}:{port}"
        if path:
            opening = loop.create_unix_connection(lambda: cls(service, **kw), path, ssl=ssl)
        else:
            opening = loop.create_connection(lambda: cls(service, **kw), host, port, ssl=ssl)
        try:
            _, proto = await asyncio.wait_for(opening, connect_timeout)
        except asyncio.TimeoutError:
            raise RpcUnavailable(f"connecting to {where} timed out after {connect_timeout}s") from None
        except OSError as e:
            raise RpcUnavailable(f"cannot connect to {where}: {e.strerror or e}") from None
        try:
            body = await proto.request(pb.HELLO, pb.Hello(service=service, client_id=proto.client_id,
                                                          server_id=proto.expect_server_id,
                                                          version=PROTOCOL_VERSION).SerializeToString(),
                                       deadline)
            proto.remote = pb.HelloReply.FromString(body)
            if proto.remote.max_body:
                proto.max_request_body = proto.remote.max_body
        except BaseException as e:
            proto.abort(f"hello failed: {e}")
            if isinstance(e, RpcTimeout):
                raise RpcUnavailable(f"{where} did not answer HELLO within {connect_timeout}s") from None
            raise
        return proto

    # -------------------------------------------------------------- state

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    @property
    def is_closed(self) -> bool:
        return self._closed

    @property
    def full(self) -> bool:
        return self._paused or len(self._pending) >= self.max_in_flight

    # -------------------------------------------------------------- requests

    def request(self, method: int, body: bytes, deadline: float) -> asyncio.Future:
        """Queue a request; the future resolves to the reply body (bytes) or an RpcError."""
        if self._closed:
            raise RpcUnavailable(f"connection to {self.peer} is closed ({self.close_reason})", sent=False)
        if len(body) > self.max_request_body:
            # refused here: the server would drop the whole connection, and every request on it
            raise RpcError(f"{method_name(method)} request of {len(body)} bytes exceeds the server's limit of "
                           f"{self.max_request_body}", kind="bad_request")
        pending = self._pending
        seq = self._seq + 1
        if seq > SEQ_MAX:
            seq = 1
        while seq in pending:  # after a wrap, skip ids still in flight
            seq = seq + 1 if seq < SEQ_MAX else 1
        self._seq = seq
        self.requests += 1
        fut = self._loop.create_future()
        pending[seq] = (fut, deadline, self._gen, method)
        self._queue(encode_frame(method, seq, body))
        if self._sweeper is None:
            self._sweeper = self._loop.call_later(SWEEP_INTERVAL, self._sweep)
        return fut

    def send(self, method: int, body: bytes) -> None:
        """Queue a one-way request (seq 0): written in order with this iteration's other frames; the
        server sends no reply unless the handler fails. Raises :class:`RpcUnavailable` (not sent) when
        the connection is closed or more than ``max_unread`` bytes already wait for the peer."""
        self._may_send(method, len(body))
        self.requests += 1
        if self.write_window:
            self._hold(encode_frame(method, 0, body))
        else:
            self._queue(encode_frame(method, 0, body))

    def send_packed(self, method: int, part: bytes) -> None:
        """Like :meth:`send`, but ``part`` joins the frame of ``method`` at the tail of this write, if
        there is one and it stays within the server's limit; else it opens one."""
        self._may_send(method, len(part))
        run = self._run
        if run is not None and run[0] == method and run[1] + len(part) <= self.max_request_body:
            run.append(part)
            run[1] += len(part)
            self._wbytes += len(part)
            return
        self.requests += 1
        # [method, body bytes, parts...]: made into one frame when written (_write_now)
        run = [method, len(part), part]
        self._runs = True  # before queueing: past write_batch frames the queueing writes at once
        if self.write_window:
            self._hold(run, len(part) + 16)
        else:
            self._queue(run, len(part) + 16)
        wbuf = self._wbuf
        self._run = run if wbuf and wbuf[-1] is run else None  # a run already written takes no more

    def _queue(self, frame, size: int = 0) -> None:
        """Into this iteration's write (at once past ``write_batch`` frames). ``frame``: bytes, or a
        packed run (:meth:`send_packed`) of ``size`` bytes."""
        self._run = None  # what follows may not join a packed run before it: order
        self._wbytes += size or len(frame)
        wbuf = self._wbuf
        wbuf.append(frame)
        if len(wbuf) >= self.write_batch:
            self._write_now()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _may_send(self, method: int, size: int) -> None:
        """The checks before a one-way request of ``size`` bytes is queued (see :meth:`send`)."""
        if self._closed:
            raise RpcUnavailable(f"connection to {self.peer} is closed ({self.close_reason})", sent=False)
        if size > self.max_request_body:
            raise RpcError(f"{method_name(method)} request of {size} bytes exceeds the server's limit of "
                           f"{self.max_request_body}", kind="bad_request")
        waiting = self._wbytes + self._transport.get_write_buffer_size()
        if waiting > self.max_unread:
            # the peer does not read: refuse now rather than buffer without bound
            raise RpcUnavailable(f"{self.peer} is not reading: {waiting} bytes already wait for it", sent=False)

    def _hold(self, frame, size: int = 0) -> None:
        """Into the write due at the end of the write window that the last write opened (this
        iteration's write when that window is over)."""
        self._run = None
        self._wbytes += size or len(frame)
        wbuf = self._wbuf
        wbuf.append(frame)
        if len(wbuf) >= self.write_batch:
            self._write_now()
        elif not self._flush_scheduled and self._held is None:
            due = self._last_write + self.write_window
            if due <= self._loop.time():
                self._flush_scheduled = True
                self._loop.call_soon(self._flush)
            else:
                self._held = self._loop.call_at(due, self._flush_held)

    def _flush_held(self) -> None:
        self._held = None
        if self._wbuf:
            self._write_now()

    async def call(self, method: int, body: bytes, timeout: float = DEFAULT_TIMEOUT) -> bytes:
        deadline = self._loop.time() + timeout
        if self.full:
            await self.wait_slot(deadline)
        return await self.request(method, body, deadline)

    async def wait_slot(self, deadline: float) -> None:
        """Backpressure: wait while the connection has max_in_flight requests out (or the kernel
        buffer is full)."""
        while self.full and not self._closed:
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                raise RpcTimeout(f"connection to {self.peer} stayed saturated until the deadline")
            fut = self._loop.create_future()
            self._waiters.append(fut)
            try:
                await asyncio.wait((fut,), timeout=remaining)
            finally:
                if not fut.done():
                    fut.cancel()
                    try:
                        self._waiters.remove(fut)
                    except ValueError:
                        pass

    def _wake(self, all_: bool = False) -> None:
        waiters = self._waiters
        if all_ or self._closed:
            self._waiters = []
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)
            return
        free = 0 if self._paused else self.max_in_flight - len(self._pending)
        while waiters and free > 0:
            fut = waiters.pop(0)
            if not fut.done():
                fut.set_result(None)
                free -= 1

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._wbuf:
            self._write_now()

    def _write_now(self) -> None:
        buf = self._wbuf
        self._wbuf = []
        self._wbytes = 0
        if self._runs:
            self._runs = False
            self._run = None
            buf = [f if type(f) is bytes else encode_frame(f[0], 0, b"".join(f[2:])) for f in buf]
        self._gen += 1
        if self.write_window:
            self._last_write = self._loop.time()
            if self._held is not None:  # what it held leaves now
                self._held.cancel()
                self._held = None
        if self._transport is not None and not self._closed:
            self._transport.write(buf[0] if len(buf) == 1 else b"".join(buf))

    def _sweep(self) -> None:
        self._sweeper = None
        pending = self._pending
        if self._closed or not pending:
            return
        now = self._loop.time()
        dead = [seq for seq, e in pending.items() if e[1] <= now or e[0].done()]
        for seq in dead:
            fut, _, _, method = pending.pop(seq)
            if not fut.done():
                fut.set_exception(RpcTimeout(f"{method_name(method)} to {self.peer} timed out"))
        if dead and self._waiters:
            self._wake()
        if pending:
            self._sweeper = self._loop.call_later(SWEEP_INTERVAL, self._sweep)

    # -------------------------------------------------------------- asyncio.Protocol

    def connection_made(self, transport) -> None:
        self._transport = transport
        self.peer = tune(transport)

    def data_received(self, data: bytes) -> None:
        try:
            frames = self._decoder.feed(data)
        except ProtocolError as e:
            self.abort(f"protocol error from {self.peer}: {e}")
            return
        pending = self._pending
        for f in frames:
            op = f.op
            entry = pending.pop(f.seq, None)
            if op & REPLY_FLAG:
                if entry is not None and not entry[0].done():
                    entry[0].set_result(f.body)
            elif op == ERROR_OP:
                if entry is not None:
                    if not entry[0].done():
                        entry[0].set_exception(remote_error(f.body))
                elif not f.seq:
                    self._oneway_failed(f.body)
            else:
                if entry is not None:
                    pending[f.seq] = entry
                self.abort(f"unexpected frame op {op} from {self.peer} (not an imgate RPC server?)")
                return
        if self._waiters:
            self._wake()

    def _oneway_failed(self, body: bytes) -> None:
        """The server says a one-way request failed: nobody waits for it, so it is counted and logged
        (the first and every 1000th)."""
        self.oneway_errors += 1
        self.last_oneway_error = str(remote_error(body))
        if self.oneway_errors % 1000 == 1:
            log.warning("rpc %s at %s: a one-way request failed (%d so far): %s", self.service, self.peer,
                        self.oneway_errors, self.last_oneway_error)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake(all_=True)

    def connection_lost(self, exc) -> None:
        self._lost(self.close_reason or (f"connection lost: {exc}" if exc else "closed by the peer"))

    def _lost(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        self.close_reason = reason
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._held is not None:
            self._held.cancel()
            self._held = None
        pending, self._pending = self._pending, {}
        self._wbuf = []
        self._run = None
        self._runs = False
        self._wbytes = 0
        gen = self._gen
        for fut, _, g, method in pending.values():
            if not fut.done():
                sent = g < gen
                fut.set_exception(RpcUnavailable(
                    f"{method_name(method)} to {self.peer}: {reason}" + ("" if sent else " (not sent)"), sent=sent))
        self._wake(all_=True)
        if not self.closed.done():
            self.closed.set_result(reason)
        if self.on_lost is not None:
            self.on_lost(self)

    # -------------------------------------------------------------- closing

    def close(self, reason: str = "closed") -> None:
        """Flush what is queued and close."""
        self._flush()
        if self._transport is not None:
            self._transport.close()
        self._lost(reason)

    def abort(self, reason: str) -> None:
        if not self._closed:
            log.debug("rpc connection to %s: %s", self.peer, reason)
        self.close_reason = self.close_reason or reason
        if self._transport is not None:
            self._transport.abort()
        self._lost(reason)
