"""The transport of imgate's internal RPC: protobuf messages in goim frames over persistent TCP.

Framing (``proto/imgate.proto``): a request is a goim v2 frame whose op is the method id and whose seq
is the request id on that connection; the reply echoes the seq with op ``method | 0x10000``; an error
reply has op ``0x20000`` and an ``RpcError`` body. A client's first frame is ``HELLO``; a server of
another service answers with an error (kind ``wrong_service``) and closes.

Why one connection is not a bottleneck (seed 5.5 / 7):

- **Pipelining.** Many requests are in flight per connection; replies are matched by seq and may come
  back in any order, because the server runs each request as its own task (synchronous handlers are
  answered inline). A slow request never holds up the others.
- **Batching.** Frames written within one event-loop iteration go out as one ``transport.write`` (on
  both sides), so N concurrent calls cost one syscall, not N.
- **Bounded.** At most ``max_in_flight`` requests per connection (callers wait past that); a server
  stops reading a connection whose handlers pile up or whose replies the client does not read.
- **Pool.** :class:`RpcPool` keeps N connections per peer, spreads calls (``balance="spread"``: round
  robin, then the less busy of two; or ``"fill"``: the first connection with fewer than ``fill_limit``
  requests in flight), reconnects dead ones in the background with jittered exponential backoff (0.05 s
  doubling to 2 s) and moves a request that could not be written to a live connection. With no live
  connection a call fails with :class:`RpcUnavailable` within ``connect_timeout``. Against a
  single-threaded peer the pool's gain is overlap: with one connection the client and the server take
  turns on one big batch; with several, one side works on a batch while the other works on another
  (benchmarks/rpc_bench.py: about 1.3-1.5x the calls/s of one connection on 2 cores).

Errors: :class:`RpcRemoteError` (the peer answered with an error; ``kind`` says which),
:class:`RpcUnavailable` (no connection, or it died; ``sent`` tells whether the request may have reached
the peer), :class:`RpcTimeout` (no answer before the deadline).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
from typing import Any, Awaitable, Callable

from google.protobuf.message import DecodeError, Message

from imgate.core import FrameDecoder, ProtocolError, encode_frame
from imgate.protocol import pb

log = logging.getLogger("imgate.rpc")

__all__ = [
    "DEFAULT_MAX_BODY", "DEFAULT_TIMEOUT", "ERROR_OP", "REPLY_FLAG", "REPLY_TYPES", "REQUEST_TYPES",
    "RpcClient", "RpcError", "RpcPool", "RpcRemoteError", "RpcServer", "RpcTimeout", "RpcUnavailable",
    "method_name", "parse_addr",
]

REPLY_FLAG = pb.REPLY_FLAG  # 0x10000
ERROR_OP = pb.ERROR_OP      # 0x20000
PROTOCOL_VERSION = 1
DEFAULT_MAX_BODY = 16 << 20
DEFAULT_TIMEOUT = 5.0
DEFAULT_CONNECT_TIMEOUT = 1.0
DEFAULT_MAX_IN_FLIGHT = 1024
#: frames queued on a connection that trigger a write before the end of the loop iteration (a cap on
#: one write's size). Measured (benchmarks/rpc_bench.py): flushing early, e.g. every 64 frames, to let
#: the peer start sooner costs ~2x CPU per call and halves throughput on 2 cores, so the cap is high:
#: normally one write per connection per iteration
DEFAULT_WRITE_BATCH = 1024
SEQ_MAX = 0x7FFFFFFF
SWEEP_INTERVAL = 0.05  # resolution of request deadlines

#: request and reply message of every method (a method absent here carries raw bytes)
REQUEST_TYPES: dict[int, type[Message]] = {
    pb.CONNECT: pb.ConnectReq,
    pb.DISCONNECT: pb.DisconnectReq,
    pb.HEARTBEAT: pb.HeartbeatReq,
    pb.RECEIVE: pb.ReceiveReq,
    pb.RENEW_ONLINE: pb.RenewOnlineReq,
    pb.PUSH_CONNS: pb.PushConnsReq,
    pb.PUSH_ROOM: pb.PushRoomReq,
    pb.PUSH_ROOM_BATCH: pb.PushRoomBatchReq,
    pb.PUSH_ALL: pb.PushAllReq,
    pb.ROOMS: pb.Empty,
    pb.PING: pb.Empty,
    pb.HELLO: pb.Hello,
}
REPLY_TYPES: dict[int, type[Message]] = {
    pb.CONNECT: pb.ConnectReply,
    pb.DISCONNECT: pb.Empty,
    pb.HEARTBEAT: pb.HeartbeatReply,
    pb.RECEIVE: pb.ReceiveReply,
    pb.RENEW_ONLINE: pb.RoomsReply,  # the cluster-wide counts of the reported rooms
    pb.PUSH_CONNS: pb.CountReply,
    pb.PUSH_ROOM: pb.CountReply,
    pb.PUSH_ROOM_BATCH: pb.CountReply,
    pb.PUSH_ALL: pb.CountReply,
    pb.ROOMS: pb.RoomsReply,
    pb.PING: pb.Empty,
    pb.HELLO: pb.HelloReply,
}

#: error kinds and their gRPC-like codes (RpcError.code)
KIND_CODES = {
    "bad_request": 3, "timeout": 4, "wrong_service": 9, "unimplemented": 12, "internal": 13,
    "unavailable": 14, "auth": 16,
}


def method_name(method: int) -> str:
    try:
        return pb.Method.Name(method)
    except ValueError:
        return f"method {method}"


def parse_addr(addr: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port)."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"RPC address must look like host:port, got {addr!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


# ---------------------------------------------------------------------------------------------- errors


def _tune(transport) -> str:
    """No Nagle delay for pipelined frames, keep-alive to notice dead peers; returns "host:port"."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        except OSError:
            pass
    peer = transport.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if peer else "?"


