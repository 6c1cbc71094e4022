# Public Cython contract of the RFC 6455 codec (websocket.pyx).
#
# Other Cython modules may `cimport` from here:
#   from imgate._core.websocket cimport ws_header_size, ws_write_header, ws_encode, WebSocketParser
# The cdef functions travel through Cython's C-API capsule, so callers pay a C call, not a Python
# one. The opcode constants for C code live in includes/ws.pxd (IMGATE_WS_OP_*).
cimport cython
from cpython.ref cimport PyObject
from libc.stdint cimport uint8_t, uint32_t

from imgate._core.includes.ws cimport imgate_ws_header


# Bytes taken by the header of a server (unmasked) frame carrying payload_len bytes: 2, 4 or 10.
cdef Py_ssize_t ws_header_size(Py_ssize_t payload_len) noexcept nogil

# Writes that header to out (room for ws_header_size(payload_len) bytes) and returns its size, so a
# caller can build header + payload in one allocation.
cdef Py_ssize_t ws_write_header(char* out, Py_ssize_t payload_len, int opcode, bint fin) noexcept nogil

# One server frame around n bytes at payload, in a single allocation. No validation.
cdef bytes ws_encode(const char* payload, Py_ssize_t n, int opcode, bint fin)

# One client frame: the same, masked with the 4 bytes at mask.
cdef bytes ws_encode_masked(const char* payload, Py_ssize_t n, int opcode, bint fin, const uint8_t* mask)


@cython.final
cdef class WebSocketParser:
    cdef readonly bint client             # parses a server's frames (unmasked); masks its replies
    cdef readonly Py_ssize_t max_message
    cdef readonly bint closed
    cdef readonly object close_code      # int, or None when the peer's close had no payload
    cdef readonly str close_reason
    cdef readonly bytes last_pong         # payload of the latest pong received, or None
    cdef readonly Py_ssize_t pongs_received

    cdef int _state
    # header bytes of a frame whose header was split across feeds
    cdef uint8_t _hdr[14]
    cdef Py_ssize_t _hdr_len
    # the frame being read
    cdef int _opcode
    cdef bint _fin
    cdef uint8_t _mask[4]
    cdef Py_ssize_t _remaining
    cdef Py_ssize_t _mask_pos
    # the data message being assembled (a bytes object grown in place; NULL when none)
    cdef int _msg_opcode
    cdef PyObject* _msg
    cdef Py_ssize_t _msg_len
    cdef uint32_t _utf8
    # the control frame being read
    cdef uint8_t _ctrl[125]
    cdef Py_ssize_t _ctrl_len
    # queued control replies: None, bytes, or bytearray
    cdef object _out
    cdef int _err_code
    cdef str _err_msg

    # C-level feed: same as feed() but on a raw buffer.
    cdef list feed_ptr(self, const uint8_t* data, Py_ssize_t n)
    cdef bytes _control(self, const char* payload, Py_ssize_t n, int opcode)
    cpdef bytes take_output(self)

    cdef int _check_first(self, uint8_t b0, uint8_t b1) except -1
    cdef Py_ssize_t _on_header_bytes(self, const uint8_t* p, Py_ssize_t avail, list out) except -1
    cdef Py_ssize_t _start_frame(self, const imgate_ws_header* h, const uint8_t* p,
                                 Py_ssize_t avail, list out) except -1
    cdef Py_ssize_t _on_payload_bytes(self, const uint8_t* p, Py_ssize_t avail, list out) except -1
    cdef int _append(self, const uint8_t* p, Py_ssize_t n) except -1
    cdef int _end_frame(self, list out) except -1
    cdef int _on_control(self) except -1
    cdef object _take_message(self)
    cdef void _drop_message(self) noexcept
    cdef void _queue(self, bytes frame)
    cdef int _fail(self, int code, str message) except -1


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
