/* ag_result -> response body. Written straight into one buffer sized up front: tensors as
 * %.9g numbers or base64, never a json_t per number. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "proto_internal.h"

/* Output and grad_input mirror the input: [n, d] or [batch, n, d]. */
static int io_dims(const ag_request *req, const ag_result *res, size_t dims[3])
{
    if (req->input_batched) {
        dims[0] = res->batch;
        dims[1] = res->n;
        dims[2] = res->d_model;
        return 3;
    }
    dims[0] = res->batch * res->n;
    dims[1] = res->d_model;
    return 2;
}

static size_t tensor_bytes(size_t count, int b64)
{
    return 96 + (b64 ? ag_b64_encoded_len(count * sizeof(float)) : count * 17);
}

static void put_key(ag_buf *b, int *first, const char *key)
{
    ag_buf_puts(b, *first ? "\"" : ",\"");
    ag_buf_puts(b, key);
    ag_buf_puts(b, "\":");
    *first = 0;
}

static void put_ms(ag_buf *b, const char *key, double ms)
{
    ag_buf_puts(b, key);
    if (isfinite(ms)) ag_buf_printf(b, "%.6g", ms);
    else ag_buf_puts(b, "null");
}

static void put_head(ag_buf *b, const ag_head_report *h)
{
    int approx = h->method == AG_METHOD_APPROX;
    ag_buf_puts(b, "{\"method\":\"");
    ag_buf_puts(b, approx ? "approx" : "exact");
    ag_buf_putc(b, '"');
    if (approx) {
        ag_buf_printf(b, ",\"route\":\"%s\",\"poly\":\"%s\"", ag_route_name(h->route),
                      ag_poly_name(h->poly));
    }
    ag_buf_printf(b, ",\"degree\":%d,\"rank\":%zu,\"bound\":", approx ? h->degree : 0,
                  approx ? h->rank : 0);
    ag_buf_double(b, h->bound);
    ag_buf_puts(b, ",\"error_bound\":");
    ag_buf_double(b, approx ? h->error_bound : 0.0);
    ag_buf_puts(b, ",\"reason\":");
    const char *r = h->reason ? h->reason : "";
    ag_buf_json_string(b, r, strlen(r));
    ag_buf_putc(b, '}');
}

static void put_method(ag_buf *b, const ag_request *req, const ag_result *res)
{
    const ag_method *m = &req->method;
    ag_buf_puts(b, "{\"name\":\"");
    ag_buf_puts(b, ag_method_name(m->kind));
    ag_buf_putc(b, '"');
    if (m->kind != AG_METHOD_EXACT) {
        ag_buf_printf(b, ",\"route\":\"%s\",\"poly\":\"%s\"", ag_route_name(m->route),
                      ag_poly_name(m->poly));
        if (m->degree > 0) {
            ag_buf_printf(b, ",\"degree\":%d", m->degree);
        } else {
            ag_buf_puts(b, ",\"epsilon\":");
            ag_buf_double(b, m->epsilon);
        }
    }
    ag_buf_puts(b, ",\"layers\":[");
    for (int l = 0; res->heads && l < res->n_layers; l++) {
        ag_buf_puts(b, l ? ",{\"heads\":[" : "{\"heads\":[");
        for (int h = 0; h < res->n_heads; h++) {
            if (h) ag_buf_putc(b, ',');
            put_head(b, &res->heads[(size_t)l * (size_t)res->n_heads + (size_t)h]);
        }
        ag_buf_puts(b, "]}");
    }
    ag_buf_puts(b, "]}");
}

