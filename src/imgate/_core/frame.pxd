# Public Cython contract of the goim v2 frame codec (imgate._core.frame).
# Other Cython code may `cimport` these declarations and call the C-level helpers directly.

cdef enum:
    FRAME_HEADER_SIZE = 16


cdef class Frame:
    cdef readonly int ver
    cdef readonly int op
    cdef readonly int seq
    cdef readonly bytes body


cdef class FrameDecoder:
    cdef Py_ssize_t _max_body
    cdef unsigned char _head[16]   # partial header; never more than 16 bytes buffered for it
    cdef Py_ssize_t _head_len
    cdef bytes _body               # body being filled when a frame spans feeds (allocated once, exact size)
    cdef Py_ssize_t _body_len      # bytes of _body filled so far
    cdef object _error             # the ProtocolError that failed this decoder, or None

    cpdef list feed(self, object data)
    cdef int _check_header(self, const unsigned char* h, Py_ssize_t* body_size) except -1
    cdef int _feed(self, const unsigned char* p, Py_ssize_t n, list out) except -1


# Writes the 16-byte header for a frame of `body_len` body bytes into `out`.
cdef void frame_write_header(char* out, Py_ssize_t body_len, int op, int seq, int ver) noexcept nogil

# One allocation: header + body.
cdef bytes frame_pack(int op, int seq, const char* body, Py_ssize_t body_len, int ver)
