# Cython contract of the frame parser (ws_parser.pyx); re-exported by websocket.pxd, the public one.
cimport cython
from cpython.ref cimport PyObject
from libc.stdint cimport uint8_t, uint32_t

from imgate._core.includes.ws cimport imgate_ws_header


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
    # the control frame being read: 125 bytes allocated at the first one (most connections never
    # send one, and an idle connection should stay small)
    cdef uint8_t* _ctrl
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
