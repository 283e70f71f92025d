/* ag_request -> request body (the client's side of the wire). */
#include <stdlib.h>
#include <string.h>

#include "proto_internal.h"

char *ag_request_encode(const ag_request *req, size_t *len)
{
    if (len) *len = 0;
    const ag_model_config *cfg = &req->cfg;
    ag_error ce;
    if (ag_model_config_check(cfg, &ce) != AG_OK || !req->layers || !req->input ||
        req->batch < 1 || req->n < 1)
        return NULL;
    const float *loss_t = req->loss.tensor ? req->loss.tensor : req->loss_tensor;
    if (req->loss.kind != AG_LOSS_SUM && !loss_t) return NULL;

    int b64 = req->encoding == AG_ENCODING_B64;
    size_t io_count = req->batch * req->n * (size_t)cfg->d_model;
    size_t per_el = b64 ? 6 : 17, est = 2048 + io_count * per_el * 2;
    for (int idx = 0; idx < AG_P_COUNT; idx++) {
        est += (size_t)cfg->n_layers * (96 + ag_param_numel(cfg, idx) * per_el);
    }

    ag_buf b = {0};
    ag_buf_reserve(&b, est);
    ag_buf_printf(&b,
                  "{\"model\":{\"d_model\":%d,\"n_heads\":%d,\"n_layers\":%d,\"d_ff\":%d,"
                  "\"causal\":%s,\"norm\":\"%s\",\"activation\":\"%s\",\"residual\":%s},",
                  cfg->d_model, cfg->n_heads, cfg->n_layers, cfg->d_ff,
                  cfg->causal ? "true" : "false",
                  cfg->norm == AG_NORM_LAYERNORM ? "layernorm" : "none",
                  cfg->activation == AG_ACT_RELU ? "relu" : "gelu",
                  cfg->residual ? "true" : "false");
    ag_buf_puts(&b, "\"layers\":[");
    for (int l = 0; l < cfg->n_layers; l++) {
        ag_buf_puts(&b, l ? ",{" : "{");
        int first = 1;
        for (int idx = 0; idx < AG_P_COUNT; idx++) {
            size_t shape[2];
            int nd = ag_param_shape(cfg, idx, shape);
            if (!nd) continue;
            if (!req->layers[l].p[idx]) {
                free(b.p);
                return NULL;
            }
            ag_buf_printf(&b, "%s\"%s\":", first ? "" : ",", ag_param_name(idx));
            first = 0;
            ag_buf_tensor(&b, shape, nd, req->layers[l].p[idx], b64);
        }
        ag_buf_putc(&b, '}');
    }
    ag_buf_puts(&b, "],\"input\":");
    size_t dims[3];
    int nd;
    if (req->input_batched || req->batch > 1) {
        dims[0] = req->batch;
        dims[1] = req->n;
        dims[2] = (size_t)cfg->d_model;
        nd = 3;
    } else {
        dims[0] = req->n;
        dims[1] = (size_t)cfg->d_model;
        nd = 2;
    }
    ag_buf_tensor(&b, dims, nd, req->input, b64);

    ag_buf_puts(&b, ",\"loss\":{\"type\":");
    switch (req->loss.kind) {
    case AG_LOSS_MSE:
        ag_buf_puts(&b, "\"mse\",\"target\":");
        ag_buf_tensor(&b, dims, nd, loss_t, b64);
        break;
    case AG_LOSS_GRAD_OUTPUT:
        ag_buf_puts(&b, "\"grad_output\",\"grad\":");
        ag_buf_tensor(&b, dims, nd, loss_t, b64);
        break;
    case AG_LOSS_SUM:
        ag_buf_puts(&b, "\"sum\"");
        break;
    }
    ag_buf_puts(&b, "},\"method\":{\"name\":\"");
    const ag_method *m = &req->method;
    ag_buf_puts(&b, ag_method_name(m->kind));
    ag_buf_putc(&b, '"');
    if (m->kind != AG_METHOD_EXACT) {
        if (m->degree > 0) {
            ag_buf_printf(&b, ",\"degree\":%d", m->degree);
        } else {
            ag_buf_puts(&b, ",\"epsilon\":");
            ag_buf_double(&b, m->epsilon > 0 ? m->epsilon : AG_DEFAULT_EPSILON);
        }
        ag_buf_printf(&b, ",\"route\":\"%s\",\"poly\":\"%s\"", ag_route_name(m->route),
                      ag_poly_name(m->poly));
    }
    ag_buf_puts(&b, "},\"return\":[");
    static const char *const names[] = {"loss", "grad_input", "grad_weights", "output"};
    static const unsigned bits[] = {AG_RETURN_LOSS, AG_RETURN_GRAD_INPUT, AG_RETURN_GRAD_WEIGHTS,
                                    AG_RETURN_OUTPUT};
    int first = 1;
    for (int i = 0; i < 4; i++) {
        if (!(req->return_mask & bits[i])) continue;
        ag_buf_printf(&b, "%s\"%s\"", first ? "" : ",", names[i]);
        first = 0;
    }
    ag_buf_printf(&b, "],\"encoding\":\"%s\",\"verify\":%s}", b64 ? "b64" : "json",
                  req->verify ? "true" : "false");
    return ag_buf_finish(&b, len);
}
