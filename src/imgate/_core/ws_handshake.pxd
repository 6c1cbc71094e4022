# Cython contract of the opening handshake (ws_handshake.pyx); re-exported by websocket.pxd, the public one.
cimport cython


@cython.final
cdef class WebSocketHandshake:
    cdef readonly Py_ssize_t max_header_bytes
    cdef readonly bint complete
    cdef readonly bint ok
    cdef readonly int status
    cdef readonly object error            # str reason, or None
    cdef readonly bytes response
    cdef readonly bytes leftover
    cdef readonly str method
    cdef readonly str url
    cdef readonly str path
    cdef readonly str query
    cdef readonly str http_version
    cdef readonly dict headers
    cdef readonly object subprotocol      # str chosen from `subprotocols`, or None

    cdef bytearray _buf
    cdef Py_ssize_t _scan
    cdef tuple _extra_headers
    cdef tuple _subprotocols

    cdef _process(self, bytes head)
    cdef _validate(self)
    cdef _accept(self, str key)
    cdef _reject(self, int status, str reason, tuple extra=*)
