"""imgate's internal RPC: proxy <-> logic and push -> proxy (issue "Cluster mode").

Protobuf messages (``proto/imgate.proto``, generated into :mod:`imgate.rpc.imgate_pb2`) carried in
goim v2 frames over pooled, pipelined TCP connections.

- :mod:`imgate.rpc.core`: the transport -- :class:`RpcServer`, :class:`RpcClient` (one connection),
  :class:`RpcPool` (N connections to one peer, reconnecting), and the errors.
- :mod:`imgate.rpc.logic`: :class:`~imgate.rpc.logic.LogicRpcService` (serves a ``Logic``) and
  :class:`~imgate.rpc.logic.LogicClient` (the proxy's ``LogicAPI``, failing over between logic addresses).
- :mod:`imgate.rpc.proxy`: :class:`~imgate.rpc.proxy.ProxyRpcService` (serves a ``Proxy``) and
  :class:`~imgate.rpc.proxy.ProxyClient` (push's handle on one proxy, async).
- :func:`encode_job` / :func:`decode_job`: the push job on the Kafka bus (``PushJobMsg``).
"""

from __future__ import annotations

from google.protobuf.message import DecodeError

from imgate.push.jobs import KIND_ALL, KIND_CONNS, KIND_ROOM, PushJob
from imgate.rpc import imgate_pb2 as pb
from imgate.rpc.core import (
    DEFAULT_MAX_BODY,
    DEFAULT_TIMEOUT,
    RpcClient,
    RpcError,
    RpcPool,
    RpcRemoteError,
    RpcServer,
    RpcTimeout,
    RpcUnavailable,
)

__all__ = [
    "DEFAULT_MAX_BODY", "DEFAULT_TIMEOUT", "LOGIC_SERVICE", "PROXY_SERVICE",
    "RpcClient", "RpcError", "RpcPool", "RpcRemoteError", "RpcServer", "RpcTimeout", "RpcUnavailable",
    "decode_job", "encode_job", "pb",
]

#: service names exchanged in HELLO: a client dialling the wrong kind of port is refused
LOGIC_SERVICE = "imgate.logic"
PROXY_SERVICE = "imgate.proxy"

_KINDS = (KIND_CONNS, KIND_ROOM, KIND_ALL)


def encode_job(job: PushJob) -> bytes:
    """A PushJob as the bytes of a Kafka message (``PushJobMsg``)."""
    return pb.PushJobMsg(kind=job.kind, op=job.op, body=bytes(job.body), server=job.server,
                         conn_ids=job.conn_ids, room_id=job.room_id, speed=job.speed).SerializeToString()


def decode_job(data: bytes) -> PushJob:
    """The inverse of :func:`encode_job`; ValueError for bytes that are not a valid job."""
    try:
        m = pb.PushJobMsg.FromString(data)
    except DecodeError as e:
        raise ValueError(f"undecodable push job: {e}") from None
    if m.kind not in _KINDS:
        raise ValueError(f"push job kind must be one of {', '.join(_KINDS)}, got {m.kind!r}")
    return PushJob(m.kind, m.op, m.body, server=m.server, conn_ids=list(m.conn_ids), room_id=m.room_id,
                   speed=m.speed)
