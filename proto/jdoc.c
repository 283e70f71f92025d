/* Loading a JSON body without letting tensor payloads reach jansson.
 *
 * jansson spends about 40 bytes of heap per number and a full copy per string. A request of
 * 16M floats would cost 640 MB as a json_t tree, and a base64 payload would be copied twice.
 * So one pass over the body first copies it into a "skeleton" in which every value of a
 * "data" key that is an array of plain JSON numbers, and every value of a "b64" key that is
 * a string without escapes, is replaced by a short placeholder string "\u0001<index>" that
 * points into a side table of body offsets. jansson parses the skeleton (still checking the
 * syntax of everything else, duplicate keys included); the tensor reader converts lifted
 * payloads straight from the body into their float buffers once their shapes are known.
 *
 * Placeholders cannot be forged: a body whose strings contain the escape \u0001 is parsed
 * as it is, without lifting. The same pass adds up what jansson will allocate for the rest
 * (measured: 40 bytes per number, ~90 per string, ~140 per array, ~230 per object, ~70 per
 * member) in units of about 40 bytes, so a body of millions of tiny values is refused
 * before jansson allocates for them.
 */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto_internal.h"

static int is_ws(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static int is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

/* End of the JSON number starting at s[i] (RFC 8259 grammar), or 0 when there is none. */
static size_t number_end(const unsigned char *s, size_t len, size_t i)
{
    if (i < len && s[i] == '-') i++;
    if (i >= len) return 0;
    if (s[i] == '0') {
        i++;
    } else if (s[i] >= '1' && s[i] <= '9') {
        while (i < len && is_digit(s[i])) i++;
    } else {
        return 0;
    }
    if (i < len && s[i] == '.') {
        i++;
        if (i >= len || !is_digit(s[i])) return 0;
        while (i < len && is_digit(s[i])) i++;
    }
    if (i < len && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < len && (s[i] == '+' || s[i] == '-')) i++;
        if (i >= len || !is_digit(s[i])) return 0;
        while (i < len && is_digit(s[i])) i++;
    }
    return i;
}

/* s[i] == '['. When the array holds one or more plain numbers and nothing else, returns the
 * index after its ']' and sets *count; else 0. */
static size_t number_array_end(const unsigned char *s, size_t len, size_t i, size_t *count)
{
    size_t n = 0;
    i++;
    for (;;) {
        while (i < len && is_ws(s[i])) i++;
        size_t e = number_end(s, len, i);
        if (!e) return 0;
        n++;
        i = e;
        while (i < len && is_ws(s[i])) i++;
        if (i >= len) return 0;
        if (s[i] == ']') {
            *count = n;
            return i + 1;
        }
        if (s[i] != ',') return 0;
        i++;
    }
}

typedef struct {
    ag_buf skel;
    ag_side *side;
    size_t n_side, cap_side;
    size_t values;      /* jansson's cost of the skeleton, in ~40-byte units (AG_PROTO_MAX_JSON_VALUES) */
    size_t lifted_values; /* what the lifted arrays would have added */
    int forged;         /* a string contains the escape \u0001 */
    int nomem;
} scan_state;

static int add_side(scan_state *st, int kind, size_t off, size_t len, size_t count)
{
    if (st->n_side == st->cap_side) {
        size_t cap = st->cap_side ? st->cap_side * 2 : 16;
        ag_side *p = realloc(st->side, cap * sizeof *p);
        if (!p) {
            st->nomem = 1;
            return -1;
        }
        st->side = p;
        st->cap_side = cap;
    }
    char ph[32];
    int n = snprintf(ph, sizeof ph, "\"\\u0001%zu\"", st->n_side);
    st->values++; /* the placeholder is a (short) jansson string */
    ag_side *sd = &st->side[st->n_side++];
    *sd = (ag_side){.kind = kind, .body_off = off, .body_len = len,
                    .skel_off = st->skel.len, .skel_len = (size_t)n, .count = count};
    ag_buf_put(&st->skel, ph, (size_t)n);
    return 0;
}

enum { KEY_NONE = 0, KEY_DATA, KEY_B64 };

/* Index of the first byte at or after j that is a quote, a backslash, a control character or
 * not ASCII (or a position within 8 bytes of the end): eight bytes per step, since base64
 * payloads are most of a body. */
