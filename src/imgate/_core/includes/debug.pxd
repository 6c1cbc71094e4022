# Compile-time debug switch (includes/imgate_debug.h, beside this file); `if IMGATE_DEBUG:` blocks vanish in release builds.
cdef extern from "imgate_debug.h":
    const bint IMGATE_DEBUG
    void IMGATE_ASSERT(bint cond) nogil
