# cython: freethreading_compatible = False
"""goim v2 frame codec: 16-byte big-endian header (packLen, headerLen, ver, op, seq), then the body."""

cimport cython
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.string cimport memcpy
from libc.stdint cimport int32_t, uint32_t, uint16_t, int16_t

# goim's operations (0-17 keep goim's meaning; imgate's extensions take 18-99).
OP_HANDSHAKE = 0
OP_HANDSHAKE_REPLY = 1
OP_HEARTBEAT = 2
OP_HEARTBEAT_REPLY = 3
OP_SEND_MSG = 4
OP_SEND_MSG_REPLY = 5
OP_DISCONNECT_REPLY = 6
OP_AUTH = 7
OP_AUTH_REPLY = 8
OP_RAW = 9
OP_PROTO_READY = 10
OP_PROTO_FINISH = 11
OP_CHANGE_ROOM = 12
OP_CHANGE_ROOM_REPLY = 13
OP_SUB = 14
OP_SUB_REPLY = 15
OP_UNSUB = 16
OP_UNSUB_REPLY = 17
OP_JOIN_ROOM = 18
OP_JOIN_ROOM_REPLY = 19
OP_LEAVE_ROOM = 20
OP_LEAVE_ROOM_REPLY = 21

HEADER_SIZE = FRAME_HEADER_SIZE
DEFAULT_MAX_BODY = 65536


class ProtocolError(ValueError):
    """A frame broke the goim v2 framing rules; the connection cannot be resynchronised.

    `frames` holds the whole frames that preceded the violation in the chunk that failed.
    """

    frames = ()


cdef inline void _put32(char* p, uint32_t v) noexcept nogil:
    p[0] = <char>(v >> 24)
    p[1] = <char>(v >> 16)
    p[2] = <char>(v >> 8)
    p[3] = <char>v


cdef inline void _put16(char* p, uint16_t v) noexcept nogil:
    p[0] = <char>(v >> 8)
    p[1] = <char>v


