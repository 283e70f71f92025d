/* Reading one tensor object: {"shape": [..], "dtype"?: "float32"|"float64",
 * "data": [numbers] | "b64": "..."}. The header is checked first and costs nothing; the
 * payload is then written straight into the caller's buffer, from the jansson tree or, when
 * it was lifted out (jdoc.c), from the body itself. */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "proto_internal.h"

void ag_tensor_shape_str(const size_t *dims, int ndim, char *out, size_t cap)
{
    size_t len = 0;
    out[0] = '\0';
    for (int i = 0; i < ndim && len + 1 < cap; i++) {
        int n = snprintf(out + len, cap - len, "%s%zu", i ? "," : "[", dims[i]);
        if (n < 0) return;
        len += (size_t)n;
        if (len >= cap) len = cap - 1;
    }
    if (ndim == 0 && cap > 1) {
        out[0] = '[';
        out[1] = '\0';
        len = 1;
    }
    if (len + 1 < cap) {
        out[len] = ']';
        out[len + 1] = '\0';
    }
}

int ag_tensor_header(json_t *t, const char *path, ag_tensor_in *out, ag_proto_error *err)
{
    memset(out, 0, sizeof *out);
    snprintf(out->path, sizeof out->path, "%s", path);
    char sub[160];
    if (!json_is_object(t))
        return ag_proto_fail(err, 400, "invalid_type", path,
                             "%s: expected a tensor object {\"shape\", \"data\" or \"b64\"}, got %s",
                             path, ag_proto_json_type_name(t));
    const char *key;
    json_t *v;
    json_object_foreach(t, key, v) {
        if (strcmp(key, "shape") && strcmp(key, "dtype") && strcmp(key, "data") &&
            strcmp(key, "b64")) {
            ag_proto_path_key(sub, sizeof sub, path, key);
            return ag_proto_fail(err, 400, "unknown_field", sub,
                                 "%s: unknown field (a tensor has shape, dtype, data or b64)",
                                 sub);
        }
    }

    json_t *shape = json_object_get(t, "shape");
    ag_proto_path_key(sub, sizeof sub, path, "shape");
    if (!shape) return ag_proto_fail(err, 400, "missing_field", sub, "%s: required", sub);
    if (!json_is_array(shape))
        return ag_proto_fail(err, 400, "invalid_type", sub,
                             "%s: expected an array of integers, got %s", sub,
                             ag_proto_json_type_name(shape));
    size_t ndim = json_array_size(shape);
    if (ndim == 0 || ndim > AG_TENSOR_MAX_NDIM)
        return ag_proto_fail(err, 400, "invalid_shape", path,
                             "%s: a shape has 1 to %d dimensions, got %zu", path,
                             AG_TENSOR_MAX_NDIM, ndim);
    size_t count = 1;
    int overflow = 0;
    for (size_t i = 0; i < ndim; i++) {
        json_t *d = json_array_get(shape, i);
        if (!json_is_integer(d)) {
            char dp[176];
            ag_proto_path_index(dp, sizeof dp, sub, i);
            return ag_proto_fail(err, 400, "invalid_type", dp, "%s: expected an integer, got %s",
                                 dp, ag_proto_json_type_name(d));
        }
        json_int_t x = json_integer_value(d);
        if (x < 1)
            return ag_proto_fail(err, 400, "invalid_shape", path,
                                 "%s: every dimension must be >= 1, got %lld at %zu", path,
                                 (long long)x, i);
        if ((unsigned long long)x > SIZE_MAX / 8 || count > SIZE_MAX / 8 / (size_t)x)
            overflow = 1;
        else
            count *= (size_t)x;
        out->dims[i] = (unsigned long long)x > SIZE_MAX ? SIZE_MAX : (size_t)x;
    }
    out->ndim = (int)ndim;
    out->count = overflow ? SIZE_MAX : count;

    json_t *dtype = json_object_get(t, "dtype");
    if (dtype) {
        ag_proto_path_key(sub, sizeof sub, path, "dtype");
        if (!json_is_string(dtype))
            return ag_proto_fail(err, 400, "invalid_type", sub,
                                 "%s: expected \"float32\" or \"float64\", got %s", sub,
                                 ag_proto_json_type_name(dtype));
        const char *s = json_string_value(dtype);
        if (strcmp(s, "float64") == 0)
            out->dtype64 = 1;
        else if (strcmp(s, "float32") != 0)
            return ag_proto_fail(err, 400, "invalid_value", sub,
                                 "%s: expected \"float32\" or \"float64\"", sub);
    }

    out->data = json_object_get(t, "data");
    out->b64 = json_object_get(t, "b64");
    if (out->data && out->b64)
        return ag_proto_fail(err, 400, "invalid_value", path,
                             "%s: give exactly one of \"data\" and \"b64\", not both", path);
    if (!out->data && !out->b64) {
        ag_proto_path_key(sub, sizeof sub, path, "data");
        return ag_proto_fail(err, 400, "missing_field", sub,
                             "%s: a tensor needs \"data\" (numbers) or \"b64\" (base64)", path);
    }
    if (overflow)
        return ag_proto_fail(err, 413, "too_large", path,
                             "%s: the shape's element count overflows", path);
    return 0;
}

