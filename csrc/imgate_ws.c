/* RFC 6455 helpers: header parsing, unmasking, UTF-8 validation.  See imgate_ws.h. */
#include "imgate_ws.h"

#include <string.h>

#include "imgate_debug.h"

/* The mask, rotated to `phase` and repeated to 8 bytes: XOR-ing whole 64-bit words with it is the
 * same as XOR-ing byte by byte, on either endianness, because both sides are loaded with memcpy from
 * byte order.  The fixed-size memcpy calls compile to plain (unaligned) loads and stores, and -O3
 * vectorises the word loop. */
void imgate_ws_unmask(uint8_t *dst, const uint8_t *src, size_t n, const uint8_t mask[4],
                      size_t phase)
{
    uint8_t m[8];
    for (int i = 0; i < 8; i++)
        m[i] = mask[(phase + (size_t)i) & 3];
    uint64_t w;
    memcpy(&w, m, 8);

    size_t i = 0;
    /* Four independent words per iteration keep the loads and stores pipelined even when the
     * compiler does not vectorise (e.g. -O2 builds). */
    for (; i + 32 <= n; i += 32) {
        uint64_t a, b, c, d;
        memcpy(&a, src + i, 8);
        memcpy(&b, src + i + 8, 8);
        memcpy(&c, src + i + 16, 8);
        memcpy(&d, src + i + 24, 8);
        a ^= w;
        b ^= w;
        c ^= w;
        d ^= w;
        memcpy(dst + i, &a, 8);
        memcpy(dst + i + 8, &b, 8);
        memcpy(dst + i + 16, &c, 8);
        memcpy(dst + i + 24, &d, 8);
    }
    for (; i + 8 <= n; i += 8) {
        uint64_t a;
        memcpy(&a, src + i, 8);
        a ^= w;
        memcpy(dst + i, &a, 8);
    }
    /* i is a multiple of 8 here, so m[i & 3] is still the right mask byte. */
    for (; i < n; i++)
        dst[i] = src[i] ^ m[i & 3];
}

/* UTF-8 validation as a DFA over byte classes (RFC 3629 table 4, the "well-formed byte sequences").
 *
 * Byte classes:
 *   0: 00..7F  ASCII                      6: E0       (second byte A0..BF, no overlongs)
 *   1: 80..8F  continuation               7: E1..EC, EE..EF
 *   2: 90..9F  continuation               8: ED       (second byte 80..9F, no surrogates)
 *   3: A0..BF  continuation               9: F0       (second byte 90..BF, no overlongs)
 *   4: C0, C1, F5..FF  never valid       10: F1..F3
 *   5: C2..DF  two-byte lead             11: F4       (second byte 80..8F, max U+10FFFF)
 *
 * States: 0 accept, 1 reject, 2 one continuation byte left, 3 two left, 4 after E0, 5 after ED,
 * 6 three left, 7 after F0, 8 after F4. */
#define R4(x) x, x, x, x
#define R16(x) R4(x), R4(x), R4(x), R4(x)

static const uint8_t utf8_class[256] = {
    R16(0), R16(0), R16(0), R16(0), R16(0), R16(0), R16(0), R16(0), /* 00..7F */
    R16(1),                                                         /* 80..8F */
    R16(2),                                                         /* 90..9F */
    R16(3), R16(3),                                                 /* A0..BF */
    4, 4, 5, 5, R4(5), R4(5), R4(5),                                /* C0..CF */
    R16(5),                                                         /* D0..DF */
    6, 7, 7, 7, R4(7), R4(7), 7, 8, 7, 7,                           /* E0..EF */
    9, 10, 10, 10, 11, 4, 4, 4, R4(4), R4(4),                       /* F0..FF */
};

#define REJ IMGATE_UTF8_REJECT
static const uint8_t utf8_next[9 * 12] = {
    /*        0    1    2    3    4    5    6    7    8    9   10   11 */
    /* 0 */   0, REJ, REJ, REJ, REJ,   2,   4,   3,   5,   7,   6,   8,
    /* 1 */ REJ, REJ, REJ, REJ, REJ, REJ, REJ, REJ, REJ, REJ, REJ, REJ,
    /* 2 */ REJ,   0,   0,   0, REJ, REJ, REJ, REJ, REJ, REJ, REJ, REJ,
    /* 3 */ REJ,   2,   2,   2, REJ, REJ, REJ, REJ, REJ, REJ, REJ, REJ,
    /* 4 */ REJ, REJ, REJ,   2, REJ, REJ, REJ, REJ, REJ, REJ, REJ, REJ,
    /* 5 */ REJ,   2,   2, REJ, REJ, REJ, REJ, REJ, REJ, REJ, REJ, REJ,
    /* 6 */ REJ,   3,   3,   3, REJ, REJ, REJ, REJ, REJ, REJ, REJ, REJ,
    /* 7 */ REJ, REJ,   3,   3, REJ, REJ, REJ, REJ, REJ, REJ, REJ, REJ,
    /* 8 */ REJ,   3, REJ, REJ, REJ, REJ, REJ, REJ, REJ, REJ, REJ, REJ,
};
#undef REJ

#define HIGH_BITS UINT64_C(0x8080808080808080)

uint32_t imgate_utf8_validate(uint32_t state, const uint8_t *s, size_t n)
{
    IMGATE_ASSERT(state < 9);
    size_t i = 0;
    while (i < n) {
        /* Most chat text is ASCII: between characters, skip runs of it a word at a time. */
        if (state == IMGATE_UTF8_ACCEPT && s[i] < 0x80) {
            while (i + 16 <= n) {
                uint64_t a, b;
                memcpy(&a, s + i, 8);
                memcpy(&b, s + i + 8, 8);
                if ((a | b) & HIGH_BITS)
                    break;
                i += 16;
            }
            if (i + 8 <= n) {
                uint64_t a;
                memcpy(&a, s + i, 8);
                if (!(a & HIGH_BITS))
                    i += 8;
            }
            while (i < n && s[i] < 0x80)
                i++;
            if (i == n)
                break;
        }
        state = utf8_next[state * 12 + utf8_class[s[i]]];
        if (state == IMGATE_UTF8_REJECT)
            return state;
        i++;
    }
    return state;
}
