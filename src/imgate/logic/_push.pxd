# Logic's compiled unicast (imgate.logic._push), for the compiled push-by-mid route.

from imgate.proxy._delivery cimport ConnsDelivery


cdef class UnicastPath:
    cdef object logic     # for the general path: its _jobs, _flat and _publish_nowait
    cdef object cache
    cdef object publish   # bus.publish_nowait
    cdef dict by_mid      # MemoryCache's user -> [Session]; None: ask the cache
    cdef object clock     # that cache's clock (time.monotonic is read in C)
    cdef dict proxies     # MemoryBus's router's server id -> proxy; None: through the bus
    cdef object proxy     # the proxy last pushed to (None before the first) and its delivery
    cdef ConnsDelivery delivery  # None: that proxy is reached through the bus
    cdef public unsigned long long pushes  # logic's pushes not yet in its counters

    # push_mids_nowait(op, [mid], body) without the list
    cdef Py_ssize_t push_mid(self, object op, object mid, object body) except -1
    cdef Py_ssize_t _to_conn(self, object op, object body, object server, object conn_id) except -1