class RpcError(Exception):
    """Base of RPC errors. A handler may raise it to choose the error reply's kind."""

    kind = "internal"

    def __init__(self, message: str = "", kind: str | None = None, code: int | None = None):
        super().__init__(message)
        if kind is not None:
            self.kind = kind
        self.code = code if code is not None else KIND_CODES.get(self.kind, 2)

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __str__(self) -> str:
        return self.message


class RpcRemoteError(RpcError):
    """The peer answered with an error reply; ``kind`` and ``code`` are the peer's."""


class RpcUnavailable(RpcError):
    """No live connection, or the connection died. ``sent`` is False when the request was certainly
    not written to the peer (retrying it elsewhere is always safe)."""

    kind = "unavailable"

    def __init__(self, message: str = "", sent: bool = False):
        super().__init__(message)
        self.sent = sent


class RpcTimeout(RpcError, TimeoutError):
    """No reply before the call's deadline. The peer may or may not have acted on the request."""

    kind = "timeout"


def _error_body(kind: str, message: str, code: int | None = None) -> bytes:
    return pb.RpcError(code=code if code is not None else KIND_CODES.get(kind, 2), message=message,
                       kind=kind).SerializeToString()


def _remote_error(body: bytes) -> RpcRemoteError:
    try:
        e = pb.RpcError.FromString(body)
    except DecodeError:
        return RpcRemoteError("undecodable error reply", "internal")
    return RpcRemoteError(e.message, e.kind or "internal", e.code)


# ---------------------------------------------------------------------------------------------- client


