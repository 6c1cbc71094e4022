"""push -> proxy over RPC: :class:`ProxyRpcService` serves a ``Proxy``; :class:`ProxyClient` is push's
handle on one proxy in a cluster (the RPC implementation of ``imgate.protocol.interfaces.ProxyAPI``).

The proxy's push methods deliver at once (its ``*_nowait`` methods queue frames for the room table),
so the service answers them inline, without a task per request: a connection's pushes are handled in
the order they arrive and replies leave in one write per event-loop iteration.

``ProxyClient`` sends every push on its pool's lane (one connection), so a proxy handles them in the
order push accepted them. Its ``*_nowait`` methods are one-way requests (no reply awaited, no task or
future: a push costs one frame in the iteration's shared write); they refuse with
:class:`~imgate.rpc.wire.RpcUnavailable` when no connection to the proxy is live or it stopped reading,
and they count the connections named, since the proxy's own count is not sent back.

An awaited push is retried on another connection only when its request was never written (one written to a
proxy that then died may have been delivered, and repeating it could deliver it twice); otherwise
:class:`~imgate.rpc.wire.RpcUnavailable` is raised.

``ProxyClient`` sends its ``server_id`` in HELLO; a proxy whose own id differs refuses the connection, so
push never delivers one proxy's conn ids to another that took over its address.
"""

from __future__ import annotations

import inspect
import logging

from imgate.core import encode_frame
from imgate.protocol import pb
from imgate.protocol.interfaces import ProxyAPI
from imgate.rpc.pool import RpcPool
from imgate.rpc.packed import pack_push, unpack_pushes
from imgate.rpc.server import RpcServer, RpcService
from imgate.rpc.wire import DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_BODY, DEFAULT_TIMEOUT, PROXY_SERVICE

log = logging.getLogger("imgate.rpc.proxy")

__all__ = ["ProxyClient", "ProxyRpcService", "serve_proxy"]

_PushConnsReq, _PushRoomBatchReq, _PushAllReq = pb.PushConnsReq, pb.PushRoomBatchReq, pb.PushAllReq
_count_of = pb.CountReply.FromString


def _count(n):
    if not inspect.isawaitable(n):
        return pb.CountReply(count=int(n or 0))

    async def wait():
        return pb.CountReply(count=int(await n or 0))

    return wait()


class ProxyRpcService(RpcService):
    """Exposes a proxy's push_conns / push_room_batch / push_all / join_conns / leave_conns over RPC
    (service ``imgate.proxy``): a ``ProxyAPI`` in this process through its ``*_nowait`` methods, any
    other object through methods of those names (sync or async)."""

    SERVICE = PROXY_SERVICE

    def __init__(self, proxy, *, server_id: str | None = None, **server_kw):
        self.proxy = proxy
        at_once = isinstance(proxy, ProxyAPI) and proxy.nowait
        self._conns = proxy.push_conns_nowait if at_once else proxy.push_conns
        self._room_batch = proxy.push_room_batch_nowait if at_once else proxy.push_room_batch
        self._all = proxy.push_all_nowait if at_once else proxy.push_all
        self._join = proxy.join_conns_nowait if at_once else proxy.join_conns
        self._leave = proxy.leave_conns_nowait if at_once else proxy.leave_conns
        self._packed = getattr(proxy, "push_packed_nowait", None) if at_once else None
        if server_id is None:
            server_id = getattr(proxy, "server_id", "") or ""
        self.server = RpcServer(self.SERVICE, self.handlers(), server_id=server_id, **server_kw)

    def handlers(self) -> dict:
        return {
            pb.PUSH_CONNS: self._push_conns,
            pb.PUSH_ROOM_BATCH: self._push_room_batch,
            pb.PUSH_ALL: self._push_all,
            pb.JOIN_CONNS: self._join_conns,
            pb.LEAVE_CONNS: self._leave_conns,
            pb.PUSH_CONNS_PACKED: self._push_packed,
        }

    def _push_conns(self, req: pb.PushConnsReq):
        return _count(self._conns(list(req.conn_ids), req.op, req.body))

    def _push_packed(self, body: bytes):
        if self._packed is not None:  # compiled: checked whole, then delivered in order
            return _count(self._packed(body))
        counts = [self._conns(ids, op, b) for ids, op, b in unpack_pushes(body)]
        if not any(inspect.isawaitable(n) for n in counts):
            return _count(sum(int(n or 0) for n in counts))

        async def wait():  # in order: each awaited before the next is looked at
            total = 0
            for n in counts:
                total += int((await n) if inspect.isawaitable(n) else (n or 0))
            return total

        return _count(wait())

    def _push_room_batch(self, req: pb.PushRoomBatchReq):
        return _count(self._room_batch(req.room_id, req.frames))

    def _push_all(self, req: pb.PushAllReq):
        return _count(self._all(req.op, req.body, req.speed))

    def _join_conns(self, req: pb.RoomConnsReq):
        return _count(self._join(list(req.conn_ids), req.room_id))

    def _leave_conns(self, req: pb.RoomConnsReq):
        return _count(self._leave(list(req.conn_ids), req.room_id))


