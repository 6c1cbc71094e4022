# cython: language_level=3
"""RFC 6455 frames in: the parser of a client's masked frames (or, for a client, a server's).

The parser is a C-level state machine: per feed it walks the chunk frame by frame, unmasks each
payload once, straight from the input into the bytes object it returns, and buffers only what a
chunk leaves unfinished (at most a 14-byte header, a 125-byte control payload, or the message
being assembled, which is bounded by max_message and grows with what has arrived, never with what
a header merely announces).
"""
cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport (
    PyBytes_AS_STRING,
    PyBytes_CheckExact,
    PyBytes_FromStringAndSize,
    PyBytes_GET_SIZE,
    _PyBytes_Resize,
)
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.ref cimport Py_INCREF, Py_XDECREF, PyObject
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy

from imgate._core.includes.debug cimport IMGATE_ASSERT
from imgate._core.includes.ws cimport (
    IMGATE_UTF8_ACCEPT,
    IMGATE_UTF8_REJECT,
    IMGATE_WS_MAX_HEADER,
    IMGATE_WS_OP_CLOSE,
    IMGATE_WS_OP_CONT,
    IMGATE_WS_OP_PING,
    IMGATE_WS_OP_PONG,
    IMGATE_WS_OP_TEXT,
    imgate_utf8_validate,
    imgate_ws_header,
    imgate_ws_parse_header,
    imgate_ws_unmask,
)
from imgate._core.ws_encoder cimport ws_close_code_ok, ws_encode, ws_encode_masked

import os

from imgate._core.ws_encoder import encode_ws_close

cdef enum:
    ST_HEADER = 0
    ST_PAYLOAD = 1
    ST_CLOSED = 2
    ST_FAILED = 3

# Close codes
cdef enum:
    CLOSE_PROTOCOL_ERROR = 1002
    CLOSE_INVALID_DATA = 1007
    CLOSE_TOO_BIG = 1009

# A message being assembled starts this small and then doubles, capped at the end of the current
# frame: memory follows the bytes received, not the length a header claims.
cdef enum:
    _MIN_GROW = 256


def _utf8_valid(data):
    """True when data is well-formed UTF-8 by the validator the parser uses (for tests)."""
    cdef Py_buffer dv
    PyObject_GetBuffer(data, &dv, PyBUF_SIMPLE)
    try:
        return imgate_utf8_validate(IMGATE_UTF8_ACCEPT, <const uint8_t*>dv.buf,
                                    <size_t>dv.len) == IMGATE_UTF8_ACCEPT
    finally:
        PyBuffer_Release(&dv)


# ---------------------------------------------------------------------------------------------
# Errors

class WebSocketError(ValueError):
    """A client broke RFC 6455. `code` is the close code to answer with (1002 protocol error,
    1007 invalid UTF-8, 1009 message too big); `close_frame()` is that answer.

    `messages` holds the complete messages the failing feed() parsed before the error, in case the
    caller wants to deliver them before closing.
    """

    def __init__(self, message, code=CLOSE_PROTOCOL_ERROR):
        super().__init__(message)
        self.code = code
        self.messages = []

    def close_frame(self):
        # The reason must fit a control frame: 125 bytes minus the 2-byte code.
        reason = str(self).encode("utf-8")[:123].decode("utf-8", "ignore")
        return encode_ws_close(self.code, reason)


# ---------------------------------------------------------------------------------------------
# Parser of client frames

