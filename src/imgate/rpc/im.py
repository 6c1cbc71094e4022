"""The im role over RPC: the proxies hand it the IM frames (ops 22-32) of their connections.

Service ``imgate.im`` answers two methods of the logic service's table: RECEIVE (one IM frame, the reply
body back, as ``Logic.receive`` does for IM ops) and DISCONNECT (forget what a closed connection had
not acked). :class:`ImClient` is the proxy's side: a :class:`~imgate.rpc.logic.LogicClient` dialling the
im instances in ``im_addrs`` order with fail-over. Every IM request may be repeated (a send is found
again by its cmid, a sync or a pull only reads, an ack or a read position only moves up), so a request
whose im died after it was sent goes to the next instance instead of failing. An ack (op 25) and a
closed connection go to every reachable instance: the entry acknowledged was pushed, and is resent,
by whichever im stored the message, not necessarily the one this proxy prefers. Only the first im's
answer to an ack is read (an ack beyond the inbox is answered with an error), so the copies to the others
are marked ``quiet``: they drop what was acked and check nothing, which would cost a store read.
"""

from __future__ import annotations

import asyncio

from imgate.protocol.ops import OP_MSG_ACK
from imgate.protocol import pb
from imgate.rpc.logic import LogicClient
from imgate.rpc.server import RpcServer, RpcService
from imgate.rpc.wire import IM_SERVICE, RpcUnavailable

__all__ = ["ImClient", "ImRpcService", "serve_im"]


class ImRpcService(RpcService):
    """Exposes an ``ImService`` over RPC (service ``imgate.im``)."""

    SERVICE = IM_SERVICE

    def __init__(self, im, *, server_id: str = "", **server_kw):
        self.im = im
        self.server = RpcServer(self.SERVICE, self.handlers(), server_id=server_id, **server_kw)

    def handlers(self) -> dict:
        return {pb.RECEIVE: self._receive, pb.DISCONNECT: self._disconnect}

    async def _receive(self, req: pb.ReceiveReq) -> pb.ReceiveReply:
        body = await self.im.receive(req.server, req.conn_id, req.mid, req.op, req.seq, req.body, quiet=req.quiet)
        return pb.ReceiveReply(body=bytes(body or b""))

    async def _disconnect(self, req: pb.DisconnectReq) -> pb.Empty:
        for c in req.conns:
            self.im.on_disconnect(req.server, c.conn_id)
        return pb.Empty()


async def serve_im(im, host: str = "127.0.0.1", port: int = 0, *, ssl=None, **server_kw) -> ImRpcService:
    svc = ImRpcService(im, **server_kw)
    await svc.start(host, port, ssl=ssl)
    return svc


class ImClient(LogicClient):
    """The proxy's handle on the im instances: only ``receive`` (IM frames) and ``disconnect``."""

    def __init__(self, addrs, pool_size: int = 4, **kw):
        super().__init__(addrs, pool_size, service=IM_SERVICE, **kw)

    async def receive(self, server: str, conn_id: int, mid: int, op: int, seq: int, body: bytes, **_) -> bytes:
        req = pb.ReceiveReq(server=server, conn_id=conn_id, mid=mid, op=op, seq=seq, body=bytes(body))
        if op == OP_MSG_ACK:  # the others get it quiet: their reply is not read, so they check nothing
            first = req.SerializeToString()
            req.quiet = True
            raw = await self._everywhere(pb.RECEIVE, first, req.SerializeToString())
        else:
            raw = await self._call(pb.RECEIVE, req, idempotent=True)
        return pb.ReceiveReply.FromString(raw).body

    async def _call(self, method: int, request, idempotent: bool):
        if method == pb.DISCONNECT:  # (batched by LogicClient) whichever im pushed to it tracks its acks
            return await self._everywhere(method, request.SerializeToString())
        return await super()._call(method, request, idempotent)

    async def _everywhere(self, method: int, body: bytes, others: bytes | None = None) -> bytes:
        """The request to every reachable im (``others``, when given, to all but the first); the first answer."""
        healthy = [p for p in self.pools if p.healthy] or self.pools[:1]
        if len(healthy) == 1:
            return await healthy[0].call_raw(method, body, idempotent=True)
        others = body if others is None else others
        results = await asyncio.gather(*(p.call_raw(method, body if k == 0 else others, idempotent=True)
                                         for k, p in enumerate(healthy)), return_exceptions=True)
        for r in results:
            if not isinstance(r, BaseException):
                return r
        raise RpcUnavailable(f"no im instance reachable among {', '.join(self.addrs)}")
