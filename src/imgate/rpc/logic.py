"""proxy -> logic over RPC: :class:`LogicRpcService` serves a ``Logic``; :class:`LogicClient` is the
proxy's ``LogicAPI`` in a cluster.

``LogicClient(["10.0.0.1:3119", "10.0.0.2:3119"])`` keeps a pool of connections to every logic address
and sends each call to the first healthy one in the list (or spreads calls over the healthy ones with
``spread=True``). When a logic dies its connections drop, calls go to the next address, and when it
comes back its pool reconnects in the background and it is used again.

What is retried on another logic (or another connection) when a connection dies under a call:

| call | retried after it was written? | why |
|---|---|---|
| connect | no: only if it was never written; else RpcUnavailable | allocates a conn_id and a session |
| receive | no: only if it was never written; else RpcUnavailable | an upstream message must not be delivered twice |
| disconnect | yes | deleting a session twice is a no-op |
| heartbeat | yes | renewing an expiry twice is harmless |
| renew_online | yes | the report overwrites the previous one |
| room_event | no: only if it was never written | a webhook event should not be sent twice |
| restore | yes | re-registering a session twice is a no-op |

Error replies (auth refused, bad request, internal) and timeouts are never retried: a timeout uses the
call's whole deadline. An auth refusal is raised as :class:`imgate.auth.AuthError` with logic's message.

Disconnects and heartbeats are notifications that come in bursts (a proxy shutting down, a heartbeat
sweep), so the client coalesces those made in one event-loop iteration into one request carrying many
connections (at most ``max_batch``); each caller still gets its own answer.
"""

from __future__ import annotations

import asyncio
import logging

from imgate.auth import AuthError
from imgate.cache.base import Session
from imgate.protocol.interfaces import Connected
from imgate.protocol import pb
from imgate.rpc.pool import RpcPool
from imgate.rpc.server import RpcServer, RpcService
from imgate.rpc.wire import (
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_BODY, DEFAULT_TIMEOUT, LOGIC_SERVICE, RpcRemoteError, RpcUnavailable,
)

log = logging.getLogger("imgate.rpc.logic")

__all__ = ["LogicClient", "LogicRpcService", "serve_logic"]