@cython.final
cdef class WebSocketParser:
    """Incremental parser of the masked frames a client sends (``client=True``: of the unmasked frames
    a server sends, for a client).

    feed() returns the complete data messages as (opcode, payload) tuples; pings are answered with
    pongs and a close is echoed, both queued for take_output() (masked when ``client``). A protocol
    violation raises WebSocketError, after which the parser stays failed. After a close, input is
    ignored.
    """

    def __cinit__(self, Py_ssize_t max_message=1 << 20, bint client=False):
        if max_message < 0:
            raise ValueError("max_message must be >= 0")
        self.client = client
        self.max_message = max_message
        self.closed = False
        self.close_code = None
        self.close_reason = ""
        self.last_pong = None
        self.pongs_received = 0
        self._state = ST_HEADER
        self._hdr_len = 0
        self._msg_opcode = 0
        self._msg = NULL
        self._msg_len = 0
        self._utf8 = IMGATE_UTF8_ACCEPT
        self._out = None
        self._ctrl = NULL

    def __dealloc__(self):
        Py_XDECREF(self._msg)
        self._msg = NULL
        PyMem_Free(self._ctrl)
        self._ctrl = NULL

    @property
    def failed(self):
        """True once a protocol error was raised."""
        return self._state == ST_FAILED

    def feed(self, data):
        """Parse the next chunk of the stream; return the data messages it completes."""
        cdef Py_buffer view
        if PyBytes_CheckExact(data):
            return self.feed_ptr(<const uint8_t*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            return self.feed_ptr(<const uint8_t*>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)

    cpdef bytes take_output(self):
        """The queued pong and close frames (b"" when none), clearing the queue."""
        cdef object out = self._out
        if out is None:
            return b""
        self._out = None
        if type(out) is bytes:
            return <bytes>out
        return bytes(out)

    cdef list feed_ptr(self, const uint8_t* data, Py_ssize_t n):
        cdef list out = []
        cdef Py_ssize_t used
        if self._state >= ST_CLOSED:
            if self._state == ST_FAILED:
                raise WebSocketError(self._err_msg, self._err_code)
            return out
        try:
            while n > 0:
                if self._state == ST_HEADER:
                    used = self._on_header_bytes(data, n, out)
                elif self._state == ST_PAYLOAD:
                    used = self._on_payload_bytes(data, n, out)
                else:
                    break  # closed: whatever follows the close frame is ignored
                IMGATE_ASSERT(0 <= used <= n)
                data += used
                n -= used
        except WebSocketError as exc:
            exc.messages = out
            raise
        return out

    cdef int _check_first(self, uint8_t b0, uint8_t b1) except -1:
        # Checks that need only the first two header bytes, so garbage fails fast.
        cdef int rsv = (b0 >> 4) & 7
        cdef int op = b0 & 0x0F
        if rsv:
            names = [name for bit, name in ((4, "RSV1"), (2, "RSV2"), (1, "RSV3")) if rsv & bit]
            self._fail(CLOSE_PROTOCOL_ERROR,
                       f"{' and '.join(names)} set without a negotiated extension")
        if (3 <= op <= 7) or op >= 11:
            self._fail(CLOSE_PROTOCOL_ERROR, f"reserved opcode {op}")
        if self.client:
            if b1 & 0x80:
                self._fail(CLOSE_PROTOCOL_ERROR, "masked server frame")
        elif not (b1 & 0x80):
            self._fail(CLOSE_PROTOCOL_ERROR, "unmasked client frame")
        if op >= 8 and not (b0 & 0x80):
            self._fail(CLOSE_PROTOCOL_ERROR, "fragmented control frame")
        return 0

    cdef Py_ssize_t _on_header_bytes(self, const uint8_t* p, Py_ssize_t avail, list out) except -1:
        cdef imgate_ws_header h
        cdef Py_ssize_t old = self._hdr_len
        cdef Py_ssize_t take, size, used
        if old == 0:
            # Usual case: the whole header is in this chunk; parse it in place.
            size = imgate_ws_parse_header(p, <size_t>avail, &h)
            if avail >= 2:
                self._check_first(p[0], p[1])
            if size == 0:
                IMGATE_ASSERT(avail < IMGATE_WS_MAX_HEADER)
                memcpy(self._hdr, p, avail)
                self._hdr_len = avail
                return avail
            used = size
        else:
            # Header split across chunks: complete the copy (a header is at most 14 bytes).
            take = IMGATE_WS_MAX_HEADER - old
            if take > avail:
                take = avail
            memcpy(self._hdr + old, p, take)
            size = imgate_ws_parse_header(self._hdr, <size_t>(old + take), &h)
            if old < 2 and old + take >= 2:
                self._check_first(self._hdr[0], self._hdr[1])
            if size == 0:
                self._hdr_len = old + take
                return take
            used = size - old
            self._hdr_len = 0
        return used + self._start_frame(&h, p + used, avail - used, out)

    cdef Py_ssize_t _start_frame(self, const imgate_ws_header* h, const uint8_t* p,
                                 Py_ssize_t avail, list out) except -1:
        cdef int op = h.opcode
        cdef Py_ssize_t n
        cdef bytes data
        cdef uint8_t* buf
        if h.payload_len >> 63:
            self._fail(CLOSE_PROTOCOL_ERROR,
                       "64-bit payload length with the most significant bit set")
        if op >= 8:
            if h.payload_len > 125:
                self._fail(CLOSE_PROTOCOL_ERROR, f"control frame payload {h.payload_len} > 125")
            if self._ctrl == NULL:
                self._ctrl = <uint8_t*>PyMem_Malloc(125)
                if self._ctrl == NULL:
                    raise MemoryError()
            self._ctrl_len = 0
        else:
            if op == IMGATE_WS_OP_CONT:
                if self._msg_opcode == 0:
                    self._fail(CLOSE_PROTOCOL_ERROR,
                               "continuation frame without a message in progress")
            elif self._msg_opcode != 0:
                self._fail(CLOSE_PROTOCOL_ERROR,
                           "new data frame while a fragmented message is in progress")
            # Size is judged from the header, before a byte of payload is stored.
            if h.payload_len > <uint64_t>(self.max_message - self._msg_len):
                self._fail(CLOSE_TOO_BIG,
                           f"message of {self._msg_len + h.payload_len} bytes exceeds "
                           f"max_message {self.max_message}")
            n = <Py_ssize_t>h.payload_len
            if op != IMGATE_WS_OP_CONT and h.fin and avail >= n:
                # Whole single-frame message in this chunk: unmask straight into the result.
                data = PyBytes_FromStringAndSize(NULL, n)
                buf = <uint8_t*>PyBytes_AS_STRING(data)
                imgate_ws_unmask(buf, p, <size_t>n, h.mask, 0)
                if op == IMGATE_WS_OP_TEXT and imgate_utf8_validate(
                        IMGATE_UTF8_ACCEPT, buf, <size_t>n) != IMGATE_UTF8_ACCEPT:
                    self._fail(CLOSE_INVALID_DATA, "invalid UTF-8 in text message")
                out.append((op, data))
                return n
            if op != IMGATE_WS_OP_CONT:
                self._msg_opcode = op
                self._utf8 = IMGATE_UTF8_ACCEPT
        self._opcode = op
        self._fin = h.fin
        memcpy(self._mask, h.mask, 4)
        self._remaining = <Py_ssize_t>h.payload_len
        self._mask_pos = 0
        self._state = ST_PAYLOAD
        if self._remaining == 0:
            self._end_frame(out)
        return 0

    cdef Py_ssize_t _on_payload_bytes(self, const uint8_t* p, Py_ssize_t avail, list out) except -1:
        cdef Py_ssize_t n = self._remaining if self._remaining < avail else avail
        IMGATE_ASSERT(n > 0)
        if self._opcode >= 8:
            imgate_ws_unmask(self._ctrl + self._ctrl_len, p, <size_t>n, self._mask,
                             <size_t>self._mask_pos)
            self._ctrl_len += n
        else:
            self._append(p, n)
        self._mask_pos = (self._mask_pos + n) & 3
        self._remaining -= n
        if self._remaining == 0:
            self._end_frame(out)
        return n

    cdef int _append(self, const uint8_t* p, Py_ssize_t n) except -1:
        cdef Py_ssize_t need = self._msg_len + n
        cdef Py_ssize_t cap = 0 if self._msg == NULL else PyBytes_GET_SIZE(<object>self._msg)
        cdef Py_ssize_t frame_end, new_cap
        cdef bytes fresh
        cdef uint8_t* dst
        if need > cap:
            frame_end = self._msg_len + self._remaining
            new_cap = cap * 2
            if new_cap < _MIN_GROW:
                new_cap = _MIN_GROW
            if new_cap < need:
                new_cap = need
            if new_cap > frame_end:
                new_cap = frame_end
            if self._msg == NULL:
                fresh = PyBytes_FromStringAndSize(NULL, new_cap)
                Py_INCREF(fresh)
                self._msg = <PyObject*>fresh
            else:
                # We hold the only reference, so CPython reallocates the object in place.
                _PyBytes_Resize(&self._msg, new_cap)
        dst = <uint8_t*>PyBytes_AS_STRING(<object>self._msg) + self._msg_len
        imgate_ws_unmask(dst, p, <size_t>n, self._mask, <size_t>self._mask_pos)
        if self._msg_opcode == IMGATE_WS_OP_TEXT:
            # Checked as it arrives, so a bad fragment fails before the rest is buffered.
            self._utf8 = imgate_utf8_validate(self._utf8, dst, <size_t>n)
            if self._utf8 == IMGATE_UTF8_REJECT:
                self._fail(CLOSE_INVALID_DATA, "invalid UTF-8 in text message")
        self._msg_len = need
        return 0

    cdef int _end_frame(self, list out) except -1:
        self._state = ST_HEADER
        if self._opcode >= 8:
            return self._on_control()
        if not self._fin:
            return 0
        if self._msg_opcode == IMGATE_WS_OP_TEXT and self._utf8 != IMGATE_UTF8_ACCEPT:
            self._fail(CLOSE_INVALID_DATA, "truncated UTF-8 sequence at the end of a text message")
        out.append((self._msg_opcode, self._take_message()))
        self._msg_opcode = 0
        return 0

    cdef object _take_message(self):
        cdef object message
        if self._msg == NULL:
            return b""
        if self._msg_len != PyBytes_GET_SIZE(<object>self._msg):
            _PyBytes_Resize(&self._msg, self._msg_len)
        message = <object>self._msg
        Py_XDECREF(self._msg)
        self._msg = NULL
        self._msg_len = 0
        return message

    cdef void _drop_message(self) noexcept:
        Py_XDECREF(self._msg)
        self._msg = NULL
        self._msg_len = 0
        self._msg_opcode = 0

    cdef void _queue(self, bytes frame):
        if self._out is None:
            self._out = frame
        elif type(self._out) is bytes:
            self._out = bytearray(self._out) + frame
        else:
            self._out += frame

    cdef int _on_control(self) except -1:
        cdef const char* payload = <const char*>self._ctrl
        cdef Py_ssize_t n = self._ctrl_len
        cdef int code
        cdef str reason
        if self._opcode == IMGATE_WS_OP_PING:
            self._queue(self._control(payload, n, IMGATE_WS_OP_PONG))
        elif self._opcode == IMGATE_WS_OP_PONG:
            self.last_pong = PyBytes_FromStringAndSize(payload, n)
            self.pongs_received += 1
        else:
            if n == 1:
                self._fail(CLOSE_PROTOCOL_ERROR, "close frame with a 1-byte payload")
            if n == 0:
                self.close_code = None
                self.close_reason = ""
                self._queue(self._control(payload, 0, IMGATE_WS_OP_CLOSE))
            else:
                code = (self._ctrl[0] << 8) | self._ctrl[1]
                if not ws_close_code_ok(code):
                    self._fail(CLOSE_PROTOCOL_ERROR, f"invalid close code {code}")
                if imgate_utf8_validate(IMGATE_UTF8_ACCEPT, self._ctrl + 2,
                                        <size_t>(n - 2)) != IMGATE_UTF8_ACCEPT:
                    self._fail(CLOSE_INVALID_DATA, "invalid UTF-8 in close reason")
                reason = PyUnicode_DecodeUTF8(payload + 2, n - 2, NULL)
                self.close_code = code
                self.close_reason = reason
                self._queue(self._control(payload, 2, IMGATE_WS_OP_CLOSE))  # the code, echoed
            self.closed = True
            self._state = ST_CLOSED
            self._drop_message()
        return 0

    cdef bytes _control(self, const char* payload, Py_ssize_t n, int opcode):
        """A control reply: a server's frame, or a client's masked with a fresh mask."""
        cdef bytes mask
        if not self.client:
            return ws_encode(payload, n, opcode, True)
        mask = os.urandom(4)
        return ws_encode_masked(payload, n, opcode, True, <const uint8_t*>PyBytes_AS_STRING(mask))

    cdef int _fail(self, int code, str message) except -1:
        self._state = ST_FAILED
        self._err_code = code
        self._err_msg = message
        self._drop_message()
        raise WebSocketError(message, code)
