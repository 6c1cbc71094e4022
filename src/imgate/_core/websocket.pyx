# cython: language_level=3
"""RFC 6455 server side: opening handshake, client frame parser, server frame encoder.

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
from cpython.ref cimport Py_INCREF, Py_XDECREF, PyObject
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy

from imgate._core.includes.debug cimport IMGATE_ASSERT
from imgate._core.includes.ws cimport (
    IMGATE_UTF8_ACCEPT,
    IMGATE_UTF8_REJECT,
    IMGATE_WS_MAX_HEADER,
    IMGATE_WS_OP_BINARY,
    IMGATE_WS_OP_CLOSE,
    IMGATE_WS_OP_CONT,
    IMGATE_WS_OP_PING,
    IMGATE_WS_OP_PONG,
    IMGATE_WS_OP_TEXT,
    imgate_utf8_validate,
    imgate_ws_header,
    imgate_ws_header_size,
    imgate_ws_parse_header,
    imgate_ws_unmask,
    imgate_ws_write_header,
)

import base64
import os
import binascii
import hashlib

import httptools

__all__ = (
    "WS_OP_CONT",
    "WS_OP_TEXT",
    "WS_OP_BINARY",
    "WS_OP_CLOSE",
    "WS_OP_PING",
    "WS_OP_PONG",
    "WS_GUID",
    "WebSocketError",
    "WebSocketParser",
    "WebSocketHandshake",
    "encode_ws_frame",
    "encode_ws_close",
    "ws_accept_key",
    "ws_unmask",
)

WS_OP_CONT = IMGATE_WS_OP_CONT
WS_OP_TEXT = IMGATE_WS_OP_TEXT
WS_OP_BINARY = IMGATE_WS_OP_BINARY
WS_OP_CLOSE = IMGATE_WS_OP_CLOSE
WS_OP_PING = IMGATE_WS_OP_PING
WS_OP_PONG = IMGATE_WS_OP_PONG

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
cdef bytes _GUID = WS_GUID.encode("ascii")

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


cdef inline bint _close_code_ok(long code) noexcept nogil:
    # RFC 6455 7.4: 1004 is reserved, 1005/1006/1015 must never be on the wire, 1016-2999 are
    # reserved for future RFCs, 3000-4999 belong to libraries and applications.
    return (1000 <= code <= 1003) or (1007 <= code <= 1014) or (3000 <= code <= 4999)


# ---------------------------------------------------------------------------------------------
# Encoding (server frames are never masked; a client's always are)

cdef Py_ssize_t ws_header_size(Py_ssize_t payload_len) noexcept nogil:
    return <Py_ssize_t>imgate_ws_header_size(<uint64_t>payload_len)


cdef Py_ssize_t ws_write_header(char* out, Py_ssize_t payload_len, int opcode, bint fin) noexcept nogil:
    return <Py_ssize_t>imgate_ws_write_header(<uint8_t*>out, <uint64_t>payload_len, opcode, fin)


cdef bytes ws_encode(const char* payload, Py_ssize_t n, int opcode, bint fin):
    cdef Py_ssize_t hs = ws_header_size(n)
    cdef bytes frame = PyBytes_FromStringAndSize(NULL, hs + n)
    cdef char* buf = PyBytes_AS_STRING(frame)
    ws_write_header(buf, n, opcode, fin)
    if n:
        memcpy(buf + hs, payload, n)
    return frame


cdef bytes ws_encode_masked(const char* payload, Py_ssize_t n, int opcode, bint fin, const uint8_t* mask):
    """A client frame: the server's header with the mask bit and the 4-byte mask, the payload masked."""
    cdef Py_ssize_t hs = ws_header_size(n)
    cdef bytes frame = PyBytes_FromStringAndSize(NULL, hs + 4 + n)
    cdef char* buf = PyBytes_AS_STRING(frame)
    ws_write_header(buf, n, opcode, fin)
    buf[1] = <char>(<uint8_t>buf[1] | 0x80)
    memcpy(buf + hs, mask, 4)
    if n:
        imgate_ws_unmask(<uint8_t*>(buf + hs + 4), <const uint8_t*>payload, <size_t>n, mask, 0)
    return frame


