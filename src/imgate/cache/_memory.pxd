# MemoryCache's compiled step (imgate.cache._memory), for the embedded node's compiled unicast.

# clock(), read in C when it is time.monotonic (MemoryCache's default clock)
cdef double clock_now(object clock) except? -1


# One connection of one user (imgate.cache.Session): its fields read in C by the unicast.
cdef class Session:
    cdef public object conn_id
    cdef public object mid
    cdef public str key
    cdef public str server
    cdef public str room_id
    cdef public str platform
    cdef public double connected_at
    cdef public double expires_at   # this process's clock; never stored
