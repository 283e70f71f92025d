/* The wire format's public types (docs/api.md), the one definition proto and the client share:
 * what a request asks back, the tensor encodings, and the decoded response. Types only, no
 * functions and no jansson: the client's public header includes this file and nothing else of
 * proto/ (proto.h includes it too). */
#ifndef ALTGRAD_PROTO_WIRE_H
#define ALTGRAD_PROTO_WIRE_H

#include <stddef.h>

#include "../core/altgrad.h"

/* The request's "return" list as bits. */
enum {
    AG_RETURN_LOSS = 1u << 0,
    AG_RETURN_GRAD_INPUT = 1u << 1,
    AG_RETURN_GRAD_WEIGHTS = 1u << 2,
    AG_RETURN_OUTPUT = 1u << 3,
    AG_RETURN_DEFAULT = AG_RETURN_LOSS | AG_RETURN_GRAD_INPUT | AG_RETURN_GRAD_WEIGHTS
};

/* Tensors as JSON numbers or base64 (the request's "encoding", both ways). */
typedef enum { AG_ENCODING_JSON = 0, AG_ENCODING_B64 } ag_encoding;

/* The response's "timing_ms": the server's milliseconds per phase. */
typedef struct {
    double decode_ms, compute_ms, encode_ms;
} ag_timing;

/* Measured relative errors of the approximate gradients against exact ("verify"). */
typedef struct {
    double grad_input;
    double *layers; /* [n_layers * AG_P_COUNT], NaN where the parameter is absent */
} ag_verification;

/* A decoded response (ag_response_decode; the client's altgrad_result). Everything is owned and
 * released by ag_response_free; what was not returned (or the config lacks) is NULL. */
typedef struct {
    int has_loss;                 /* 0 for grad_output (the wire's null) */
    double loss;
    size_t batch, n, d_model;     /* shape of output and grad_input */
    int batched;                  /* they had 3 dimensions on the wire */
    float *output;                /* [batch, n, d_model] when "output" was asked */
    float *grad_input;            /* [batch, n, d_model] */
    int n_layers, n_heads;        /* the config's */
    ag_layer_params *grad_layers; /* [n_layers]; p[i] where the config uses parameter i */
    ag_head_report *heads;        /* [n_layers * n_heads], layer-major; reason may be NULL */
    char method_name[16];         /* the method block's "name" */
    int has_verification;         /* 0: verification.grad_input NaN, verification.layers NULL */
    ag_verification verification;
    ag_timing timing;
} ag_response;

#endif
