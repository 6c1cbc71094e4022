# Compile-time debug switch (csrc/imgate_debug.h); `if IMGATE_DEBUG:` blocks vanish in release builds.
cdef extern from "imgate_debug.h":
    const bint IMGATE_DEBUG
    void IMGATE_ASSERT(bint cond) nogil
