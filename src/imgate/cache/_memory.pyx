"""The cache's :class:`Session`, and MemoryCache's per-user step, compiled: a push by mid runs it once
per user (the embedded node's hot path). ``MemoryCache`` binds it as a method; the Python class keeps
everything else."""

import time

from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec


cdef object _MONOTONIC = time.monotonic

# the fields a session is made of and stored as (expires_at is this process's clock, never stored)
FIELDS = ("conn_id", "mid", "key", "server", "room_id", "platform", "connected_at")


cdef class Session:
    """One connection of one user, as the cluster sees it. Compiled: a push by mid reads its expiry,
    server and conn id from the struct, the expiry a C double, not a float object of its own (one cold
    line fewer per push), and the embedded node holds one per connection."""

    def __init__(self, conn_id, mid, str key, str server, str room_id="", str platform="",
                 double connected_at=0.0, double expires_at=0.0):
        self.conn_id = conn_id
        self.mid = mid
        self.key = key
        self.server = server
        self.room_id = room_id
        self.platform = platform
        self.connected_at = connected_at
        self.expires_at = expires_at

    def to_dict(self):
        """The stored fields (not ``expires_at``) by name."""
        return {"conn_id": self.conn_id, "mid": self.mid, "key": self.key, "server": self.server,
                "room_id": self.room_id, "platform": self.platform, "connected_at": self.connected_at}

    def __eq__(self, other):
        if not isinstance(other, Session):
            return NotImplemented
        cdef Session o = <Session>other
        return (self.conn_id == o.conn_id and self.mid == o.mid and self.key == o.key and self.server == o.server
                and self.room_id == o.room_id and self.platform == o.platform
                and self.connected_at == o.connected_at and self.expires_at == o.expires_at)

    __hash__ = None  # mutable, compared by value (as the dataclass it replaces)

    def __repr__(self):
        return (f"Session(conn_id={self.conn_id!r}, mid={self.mid!r}, key={self.key!r}, server={self.server!r}, "
                f"room_id={self.room_id!r}, platform={self.platform!r}, connected_at={self.connected_at!r})")


cdef double clock_now(object clock) except? -1:
    """``clock()``, read in C when it is time.monotonic (the default: no Python call per user)."""
    cdef timespec ts
    if clock is _MONOTONIC:
        clock_gettime(CLOCK_MONOTONIC, &ts)  # what time.monotonic() reads on Linux
        return ts.tv_sec + ts.tv_nsec * 1e-9
    return clock()


def sweep_user(self, mid):
    """``mid``'s live sessions, in connection order; expired ones are dropped from both indexes."""
    cdef dict by_mid = self._by_mid
    conns = by_mid.get(mid)
    if not conns:
        return []
    cdef list cs = <list?>conns
    cdef double now = clock_now(self._clock)
    cdef list live = []
    for s in cs:
        if (<Session>s).expires_at > now:
            live.append(s)
    if len(live) == len(cs):  # the usual case: nothing expired
        return live
    cdef dict by_key = self._by_key
    for s in cs:
        if (<Session>s).expires_at <= now and by_key.get((<Session>s).key) is s:
            del by_key[(<Session>s).key]
    if live:
        cs[:] = live
    else:
        del by_mid[mid]
    return list(live)
