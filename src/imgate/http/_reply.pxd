# Cython contract of the reply (imgate.http._reply): the dispatcher and the connection read a
# Response's fields and encode it at C level.

cdef class Response:
    cdef public int status
    cdef public bytes body
    cdef public object content_type
    cdef public dict headers


# ``resp`` as bytes on the wire: status line, headers, body.
cpdef bytes encode_response(Response resp, bint keep_alive, bint head_only, bint http10)
