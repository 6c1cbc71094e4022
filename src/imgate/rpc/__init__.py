"""imgate's internal RPC: proxy <-> logic and push -> proxy (issue "Cluster mode").

Protobuf messages (``proto/imgate.proto``, generated into :mod:`imgate.protocol.imgate_pb2`) carried in
goim v2 frames over pooled, pipelined TCP connections.

- :mod:`imgate.rpc.core`: the transport -- :class:`RpcServer`, :class:`RpcClient` (one connection),
  :class:`RpcPool` (N connections to one peer, reconnecting), and the errors.
- :mod:`imgate.rpc.logic`: :class:`~imgate.rpc.logic.LogicRpcService` (serves a ``Logic``) and
  :class:`~imgate.rpc.logic.LogicClient` (the proxy's ``LogicAPI``, failing over between logic addresses).
- :mod:`imgate.rpc.proxy`: :class:`~imgate.rpc.proxy.ProxyRpcService` (serves a ``Proxy``) and
  :class:`~imgate.rpc.proxy.ProxyClient` (push's handle on one proxy, async).
- :func:`encode_job` / :func:`decode_job` (from :mod:`imgate.protocol.jobs`): the push job on the Kafka bus.
"""

from __future__ import annotations

from imgate.protocol import decode_job, encode_job, pb
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
