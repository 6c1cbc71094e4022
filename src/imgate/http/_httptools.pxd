# Cython contract of the httptools half of a connection (imgate.http._httptools): the connection
# (imgate.http._protocol.HttpProtocol) extends it and implements the three methods at the end.

from imgate.http._request cimport Request


cdef class HttptoolsCallbacks:
    cdef object parser           # the httptools.HttpRequestParser calling these callbacks
    cdef object remote
    cdef Py_ssize_t max_body
    cdef Py_ssize_t max_header_bytes
    # the message being parsed
    cdef bytes _url
    cdef dict _headers
    cdef list _body
    cdef Py_ssize_t _body_len
    cdef bint _in_head
    cdef Py_ssize_t _head_bytes
    cdef Py_ssize_t _head_chunk_bytes
    cdef Py_ssize_t _messages_begun
    cdef Py_ssize_t _messages_done
    cdef bint _keep_alive

    cdef void _reset_message(self)
    cdef void _check_head_size(self, bint raise_) except *
    # the connection's: a whole request; an error to answer (raise_: stop the parser too); the
    # interim reply to Expect: 100-continue
    cdef void _received(self, Request req) except *
    cdef void _fail(self, int status, str message, bint raise_=*) except *
    cdef void _continue(self) except *