static inline uint64_t special8(const unsigned char *p)
{
    const uint64_t ones = 0x0101010101010101u;
    uint64_t x;
    memcpy(&x, p, 8);
    uint64_t q = x ^ (ones * '"'), b = x ^ (ones * '\\');
    return ((q - ones) & ~q) | ((b - ones) & ~b) | ((x - ones * 0x20) & ~x) | x;
}

static size_t skip_plain(const unsigned char *s, size_t len, size_t j)
{
    const uint64_t high = 0x8080808080808080u;
    while (j + 32 <= len &&
           !((special8(s + j) | special8(s + j + 8) | special8(s + j + 16) | special8(s + j + 24)) &
             high))
        j += 32;
    while (j + 8 <= len && !(special8(s + j) & high)) j += 8;
    return j;
}

/* Once a forged placeholder is possible the skeleton will be thrown away: stop copying. */
static void skel_put(scan_state *st, const unsigned char *s, size_t n)
{
    if (!st->forged) ag_buf_put(&st->skel, (const char *)s, n);
}

/* One pass over the body; 0, or -1 when the value budget is exceeded (st->values says by
 * how much) or memory ran out (st->nomem). */
static int prescan(scan_state *st, const unsigned char *s, size_t len)
{
    int after_key = KEY_NONE; /* the last string was "data"/"b64" and may be a key */
    int pending = KEY_NONE;   /* ... and a ':' followed: the next value is lifted if it fits */
    size_t i = 0, copied = 0; /* s[copied..i) still to be copied into the skeleton */

    while (i < len) {
        unsigned char c = s[i];
        if (c == '"') {
            size_t j = i + 1;
            int plain = 1;
            for (;;) {
                j = skip_plain(s, len, j);
                if (j >= len || s[j] == '"') break;
                if (s[j] == '\\') {
                    plain = 0;
                    if (j + 5 < len && s[j + 1] == 'u' && s[j + 2] == '0' && s[j + 3] == '0' &&
                        s[j + 4] == '0' && s[j + 5] == '1')
                        st->forged = 1;
                    j += 2;
                    continue;
                }
                if (s[j] < 0x20 || s[j] >= 0x80) plain = 0;
                j++;
            }
            if (j >= len) break; /* unterminated: jansson will say so */
            if (pending == KEY_B64 && plain && !st->forged) {
                skel_put(st, s + copied, i - copied);
                if (add_side(st, AG_SIDE_STRING, i + 1, j - i - 1, 0)) return -1;
                copied = j + 1;
                after_key = KEY_NONE;
            } else {
                size_t n = j - i - 1;
                const unsigned char *str = s + i + 1;
                after_key = n == 4 && memcmp(str, "data", 4) == 0  ? KEY_DATA
                            : n == 3 && memcmp(str, "b64", 3) == 0 ? KEY_B64
                                                                    : KEY_NONE;
            }
            pending = KEY_NONE;
            st->values++;
            i = j + 1;
            continue;
        }
        if (is_ws(c)) {
            i++;
            continue;
        }
        if (c == '[' && pending == KEY_DATA && !st->forged) {
            size_t count = 0, end = number_array_end(s, len, i, &count);
            if (end) {
                skel_put(st, s + copied, i - copied);
                if (add_side(st, AG_SIDE_NUMBERS, i, end - i, count)) return -1;
                copied = end;
                st->lifted_values += count - 1;
                i = end;
                pending = after_key = KEY_NONE;
                continue;
            }
        }
        if (c == ':') {
            pending = after_key;
            st->values++;
        } else {
            pending = KEY_NONE;
            st->values += c == ',' ? 1 : c == '{' ? 6 : c == '[' ? 3 : 0;
        }
        after_key = KEY_NONE;
        if (st->values > AG_PROTO_MAX_JSON_VALUES) return -1;
        i++;
    }
    skel_put(st, s + copied, len - copied);
    if (st->skel.failed) st->nomem = 1;
    return st->nomem ? -1 : 0;
}

/* Body offset of a skeleton offset (for error messages). */
static size_t body_pos(const ag_jdoc *doc, size_t pos)
{
    if (!doc->skel) return pos;
    long long delta = 0;
    for (size_t k = 0; k < doc->n_side; k++) {
        const ag_side *sd = &doc->side[k];
        if (sd->skel_off >= pos) break;
        /* A string placeholder stands between quotes that are not in body_len. */
        size_t blen = sd->body_len + (sd->kind == AG_SIDE_STRING ? 2 : 0);
        size_t boff = sd->body_off - (sd->kind == AG_SIDE_STRING ? 1 : 0);
        if (pos < sd->skel_off + sd->skel_len) return boff;
        delta = (long long)(boff + blen) - (long long)(sd->skel_off + sd->skel_len);
    }
    return (size_t)((long long)pos + delta);
}

