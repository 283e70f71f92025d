/* The output buffer every encoder writes into, and number formatting. Tensors are written
 * here number by number; nothing goes through a json_t. */
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto_internal.h"

int ag_buf_reserve(ag_buf *b, size_t extra)
{
    if (b->failed) return -1;
    if (extra > SIZE_MAX - b->len - 1) {
        b->failed = 1;
        return -1;
    }
    size_t need = b->len + extra + 1;
    if (need <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need) cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    char *p = realloc(b->p, cap);
    if (!p) {
        b->failed = 1;
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

void ag_buf_put(ag_buf *b, const char *s, size_t n)
{
    if (ag_buf_reserve(b, n)) return;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

void ag_buf_puts(ag_buf *b, const char *s)
{
    ag_buf_put(b, s, strlen(s));
}

void ag_buf_putc(ag_buf *b, char c)
{
    if (ag_buf_reserve(b, 1)) return;
    b->p[b->len++] = c;
    b->p[b->len] = '\0';
}

void ag_buf_printf(ag_buf *b, const char *fmt, ...)
{
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->failed = 1;
        return;
    }
    if ((size_t)n < sizeof tmp) {
        ag_buf_put(b, tmp, (size_t)n);
        return;
    }
    if (ag_buf_reserve(b, (size_t)n)) return;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

/* Length of the valid UTF-8 sequence at s[0..n), or 0 when it is not one (RFC 3629: no
 * overlongs, no surrogates, nothing above U+10FFFF). */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    size_t len;
    unsigned min;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) { len = 2; min = 0x80; }
    else if (c >= 0xE0 && c <= 0xEF) { len = 3; min = 0x800; }
    else if (c >= 0xF0 && c <= 0xF4) { len = 4; min = 0x10000; }
    else return 0;
    if (n < len) return 0;
    unsigned cp = c & (0x3F >> (len - 1));
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        cp = cp << 6 | (s[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    return len;
}

void ag_buf_json_string(ag_buf *b, const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    if (ag_buf_reserve(b, n + 2)) return;
    ag_buf_putc(b, '"');
    size_t i = 0;
    while (i < n) {
        size_t run = i;
        while (run < n && s[run] >= 0x20 && s[run] < 0x80 && s[run] != '"' && s[run] != '\\')
            run++;
        if (run > i) {
            ag_buf_put(b, (const char *)s + i, run - i);
            i = run;
            continue;
        }
        unsigned c = s[i];
        if (c == '"') { ag_buf_puts(b, "\\\""); i++; }
        else if (c == '\\') { ag_buf_puts(b, "\\\\"); i++; }
        else if (c == '\n') { ag_buf_puts(b, "\\n"); i++; }
        else if (c == '\r') { ag_buf_puts(b, "\\r"); i++; }
        else if (c == '\t') { ag_buf_puts(b, "\\t"); i++; }
        else if (c < 0x20) { ag_buf_printf(b, "\\u%04x", c); i++; }
        else {
            size_t k = utf8_seq(s + i, n - i);
            if (k) {
                ag_buf_put(b, (const char *)s + i, k);
                i += k;
            } else {
                ag_buf_puts(b, "\\ufffd");
                i++;
            }
        }
    }
    ag_buf_putc(b, '"');
}

void ag_buf_double(ag_buf *b, double v)
{
    if (!isfinite(v)) {
        ag_buf_puts(b, "null");
        return;
    }
    char tmp[40];
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(tmp, sizeof tmp, "%.*g", prec, v);
        if (prec == 17 || strtod(tmp, NULL) == v) break;
    }
    ag_buf_puts(b, tmp);
}

/* Powers of ten as doubles (correctly rounded literals), 1e0 .. 1e22 exact. */
static const double pow10_tab[23] = {
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11,
    1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
};

/* v * 10^k for |k| <= 66 in at most four correctly rounded steps (relative error < 5e-16). */
static double scale10(double v, int k)
{
    while (k > 22) { v *= 1e22; k -= 22; }
    while (k < -22) { v /= 1e22; k += 22; }
    return k >= 0 ? v * pow10_tab[k] : v / pow10_tab[-k];
}

/* printf's "%.9g" without printf: nine significant digits m * 10^(x-8) from one scaling in
 * double, whose error (< 1e-6 of a unit in the last digit) decides the rounding except
 * within 1e-5 of a tie, where snprintf does it. Tests compare against snprintf. */
size_t ag_buf_format_float9(float f, char *out)
{
    if (f == 0) {
        if (signbit(f)) { memcpy(out, "-0", 3); return 2; }
        memcpy(out, "0", 2);
        return 1;
    }
    double v = fabs((double)f);
    int e2;
    frexp(v, &e2);                             /* v in [2^(e2-1), 2^e2) */
    int x = (int)floor((e2 - 1) * 0.30102999566398120); /* x or x - 1 */
    double scaled = scale10(v, 8 - x);
    if (scaled >= 1e9) { x++; scaled = scale10(v, 8 - x); }
    if (scaled < 1e8) { x--; scaled = scale10(v, 8 - x); }
    double fl = floor(scaled), frac = scaled - fl;
    if (fabs(frac - 0.5) < 1e-5 || scaled < 1e8 || scaled >= 1e9) {
        int n = snprintf(out, 24, "%.9g", (double)f);
        return (size_t)n;
    }
    uint64_t m = (uint64_t)fl + (frac > 0.5);
    if (m >= 1000000000u) { m /= 10; x++; }

    char digits[9];
    for (int i = 8; i >= 0; i--) { digits[i] = (char)('0' + m % 10); m /= 10; }
    int nd = 9;
    while (nd > 1 && digits[nd - 1] == '0') nd--;

    char *p = out;
    if (f < 0) *p++ = '-';
    if (x < -4 || x >= 9) {
        *p++ = digits[0];
        if (nd > 1) {
            *p++ = '.';
            memcpy(p, digits + 1, (size_t)nd - 1);
            p += nd - 1;
        }
        *p++ = 'e';
        *p++ = x < 0 ? '-' : '+';
        int ax = x < 0 ? -x : x;
        if (ax >= 100) *p++ = (char)('0' + ax / 100);
        *p++ = (char)('0' + ax / 10 % 10);
        *p++ = (char)('0' + ax % 10);
    } else if (x >= 0) {
        int ip = x + 1; /* integer digits, 1..9 */
        memcpy(p, digits, (size_t)ip);
        p += ip;
        if (nd > ip) {
            *p++ = '.';
            memcpy(p, digits + ip, (size_t)(nd - ip));
            p += nd - ip;
        }
    } else {
        *p++ = '0';
        *p++ = '.';
        for (int i = 0; i < -x - 1; i++) *p++ = '0';
        memcpy(p, digits, (size_t)nd);
        p += nd;
    }
    *p = '\0';
    return (size_t)(p - out);
}

void ag_buf_float(ag_buf *b, float v)
{
    if (!isfinite(v)) {
        ag_buf_puts(b, "null");
        return;
    }
    if (ag_buf_reserve(b, 24)) return;
    b->len += ag_buf_format_float9(v, b->p + b->len);
}

void ag_buf_float_array(ag_buf *b, const float *v, size_t n)
{
    /* "-1.23456789e-38," is 16 bytes: reserve once per block, write without checks. */
    enum { BLOCK = 4096 };
    ag_buf_putc(b, '[');
    for (size_t i = 0; i < n; i += BLOCK) {
        size_t end = i + BLOCK < n ? i + BLOCK : n;
        if (ag_buf_reserve(b, (end - i) * 17)) return;
        char *p = b->p + b->len;
        for (size_t j = i; j < end; j++) {
            if (j) *p++ = ',';
            if (isfinite(v[j])) {
                p += ag_buf_format_float9(v[j], p);
            } else {
                memcpy(p, "null", 4);
                p += 4;
            }
        }
        b->len = (size_t)(p - b->p);
        b->p[b->len] = '\0';
    }
    ag_buf_putc(b, ']');
}

void ag_buf_float_b64(ag_buf *b, const float *v, size_t n)
{
    if (n > SIZE_MAX / 8) {
        b->failed = 1;
        return;
    }
    size_t bytes = n * sizeof(float), chars = ag_b64_encoded_len(bytes);
    if (ag_buf_reserve(b, chars + 2)) return;
    b->p[b->len++] = '"';
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    /* The wire is little endian: swap through a small block. */
    enum { BLOCK = 3 * 1024 };
    uint8_t tmp[BLOCK * 4];
    for (size_t i = 0; i < n; i += BLOCK) {
        size_t cnt = n - i < BLOCK ? n - i : BLOCK;
        for (size_t j = 0; j < cnt; j++) {
            uint32_t w;
            memcpy(&w, v + i + j, 4);
            w = __builtin_bswap32(w);
            memcpy(tmp + 4 * j, &w, 4);
        }
        ag_b64_encode(tmp, cnt * 4, b->p + b->len);
        b->len += ag_b64_encoded_len(cnt * 4);
    }
#else
    ag_b64_encode((const uint8_t *)v, bytes, b->p + b->len);
    b->len += chars;
#endif
    b->p[b->len++] = '"';
    b->p[b->len] = '\0';
}

void ag_buf_tensor(ag_buf *b, const size_t *dims, int ndim, const float *v, int b64)
{
    size_t count = 1;
    ag_buf_puts(b, "{\"shape\":[");
    for (int i = 0; i < ndim; i++) {
        ag_buf_printf(b, i ? ",%zu" : "%zu", dims[i]);
        count *= dims[i];
    }
    ag_buf_puts(b, "],\"dtype\":\"float32\",");
    if (b64) {
        ag_buf_puts(b, "\"b64\":");
        ag_buf_float_b64(b, v, count);
    } else {
        ag_buf_puts(b, "\"data\":");
        ag_buf_float_array(b, v, count);
    }
    ag_buf_putc(b, '}');
}

char *ag_buf_finish(ag_buf *b, size_t *len)
{
    if (b->failed || !b->p) {
        free(b->p);
        *b = (ag_buf){0};
        if (len) *len = 0;
        return NULL;
    }
    char *p = b->p;
    if (len) *len = b->len;
    *b = (ag_buf){0};
    return p;
}