cdef inline int32_t _get32(const unsigned char* p) noexcept nogil:
    return <int32_t>((<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | <uint32_t>p[3])


cdef inline int16_t _get16(const unsigned char* p) noexcept nogil:
    return <int16_t>((<uint16_t>p[0] << 8) | <uint16_t>p[1])


cdef void frame_write_header(char* out, Py_ssize_t body_len, int op, int seq, int ver) noexcept nogil:
    _put32(out, <uint32_t>(body_len + FRAME_HEADER_SIZE))
    _put16(out + 4, FRAME_HEADER_SIZE)
    _put16(out + 6, <uint16_t>ver)
    _put32(out + 8, <uint32_t>op)
    _put32(out + 12, <uint32_t>seq)


cdef bytes frame_pack(int op, int seq, const char* body, Py_ssize_t body_len, int ver):
    if body_len > 0x7FFFFFFF - FRAME_HEADER_SIZE:
        raise ValueError(f"body of {body_len} bytes does not fit a goim frame")
    cdef bytes out = PyBytes_FromStringAndSize(NULL, body_len + FRAME_HEADER_SIZE)
    cdef char* p = PyBytes_AS_STRING(out)
    frame_write_header(p, body_len, op, seq, ver)
    if body_len:
        memcpy(p + FRAME_HEADER_SIZE, body, body_len)
    return out


def encode_frame(int op, int seq, body=b"", int ver=1):
    """Encode one goim v2 frame. `body` is any bytes-like object (str is encoded as UTF-8)."""
    cdef Py_buffer view
    if isinstance(body, str):
        body = (<str>body).encode("utf-8")
    if type(body) is bytes:
        return frame_pack(op, seq, PyBytes_AS_STRING(body), PyBytes_GET_SIZE(body), ver)
    PyObject_GetBuffer(body, &view, PyBUF_SIMPLE)
    try:
        return frame_pack(op, seq, <const char*>view.buf, view.len, ver)
    finally:
        PyBuffer_Release(&view)


def encode_batch(frames, int seq=0, int ver=1):
    """Encode an op-9 (raw) batch: its body is the given already-encoded frames back to back."""
    cdef list parts = [f if type(f) is bytes else bytes(f) for f in frames]
    cdef Py_ssize_t total = 0
    cdef bytes part
    for part in parts:
        total += PyBytes_GET_SIZE(part)
    if total > 0x7FFFFFFF - FRAME_HEADER_SIZE:
        raise ValueError(f"batch of {total} bytes does not fit a goim frame")
    cdef bytes out = PyBytes_FromStringAndSize(NULL, total + FRAME_HEADER_SIZE)
    cdef char* p = PyBytes_AS_STRING(out)
    frame_write_header(p, total, 9, seq, ver)
    p += FRAME_HEADER_SIZE
    for part in parts:
        memcpy(p, PyBytes_AS_STRING(part), PyBytes_GET_SIZE(part))
        p += PyBytes_GET_SIZE(part)
    return out


@cython.final
@cython.freelist(64)
cdef class Frame:
    """One decoded frame. `body` is an owned bytes object."""

    def __init__(self, int op, int seq=0, bytes body=b"", int ver=1):
        self.op = op
        self.seq = seq
        self.body = body
        self.ver = ver

    def encode(self):
        return frame_pack(self.op, self.seq, PyBytes_AS_STRING(self.body), PyBytes_GET_SIZE(self.body), self.ver)

    def __repr__(self):
        return f"Frame(op={self.op}, seq={self.seq}, ver={self.ver}, body={self.body!r})"

    def __eq__(self, other):
        if not isinstance(other, Frame):
            return NotImplemented
        cdef Frame o = <Frame>other
        return self.op == o.op and self.seq == o.seq and self.ver == o.ver and self.body == o.body

    __hash__ = None


cdef inline Frame _new_frame(const unsigned char* h, bytes body):
    cdef Frame f = Frame.__new__(Frame)
    f.ver = _get16(h + 6)
    f.op = _get32(h + 8)
    f.seq = _get32(h + 12)
    f.body = body
    return f


@cython.final
cdef class FrameDecoder:
    """Incremental goim v2 decoder.

    `feed(data)` returns the frames completed by `data`, whatever the chunking. At most one partial
    header (16 bytes) and one partial body (bounded by `max_body`) are held between feeds. After a
    ProtocolError the decoder is failed: the stream cannot be resynchronised, so every later feed
    raises the same error.
    """

    def __cinit__(self, Py_ssize_t max_body=DEFAULT_MAX_BODY):
        if max_body < 0 or max_body > 0x7FFFFFFF - FRAME_HEADER_SIZE:
            raise ValueError(f"max_body must be between 0 and {0x7FFFFFFF - FRAME_HEADER_SIZE}, got {max_body}")
        self._max_body = max_body
        self._head_len = 0
        self._body = None
        self._body_len = 0
        self._error = None

    @property
    def max_body(self):
        return self._max_body

    @property
    def buffered(self):
        """Bytes held for a frame not yet complete."""
        return self._head_len + self._body_len

    cdef int _check_header(self, const unsigned char* h, Py_ssize_t* body_size) except -1:
        cdef int32_t pack_len = _get32(h)
        cdef int16_t header_len = _get16(h + 4)
        if pack_len < 0:
            self._error = ProtocolError(f"packLen is negative: {pack_len}")
        elif header_len != FRAME_HEADER_SIZE:
            self._error = ProtocolError(f"headerLen must be 16, got {header_len}")
        elif pack_len < FRAME_HEADER_SIZE:
            self._error = ProtocolError(f"packLen {pack_len} is smaller than the 16-byte header")
        elif pack_len - FRAME_HEADER_SIZE > self._max_body:
            self._error = ProtocolError(
                f"packLen {pack_len} exceeds the limit of {self._max_body + FRAME_HEADER_SIZE} "
                f"(16 + max_body {self._max_body})")
        else:
            body_size[0] = pack_len - FRAME_HEADER_SIZE
            return 0
        self._head_len = 0
        self._body = None
        raise self._error

    cpdef list feed(self, object data):
        cdef Py_buffer view
        cdef list out = []
        if self._error is not None:
            err = ProtocolError(*self._error.args)
            err.frames = []
            raise err
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            self._feed(<const unsigned char*>view.buf, view.len, out)
        except ProtocolError as e:
            e.frames = out  # the whole frames that came before the violation in this chunk
            raise
        finally:
            PyBuffer_Release(&view)
        return out

    cdef int _feed(self, const unsigned char* p, Py_ssize_t n, list out) except -1:
        cdef Py_ssize_t take, body_size, need
        cdef bytes body
        # 1. finish the frame left over from the previous feed, if any
        if self._head_len:
            if self._head_len < FRAME_HEADER_SIZE:
                take = FRAME_HEADER_SIZE - self._head_len
                if take > n:
                    take = n
                memcpy(self._head + self._head_len, p, take)
                self._head_len += take
                p += take
                n -= take
                if self._head_len < FRAME_HEADER_SIZE:
                    return 0
                self._check_header(self._head, &body_size)
                self._body = PyBytes_FromStringAndSize(NULL, body_size)
                self._body_len = 0
            need = PyBytes_GET_SIZE(self._body) - self._body_len
            take = need if need <= n else n
            if take:
                memcpy(PyBytes_AS_STRING(self._body) + self._body_len, p, take)
                self._body_len += take
                p += take
                n -= take
            if take < need:
                return 0
            out.append(_new_frame(self._head, self._body))
            self._head_len = 0
            self._body = None
            self._body_len = 0
        # 2. whole frames straight from the input, no intermediate buffer
        while n >= FRAME_HEADER_SIZE:
            self._check_header(p, &body_size)
            if n - FRAME_HEADER_SIZE < body_size:
                break
            body = PyBytes_FromStringAndSize(<const char*>p + FRAME_HEADER_SIZE, body_size)
            out.append(_new_frame(p, body))
            p += FRAME_HEADER_SIZE + body_size
            n -= FRAME_HEADER_SIZE + body_size
        # 3. keep the tail: a partial header, or a header plus the start of its body
        if n:
            if n >= FRAME_HEADER_SIZE:
                memcpy(self._head, p, FRAME_HEADER_SIZE)
                self._head_len = FRAME_HEADER_SIZE
                self._body = PyBytes_FromStringAndSize(NULL, body_size)
                self._body_len = n - FRAME_HEADER_SIZE
                memcpy(PyBytes_AS_STRING(self._body), p + FRAME_HEADER_SIZE, self._body_len)
            else:
                memcpy(self._head, p, n)
                self._head_len = n
        return 0
