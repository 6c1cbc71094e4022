"""MemoryCache's per-user step, compiled: a push by mid runs it once per user (the embedded node's
hot path). ``MemoryCache`` binds it as a method; the Python class keeps everything else."""

import time

from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec


cdef object _MONOTONIC = time.monotonic


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
        if <double>s.expires_at > now:
            live.append(s)
    if len(live) == len(cs):  # the usual case: nothing expired
        return live
    cdef dict by_key = self._by_key
    for s in cs:
        if <double>s.expires_at <= now and by_key.get(s.key) is s:
            del by_key[s.key]
    if live:
        cs[:] = live
    else:
        del by_mid[mid]
    return list(live)