def encode_ws_frame(payload, int opcode=IMGATE_WS_OP_BINARY, bint fin=True, mask=None):
    """One frame. payload: bytes-like, or str (sent as UTF-8). Without ``mask`` a server frame
    (unmasked); with a 4-byte ``mask`` a client frame masked with it (RFC 6455 5.3).

    Text payloads given as bytes are not re-validated. Control frames (close, ping, pong) must have
    fin=True and at most 125 bytes of payload.
    """
    cdef Py_buffer view
    if isinstance(payload, str):
        payload = (<str>payload).encode("utf-8")
    if not (0 <= opcode <= 2 or 8 <= opcode <= 10):
        raise ValueError(f"invalid opcode {opcode}")
    if mask is not None and (type(mask) is not bytes or len(mask) != 4):
        raise ValueError(f"mask must be 4 bytes, not {mask!r}")
    if PyBytes_CheckExact(payload):
        return _encode_checked(PyBytes_AS_STRING(payload), PyBytes_GET_SIZE(payload), opcode, fin, mask)
    PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)
    try:
        return _encode_checked(<const char*>view.buf, view.len, opcode, fin, mask)
    finally:
        PyBuffer_Release(&view)


cdef bytes _encode_checked(const char* payload, Py_ssize_t n, int opcode, bint fin, object mask):
    if opcode >= 8:
        if not fin:
            raise ValueError("control frames cannot be fragmented")
        if n > 125:
            raise ValueError(f"control frame payload {n} > 125")
    if mask is None:
        return ws_encode(payload, n, opcode, fin)
    return ws_encode_masked(payload, n, opcode, fin, <const uint8_t*>PyBytes_AS_STRING(mask))


def encode_ws_close(code=1000, reason="", mask=None):
    """A server close frame (a client's, masked, with a 4-byte ``mask``). code=None gives the empty
    close (then reason must be empty)."""
    cdef long c
    cdef bytes r
    cdef bytes frame
    cdef char* buf
    if code is None:
        if reason:
            raise ValueError("a close reason needs a close code")
        return b"\x88\x00" if mask is None else encode_ws_frame(b"", IMGATE_WS_OP_CLOSE, True, mask)
    c = code
    if not _close_code_ok(c):
        raise ValueError(f"close code {c} may not be sent")
    r = reason.encode("utf-8") if isinstance(reason, str) else bytes(reason)
    if len(r) > 123:
        raise ValueError(f"close reason of {len(r)} bytes > 123")
    frame = PyBytes_FromStringAndSize(NULL, 4 + len(r))
    buf = PyBytes_AS_STRING(frame)
    buf[0] = <char>(0x80 | IMGATE_WS_OP_CLOSE)
    buf[1] = <char>(2 + len(r))
    buf[2] = <char>(c >> 8)
    buf[3] = <char>(c & 0xFF)
    if len(r):
        memcpy(buf + 4, PyBytes_AS_STRING(r), len(r))
    if mask is not None:
        return encode_ws_frame(frame[2:], IMGATE_WS_OP_CLOSE, True, mask)
    return frame


def ws_unmask(data, mask, Py_ssize_t offset=0):
    """data XOR the 4-byte mask, as a new bytes object.

    offset is the position of data[0] within the masked payload (the mask rotates every 4 bytes).
    """
    cdef Py_buffer dv, mv
    cdef bytes out
    PyObject_GetBuffer(mask, &mv, PyBUF_SIMPLE)
    try:
        if mv.len != 4:
            raise ValueError(f"mask must be 4 bytes, not {mv.len}")
        PyObject_GetBuffer(data, &dv, PyBUF_SIMPLE)
        try:
            out = PyBytes_FromStringAndSize(NULL, dv.len)
            imgate_ws_unmask(<uint8_t*>PyBytes_AS_STRING(out), <const uint8_t*>dv.buf,
                             <size_t>dv.len, <const uint8_t*>mv.buf, <size_t>(offset & 3))
        finally:
            PyBuffer_Release(&dv)
    finally:
        PyBuffer_Release(&mv)
    return out


def _copy_bytes(data):
    """Benchmark baseline for ws_unmask: the same buffer handling and allocation, memcpy instead
    of XOR."""
    cdef Py_buffer dv
    cdef bytes out
    PyObject_GetBuffer(data, &dv, PyBUF_SIMPLE)
    try:
        out = PyBytes_FromStringAndSize(NULL, dv.len)
        memcpy(PyBytes_AS_STRING(out), dv.buf, dv.len)
    finally:
        PyBuffer_Release(&dv)
    return out


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

    def __dealloc__(self):
        Py_XDECREF(self._msg)
        self._msg = NULL

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
                if not _close_code_ok(code):
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