/* The path ("layers[0].wq") of the key whose closing quote is just before text[pos]: a
 * small state machine over the prefix jansson accepted. */
static void path_at(const char *text, size_t pos, char *out, size_t cap)
{
    enum { DEPTH = 32 };
    struct { int obj; size_t index; char key[64]; } st[DEPTH];
    int depth = -1, expect_key = 0;
    out[0] = '\0';
    for (size_t i = 0; i < pos; i++) {
        char c = text[i];
        if (c == '"') {
            size_t j = i + 1;
            while (j < pos && text[j] != '"') j += text[j] == '\\' ? 2 : 1;
            if (expect_key && depth >= 0 && depth < DEPTH) {
                size_t n = j - i - 1;
                if (n >= sizeof st[depth].key) n = sizeof st[depth].key - 1;
                memcpy(st[depth].key, text + i + 1, n);
                st[depth].key[n] = '\0';
                expect_key = 0;
            }
            i = j;
        } else if (c == '{' || c == '[') {
            depth++;
            if (depth < DEPTH) {
                st[depth].obj = c == '{';
                st[depth].index = 0;
                st[depth].key[0] = '\0';
            }
            expect_key = c == '{';
        } else if (c == '}' || c == ']') {
            depth--;
            expect_key = 0;
        } else if (c == ',') {
            if (depth >= 0 && depth < DEPTH) {
                if (st[depth].obj) expect_key = 1;
                else st[depth].index++;
            }
        }
    }
    size_t len = 0;
    for (int d = 0; d <= depth && d < DEPTH && len + 1 < cap; d++) {
        int n = st[d].obj ? snprintf(out + len, cap - len, d ? ".%s" : "%s", st[d].key)
                          : snprintf(out + len, cap - len, "[%zu]", st[d].index);
        if (n < 0) break;
        len += (size_t)n;
        if (len >= cap) len = cap - 1;
    }
}

int ag_jdoc_load(ag_jdoc *doc, const char *body, size_t len, int lift, ag_proto_error *err)
{
    *doc = (ag_jdoc){.body = body, .len = len};
    if (!body) return ag_proto_fail(err, 400, "invalid_json", "", "empty request body");

    scan_state st = {0};
    int rc = 0;
    if (lift) {
        ag_buf_reserve(&st.skel, len < 4096 ? len : len / 8);
        rc = prescan(&st, (const unsigned char *)body, len);
    } else {
        /* Count only: a scan state that never lifts. */
        st.forged = 1;
        rc = prescan(&st, (const unsigned char *)body, len);
    }
    if (rc == 0 && st.values + (st.forged ? st.lifted_values : 0) > AG_PROTO_MAX_JSON_VALUES)
        rc = -1;
    if (rc) {
        int nomem = st.nomem;
        free(st.skel.p);
        free(st.side);
        if (nomem)
            return ag_proto_fail(err, 500, "out_of_memory", "", "out of memory reading the body");
        return ag_proto_fail(err, 413, "too_large", "",
                             "the body holds too many JSON values outside tensor data (about "
                             "%zu at most, objects and arrays counting several); tensors go in "
                             "\"data\" arrays of numbers or in \"b64\"",
                             (size_t)AG_PROTO_MAX_JSON_VALUES);
    }
    if (st.forged || st.n_side == 0) {
        free(st.skel.p);
        free(st.side);
    } else {
        doc->skel = st.skel.p;
        doc->skel_len = st.skel.len;
        doc->side = st.side;
        doc->n_side = st.n_side;
    }

    const char *text = doc->skel ? doc->skel : body;
    size_t text_len = doc->skel ? doc->skel_len : len;
    json_error_t je;
    doc->root = json_loadb(text, text_len, JSON_REJECT_DUPLICATES, &je);
    if (!doc->root) {
        enum json_error_code code = json_error_code(&je);
        size_t pos = je.position > 0 ? (size_t)je.position : 0;
        if (pos > text_len) pos = text_len;
        size_t bpos = body_pos(doc, pos);
        if (code == json_error_duplicate_key) {
            char path[128];
            path_at(text, pos, path, sizeof path);
            ag_jdoc_free(doc);
            return ag_proto_fail(err, 400, "duplicate_key", path,
                                 "duplicate key \"%s\" at byte %zu", path, bpos);
        }
        if (code == json_error_out_of_memory) {
            ag_jdoc_free(doc);
            return ag_proto_fail(err, 500, "out_of_memory", "", "out of memory parsing JSON");
        }
        if (len == 0) {
            ag_jdoc_free(doc);
            return ag_proto_fail(err, 400, "invalid_json", "", "empty request body");
        }
        char msg[200];
        snprintf(msg, sizeof msg, "%s", je.text);
        ag_jdoc_free(doc);
        return ag_proto_fail(err, 400, "invalid_json", "", "invalid JSON at byte %zu: %s", bpos,
                             msg);
    }
    return 0;
}

