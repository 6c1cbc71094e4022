"""imgate's internal RPC: proxy <-> logic and push -> proxy.

Protobuf messages (``proto/imgate.proto``, generated into :mod:`imgate.protocol.imgate_pb2`) carried in
goim v2 frames over pooled, pipelined TCP connections.

- :mod:`imgate.rpc.wire`: what both ends share -- the method table, limits and errors;
  :mod:`imgate.rpc.client`: :class:`RpcClient` (one connection); :mod:`imgate.rpc.pool`: :class:`RpcPool`
  (N connections to one peer, reconnecting); :mod:`imgate.rpc.server`: :class:`RpcServer`.
- :mod:`imgate.rpc.logic`: :class:`~imgate.rpc.logic.LogicRpcService` (serves a ``Logic``) and
  :class:`~imgate.rpc.logic.LogicClient` (the proxy's ``LogicAPI``, failing over between logic addresses).
- :mod:`imgate.rpc.proxy`: :class:`~imgate.rpc.proxy.ProxyRpcService` (serves a ``Proxy``) and
  :class:`~imgate.rpc.proxy.ProxyClient` (push's handle on one proxy, async).
- :func:`encode_job` / :func:`decode_job` (from :mod:`imgate.protocol.jobs`): the push job on the Kafka bus.
"""

from __future__ import annotations

from imgate.protocol import decode_job, encode_job, pb
from imgate.rpc.client import RpcClient
from imgate.rpc.pool import RpcPool
from imgate.rpc.server import RpcServer
from imgate.rpc.wire import (
    DEFAULT_MAX_BODY, DEFAULT_TIMEOUT, LOGIC_SERVICE, PROXY_SERVICE, RpcError, RpcRemoteError, RpcTimeout,
    RpcUnavailable,
)

__all__ = [
    "DEFAULT_MAX_BODY", "DEFAULT_TIMEOUT", "LOGIC_SERVICE", "PROXY_SERVICE",
    "RpcClient", "RpcError", "RpcPool", "RpcRemoteError", "RpcServer", "RpcTimeout", "RpcUnavailable",
    "decode_job", "encode_job", "pb",
]
