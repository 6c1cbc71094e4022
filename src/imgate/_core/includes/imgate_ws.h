/* RFC 6455 helpers for the WebSocket codec (src/imgate/_core/ws_parser.pyx and ws_encoder.pyx).
 *
 * Plain C with no Python dependency: frame header parsing and writing, payload unmasking and an
 * incremental UTF-8 validator. The header reader and writers are static inline so that every Cython module
 * cimporting includes/ws.pxd gets them inlined into its own hot loops.
 */
#ifndef IMGATE_WS_H
#define IMGATE_WS_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define IMGATE_WS_OP_CONT 0x0
#define IMGATE_WS_OP_TEXT 0x1
#define IMGATE_WS_OP_BINARY 0x2
#define IMGATE_WS_OP_CLOSE 0x8
#define IMGATE_WS_OP_PING 0x9
#define IMGATE_WS_OP_PONG 0xA

/* Largest header: 2 fixed bytes + 8 bytes of 64-bit length + 4 bytes of mask. */
#define IMGATE_WS_MAX_HEADER 14
#define IMGATE_WS_MAX_CONTROL_PAYLOAD 125

/* Validator states; REJECT is sticky, every other non-ACCEPT state means "inside a sequence". */
#define IMGATE_UTF8_ACCEPT 0
#define IMGATE_UTF8_REJECT 1

typedef struct {
    uint64_t payload_len; /* as sent; may have the most significant bit set (caller rejects it) */
    uint8_t fin;          /* 0 or 1 */
    uint8_t rsv;          /* the three RSV bits, 0..7 (RSV1 = 4) */
    uint8_t opcode;       /* 0..15 */
    uint8_t masked;       /* 0 or 1 */
    uint8_t mask[4];      /* zero when not masked */
} imgate_ws_header;


/* dst[i] = src[i] ^ mask[(phase + i) % 4] for i < n.  phase is how many payload bytes of the frame
 * came before src, so a frame split over several reads unmasks piece by piece.  dst may equal src
 * (in-place); other overlaps are not allowed. */
void imgate_ws_unmask(uint8_t *dst, const uint8_t *src, size_t n, const uint8_t mask[4],
                      size_t phase);

/* Feeds n bytes to the validator in state `state` and returns the new state: ACCEPT when the bytes
 * so far end on a character boundary, REJECT on the first invalid byte (overlong forms, surrogates,
 * code points above U+10FFFF, stray continuation bytes), anything else while inside a sequence. */
uint32_t imgate_utf8_validate(uint32_t state, const uint8_t *s, size_t n);

/* Size of a server (unmasked) frame header for a payload of len bytes. */
static inline size_t imgate_ws_header_size(uint64_t len)
{
    return len < 126 ? 2 : (len <= 0xFFFF ? 4 : 10);
}

/* Writes a server (unmasked) frame header to out and returns its size.  out must have room for
 * imgate_ws_header_size(len) bytes. */
static inline size_t imgate_ws_write_header(uint8_t *out, uint64_t len, int opcode, int fin)
{
    out[0] = (uint8_t)((fin ? 0x80 : 0x00) | (opcode & 0x0F));
    if (len < 126) {
        out[1] = (uint8_t)len;
        return 2;
    }
    if (len <= 0xFFFF) {
        out[1] = 126;
        out[2] = (uint8_t)(len >> 8);
        out[3] = (uint8_t)len;
        return 4;
    }
    out[1] = 127;
    for (int i = 0; i < 8; i++)
        out[2 + i] = (uint8_t)(len >> (56 - 8 * i));
    return 10;
}

/* Parses a frame header from the n bytes at p.  Returns the header size (2..14) when all of it is
 * there, 0 when more bytes are needed.  Inline: it runs once per frame on the parser's hot path. */
static inline int imgate_ws_parse_header(const uint8_t *p, size_t n, imgate_ws_header *h)
{
    if (n < 2)
        return 0;
    uint8_t len7 = p[1] & 0x7F;
    size_t size = 2 + (len7 == 126 ? 2 : (len7 == 127 ? 8 : 0)) + ((p[1] & 0x80) ? 4 : 0);
    if (n < size)
        return 0;

    h->fin = p[0] >> 7;
    h->rsv = (p[0] >> 4) & 0x07;
    h->opcode = p[0] & 0x0F;
    h->masked = p[1] >> 7;

    const uint8_t *q = p + 2;
    if (len7 == 126) {
        h->payload_len = ((uint64_t)q[0] << 8) | q[1];
        q += 2;
    } else if (len7 == 127) {
        uint64_t len = 0;
        for (int i = 0; i < 8; i++)
            len = (len << 8) | q[i];
        h->payload_len = len;
        q += 8;
    } else {
        h->payload_len = len7;
    }
    if (h->masked)
        memcpy(h->mask, q, 4);
    else
        memset(h->mask, 0, 4);
    return (int)size;
}

#endif
