/* Base64, RFC 4648 section 4 (standard alphabet, '=' padding), strict: no whitespace, no
 * missing padding, no stray bits in the last quantum. Tensors travel through here, so the
 * inner loops are table lookups on whole quanta with one validity test per quantum. */
#include <string.h>

#include "proto.h"

static const char enc_table[64] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Value of a base64 character, or -1. */
#define D(c)                                                                                     \
    ((c) >= 'A' && (c) <= 'Z'   ? (c) - 'A'                                                      \
     : (c) >= 'a' && (c) <= 'z' ? (c) - 'a' + 26                                                 \
     : (c) >= '0' && (c) <= '9' ? (c) - '0' + 52                                                 \
     : (c) == '+'               ? 62                                                             \
     : (c) == '/'               ? 63                                                             \
                                : -1)
#define R4(M, b) M(b) M(b + 1) M(b + 2) M(b + 3)
#define R16(M, b) R4(M, b) R4(M, b + 4) R4(M, b + 8) R4(M, b + 12)
#define R64(M, b) R16(M, b) R16(M, b + 16) R16(M, b + 32) R16(M, b + 48)
#define R256(M) R64(M, 0) R64(M, 64) R64(M, 128) R64(M, 192)

/* One table per position in a quantum, the value already shifted into place; a character
 * outside the alphabet ('=' included: padding is handled apart) sets the top byte, which no
 * valid quantum (24 bits) reaches, so one test per quantum catches it. */
#define BAD_BITS 0xFF000000u
#define T0(c) (D(c) < 0 ? BAD_BITS : (uint32_t)D(c) << 18),
#define T1(c) (D(c) < 0 ? BAD_BITS : (uint32_t)D(c) << 12),
#define T2(c) (D(c) < 0 ? BAD_BITS : (uint32_t)D(c) << 6),
#define T3(c) (D(c) < 0 ? BAD_BITS : (uint32_t)D(c)),
static const uint32_t dec0[256] = {R256(T0)};
static const uint32_t dec1[256] = {R256(T1)};
static const uint32_t dec2[256] = {R256(T2)};
static const uint32_t dec3[256] = {R256(T3)};

size_t ag_b64_encoded_len(size_t n)
{
    return (n / 3 + (n % 3 != 0)) * 4;
}

void ag_b64_encode(const uint8_t *in, size_t n, char *out)
{
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t w = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[0] = enc_table[w >> 18];
        out[1] = enc_table[(w >> 12) & 63];
        out[2] = enc_table[(w >> 6) & 63];
        out[3] = enc_table[w & 63];
        out += 4;
    }
    if (n - i == 1) {
        uint32_t w = (uint32_t)in[i] << 16;
        out[0] = enc_table[w >> 18];
        out[1] = enc_table[(w >> 12) & 63];
        out[2] = '=';
        out[3] = '=';
    } else if (n - i == 2) {
        uint32_t w = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[0] = enc_table[w >> 18];
        out[1] = enc_table[(w >> 12) & 63];
        out[2] = enc_table[(w >> 6) & 63];
        out[3] = '=';
    }
}

size_t ag_b64_decode(const char *in, size_t len, uint8_t *out, size_t cap)
{
    const size_t bad = (size_t)-1;
    if (len % 4 != 0) return bad;
    if (len == 0) return 0;
    const unsigned char *s = (const unsigned char *)in;
    size_t pad = s[len - 1] == '=' ? (s[len - 2] == '=' ? 2 : 1) : 0;
    size_t n = len / 4 * 3 - pad;
    if (n > cap) return bad;

    /* Every full quantum but the last: 4 characters -> 3 bytes, stored as 4 (the fourth is
     * overwritten by the next quantum; the last quantum writes at least one byte there). */
    size_t full = len / 4 - 1;
    uint8_t *o = out;
    for (size_t q = 0; q < full; q++, s += 4, o += 3) {
        uint32_t w = dec0[s[0]] | dec1[s[1]] | dec2[s[2]] | dec3[s[3]];
        if (w & BAD_BITS) return bad;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        uint32_t be = w << 8;
#else
        uint32_t be = __builtin_bswap32(w << 8);
#endif
        memcpy(o, &be, 4);
    }

    /* The last quantum carries the padding; its unused bits must be zero (canonical). */
    uint32_t w = dec0[s[0]] | dec1[s[1]] | (pad == 2 ? 0 : dec2[s[2]]) |
                 (pad >= 1 ? 0 : dec3[s[3]]);
    if (w & BAD_BITS) return bad;
    if (pad == 2 && (w & 0xFFFF)) return bad;
    if (pad == 1 && (w & 0xFF)) return bad;
    o[0] = (uint8_t)(w >> 16);
    if (pad < 2) o[1] = (uint8_t)(w >> 8);
    if (pad < 1) o[2] = (uint8_t)w;
    return n;
}
