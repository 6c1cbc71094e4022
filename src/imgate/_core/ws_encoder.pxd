# Cython contract of the frame encoder (ws_encoder.pyx); re-exported by websocket.pxd, the public one.
from libc.stdint cimport uint8_t


# Bytes taken by the header of a server (unmasked) frame carrying payload_len bytes: 2, 4 or 10.
cdef Py_ssize_t ws_header_size(Py_ssize_t payload_len) noexcept nogil

# Writes that header to out (room for ws_header_size(payload_len) bytes) and returns its size, so a
# caller can build header + payload in one allocation.
cdef Py_ssize_t ws_write_header(char* out, Py_ssize_t payload_len, int opcode, bint fin) noexcept nogil

# One server frame around n bytes at payload, in a single allocation. No validation.
cdef bytes ws_encode(const char* payload, Py_ssize_t n, int opcode, bint fin)

# One client frame: the same, masked with the 4 bytes at mask.
cdef bytes ws_encode_masked(const char* payload, Py_ssize_t n, int opcode, bint fin, const uint8_t* mask)


# A close code that may be on the wire; the encoder and the parser both judge codes by it.
cdef inline bint ws_close_code_ok(long code) noexcept nogil:
    # RFC 6455 7.4: 1004 is reserved, 1005/1006/1015 must never be on the wire, 1016-2999 are
    # reserved for future RFCs, 3000-4999 belong to libraries and applications.
    return (1000 <= code <= 1003) or (1007 <= code <= 1014) or (3000 <= code <= 4999)