# ---------------------------------------------------------------------------------------------
# Opening handshake

def ws_accept_key(key):
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key: base64(SHA-1(key + GUID))."""
    if isinstance(key, str):
        key = (<str>key).encode("latin-1")
    return base64.b64encode(hashlib.sha1(bytes(key) + _GUID).digest()).decode("ascii")


cdef dict _PHRASES = {
    101: "Switching Protocols",
    400: "Bad Request",
    405: "Method Not Allowed",
    426: "Upgrade Required",
    431: "Request Header Fields Too Large",
}


cdef tuple _tokens(str value):
    # Comma-separated header tokens, trimmed and lower-cased.
    return tuple(t.strip().lower() for t in value.split(","))


cdef tuple _checked_headers(extra):
    # Caller-supplied headers go into the response verbatim; refuse anything that could split it.
    if extra is None:
        return ()
    items = extra.items() if isinstance(extra, dict) else extra
    result = []
    for name, value in items:
        name = str(name)
        value = str(value)
        if not name or any(c in name for c in ":\r\n \t") or "\r" in value or "\n" in value:
            raise ValueError(f"invalid extra header {name!r}")
        result.append((name, value))
    return tuple(result)


@cython.final
cdef class _HeadSink:
    # httptools callbacks for one request head.
    cdef list url_parts
    cdef list header_list
    cdef bint headers_complete

    def __cinit__(self):
        self.url_parts = []
        self.header_list = []
        self.headers_complete = False

    def on_url(self, bytes url):
        self.url_parts.append(url)

    def on_header(self, bytes name, bytes value):
        self.header_list.append((name, value))

    def on_headers_complete(self):
        self.headers_complete = True


@cython.final
cdef class WebSocketHandshake:
    """Server side of the opening handshake (RFC 6455 section 4.2).

    Feed the bytes read from a new connection until feed() returns True; then write `response`.
    When `ok`, the connection speaks WebSocket from `leftover` on; otherwise `response` is an error
    answer (with `Connection: close`) and `status`/`error` say what was wrong. Bad input never
    raises. The request target is exposed (`path`, `query`, `url`) for the caller to route.

    Errors: 405 method not GET (with `Allow: GET`); 400 HTTP older than 1.1, Upgrade without the
    websocket token, Connection without the upgrade token, missing or invalid Sec-WebSocket-Key,
    a request body, or malformed HTTP; 426 no Upgrade header at all, or Sec-WebSocket-Version
    other than 13 (with `Sec-WebSocket-Version: 13`); 431 request head over max_header_bytes.

    extra_headers (dict or (name, value) pairs) are added to the 101 answer. subprotocols lists
    the Sec-WebSocket-Protocol values the server speaks, by preference; the first one the client
    also offers is chosen (`subprotocol`), else none is.
    """

    def __cinit__(self, Py_ssize_t max_header_bytes=8192, extra_headers=None, subprotocols=()):
        self.max_header_bytes = max_header_bytes
        self.complete = False
        self.ok = False
        self.status = 0
        self.error = None
        self.response = b""
        self.leftover = b""
        self.method = ""
        self.url = ""
        self.path = ""
        self.query = ""
        self.http_version = ""
        self.headers = {}
        self.subprotocol = None
        self._buf = bytearray()
        self._scan = 0
        self._extra_headers = _checked_headers(extra_headers)
        self._subprotocols = tuple(str(s) for s in subprotocols)

    def feed(self, data):
        """Add received bytes; True once the request head is complete (or rejected)."""
        cdef Py_ssize_t end, start
        if self.complete:
            # Past the head everything belongs to the next protocol.
            self.leftover += bytes(data)
            return True
        self._buf += data
        if self._scan == 0:
            # Tolerate blank lines before the request line (RFC 9112 section 2.2).
            start = 0
            while start < len(self._buf) and self._buf[start] in (13, 10):
                start += 1
            if start:
                del self._buf[:start]
        end = self._buf.find(b"\r\n\r\n", self._scan)
        if end < 0:
            if len(self._buf) > self.max_header_bytes:
                self._buf = None
                self.complete = True
                self._reject(431, f"request head larger than {self.max_header_bytes} bytes")
                return True
            # Resume the search where a terminator could still start.
            self._scan = len(self._buf) - 3 if len(self._buf) > 3 else 0
            return False
        end += 4
        self.complete = True
        if end > self.max_header_bytes:
            self._buf = None
            self._reject(431, f"request head larger than {self.max_header_bytes} bytes")
            return True
        head = bytes(self._buf[:end])
        self.leftover = bytes(self._buf[end:])
        self._buf = None
        self._process(head)
        return True

    cdef _process(self, bytes head):
        cdef _HeadSink sink = _HeadSink()
        parser = httptools.HttpRequestParser(sink)
        try:
            parser.feed_data(head)
        except httptools.HttpParserUpgrade:
            pass  # llhttp stops at an upgrade; the head has been read
        except Exception:
            return self._reject(400, "malformed HTTP request")
        if not sink.headers_complete:
            return self._reject(400, "malformed HTTP request")
        try:
            self.method = parser.get_method().decode("latin-1")
            self.http_version = parser.get_http_version()
            self.url = b"".join(sink.url_parts).decode("latin-1")
            target = httptools.parse_url(b"".join(sink.url_parts))
        except Exception:
            return self._reject(400, "malformed request target")
        self.path = (target.path or b"").decode("latin-1")
        self.query = (target.query or b"").decode("latin-1")
        headers = {}
        for name, value in sink.header_list:
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1").strip()
            # Repeated fields combine into one comma-separated value (RFC 9110 section 5.3).
            headers[key] = headers[key] + ", " + text if key in headers else text
        self.headers = headers
        self._validate()

    cdef _validate(self):
        headers = self.headers
        if self.method != "GET":
            return self._reject(405, f"method {self.method} not allowed, use GET",
                                (("Allow", "GET"),))
        try:
            major, minor = (int(x) for x in self.http_version.split("."))
        except ValueError:
            return self._reject(400, "malformed HTTP request")
        if (major, minor) < (1, 1):
            return self._reject(400, f"HTTP/{self.http_version} request, HTTP/1.1 required")
        upgrade = headers.get("upgrade")
        if upgrade is None:
            return self._reject(426, "missing Upgrade: websocket header",
                                (("Upgrade", "websocket"),))
        if "websocket" not in _tokens(upgrade):
            return self._reject(400, "Upgrade header does not name websocket")
        if "upgrade" not in _tokens(headers.get("connection", "")):
            return self._reject(400, "Connection header lacks the upgrade token")
        key = headers.get("sec-websocket-key", "")
        try:
            valid_key = len(key) == 24 and len(base64.b64decode(key, validate=True)) == 16
        except (binascii.Error, ValueError):
            valid_key = False
        if not valid_key:
            return self._reject(400, "missing or invalid Sec-WebSocket-Key")
        if headers.get("sec-websocket-version") != "13":
            return self._reject(426, "unsupported Sec-WebSocket-Version, 13 required",
                                (("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")))
        if headers.get("content-length", "0") != "0" or "transfer-encoding" in headers:
            # Body bytes would otherwise be taken for WebSocket frames.
            return self._reject(400, "a WebSocket upgrade request must not have a body")
        self._accept(key)

    cdef _accept(self, str key):
        lines = [
            "HTTP/1.1 101 Switching Protocols",
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Accept: " + ws_accept_key(key),
        ]
        if self._subprotocols and "sec-websocket-protocol" in self.headers:
            offered = {t.strip() for t in self.headers["sec-websocket-protocol"].split(",")}
            for proto in self._subprotocols:
                if proto in offered:
                    self.subprotocol = proto
                    lines.append("Sec-WebSocket-Protocol: " + proto)
                    break
        for name, value in self._extra_headers:
            lines.append(f"{name}: {value}")
        self.response = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.status = 101
        self.ok = True
        self.error = None

    cdef _reject(self, int status, str reason, tuple extra=()):
        body = (reason + "\n").encode("utf-8")
        lines = [
            f"HTTP/1.1 {status} {_PHRASES[status]}",
            "Content-Type: text/plain; charset=utf-8",
            f"Content-Length: {len(body)}",
            "Connection: close",
        ]
        for name, value in extra:
            lines.append(f"{name}: {value}")
        self.response = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
        self.status = status
        self.ok = False
        self.error = reason
