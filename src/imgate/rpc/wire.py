"""The wire of imgate's internal RPC: protobuf messages in goim frames over persistent TCP.

Framing (``proto/imgate.proto``): a request is a goim v2 frame whose op is the method id and whose seq
is the request id on that connection (seq 0: a one-way request, answered only by an error frame with
seq 0 if it failed); the reply echoes the seq with op ``method | 0x10000``; an error
reply has op ``0x20000`` and an ``RpcError`` body. A client's first frame is ``HELLO``; a server of
another service answers with an error (kind ``wrong_service``) and closes.

This module holds what both ends share: the method table, the limits, the errors and their bodies.
The ends are :mod:`~imgate.rpc.client` (one connection), :mod:`~imgate.rpc.pool` (N connections to a
peer) and :mod:`~imgate.rpc.server`.

Errors: :class:`RpcRemoteError` (the peer answered with an error; ``kind`` says which),
:class:`RpcUnavailable` (no connection, or it died; ``sent`` tells whether the request may have reached
the peer), :class:`RpcTimeout` (no answer before the deadline).
"""

from __future__ import annotations

import socket

from google.protobuf.message import DecodeError, Message

from imgate.protocol import pb

#: service names exchanged in HELLO: a client dialling the wrong kind of port is refused
LOGIC_SERVICE = "imgate.logic"
PROXY_SERVICE = "imgate.proxy"
IM_SERVICE = "imgate.im"

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
#: bytes a client lets wait for a peer that does not read before a one-way request is refused
DEFAULT_MAX_UNREAD = 4 << 20
SEQ_MAX = 0x7FFFFFFF
SWEEP_INTERVAL = 0.05  # resolution of request deadlines

#: request and reply message of every method (a method absent here carries raw bytes)
REQUEST_TYPES: dict[int, type[Message]] = {
    pb.CONNECT: pb.ConnectReq,
    pb.DISCONNECT: pb.DisconnectReq,
    pb.HEARTBEAT: pb.HeartbeatReq,
    pb.RECEIVE: pb.ReceiveReq,
    pb.RENEW_ONLINE: pb.RenewOnlineReq,
    pb.ROOM_EVENT: pb.RoomEventReq,
    pb.RESTORE: pb.RestoreReq,
    pb.PUSH_CONNS: pb.PushConnsReq,
    pb.PUSH_ROOM_BATCH: pb.PushRoomBatchReq,
    pb.PUSH_ALL: pb.PushAllReq,
    pb.JOIN_CONNS: pb.RoomConnsReq,
    pb.LEAVE_CONNS: pb.RoomConnsReq,
    pb.PING: pb.Empty,
    pb.HELLO: pb.Hello,
}
REPLY_TYPES: dict[int, type[Message]] = {
    pb.CONNECT: pb.ConnectReply,
    pb.DISCONNECT: pb.Empty,
    pb.HEARTBEAT: pb.HeartbeatReply,
    pb.RECEIVE: pb.ReceiveReply,
    pb.RENEW_ONLINE: pb.RoomsReply,  # the cluster-wide counts of the reported rooms, the cache's epoch
    pb.ROOM_EVENT: pb.Empty,
    pb.RESTORE: pb.Empty,
    pb.PUSH_CONNS: pb.CountReply,
    pb.PUSH_ROOM_BATCH: pb.CountReply,
    pb.PUSH_ALL: pb.CountReply,
    pb.JOIN_CONNS: pb.CountReply,
    pb.LEAVE_CONNS: pb.CountReply,
    pb.PUSH_CONNS_PACKED: pb.CountReply,  # its request is raw bytes (imgate.rpc.packed)
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


UNIX_PREFIX = "unix:"


def unix_path(addr: str) -> str:
    """The socket path of a ``unix:/path`` address; "" for host:port."""
    return addr[len(UNIX_PREFIX):] if addr.startswith(UNIX_PREFIX) else ""


def parse_addr(addr: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port); ``unix:/path`` -> (path, 0)."""
    path = unix_path(addr)
    if path:
        return path, 0
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"RPC address must look like host:port, got {addr!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def tune(transport) -> str:
    """No Nagle delay for pipelined frames, keep-alive to notice dead peers; returns "host:port"."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family == socket.AF_UNIX:
        return "unix:" + (transport.get_extra_info("sockname") or "?")
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


def error_body(kind: str, message: str, code: int | None = None) -> bytes:
    return pb.RpcError(code=code if code is not None else KIND_CODES.get(kind, 2), message=message,
                       kind=kind).SerializeToString()


def remote_error(body: bytes) -> RpcRemoteError:
    try:
        e = pb.RpcError.FromString(body)
    except DecodeError:
        return RpcRemoteError("undecodable error reply", "internal")
    return RpcRemoteError(e.message, e.kind or "internal", e.code)