async def serve_proxy(proxy, host: str = "127.0.0.1", port: int = 0, *, ssl=None, path: str = "", **server_kw) -> ProxyRpcService:
    """Serve ``proxy``'s pushes over RPC on host:port (TLS with ``ssl``); returns the started service
    (``.port``, ``.addr``, ``stop()``)."""
    svc = ProxyRpcService(proxy, **server_kw)
    await svc.start(host, port, ssl=ssl, path=path)
    return svc


class ProxyClient(ProxyAPI):
    """Push's client of one proxy: ``await push_conns/push_room/push_room_batch/push_all``.
    Every method returns what the proxy returned (the connections the push was queued for)."""

    def __init__(self, server_id: str, addr: str, pool_size: int = 4, *, client_id: str = "",
                 timeout: float = DEFAULT_TIMEOUT, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
                 max_body: int = DEFAULT_MAX_BODY, check_server_id: bool = True, **pool_kw):
        self.server_id = server_id
        self.addr = addr
        self.pool = RpcPool(addr, PROXY_SERVICE, size=pool_size, client_id=client_id,
                            server_id=server_id if check_server_id else "", timeout=timeout,
                            connect_timeout=connect_timeout, max_body=max_body, **pool_kw)
        try:  # connect now: a one-way push does not wait for a connection, it needs one up
            self.pool.start()
        except RuntimeError:  # no running loop: the first call starts it
            pass

    def __repr__(self) -> str:
        return f"ProxyClient({self.server_id!r}, {self.addr!r}, ready={self.pool.live}/{self.pool.size})"

    async def start(self, wait: float | None = None) -> bool:
        return await self.pool.wait_ready(wait)

    async def close(self) -> None:
        await self.pool.close()

    @property
    def healthy(self) -> bool:
        return self.pool.healthy

    # awaited: one coroutine per call, on the lane (in order with the one-way pushes), the proxy's count

    async def push_conns(self, conn_ids: list[int], op: int, body: bytes) -> int:
        raw = await self.pool.call_raw(pb.PUSH_CONNS, _PushConnsReq(
            conn_ids=conn_ids, op=op, body=bytes(body)).SerializeToString(), lane=True)
        return _count_of(raw).count

    async def push_room(self, room_id: str, op: int, body: bytes) -> int:
        return await self.push_room_batch(room_id, encode_frame(op, 0, body))

    async def push_room_batch(self, room_id: str, frames: bytes) -> int:
        raw = await self.pool.call_raw(pb.PUSH_ROOM_BATCH, _PushRoomBatchReq(
            room_id=room_id, frames=bytes(frames)).SerializeToString(), lane=True)
        return _count_of(raw).count

    async def push_all(self, op: int, body: bytes, speed: int = 0) -> int:
        raw = await self.pool.call_raw(pb.PUSH_ALL, _PushAllReq(op=op, body=bytes(body), speed=speed).SerializeToString(),
                                       lane=True)
        return _count_of(raw).count

    async def join_conns(self, conn_ids: list[int], room_id: str) -> int:
        """The connections join ``room_id`` (a read-mode group's room); returns those that did."""
        raw = await self.pool.call_raw(pb.JOIN_CONNS, pb.RoomConnsReq(conn_ids=conn_ids, room_id=room_id)
                                       .SerializeToString(), lane=True)
        return _count_of(raw).count

    async def leave_conns(self, conn_ids: list[int], room_id: str) -> int:
        raw = await self.pool.call_raw(pb.LEAVE_CONNS, pb.RoomConnsReq(conn_ids=conn_ids, room_id=room_id)
                                       .SerializeToString(), lane=True)
        return _count_of(raw).count

    # one-way: queued on the lane at once; the count is of the connections named (see the module doc)

    def push_conns_nowait(self, conn_ids: list[int], op: int, body: bytes) -> int:
        # packed: the pushes of one write share one frame (and no protobuf message each)
        self.pool.send_packed(pb.PUSH_CONNS_PACKED, pack_push(conn_ids, op, body if type(body) is bytes else bytes(body)))
        return len(conn_ids)

    def push_room_nowait(self, room_id: str, op: int, body: bytes) -> int:
        return self.push_room_batch_nowait(room_id, encode_frame(op, 0, body))

    def push_room_batch_nowait(self, room_id: str, frames: bytes) -> int:
        self.pool.send(pb.PUSH_ROOM_BATCH, _PushRoomBatchReq(room_id=room_id, frames=bytes(frames)).SerializeToString())
        return 0  # the members are counted by the proxy, which does not answer

    def push_all_nowait(self, op: int, body: bytes, speed: int = 0) -> int:
        self.pool.send(pb.PUSH_ALL, _PushAllReq(op=op, body=bytes(body), speed=speed).SerializeToString())
        return 0

    def join_conns_nowait(self, conn_ids: list[int], room_id: str) -> int:
        self.pool.send(pb.JOIN_CONNS, pb.RoomConnsReq(conn_ids=conn_ids, room_id=room_id).SerializeToString())
        return len(conn_ids)

    def leave_conns_nowait(self, conn_ids: list[int], room_id: str) -> int:
        self.pool.send(pb.LEAVE_CONNS, pb.RoomConnsReq(conn_ids=conn_ids, room_id=room_id).SerializeToString())
        return len(conn_ids)
