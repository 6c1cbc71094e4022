# Cython contract of the plain-request parser (imgate.http._plain): the connection calls it at C level.

from imgate.http._request cimport Request

# An origin-form target ("/...") of printable ASCII with no percent-escape and no fragment.
cdef bint plain_target(bytes url)


# One connection's last plain path and header block, parsed (see _plain.pyx): reused when repeated.
cdef class PlainMemo:
    cdef bytes path_raw
    cdef str path
    cdef bytes head
    cdef dict headers
    cdef Py_ssize_t clen


# The plain request at p[start:n], its end in end[0]; None when it is not plain or not all here.
# memo (or None): the connection's, read and updated.
cdef Request parse_plain(const unsigned char* p, Py_ssize_t n, Py_ssize_t start,
                         Py_ssize_t max_header_bytes, Py_ssize_t max_body, Py_ssize_t* end,
                         PlainMemo memo)
