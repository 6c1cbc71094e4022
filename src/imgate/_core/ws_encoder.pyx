# cython: language_level=3
"""RFC 6455 frames out: the server's (unmasked) and the client's (masked), close frames, and unmasking.

Server frames are never masked; a client's always are (RFC 6455 5.3).
"""
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint8_t, uint64_t
from libc.string cimport memcpy

from imgate._core.includes.ws cimport (
    IMGATE_WS_OP_BINARY,
    IMGATE_WS_OP_CLOSE,
    IMGATE_WS_OP_CONT,
    IMGATE_WS_OP_PING,
    IMGATE_WS_OP_PONG,
    IMGATE_WS_OP_TEXT,
    imgate_ws_header_size,
    imgate_ws_unmask,
    imgate_ws_write_header,
)

WS_OP_CONT = IMGATE_WS_OP_CONT
WS_OP_TEXT = IMGATE_WS_OP_TEXT
WS_OP_BINARY = IMGATE_WS_OP_BINARY
WS_OP_CLOSE = IMGATE_WS_OP_CLOSE
WS_OP_PING = IMGATE_WS_OP_PING
WS_OP_PONG = IMGATE_WS_OP_PONG


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
    if not ws_close_code_ok(c):
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