static void put_verification(ag_buf *b, const ag_request *req, const ag_verification *v)
{
    ag_buf_puts(b, "{\"grad_input\":");
    ag_buf_double(b, v->grad_input);
    ag_buf_puts(b, ",\"layers\":[");
    for (int l = 0; v->layers && l < req->cfg.n_layers; l++) {
        ag_buf_puts(b, l ? ",{" : "{");
        int first = 1;
        for (int idx = 0; idx < AG_P_COUNT; idx++) {
            double e = v->layers[(size_t)l * AG_P_COUNT + (size_t)idx];
            if (isnan(e) || !ag_param_numel(&req->cfg, idx)) continue;
            put_key(b, &first, ag_param_name(idx));
            ag_buf_double(b, e);
        }
        ag_buf_putc(b, '}');
    }
    ag_buf_puts(b, "]}");
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* encode_ms NULL: timing->encode_ms is written as given; else this call's own duration up to
 * writing it is, and is stored in *encode_ms. */
static char *encode(const ag_request *req, const ag_result *res,
                    const ag_verification *verification, const ag_timing *timing,
                    double *encode_ms, size_t *len)
{
    double t0 = encode_ms ? now_ms() : 0.0;
    unsigned mask = req->return_mask;
    int b64 = req->encoding == AG_ENCODING_B64;
    size_t dims[3];
    int nd = io_dims(req, res, dims);
    size_t io_count = res->batch * res->n * res->d_model;

    size_t est = 1024 + (size_t)res->n_layers * (size_t)res->n_heads * 256;
    if ((mask & AG_RETURN_OUTPUT) && res->output) est += tensor_bytes(io_count, b64);
    if ((mask & AG_RETURN_GRAD_INPUT) && res->grad_input) est += tensor_bytes(io_count, b64);
    if ((mask & AG_RETURN_GRAD_WEIGHTS) && res->grad_layers)
        for (int idx = 0; idx < AG_P_COUNT; idx++)
            est += (size_t)res->n_layers * tensor_bytes(ag_param_numel(&req->cfg, idx), b64);
    if (verification) est += 64 + (size_t)req->cfg.n_layers * AG_P_COUNT * 40;

    ag_buf b = {0};
    ag_buf_reserve(&b, est);
    int first = 1;
    ag_buf_putc(&b, '{');
    if (mask & AG_RETURN_LOSS) {
        put_key(&b, &first, "loss");
        if (res->has_loss) ag_buf_double(&b, res->loss);
        else ag_buf_puts(&b, "null");
    }
    if ((mask & AG_RETURN_OUTPUT) && res->output) {
        put_key(&b, &first, "output");
        ag_buf_tensor(&b, dims, nd, res->output, b64);
    }
    if ((mask & AG_RETURN_GRAD_INPUT) && res->grad_input) {
        put_key(&b, &first, "grad_input");
        ag_buf_tensor(&b, dims, nd, res->grad_input, b64);
    }
    if ((mask & AG_RETURN_GRAD_WEIGHTS) && res->grad_layers) {
        put_key(&b, &first, "grad_weights");
        ag_buf_putc(&b, '[');
        for (int l = 0; l < res->n_layers; l++) {
            ag_buf_puts(&b, l ? ",{" : "{");
            int f = 1;
            for (int idx = 0; idx < AG_P_COUNT; idx++) {
                size_t shape[2];
                int pnd = ag_param_shape(&req->cfg, idx, shape);
                if (!pnd || !res->grad_layers[l].p[idx]) continue;
                put_key(&b, &f, ag_param_name(idx));
                ag_buf_tensor(&b, shape, pnd, res->grad_layers[l].p[idx], b64);
            }
            ag_buf_putc(&b, '}');
        }
        ag_buf_putc(&b, ']');
    }
    put_key(&b, &first, "method");
    put_method(&b, req, res);
    if (verification) {
        put_key(&b, &first, "verification");
        put_verification(&b, req, verification);
    }
    /* Last, and "encode" last in it, so that a measured encode time covers everything
     * before it. Measurements: 6 significant digits. */
    put_key(&b, &first, "timing_ms");
    ag_timing t = timing ? *timing : (ag_timing){0};
    if (encode_ms) t.encode_ms = *encode_ms = now_ms() - t0;
    put_ms(&b, "{\"decode\":", t.decode_ms);
    put_ms(&b, ",\"compute\":", t.compute_ms);
    put_ms(&b, ",\"encode\":", t.encode_ms);
    ag_buf_puts(&b, "}}");
    size_t n = 0;
    char *body = ag_buf_finish(&b, &n);
    /* The estimate is generous; give back what the body did not use, since a caller may keep
     * the body for long and count it by its length (the server's stored results). */
    char *fit = body ? realloc(body, n + 1) : NULL;
    if (fit) body = fit;
    if (len) *len = n;
    return body;
}

char *ag_response_encode(const ag_request *req, const ag_result *res,
                         const ag_verification *verification, const ag_timing *timing,
                         size_t *len)
{
    return encode(req, res, verification, timing, NULL, len);
}

char *ag_response_encode_timed(const ag_request *req, const ag_result *res,
                               const ag_verification *verification, ag_timing *timing,
                               size_t *len)
{
    double ms = 0.0;
    char *body = encode(req, res, verification, timing, &ms, len);
    if (timing) timing->encode_ms = ms;
    return body;
}
