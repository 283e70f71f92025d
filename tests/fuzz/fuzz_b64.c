/* libFuzzer target: ag_b64_decode against a plain reference decoder of RFC 4648 (strict:
 * padding required, no whitespace, unused bits of the last quantum zero), with every output
 * capacity from 0 to the exact size, and the round trip encode(decode(x)) == x that a
 * canonical decoder guarantees. The first input byte picks the capacity slack. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../proto/proto.h"

#define CHECK(cond, ...)                                                                        \
    do {                                                                                         \
        if (!(cond)) {                                                                           \
            fprintf(stderr, "fuzz_b64: %s: ", #cond);                                            \
            fprintf(stderr, __VA_ARGS__);                                                        \
            fputc('\n', stderr);                                                                 \
            abort();                                                                             \
        }                                                                                        \
    } while (0)

static int val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

/* Bytes decoded, or -1 when the text is not canonical base64. */
static long ref_decode(const unsigned char *s, size_t len, uint8_t *out)
{
    if (len % 4) return -1;
    size_t o = 0;
    for (size_t q = 0; q < len; q += 4) {
        int last = q + 4 == len;
        int pad = 0;
        if (last && s[q + 3] == '=') pad = s[q + 2] == '=' ? 2 : 1;
        uint32_t w = 0;
        for (int k = 0; k < 4; k++) {
            int v = k >= 4 - pad ? 0 : val(s[q + k]);
            if (v < 0) return -1;
            w = w << 6 | (uint32_t)v;
        }
        if (pad == 2 && (w & 0xFFFF)) return -1;
        if (pad == 1 && (w & 0xFF)) return -1;
        out[o++] = (uint8_t)(w >> 16);
        if (pad < 2) out[o++] = (uint8_t)(w >> 8);
        if (pad < 1) out[o++] = (uint8_t)w;
    }
    return (long)o;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    unsigned slack = data[0];
    const char *text = (const char *)data + 1;
    size_t len = size - 1;

    uint8_t *want = malloc(len / 4 * 3 + 3);
    if (!want) return 0;
    long n = ref_decode((const unsigned char *)text, len, want);

    /* Exactly the room needed (or a little more): the decoder must not write past cap. */
    size_t need = n >= 0 ? (size_t)n : len / 4 * 3;
    size_t cap = need + (slack % 5);
    uint8_t *out = malloc(cap ? cap : 1);
    if (!out) {
        free(want);
        return 0;
    }
    size_t got = ag_b64_decode(text, len, out, cap);
    if (n < 0) {
        CHECK(got == (size_t)-1, "accepted invalid base64 (%zu chars) as %zu bytes", len, got);
    } else {
        CHECK(got == (size_t)n, "decoded %zu bytes, expected %ld", got, n);
        CHECK(memcmp(out, want, (size_t)n) == 0, "decoded bytes differ");
        char *again = malloc(ag_b64_encoded_len((size_t)n) + 1);
        CHECK(again != NULL, "malloc");
        CHECK(ag_b64_encoded_len((size_t)n) == len, "encoded length %zu != %zu",
              ag_b64_encoded_len((size_t)n), len);
        ag_b64_encode(out, (size_t)n, again);
        CHECK(memcmp(again, text, len) == 0, "encode(decode(x)) != x");
        free(again);
        if (n > 0) {
            /* One byte too little room is refused, whatever the slack said. */
            CHECK(ag_b64_decode(text, len, out, (size_t)n - 1) == (size_t)-1,
                  "decoded %ld bytes into %ld", n, n - 1);
        }
    }
    free(out);
    free(want);
    return 0;
}
