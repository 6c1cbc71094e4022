"""A pool of RPC connections to one peer: calls spread over N connections, dead ones reconnected.

:class:`RpcPool` keeps N connections per peer, spreads calls (``balance="spread"``: round robin, then
the less busy of two; or ``"fill"``: the first connection with fewer than ``fill_limit`` requests in
flight), reconnects dead ones in the background with jittered exponential backoff (0.05 s doubling to
2 s) and moves a request that could not be written to a live connection. With no live connection a
call fails with :class:`~imgate.rpc.wire.RpcUnavailable` within ``connect_timeout``. Against a
single-threaded peer the pool's gain is overlap: with one connection the client and the server take
turns on one big batch; with several, one side works on a batch while the other works on another
(benchmarks/rpc_bench.py: about 1.3-1.5x the calls/s of one connection on 2 cores).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket

from google.protobuf.message import Message

from imgate.rpc.client import RpcClient
from imgate.rpc.wire import (
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_BODY, DEFAULT_MAX_IN_FLIGHT, DEFAULT_TIMEOUT, DEFAULT_WRITE_BATCH,
    REPLY_TYPES, RpcRemoteError, RpcUnavailable, parse_addr, unix_path,
)

log = logging.getLogger("imgate.rpc")

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
                 write_batch: int = DEFAULT_WRITE_BATCH, write_window: float = 0.0, balance: str = "spread", fill_limit: int = 128,
                 backoff_min: float = 0.05, backoff_max: float = 2.0, ssl=None):
        if size < 1:
            raise ValueError(f"pool size must be at least 1, got {size}")
        if balance not in ("spread", "fill"):
            raise ValueError(f"balance must be 'spread' or 'fill', got {balance!r}")
        self.addr = addr
        self.host, self.port = parse_addr(addr)
        self.path = unix_path(addr)  # a unix socket (the workers of one host)
        self.service = service
        self.size = size
        self.client_id = client_id or f"{socket.gethostname()}:{os.getpid()}"
        self.server_id = server_id
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_body = max_body
        self.max_in_flight = max_in_flight
        self.write_batch = write_batch
        self.write_window = write_window  # RpcClient's: one-way requests held to share writes
        self.balance = balance
        self.fill_limit = fill_limit
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.ssl = ssl   # a client SSLContext: the connections speak TLS
        self.last_error = ""
        self.reconnects = 0
        self._states = [_STOPPED] * size
        self._conns: list[RpcClient | None] = [None] * size
        self._ready: list[RpcClient] = []
        self._rr = 0
        self._lane: RpcClient | None = None  # the connection that carries ordered traffic (lane())
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
                    self.host, self.port, self.service, connect_timeout=self.connect_timeout, ssl=self.ssl, path=self.path,
                    client_id=self.client_id, server_id=self.server_id, max_body=self.max_body,
                    max_in_flight=self.max_in_flight, write_batch=self.write_batch,
                    write_window=self.write_window, on_lost=self._on_lost)
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

    def lane(self) -> RpcClient | None:
        """The one connection that carries this pool's ordered traffic (``send`` and calls with
        ``lane=True``): a peer reads one connection in order, so frames on it are handled in the order
        queued. Kept until it dies; None while no connection is live."""
        conn = self._lane
        if conn is None or conn._closed:
            conn = self._lane = self._ready[0] if self._ready else None
        return conn

    def send(self, method: int, body: bytes) -> None:
        """A one-way request on the lane (:meth:`RpcClient.send`): returns once queued, in order with
        the lane's other frames. :class:`RpcUnavailable` when no connection is live (this does not wait
        for one) or the peer is not reading."""
        conn = self._lane
        if conn is None or conn._closed:
            conn = self.lane()
            if conn is None:
                self.start()  # idempotent: a pool nobody started begins connecting
                raise RpcUnavailable(f"no live connection to {self.service} at {self.addr}: "
                                     f"{self.last_error or 'still connecting'}")
        conn.send(method, body)

    def send_packed(self, method: int, part: bytes) -> None:
        """:meth:`send` of one part of a packed request (:meth:`RpcClient.send_packed`) on the lane."""
        conn = self._lane
        if conn is None or conn._closed:
            conn = self.lane()
            if conn is None:
                self.start()
                raise RpcUnavailable(f"no live connection to {self.service} at {self.addr}: "
                                     f"{self.last_error or 'still connecting'}")
        conn.send_packed(method, part)

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
                       idempotent: bool = False, lane: bool = False) -> bytes:
        """Send raw request bytes, return raw reply bytes. ``lane``: on the lane (:meth:`lane`), in order
        with the one-way requests."""
        loop = self._loop
        if loop is None:
            self.start()
            loop = self._loop
            if loop is None:
                raise RpcUnavailable(f"rpc pool {self.addr} ({self.service}) is closed")
        deadline = loop.time() + (self.timeout if timeout is None else timeout)
        attempts, sent = 0, False  # sent: an earlier attempt may have reached the peer
        while True:
            conn = self.lane() if lane else self._pick()
            if conn is None:
                try:
                    conn = await self._wait_live(deadline)
                except RpcUnavailable as e:
                    e.sent = sent
                    raise
                if lane:
                    conn = self.lane() or conn
            try:
                if conn.full:
                    await conn.wait_slot(deadline)
                return await conn.request(method, body, deadline)
            except RpcUnavailable as e:
                attempts += 1
                sent = e.sent = sent or e.sent
                if (sent and not idempotent) or attempts > self.size or loop.time() >= deadline:
                    raise
                # the request never reached the peer (or may safely be repeated): try another connection

    async def call(self, method: int, request: Message, *, timeout: float | None = None,
                   idempotent: bool = False) -> Message:
        body = await self.call_raw(method, request.SerializeToString(), timeout=timeout, idempotent=idempotent)
        return REPLY_TYPES[method].FromString(body)