class RpcClient(asyncio.Protocol):
    """One client connection: pipelined requests, replies matched by seq, writes coalesced per
    event-loop iteration, at most ``max_in_flight`` requests outstanding.

    Open with ``await RpcClient.connect(host, port, service)``; it returns after the HELLO exchange.
    """

    def __init__(self, service: str, *, client_id: str = "", server_id: str = "",
                 max_body: int = DEFAULT_MAX_BODY, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
                 write_batch: int = DEFAULT_WRITE_BATCH, on_lost: Callable[["RpcClient"], None] | None = None):
        self.service = service
        self.client_id = client_id
        self.expect_server_id = server_id
        self.max_in_flight = max_in_flight
        self.write_batch = max(1, write_batch)
        self.on_lost = on_lost
        self.peer = ""
        self.remote: pb.HelloReply | None = None
        self.close_reason = ""
        self._loop = asyncio.get_running_loop()
        self._decoder = FrameDecoder(max_body=max_body)
        self._transport: asyncio.Transport | None = None
        self._pending: dict[int, tuple] = {}  # seq -> (future, deadline, write generation, method)
        self._seq = 0
        self._wbuf: list[bytes] = []
        self._gen = 0  # incremented at every flush: a request whose generation is older was written
        self._flush_scheduled = False
        self._sweeper: asyncio.TimerHandle | None = None
        self._waiters: list[asyncio.Future] = []
        self._paused = False
        self._closed = False
        self.requests = 0  # requests sent on this connection (stats)
        self.max_request_body = DEFAULT_MAX_BODY  # the server's limit, learnt from HELLO
        self.closed: asyncio.Future = self._loop.create_future()

    @classmethod
    async def connect(cls, host: str, port: int, service: str, *, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
                      **kw) -> "RpcClient":
        loop = asyncio.get_running_loop()
        deadline = loop.time() + connect_timeout
        try:
            _, proto = await asyncio.wait_for(loop.create_connection(lambda: cls(service, **kw), host, port),
                                              connect_timeout)
        except asyncio.TimeoutError:
            raise RpcUnavailable(f"connecting to {host}:{port} timed out after {connect_timeout}s") from None
        except OSError as e:
            raise RpcUnavailable(f"cannot connect to {host}:{port}: {e.strerror or e}") from None
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
                raise RpcUnavailable(f"{host}:{port} did not answer HELLO within {connect_timeout}s") from None
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
        wbuf = self._wbuf
        wbuf.append(encode_frame(method, seq, body))
        if len(wbuf) >= self.write_batch:
            self._write_now()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        if self._sweeper is None:
            self._sweeper = self._loop.call_later(SWEEP_INTERVAL, self._sweep)
        return fut

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
        self._gen += 1
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
        self.peer = _tune(transport)

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
                if entry is not None and not entry[0].done():
                    entry[0].set_exception(_remote_error(f.body))
            else:
                if entry is not None:
                    pending[f.seq] = entry
                self.abort(f"unexpected frame op {op} from {self.peer} (not an imgate RPC server?)")
                return
        if self._waiters:
            self._wake()

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
        pending, self._pending = self._pending, {}
        self._wbuf = []
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


# ---------------------------------------------------------------------------------------------- pool

_CONNECTING, _READY, _BACKOFF, _STOPPED = "connecting", "ready", "backoff", "stopped"


