"""The cache service: the global online map `user_id -> conn_id -> server_id`.

`MemoryCache` backs the embedded node; the cluster backs the same interface with Redis.
"""

from imgate.cache.base import Cache, Session, UserFull
from imgate.cache.memory import MemoryCache

__all__ = ["Cache", "Session", "MemoryCache", "UserFull"]