class LogicRpcService(RpcService):
    """Exposes a ``Logic`` over RPC (service ``imgate.logic``)."""

    SERVICE = LOGIC_SERVICE

    def __init__(self, logic, *, server_id: str = "", **server_kw):
        self.logic = logic
        self.server = RpcServer(self.SERVICE, self.handlers(), server_id=server_id,
                                error_kinds={AuthError: "auth"}, **server_kw)

    def handlers(self) -> dict:
        return {
            pb.CONNECT: self._connect,
            pb.DISCONNECT: self._disconnect,
            pb.HEARTBEAT: self._heartbeat,
            pb.RECEIVE: self._receive,
            pb.RENEW_ONLINE: self._renew_online,
            pb.ROOM_EVENT: self._room_event,
            pb.RESTORE: self._restore,
        }

    async def _connect(self, req: pb.ConnectReq) -> pb.ConnectReply:
        c = await self.logic.connect(req.server, req.body)  # AuthError -> error reply of kind "auth"
        return pb.ConnectReply(conn_id=c.conn_id, mid=c.mid, key=c.key, room_id=c.room_id,
                               accepts=list(c.accepts), platform=c.platform, rooms=list(c.rooms),
                               inbox_seq=c.inbox_seq)

    async def _disconnect(self, req: pb.DisconnectReq) -> pb.Empty:
        logic, server = self.logic, req.server
        if len(req.conns) == 1:
            c = req.conns[0]
            await logic.disconnect(server, c.conn_id, c.mid)
        else:
            results = await asyncio.gather(*[logic.disconnect(server, c.conn_id, c.mid) for c in req.conns],
                                           return_exceptions=True)
            for r in results:
                if isinstance(r, BaseException):
                    raise r
        return pb.Empty()

    async def _heartbeat(self, req: pb.HeartbeatReq) -> pb.HeartbeatReply:
        logic, server = self.logic, req.server
        if len(req.conns) == 1:
            c = req.conns[0]
            return pb.HeartbeatReply(ok=[bool(await logic.heartbeat(server, c.conn_id, c.mid))])
        results = await asyncio.gather(*[logic.heartbeat(server, c.conn_id, c.mid) for c in req.conns],
                                       return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return pb.HeartbeatReply(ok=[bool(r) for r in results])

    async def _receive(self, req: pb.ReceiveReq) -> pb.ReceiveReply:
        body = await self.logic.receive(req.server, req.conn_id, req.mid, req.op, req.seq, req.body,
                                        key=req.key, room_id=req.room_id, platform=req.platform)
        return pb.ReceiveReply(body=bytes(body or b""))

    async def _room_event(self, req: pb.RoomEventReq) -> pb.Empty:
        await self.logic.room_event(req.server, req.conn_id, req.mid, req.action, req.room_id)
        return pb.Empty()

    async def _renew_online(self, req: pb.RenewOnlineReq) -> pb.RoomsReply:
        counts = await self.logic.renew_online(req.server, dict(req.rooms), req.conns, req.ips, req.addr, req.draining)
        return pb.RoomsReply(rooms=counts or {}, epoch=self.logic.epoch)

    async def _restore(self, req: pb.RestoreReq) -> pb.Empty:
        sessions = [Session(conn_id=r.conn_id, mid=r.mid, key=r.key, server=req.server, room_id=r.room_id,
                            platform=r.platform, connected_at=r.connected_at) for r in req.sessions]
        await self.logic.restore(req.server, req.epoch, sessions, req.done)
        return pb.Empty()


async def serve_logic(logic, host: str = "127.0.0.1", port: int = 0, *, ssl=None, path: str = "", **server_kw) -> LogicRpcService:
    """Serve ``logic`` over RPC on host:port (TLS with ``ssl``); returns the started service (``.port``,
    ``.addr``, ``stop()``)."""
    svc = LogicRpcService(logic, **server_kw)
    await svc.start(host, port, ssl=ssl, path=path)
    return svc


class LogicClient:
    """The proxy's ``LogicAPI`` over RPC, with fail-over across logic addresses (see the module doc)."""

    def __init__(self, addrs: list[str] | str, pool_size: int = 4, *, client_id: str = "",
                 timeout: float = DEFAULT_TIMEOUT, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
                 spread: bool = False, max_batch: int = 1024, max_body: int = DEFAULT_MAX_BODY,
                 service: str = LOGIC_SERVICE, **pool_kw):
        if isinstance(addrs, str):
            addrs = [a.strip() for a in addrs.split(",") if a.strip()]
        if not addrs:
            raise ValueError("LogicClient needs at least one logic address")
        self.addrs = list(addrs)
        self.timeout = timeout
        self.spread = spread
        self.max_batch = max_batch
        self.pools = [RpcPool(a, service, size=pool_size, client_id=client_id, timeout=timeout,
                              connect_timeout=connect_timeout, max_body=max_body, **pool_kw)
                      for a in self.addrs]
        self._rr = 0
        self._batches: dict[int, dict[str, list]] = {pb.DISCONNECT: {}, pb.HEARTBEAT: {}}
        self._batch_scheduled = False
        self._tasks: set[asyncio.Task] = set()
        self.failovers = 0
        self.epoch = ""  # the cache's epoch, from logic's answer to each online report

    def __repr__(self) -> str:
        return f"LogicClient({self.addrs!r}, healthy={[p.healthy for p in self.pools]})"

    async def start(self, wait: float | None = None) -> bool:
        """Start connecting to every logic; wait (up to ``wait`` s, default the connect timeout) until one
        is up. Returns whether one is. Calls start the pools themselves too."""
        for p in self.pools:
            p.start()
        loop = asyncio.get_running_loop()
        end = loop.time() + (self.pools[0].connect_timeout if wait is None else wait)
        while not any(p.healthy for p in self.pools):
            if loop.time() >= end:
                return False
            await asyncio.sleep(0.01)
        return True

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*[p.close() for p in self.pools], return_exceptions=True)

    @property
    def healthy(self) -> bool:
        return any(p.healthy for p in self.pools)

    def _order(self) -> list[RpcPool]:
        pools = self.pools
        if len(pools) == 1:
            return pools
        healthy = [p for p in pools if p.healthy]
        if self.spread and len(healthy) > 1:
            self._rr = i = (self._rr + 1) % len(healthy)
            healthy = healthy[i:] + healthy[:i]
        return healthy + [p for p in pools if not p.healthy]

    async def _call(self, method: int, request, idempotent: bool):
        body = request.SerializeToString()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        last: RpcUnavailable | None = None
        sent = False  # an earlier attempt may have reached its logic: the caller must not hear "not sent"
        for i, pool in enumerate(self._order()):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            if i:
                self.failovers += 1
            try:
                reply = await pool.call_raw(method, body, timeout=remaining, idempotent=idempotent)
            except RpcUnavailable as e:
                if e.sent and not idempotent:
                    raise  # it may have been acted on: do not repeat it on another logic
                last, sent = e, sent or e.sent
                continue
            return reply
        last = last or RpcUnavailable(f"no logic reachable among {', '.join(self.addrs)}")
        last.sent = last.sent or sent
        raise last

    # ------------------------------------------------------------------ LogicAPI

    async def connect(self, server: str, body: bytes) -> Connected:
        try:
            raw = await self._call(pb.CONNECT, pb.ConnectReq(server=server, body=bytes(body)), idempotent=False)
        except RpcRemoteError as e:
            if e.kind == "auth":
                raise AuthError(e.message) from None
            raise
        r = pb.ConnectReply.FromString(raw)
        return Connected(r.conn_id, r.mid, r.key, r.room_id, tuple(r.accepts), r.platform,
                         inbox_seq=r.inbox_seq if r.HasField("inbox_seq") else None, rooms=tuple(r.rooms))

    async def disconnect(self, server: str, conn_id: int, mid: int) -> None:
        await self._enqueue(pb.DISCONNECT, server, conn_id, mid)

    async def heartbeat(self, server: str, conn_id: int, mid: int) -> bool:
        return await self._enqueue(pb.HEARTBEAT, server, conn_id, mid)

    async def receive(self, server: str, conn_id: int, mid: int, op: int, seq: int, body: bytes, *,
                      key: str = "", room_id: str = "", platform: str = "") -> bytes:
        raw = await self._call(pb.RECEIVE, pb.ReceiveReq(server=server, conn_id=conn_id, mid=mid, op=op, seq=seq,
                                                         body=bytes(body), key=key, room_id=room_id,
                                                         platform=platform), idempotent=False)
        return pb.ReceiveReply.FromString(raw).body

    async def room_event(self, server: str, conn_id: int, mid: int, action: str, room_id: str) -> None:
        await self._call(pb.ROOM_EVENT, pb.RoomEventReq(server=server, conn_id=conn_id, mid=mid, action=action,
                                                        room_id=room_id), idempotent=False)

    async def renew_online(self, server: str, rooms: dict, conns: int, ips: int, addr: str = "",
                           draining: bool = False) -> dict[str, int]:
        """Report this proxy's rooms (and, for discovery, its RPC address); the answer is each room's
        online count across the cluster."""
        raw = await self._call(pb.RENEW_ONLINE, pb.RenewOnlineReq(server=server, rooms=rooms, conns=conns, ips=ips,
                                                                  addr=addr, draining=draining), idempotent=True)
        reply = pb.RoomsReply.FromString(raw)
        if reply.epoch:
            self.epoch = reply.epoch
        return dict(reply.rooms)

    async def restore(self, server: str, epoch: str, sessions: list, done: bool) -> None:
        """Re-register connections the cache lost (``Session`` objects)."""
        recs = [pb.SessionRec(conn_id=s.conn_id, mid=s.mid, key=s.key, room_id=s.room_id, platform=s.platform,
                              connected_at=s.connected_at) for s in sessions]
        await self._call(pb.RESTORE, pb.RestoreReq(server=server, epoch=epoch, sessions=recs, done=done),
                         idempotent=True)

    # ------------------------------------------------------------------ coalesced notifications

    def _enqueue(self, method: int, server: str, conn_id: int, mid: int) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._batches[method].setdefault(server, []).append((conn_id, mid, fut))
        if not self._batch_scheduled:
            self._batch_scheduled = True
            loop.call_soon(self._flush_batches)
        return fut

    def _flush_batches(self) -> None:
        self._batch_scheduled = False
        loop = asyncio.get_running_loop()
        for method, by_server in self._batches.items():
            if not by_server:
                continue
            self._batches[method] = {}
            for server, items in by_server.items():
                for i in range(0, len(items), self.max_batch):
                    task = loop.create_task(self._send_batch(method, server, items[i:i + self.max_batch]))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)

    async def _send_batch(self, method: int, server: str, items: list) -> None:
        conns = [pb.ConnRef(conn_id=c, mid=m) for c, m, _ in items]
        req = (pb.DisconnectReq if method == pb.DISCONNECT else pb.HeartbeatReq)(server=server, conns=conns)
        try:
            raw = await self._call(method, req, idempotent=True)
        except BaseException as e:
            for _, _, fut in items:
                if not fut.done():
                    fut.set_exception(e if not isinstance(e, asyncio.CancelledError)
                                      else RpcUnavailable("logic client closed"))
            if isinstance(e, asyncio.CancelledError):
                raise
            return
        if method == pb.HEARTBEAT:
            ok = pb.HeartbeatReply.FromString(raw).ok
            for i, (_, _, fut) in enumerate(items):
                if not fut.done():
                    fut.set_result(bool(ok[i]) if i < len(ok) else False)
        else:
            for _, _, fut in items:
                if not fut.done():
                    fut.set_result(None)