class RpcPool:
    """N connections to one peer address, reconnecting in the background.

    ``await pool.call(method, msg)`` returns the reply message. A request that fails because its
    connection died before it was written is moved to another live connection; one that was written is
    retried only when the caller says it is ``idempotent``. With no live connection the call fails with
    :class:`RpcUnavailable` at once if every connection is waiting out its backoff, else after at most
    ``connect_timeout`` (while a reconnect is being tried).
    """

    def __init__(self, addr: str, service: str, *, size: int = 4, client_id: str = "", server_id: str = "",
                 timeout: float = DEFAULT_TIMEOUT, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
                 max_body: int = DEFAULT_MAX_BODY, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
                 write_batch: int = DEFAULT_WRITE_BATCH, balance: str = "spread", fill_limit: int = 128,
                 backoff_min: float = 0.05, backoff_max: float = 2.0):
        if size < 1:
            raise ValueError(f"pool size must be at least 1, got {size}")
        if balance not in ("spread", "fill"):
            raise ValueError(f"balance must be 'spread' or 'fill', got {balance!r}")
        self.addr = addr
        self.host, self.port = parse_addr(addr)
        self.service = service
        self.size = size
        self.client_id = client_id or f"{socket.gethostname()}:{os.getpid()}"
        self.server_id = server_id
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_body = max_body
        self.max_in_flight = max_in_flight
        self.write_batch = write_batch
        self.balance = balance
        self.fill_limit = fill_limit
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.last_error = ""
        self.reconnects = 0
        self._states = [_STOPPED] * size
        self._conns: list[RpcClient | None] = [None] * size
        self._ready: list[RpcClient] = []
        self._rr = 0
        self._tasks: list[asyncio.Task] = []
        self._changed: asyncio.Future | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"RpcPool({self.addr!r}, {self.service!r}, ready={len(self._ready)}/{self.size})"

    # -------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Start connecting (idempotent; needs a running loop). Calls start the pool themselves."""
        if self._tasks or self._closed:
            return
        self._loop = asyncio.get_running_loop()
        for i in range(self.size):
            self._states[i] = _CONNECTING
            self._tasks.append(self._loop.create_task(self._run_slot(i), name=f"rpc-pool {self.addr}#{i}"))

    async def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait until at least one connection is up; False on timeout."""
        self.start()
        loop = self._loop
        end = loop.time() + (self.connect_timeout if timeout is None else timeout)
        while not self._ready:
            remaining = end - loop.time()
            if remaining <= 0 or self._closed:
                return False
            await asyncio.wait((self._change(),), timeout=remaining)
        return True

    async def close(self) -> None:
        self._closed = True
        for t in self._tasks:
            t.cancel()
        for c in self._conns:
            if c is not None:
                c.close("pool closed")
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self._ready = []
        self._notify()

    @property
    def healthy(self) -> bool:
        return bool(self._ready)

    @property
    def live(self) -> int:
        return len(self._ready)

    def connections(self) -> list[RpcClient]:
        """The live connections (for tests and stats)."""
        return list(self._ready)

    def _change(self) -> asyncio.Future:
        if self._changed is None or self._changed.done():
            self._changed = self._loop.create_future()
        return self._changed

    def _notify(self) -> None:
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)

    def _on_lost(self, conn: RpcClient) -> None:
        try:
            self._ready.remove(conn)
        except ValueError:
            pass
        self.last_error = conn.close_reason
        self._notify()

    async def _run_slot(self, i: int) -> None:
        backoff = self.backoff_min
        while not self._closed:
            self._states[i] = _CONNECTING
            try:
                conn = await RpcClient.connect(
                    self.host, self.port, self.service, connect_timeout=self.connect_timeout,
                    client_id=self.client_id, server_id=self.server_id, max_body=self.max_body,
                    max_in_flight=self.max_in_flight, write_batch=self.write_batch, on_lost=self._on_lost)
            except asyncio.CancelledError:
                self._states[i] = _STOPPED
                raise
            except Exception as e:
                if isinstance(e, RpcRemoteError) and str(e) != self.last_error:
                    # wrong service or server: a configuration error (logged once, not per retry)
                    log.error("rpc %s at %s refused us: %s", self.service, self.addr, e)
                self.last_error = str(e)
                self._states[i] = _BACKOFF
                self._notify()
                delay = backoff * random.uniform(0.5, 1.0)  # jitter: slots and peers do not synchronise
                backoff = min(backoff * 2, self.backoff_max)
                await asyncio.sleep(delay)
                continue
            if self._closed:
                conn.close("pool closed")
                break
            self._conns[i] = conn
            self._states[i] = _READY
            self._ready.append(conn)
            if backoff > self.backoff_min:
                self.reconnects += 1
                log.info("rpc %s at %s: connection %d is back", self.service, self.addr, i)
            backoff = self.backoff_min
            self._notify()
            await conn.closed
            self._conns[i] = None
            self._states[i] = _BACKOFF
            log.info("rpc %s at %s: connection %d lost (%s)", self.service, self.addr, i, conn.close_reason)
            # a short jittered pause: a server that just died refuses at once; do not spin
            await asyncio.sleep(self.backoff_min * random.uniform(0.5, 1.0))
            backoff = self.backoff_min * 2
        self._states[i] = _STOPPED

    # -------------------------------------------------------------- calls

    def _pick(self) -> RpcClient | None:
        ready = self._ready
        n = len(ready)
        if n == 0:
            return None
        if n == 1:
            return ready[0]
        if self.balance == "fill":
            # the first connection with room; the least busy when all are past fill_limit
            limit = self.fill_limit
            best = None
            for c in ready:
                k = len(c._pending)
                if k < limit and not c._paused:
                    return c
                if best is None or k < len(best._pending):
                    best = c
            return best
        i = self._rr = (self._rr + 1) % n
        a = ready[i]
        if not a._pending:
            return a
        b = ready[i + 1 if i + 1 < n else 0]
        return a if len(a._pending) <= len(b._pending) else b

    async def _wait_live(self, deadline: float) -> RpcClient:
        self.start()
        loop = self._loop
        end = min(deadline, loop.time() + self.connect_timeout)
        while True:
            conn = self._pick()
            if conn is not None:
                return conn
            if self._closed:
                raise RpcUnavailable(f"rpc pool {self.addr} ({self.service}) is closed")
            if _CONNECTING not in self._states:
                raise RpcUnavailable(f"no live connection to {self.service} at {self.addr}: {self.last_error}")
            remaining = end - loop.time()
            if remaining <= 0:
                raise RpcUnavailable(f"no live connection to {self.service} at {self.addr} "
                                     f"(still connecting; last error: {self.last_error or 'none'})")
            await asyncio.wait((self._change(),), timeout=remaining)

    async def call_raw(self, method: int, body: bytes, *, timeout: float | None = None,
                       idempotent: bool = False) -> bytes:
        """Send raw request bytes, return raw reply bytes."""
        loop = self._loop
        if loop is None:
            self.start()
            loop = self._loop
            if loop is None:
                raise RpcUnavailable(f"rpc pool {self.addr} ({self.service}) is closed")
        deadline = loop.time() + (self.timeout if timeout is None else timeout)
        attempts = 0
        while True:
            conn = self._pick()
            if conn is None:
                conn = await self._wait_live(deadline)
            try:
                if conn.full:
                    await conn.wait_slot(deadline)
                return await conn.request(method, body, deadline)
            except RpcUnavailable as e:
                attempts += 1
                if (e.sent and not idempotent) or attempts > self.size or loop.time() >= deadline:
                    raise
                # the request never reached the peer (or may safely be repeated): try another connection

    async def call(self, method: int, request: Message, *, timeout: float | None = None,
                   idempotent: bool = False) -> Message:
        body = await self.call_raw(method, request.SerializeToString(), timeout=timeout, idempotent=idempotent)
        return REPLY_TYPES[method].FromString(body)


# ---------------------------------------------------------------------------------------------- server

Handler = Callable[[Any], "Message | bytes | None | Awaitable[Message | bytes | None]"]


class _ServerConn(asyncio.Protocol):
    """One accepted connection of an RpcServer."""

    def __init__(self, server: "RpcServer"):
        self.server = server
        self.loop = server._loop
        self.transport: asyncio.Transport | None = None
        self.decoder = FrameDecoder(max_body=server.max_body)
        self.peer = "?"
        self.client_id = ""
        self.greeted = False
        self.closed = False
        self.wbuf: list[bytes] = []
        self.flush_scheduled = False
        self.tasks: set[asyncio.Task] = set()
        self.paused_write = False
        self.paused_busy = False
        self.hello_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.peer = _tune(transport)
        self.server._conns.add(self)
        self.hello_timer = self.loop.call_later(self.server.hello_timeout, self._hello_expired)

    def _hello_expired(self) -> None:
        self.hello_timer = None
        if not self.greeted:
            log.info("rpc %s: %s sent no HELLO within %ss", self.server.service, self.peer, self.server.hello_timeout)
            self.abort()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            frames = self.decoder.feed(data)
        except ProtocolError as e:
            # a byte stream cannot be resynchronised: drop this connection only
            self.server.protocol_errors += 1
            log.warning("rpc %s: protocol error from %s: %s; closing that connection", self.server.service, self.peer, e)
            self.abort()
            return
        for f in frames:
            if self.closed:
                return
            if not self.greeted:
                self._hello(f)
            else:
                self._dispatch(f)

    def _hello(self, f) -> None:
        srv = self.server
        if f.op != pb.HELLO:
            self._reject(f.seq, "bad_request", f"the first frame must be HELLO ({pb.HELLO}), got op {f.op}")
            return
        try:
            hello = pb.Hello.FromString(f.body)
        except DecodeError as e:
            self._reject(f.seq, "bad_request", f"undecodable HELLO: {e}")
            return
        if hello.service != srv.service:
            self._reject(f.seq, "wrong_service",
                         f"this port serves {srv.service!r}, not {hello.service!r}")
            return
        if hello.server_id and srv.server_id and hello.server_id != srv.server_id:
            self._reject(f.seq, "wrong_service",
                         f"this is server {srv.server_id!r}, the client expected {hello.server_id!r}")
            return
        self.greeted = True
        self.client_id = hello.client_id
        if self.hello_timer is not None:
            self.hello_timer.cancel()
            self.hello_timer = None
        self._write(encode_frame(pb.HELLO | REPLY_FLAG, f.seq, pb.HelloReply(
            service=srv.service, server_id=srv.server_id, max_body=srv.max_body).SerializeToString()))

    def _reject(self, seq: int, kind: str, message: str) -> None:
        self.server.rejected += 1
        log.warning("rpc %s: rejecting %s: %s", self.server.service, self.peer, message)
        self._write(encode_frame(ERROR_OP, seq, _error_body(kind, message)))
        self._flush()
        self.closed = True
        self.transport.close()  # after the error reply is written

    def _dispatch(self, f) -> None:
        srv = self.server
        op = f.op
        seq = f.seq
        entry = srv._methods.get(op)
        if entry is None:
            self._write(encode_frame(ERROR_OP, seq, _error_body(
                "unimplemented", f"{srv.service} has no {method_name(op)} (op {op})")))
            return
        handler, req_type = entry
        if req_type is not None:
            try:
                req = req_type.FromString(f.body)
            except DecodeError as e:
                self._write(encode_frame(ERROR_OP, seq, _error_body(
                    "bad_request", f"undecodable {req_type.__name__}: {e}")))
                return
        else:
            req = f.body
        srv.requests += 1
        try:
            res = handler(req)
        except Exception as e:
            self._reply_exc(op, seq, e)
            return
        if res is None or isinstance(res, (Message, bytes)):
            self._reply(op, seq, res)
            return
        # a coroutine (async handler): run it as its own task, so replies may overtake each other
        task = self.loop.create_task(self._finish(op, seq, res))
        tasks = self.tasks
        tasks.add(task)
        task.add_done_callback(self._task_done)
        if len(tasks) >= srv.max_concurrency and not self.paused_busy:
            self.paused_busy = True
            self.transport.pause_reading()

    def _task_done(self, task) -> None:
        self.tasks.discard(task)
        self.server._orphans.discard(task)
        if self.paused_busy and len(self.tasks) <= self.server.max_concurrency // 2:
            self.paused_busy = False
            if not self.paused_write and not self.closed:
                self.transport.resume_reading()

    async def _finish(self, op: int, seq: int, aw) -> None:
        try:
            res = await aw
        except asyncio.CancelledError:
            if not self.closed:
                self._write(encode_frame(ERROR_OP, seq, _error_body("unavailable", "server shutting down")))
            raise
        except Exception as e:
            self._reply_exc(op, seq, e)
            return
        self._reply(op, seq, res)

    def _reply(self, op: int, seq: int, res) -> None:
        if res is None:
            body = b""
        elif isinstance(res, bytes):
            body = res
        else:
            body = res.SerializeToString()
        self._write(encode_frame(op | REPLY_FLAG, seq, body))

    def _reply_exc(self, op: int, seq: int, e: BaseException) -> None:
        srv = self.server
        if isinstance(e, RpcError):
            kind, code = e.kind, e.code
        else:
            kind, code = None, None
            for etype, k in srv.error_kinds:
                if isinstance(e, etype):
                    kind = k
                    break
            if kind is None:
                if isinstance(e, ValueError):
                    kind = "bad_request"
                else:
                    kind = "internal"
                    srv.handler_errors += 1
                    log.error("rpc %s: %s handler failed", srv.service, method_name(op), exc_info=e)
        self._write(encode_frame(ERROR_OP, seq, _error_body(kind, str(e) or type(e).__name__, code)))

    def _write(self, frame: bytes) -> None:
        if self.closed:
            return
        wbuf = self.wbuf
        wbuf.append(frame)
        if len(wbuf) >= self.server.write_batch:
            self._flush()
        elif not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self.flush_scheduled = False
        self._flush()

    def _flush(self) -> None:
        buf = self.wbuf
        if not buf or self.transport is None:
            return
        self.wbuf = []
        if not self.transport.is_closing():
            self.transport.write(buf[0] if len(buf) == 1 else b"".join(buf))

    def pause_writing(self) -> None:
        # the client is not reading its replies: stop reading its requests (TCP pushes back)
        self.paused_write = True
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.paused_write = False
        if not self.paused_busy and not self.closed:
            self.transport.resume_reading()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.wbuf = []
        if self.hello_timer is not None:
            self.hello_timer.cancel()
            self.hello_timer = None
        self.server._conns.discard(self)
        # requests in progress run to completion (their replies are dropped): a batch of disconnects
        # sent by a proxy that then went away must still be applied, and a half-run handler could leave
        # state half-made. RpcServer.stop() cancels what is left after its grace period.
        if self.tasks:
            self.server._orphans.update(self.tasks)


class RpcServer:
    """Serves one service's methods on a TCP port.

    ``handlers`` maps a method id (``imgate_pb2.CONNECT``, ...) to a callable taking the decoded request
    message (raw bytes for a method absent from REQUEST_TYPES) and returning the reply message (or bytes,
    or None for an empty body) -- or a coroutine of it: async handlers run as tasks, so their replies may
    overtake each other; plain functions are answered inline. A handler's exception becomes an error reply
    (kind from RpcError.kind, else ``error_kinds``, else ``bad_request`` for ValueError, else
    ``internal``) and the connection keeps serving. A malformed frame closes only its connection.
    """

    def __init__(self, service: str, handlers: dict[int, Handler], *, server_id: str = "",
                 max_body: int = DEFAULT_MAX_BODY, max_concurrency: int = 4096, hello_timeout: float = 5.0,
                 write_batch: int = DEFAULT_WRITE_BATCH,
                 error_kinds: dict[type, str] | None = None, request_types: dict[int, type | None] | None = None):
        self.service = service
        self.server_id = server_id
        self.max_body = max_body
        self.max_concurrency = max_concurrency
        self.hello_timeout = hello_timeout
        self.write_batch = max(1, write_batch)
        self.error_kinds = list((error_kinds or {}).items())
        types = dict(REQUEST_TYPES)
        if request_types:
            types.update(request_types)
        self._methods: dict[int, tuple] = {}
        handlers = dict(handlers)
        handlers.setdefault(pb.PING, lambda req: pb.Empty())
        for method, handler in handlers.items():
            method = int(method)
            if method == pb.HELLO or method & (REPLY_FLAG | ERROR_OP) or method <= 0:
                raise ValueError(f"method id {method} is reserved")
            self._methods[method] = (handler, types.get(method))
        self._server: asyncio.base_events.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conns: set[_ServerConn] = set()
        self._orphans: set[asyncio.Task] = set()  # requests whose connection closed before the reply
        self.port = 0
        self.host = ""
        self.requests = 0
        self.rejected = 0
        self.protocol_errors = 0
        self.handler_errors = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0, *, reuse_port: bool = False) -> "RpcServer":
        self._loop = asyncio.get_running_loop()
        self._server = await self._loop.create_server(
            lambda: _ServerConn(self), host, port, reuse_address=True, reuse_port=reuse_port or None, backlog=1024)
        sockname = self._server.sockets[0].getsockname()
        self.host, self.port = sockname[0], sockname[1]
        log.info("rpc %s listening on %s:%d", self.service, self.host, self.port)
        return self

    @property
    def addr(self) -> str:
        host = self.host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    @property
    def connections(self) -> int:
        return len(self._conns)

    async def stop(self, grace: float = 0.0) -> None:
        """Stop listening and close every connection; with ``grace``, first wait up to that many seconds
        for requests in progress to be answered."""
        if self._server is not None:
            self._server.close()
        if grace > 0:
            tasks = [t for c in self._conns for t in c.tasks] + list(self._orphans)
            if tasks:
                await asyncio.wait(tasks, timeout=grace)
        for t in list(self._orphans):
            t.cancel()
        self._orphans.clear()
        for c in list(self._conns):
            c._flush()
            c.closed = True
            for t in list(c.tasks):
                t.cancel()
            if c.transport is not None:
                c.transport.close()
        self._conns.clear()
        if self._server is not None:
            try:
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            except (asyncio.TimeoutError, Exception):
                pass
            self._server = None


class RpcService:
    """Base of a service exposed over RPC: subclasses set SERVICE and return their handlers."""

    SERVICE = ""
    server: RpcServer

    def handlers(self) -> dict:
        raise NotImplementedError

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> RpcServer:
        return await self.server.start(host, port)

    async def stop(self, grace: float = 0.0) -> None:
        await self.server.stop(grace)

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def addr(self) -> str:
        return self.server.addr
