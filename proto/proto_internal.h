/* Private to proto/: the output buffer, number formatting, the JSON document loader (jansson
 * plus a pre-scan that keeps tensor payloads out of the json_t tree) and the tensor reader
 * shared by the request and the response decoders. Nothing here is part of the API. */
#ifndef ALTGRAD_PROTO_INTERNAL_H
#define ALTGRAD_PROTO_INTERNAL_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "proto.h"

/* Doubles of smaller magnitude round to a finite float32; this one, halfway between FLT_MAX
 * and 2^128, rounds to even: infinity. */
#define AG_FLOAT32_LIMIT 0x1.ffffffp+127

/* ---- output buffer (proto/buf.c) ------------------------------------------------------- */

/* A growing NUL-terminated string. On allocation failure `failed` is set and every later
 * append is a no-op, so writers check once at the end. */
typedef struct {
    char *p;
    size_t len, cap;
    int failed;
} ag_buf;

/* Makes sure `extra` more bytes (plus the NUL) fit; 0 or -1 (failed set). */
int ag_buf_reserve(ag_buf *b, size_t extra);
/* Append n bytes / a C string / one character / printf output (no-ops once failed). */
void ag_buf_put(ag_buf *b, const char *s, size_t n);
void ag_buf_puts(ag_buf *b, const char *s);
void ag_buf_putc(ag_buf *b, char c);
void ag_buf_printf(ag_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* A JSON string literal of s[0..n): escapes quotes, backslashes and control characters and
 * replaces invalid UTF-8 by U+FFFD so the output is always valid JSON. */
void ag_buf_json_string(ag_buf *b, const char *s, size_t n);
/* A double as the shortest of %.15g/%.16g/%.17g that reads back to the same bits; null
 * when not finite. */
void ag_buf_double(ag_buf *b, double v);
/* A float32 as "%.9g" (round-trip exact); null when not finite. */
void ag_buf_float(ag_buf *b, float v);
/* n floats as a JSON array "[..]" of %.9g numbers (null for a non-finite value). */
void ag_buf_float_array(ag_buf *b, const float *v, size_t n);
/* n floats as the base64 of their little-endian bytes, as a JSON string literal. */
void ag_buf_float_b64(ag_buf *b, const float *v, size_t n);
/* A tensor object {"shape":[..],"dtype":"float32","data"|"b64":..}. */
void ag_buf_tensor(ag_buf *b, const size_t *dims, int ndim, const float *v, int b64);
/* Hands the string over (caller frees); NULL when any append failed. */
char *ag_buf_finish(ag_buf *b, size_t *len);

/* Writes float v as printf's "%.9g" would into out (>= 24 bytes; v finite); returns length. */
size_t ag_buf_format_float9(float v, char *out);

/* ---- JSON documents (proto/jdoc.c) ----------------------------------------------------- */

/* Most jansson allocation one body may cause (tensor payloads never reach it), in units of
 * ~40 bytes: a number or an element/member separator counts 1, a string 1 more, an array 3,
 * an object 6. 1M units ~ 40-50 MB of jansson heap. */
#define AG_PROTO_MAX_JSON_VALUES ((size_t)1 << 20)

enum { AG_SIDE_NUMBERS = 1, AG_SIDE_STRING = 2 };

/* A tensor payload left in the body: a "data" array of plain JSON numbers, or a "b64"
 * string without escapes. */
typedef struct {
    int kind;
    size_t body_off, body_len; /* numbers: '[' .. ']' inclusive; string: between the quotes */
    size_t skel_off, skel_len; /* the placeholder in the skeleton (error positions) */
    size_t count;              /* numbers in the array; 0 for strings */
} ag_side;

typedef struct {
    const char *body;
    size_t len;
    char *skel;      /* what jansson parsed when payloads were lifted out; NULL otherwise */
    size_t skel_len;
    ag_side *side;
    size_t n_side;
    json_t *root;
} ag_jdoc;

/* Parses body into doc->root (JSON_REJECT_DUPLICATES; objects and arrays only at the top).
 * Errors: 400 invalid_json / duplicate_key (field: the duplicated key's path), 413
 * too_large when the body holds more than AG_PROTO_MAX_JSON_VALUES values outside tensor
 * payloads, 500 out_of_memory. On failure doc is left empty. `lift` 0 disables lifting the
 * payloads out (tests compare both ways). */
int ag_jdoc_load(ag_jdoc *doc, const char *body, size_t len, int lift, ag_proto_error *err);
void ag_jdoc_free(ag_jdoc *doc);
/* The side entry a placeholder string stands for, or NULL when v is an ordinary value. */
const ag_side *ag_jdoc_side(const ag_jdoc *doc, const json_t *v, int kind);

/* Converts a lifted numbers array text[0..len) (its grammar already checked) into out[0..count)
 * as float32. Returns count, or the index of the first value that does not fit float32 (its
 * value in *bad). */
size_t ag_jdoc_parse_numbers(const char *text, size_t len, float *out, size_t count, double *bad);

/* ---- tensors (proto/tensor.c) ---------------------------------------------------------- */

#define AG_TENSOR_MAX_NDIM 3

typedef struct {
    char path[128];
    int ndim;
    size_t dims[AG_TENSOR_MAX_NDIM];
    size_t count;
    int dtype64;
    json_t *data;          /* "data" value, or NULL */
    json_t *b64;           /* "b64" value, or NULL */
} ag_tensor_in;

/* Validates a tensor object's keys, shape (1..3 integer dims >= 1, product without
 * overflow) and dtype, and that exactly one of data/b64 is there. No allocation. */
int ag_tensor_header(json_t *t, const char *path, ag_tensor_in *out, ag_proto_error *err);
/* 400 invalid_shape unless the header's shape equals dims[0..ndim). */
int ag_tensor_expect(const ag_tensor_in *t, const size_t *dims, int ndim, ag_proto_error *err);
/* "[64,64]" into out. */
void ag_tensor_shape_str(const size_t *dims, int ndim, char *out, size_t cap);
/* 400 (invalid_shape, invalid_type, invalid_base64) unless the payload holds exactly
 * t->count elements; call it before allocating the destination. */
int ag_tensor_check_length(const ag_jdoc *doc, const ag_tensor_in *t, ag_proto_error *err);
/* Checks the payload length against the shape (before anything is written), then decodes
 * it into dst[0..count): JSON numbers or base64 (float32/float64, little endian); every
 * value finite and inside float32's range. */
int ag_tensor_payload(const ag_jdoc *doc, const ag_tensor_in *t, float *dst,
                      ag_proto_error *err);

/* ---- requests (proto/request_decode.c) ------------------------------------------------ */

/* ag_request_decode with lifting of tensor payloads (jdoc.c) switchable; tests decode every
 * request both ways and expect the same outcome. */
int ag_request_decode_ex(const char *body, size_t len, const ag_proto_limits *limits, int lift,
                         ag_request *req, ag_proto_error *err);

/* ---- errors (proto/errors.c) ----------------------------------------------------------- */

/* An error object {"code", "message", "field"} into err: http_status 0, no_code for a code
 * that is absent or not a string, "" for such a message or field. Returns 1 when the code or
 * the message was a string, else 0. */
int ag_proto_error_from_json(const json_t *e, const char *no_code, ag_proto_error *err);

/* parent + "." + key (or key alone at the top) into out. */
void ag_proto_path_key(char *out, size_t cap, const char *parent, const char *key);
/* parent + "[i]" into out. */
void ag_proto_path_index(char *out, size_t cap, const char *parent, size_t i);
/* Name of a JSON value's type for messages ("object", "string", ...). */
const char *ag_proto_json_type_name(const json_t *v);

#endif
