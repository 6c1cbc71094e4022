# C helpers of the WebSocket codec (imgate_ws.h, beside this file; its code is csrc/imgate_ws.c); declarations only.
from libc.stdint cimport uint8_t, uint32_t, uint64_t


cdef extern from "imgate_ws.h" nogil:
    const int IMGATE_WS_OP_CONT
    const int IMGATE_WS_OP_TEXT
    const int IMGATE_WS_OP_BINARY
    const int IMGATE_WS_OP_CLOSE
    const int IMGATE_WS_OP_PING
    const int IMGATE_WS_OP_PONG
    const int IMGATE_WS_MAX_HEADER
    const int IMGATE_WS_MAX_CONTROL_PAYLOAD
    const uint32_t IMGATE_UTF8_ACCEPT
    const uint32_t IMGATE_UTF8_REJECT

    ctypedef struct imgate_ws_header:
        uint64_t payload_len
        uint8_t fin
        uint8_t rsv
        uint8_t opcode
        uint8_t masked
        uint8_t mask[4]

    int imgate_ws_parse_header(const uint8_t* p, size_t n, imgate_ws_header* h)
    void imgate_ws_unmask(uint8_t* dst, const uint8_t* src, size_t n, const uint8_t* mask,
                          size_t phase)
    uint32_t imgate_utf8_validate(uint32_t state, const uint8_t* s, size_t n)
    size_t imgate_ws_header_size(uint64_t length)
    size_t imgate_ws_write_header(uint8_t* out, uint64_t length, int opcode, int fin)
