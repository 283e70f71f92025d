/* proto: the wire format of docs/api.md <-> core structs. No sockets, no threads.
 *
 * Server side: ag_request_decode() validates a request body into an ag_request;
 * ag_response_encode() renders a core result. Client side: ag_request_encode() renders an
 * ag_request; ag_response_decode() parses a response body. Errors carry an API error code,
 * the HTTP status that fits, a message and the field path ("layers[1].w1"). The types the
 * client shares (the decoded response, encodings, return bits) are in wire.h.
 */
#ifndef ALTGRAD_PROTO_H
#define ALTGRAD_PROTO_H

#include <stddef.h>
#include <stdint.h>

#include "../core/altgrad.h"
#include "wire.h"

/* ---- errors ---------------------------------------------------------------------------- */

typedef struct {
    int http_status;   /* 400, 413, 500, ... */
    char code[40];     /* "invalid_json", "invalid_shape", "unknown_field", ... */
    char field[128];   /* "layers[0].wq", "" when the whole body is at fault */
    char message[320];
} ag_proto_error;

/* Fills err and returns -1. */
int ag_proto_fail(ag_proto_error *err, int http_status, const char *code, const char *field,
                  const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* {"error": {"code", "message", "field"}} as a malloc'd NUL-terminated string (*len set);
 * NULL on allocation failure. */
char *ag_error_encode(const ag_proto_error *err, size_t *len);

/* Client side, the inverse of ag_error_encode: 0 when body is a JSON object whose "error"
 * object has a string code or message, with err filled (http_status 0, "" for what is
 * absent); -1 otherwise, err untouched. */
int ag_proto_error_decode(const char *body, size_t len, ag_proto_error *err);

/* Maps a core error to a proto error (UNREACHABLE/LIMIT/INVALID -> 400, CANCELLED -> 499-ish
 * "cancelled" with 503, NOMEM -> 500). */
void ag_proto_from_core(const ag_error *core, ag_proto_error *err);

/* ---- limits ---------------------------------------------------------------------------- */

typedef struct {
    size_t max_elements;       /* total float elements across all request tensors */
    size_t max_tensor_elements;/* per tensor */
    int max_layers;
    int max_d_model;
    int max_d_ff;
    size_t max_tokens;         /* batch * n */
} ag_proto_limits;

/* Defaults: 64M elements in all, 16M per tensor, 64 layers, d_model 4096, d_ff 16384,
 * 1M tokens. */
ag_proto_limits ag_proto_limits_default(void);

/* ---- requests -------------------------------------------------------------------------- */

typedef struct {
    ag_model_config cfg;
    ag_layer_params *layers; /* [cfg.n_layers]; each allocated with ag_layer_params_alloc */
    size_t batch, n;         /* input is [batch, n, d_model]; batch = 1 for a 2-d input */
    int input_batched;       /* the input had 3 dimensions (responses mirror it) */
    float *input;            /* owned */
    ag_loss loss;            /* loss.tensor points at loss_tensor */
    float *loss_tensor;      /* owned; NULL for "sum" */
    ag_method method;        /* default auto, epsilon 1e-3 */
    unsigned return_mask;    /* AG_RETURN_* */
    ag_encoding encoding;
    int verify;
} ag_request;

/* Parses and validates body[0..len) (duplicate keys, unknown fields, every shape, NaN/Inf,
 * limits checked before each allocation). On success fills req (free with ag_request_free)
 * and returns 0; on failure returns -1, fills err, and leaves req empty. limits NULL (or a
 * zero field) means the default. Codes and statuses: docs/api.md, "Errors". */
int ag_request_decode(const char *body, size_t len, const ag_proto_limits *limits,
                      ag_request *req, ag_proto_error *err);

/* Frees what a request owns; NULL-safe; leaves req zeroed. */
void ag_request_free(ag_request *req);

/* Client side: renders req as a request body (tensors as base64 when req->encoding is B64,
 * else JSON numbers; the response encoding asked for is the same). malloc'd, *len set; NULL
 * on allocation failure or when req lacks a tensor its config needs (loss.tensor, else
 * loss_tensor, is the mse target / grad_output gradient). Values are not validated. */
char *ag_request_encode(const ag_request *req, size_t *len);

/* ---- responses ------------------------------------------------------------------------- */

/* Renders the response body for req and its result res (verification may be NULL).
 * malloc'd, *len set; NULL on allocation failure. Tensors are written straight into the
 * output buffer (%.9g or base64), never through a json_t per number. A non-finite number is
 * written as null (JSON stays valid; ag_response_decode refuses it). "timing_ms" comes last,
 * ending in "encode":<ms>}}. */
char *ag_response_encode(const ag_request *req, const ag_result *res,
                         const ag_verification *verification, const ag_timing *timing,
                         size_t *len);
/* The same, timing itself: timing_ms.encode is the time this call took up to writing that
 * number (CLOCK_MONOTONIC), also stored in timing->encode_ms; decode and compute are taken
 * from timing (NULL: zeros). */
char *ag_response_encode_timed(const ag_request *req, const ag_result *res,
                               const ag_verification *verification, ag_timing *timing,
                               size_t *len);

/* Parses a response body into an ag_response (proto/wire.h) for a request made with cfg
 * (shapes are checked against it; fields it does not know are ignored). 0 on success; -1 with err filled: an error body
 * {"error": {...}} gives its code, message and field with http_status 0 (the caller has the
 * HTTP status); a malformed body gives 502 "invalid_response" naming the field. */
int ag_response_decode(const char *body, size_t len, const ag_model_config *cfg,
                       ag_response *resp, ag_proto_error *err);
/* Frees what a response owns; NULL-safe; leaves resp zeroed. */
void ag_response_free(ag_response *resp);

/* ---- base64 (RFC 4648, with padding) --------------------------------------------------- */

/* Bytes needed to encode n bytes (without NUL). */
size_t ag_b64_encoded_len(size_t n);
/* Writes ag_b64_encoded_len(n) characters to out (no NUL). */
void ag_b64_encode(const uint8_t *in, size_t n, char *out);
/* Decodes len characters into out (capacity cap). Returns the byte count, or (size_t)-1 on
 * invalid input (bad character, bad padding, length not a multiple of 4, over cap). */
size_t ag_b64_decode(const char *in, size_t len, uint8_t *out, size_t cap);

#endif
