# MemoryCache's compiled step (imgate.cache._memory), for the embedded node's compiled unicast.

# clock(), read in C when it is time.monotonic (MemoryCache's default clock)
cdef double clock_now(object clock) except? -1