int ag_tensor_expect(const ag_tensor_in *t, const size_t *dims, int ndim, ag_proto_error *err)
{
    int same = t->ndim == ndim;
    for (int i = 0; same && i < ndim; i++) same = t->dims[i] == dims[i];
    if (same) return 0;
    char want[96], got[96];
    ag_tensor_shape_str(dims, ndim, want, sizeof want);
    ag_tensor_shape_str(t->dims, t->ndim, got, sizeof got);
    return ag_proto_fail(err, 400, "invalid_shape", t->path, "%s: expected shape %s, got %s",
                         t->path, want, got);
}

static int value_error(const ag_tensor_in *t, size_t i, double v, ag_proto_error *err)
{
    const char *what = isnan(v) ? "NaN" : isinf(v) ? "infinite" : "outside the float32 range";
    return ag_proto_fail(err, 400, "invalid_value", t->path, "%s: element %zu (%g) is %s",
                         t->path, i, v, what);
}

static int count_error(const ag_tensor_in *t, size_t got, const char *unit,
                       ag_proto_error *err)
{
    char shape[96];
    ag_tensor_shape_str(t->dims, t->ndim, shape, sizeof shape);
    return ag_proto_fail(err, 400, "invalid_shape", t->path,
                         "%s: shape %s has %zu elements, %s has %zu", t->path, shape, t->count,
                         unit, got);
}

static int payload_numbers_json(const ag_tensor_in *t, float *dst, ag_proto_error *err)
{
    size_t n = json_array_size(t->data);
    for (size_t i = 0; i < n; i++) {
        json_t *x = json_array_get(t->data, i);
        if (!json_is_number(x)) {
            char dp[160];
            snprintf(dp, sizeof dp, "%s.data[%zu]", t->path, i);
            return ag_proto_fail(err, 400, "invalid_type", dp, "%s: expected a number, got %s",
                                 dp, ag_proto_json_type_name(x));
        }
        double v = json_number_value(x);
        if (!(fabs(v) < AG_FLOAT32_LIMIT)) return value_error(t, i, v, err);
        dst[i] = (float)v;
    }
    return 0;
}