void ag_jdoc_free(ag_jdoc *doc)
{
    if (!doc) return;
    json_decref(doc->root);
    free(doc->skel);
    free(doc->side);
    const char *body = doc->body;
    size_t len = doc->len;
    *doc = (ag_jdoc){.body = body, .len = len};
}

const ag_side *ag_jdoc_side(const ag_jdoc *doc, const json_t *v, int kind)
{
    if (!doc->skel || !json_is_string(v)) return NULL;
    const char *s = json_string_value(v);
    size_t n = json_string_length(v);
    if (n < 2 || n > 21 || s[0] != '\x01') return NULL;
    size_t idx = 0;
    for (size_t i = 1; i < n; i++) {
        if (!is_digit((unsigned char)s[i])) return NULL;
        idx = idx * 10 + (size_t)(s[i] - '0');
    }
    if (idx >= doc->n_side || doc->side[idx].kind != kind) return NULL;
    return &doc->side[idx];
}

/* Reads the JSON number token at s (grammar already checked, followed by a delimiter within
 * n bytes) and returns its length. Sets *out and returns with *exact = 1 when the token is
 * short enough for one exact multiplication or division (Clinger's fast path: mantissa
 * <= 2^53, |exponent| <= 22), the correctly rounded result; else *exact = 0 (strtod's job). */
static size_t scan_number(const char *s, size_t n, double *out, int *exact)
{
    static const double p10[23] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                   1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                   1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};
    size_t i = 0;
    int neg = 0, digits = 0, exp10 = 0, ok = 1;
    if (s[0] == '-') { neg = 1; i++; }
    uint64_t m = 0;
    for (; i < n && is_digit((unsigned char)s[i]); i++) {
        if (m || s[i] != '0') {
            if (++digits > 19) ok = 0;
            else m = m * 10 + (uint64_t)(s[i] - '0');
        }
    }
    if (i < n && s[i] == '.') {
        for (i++; i < n && is_digit((unsigned char)s[i]); i++) {
            if (m || s[i] != '0') {
                if (++digits > 19) ok = 0;
                else m = m * 10 + (uint64_t)(s[i] - '0');
            }
            exp10--;
        }
    }
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        int eneg = 0, e = 0;
        if (i < n && (s[i] == '+' || s[i] == '-')) { eneg = s[i] == '-'; i++; }
        for (; i < n && is_digit((unsigned char)s[i]); i++)
            if (e < 100000) e = e * 10 + (s[i] - '0');
        exp10 += eneg ? -e : e;
    }
    if (ok && m == 0) {
        *out = neg ? -0.0 : 0.0;
    } else if (ok && m <= ((uint64_t)1 << 53) && exp10 >= -22 && exp10 <= 22) {
        double v = exp10 >= 0 ? (double)m * p10[exp10] : (double)m / p10[-exp10];
        *out = neg ? -v : v;
    } else {
        ok = 0;
    }
    *exact = ok;
    return i;
}

size_t ag_jdoc_parse_numbers(const char *text, size_t len, float *out, size_t count, double *bad)
{
    size_t i = 0, k = 0;
    while (i < len && k < count) {
        char c = text[i];
        if (c == '[' || c == ',' || c == ']' || is_ws((unsigned char)c)) {
            i++;
            continue;
        }
        double v;
        int exact;
        size_t n = scan_number(text + i, len - i, &v, &exact);
        if (!exact) {
            /* The token is followed by ',', ']' or blank inside the body, where strtod
             * stops; JSON numbers are a subset of what it reads. */
            v = strtod(text + i, NULL);
        }
        if (!(fabs(v) < AG_FLOAT32_LIMIT)) {
            *bad = v;
            return k;
        }
        out[k++] = (float)v;
        i += n ? n : 1;
    }
    return k;
}