static int payload_b64(const ag_tensor_in *t, const char *s, size_t len, float *dst,
                       ag_proto_error *err)
{
    /* ag_tensor_check_length made sure len decodes to exactly count elements. */
    size_t bytes = t->count * (t->dtype64 ? 8 : 4);
    if (!t->dtype64) {
        if (ag_b64_decode(s, len, (uint8_t *)dst, bytes) != bytes)
            return ag_proto_fail(err, 400, "invalid_base64", t->path,
                                 "%s: invalid base64 (a character outside A-Z a-z 0-9 + /, or "
                                 "bad padding)", t->path);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        for (size_t i = 0; i < t->count; i++) {
            uint32_t w;
            memcpy(&w, dst + i, 4);
            w = __builtin_bswap32(w);
            memcpy(dst + i, &w, 4);
        }
#endif
        /* NaN and Inf are the all-ones exponent: a branch-free OR per block, then the exact
         * index only when a block has one. */
        enum { BLOCK = 4096 };
        for (size_t b = 0; b < t->count; b += BLOCK) {
            size_t end = b + BLOCK < t->count ? b + BLOCK : t->count;
            uint32_t any = 0;
            for (size_t i = b; i < end; i++) {
                uint32_t w;
                memcpy(&w, dst + i, 4);
                any |= (uint32_t)((w & 0x7F800000u) == 0x7F800000u);
            }
            if (any)
                for (size_t i = b; i < end; i++)
                    if (!isfinite(dst[i])) return value_error(t, i, dst[i], err);
        }
        return 0;
    }
    /* float64: decode a block of quanta at a time into a small buffer and narrow it. */
    enum { QUANTA = 1024 }; /* 4096 characters -> 3072 bytes = 384 doubles */
    uint8_t tmp[QUANTA * 3];
    size_t done = 0, pos = 0;
    while (pos < len) {
        size_t chunk = len - pos < QUANTA * 4 ? len - pos : QUANTA * 4;
        size_t got = ag_b64_decode(s + pos, chunk, tmp, sizeof tmp);
        if (got == (size_t)-1 || (pos + chunk < len && got != chunk / 4 * 3))
            return ag_proto_fail(err, 400, "invalid_base64", t->path,
                                 "%s: invalid base64 (a character outside A-Z a-z 0-9 + /, or "
                                 "bad padding)", t->path);
        for (size_t k = 0; k + 8 <= got; k += 8) {
            uint64_t w;
            memcpy(&w, tmp + k, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
            w = __builtin_bswap64(w);
#endif
            double v;
            memcpy(&v, &w, 8);
            if (!(fabs(v) < AG_FLOAT32_LIMIT)) return value_error(t, done, v, err);
            dst[done++] = (float)v;
        }
        pos += chunk;
    }
    return 0;
}

int ag_tensor_check_length(const ag_jdoc *doc, const ag_tensor_in *t, ag_proto_error *err)
{
    char sub[160];
    if (t->data) {
        const ag_side *sd = ag_jdoc_side(doc, t->data, AG_SIDE_NUMBERS);
        if (sd) return sd->count == t->count ? 0 : count_error(t, sd->count, "data", err);
        if (!json_is_array(t->data)) {
            ag_proto_path_key(sub, sizeof sub, t->path, "data");
            return ag_proto_fail(err, 400, "invalid_type", sub,
                                 "%s: expected an array of numbers, got %s", sub,
                                 ag_proto_json_type_name(t->data));
        }
        size_t n = json_array_size(t->data);
        return n == t->count ? 0 : count_error(t, n, "data", err);
    }
    const ag_side *sd = ag_jdoc_side(doc, t->b64, AG_SIDE_STRING);
    size_t len;
    const char *s;
    if (sd) {
        s = doc->body + sd->body_off;
        len = sd->body_len;
    } else if (json_is_string(t->b64)) {
        s = json_string_value(t->b64);
        len = json_string_length(t->b64);
    } else {
        ag_proto_path_key(sub, sizeof sub, t->path, "b64");
        return ag_proto_fail(err, 400, "invalid_type", sub, "%s: expected a base64 string, got %s",
                             sub, ag_proto_json_type_name(t->b64));
    }
    size_t elsize = t->dtype64 ? 8 : 4;
    if (len % 4 != 0)
        return ag_proto_fail(err, 400, "invalid_base64", t->path,
                             "%s: base64 length %zu is not a multiple of 4 (padding is required)",
                             t->path, len);
    size_t pad = len >= 1 && s[len - 1] == '=' ? (len >= 2 && s[len - 2] == '=' ? 2 : 1) : 0;
    size_t bytes = len / 4 * 3 - pad;
    if (t->count > SIZE_MAX / elsize || bytes != t->count * elsize) {
        char unit[64];
        snprintf(unit, sizeof unit, "b64 (%zu bytes of %s)", bytes,
                 t->dtype64 ? "float64" : "float32");
        return count_error(t, bytes / elsize, unit, err);
    }
    return 0;
}

int ag_tensor_payload(const ag_jdoc *doc, const ag_tensor_in *t, float *dst,
                      ag_proto_error *err)
{
    if (ag_tensor_check_length(doc, t, err)) return -1;
    if (t->data) {
        const ag_side *sd = ag_jdoc_side(doc, t->data, AG_SIDE_NUMBERS);
        if (sd) {
            double bad = 0;
            size_t k = ag_jdoc_parse_numbers(doc->body + sd->body_off, sd->body_len, dst, t->count,
                                        &bad);
            if (k != t->count) return value_error(t, k, bad, err);
            return 0;
        }
        return payload_numbers_json(t, dst, err);
    }
    const ag_side *sd = ag_jdoc_side(doc, t->b64, AG_SIDE_STRING);
    if (sd) return payload_b64(t, doc->body + sd->body_off, sd->body_len, dst, err);
    return payload_b64(t, json_string_value(t->b64), json_string_length(t->b64), dst, err);
}
