/* Response body -> ag_response (the client's side). Shapes are checked against the model the
 * request was made with; fields this version does not know are ignored (the service may add
 * fields, docs/api.md). Every allocation follows a check that the payload holds what the shape
 * says, so a response can make the client allocate no more than its body implies. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto_internal.h"

typedef struct {
    ag_jdoc doc;
    const ag_model_config *cfg;
    ag_response *resp;
    ag_proto_error *err;
} response_decoder;

static int bad(response_decoder *d, const char *path, const char *what)
{
    return ag_proto_fail(d->err, 502, "invalid_response", path, "response %s: %s",
                         path[0] ? path : "body", what);
}

/* An error of a reader made for requests (the tensor reader, the document loader), reworded
 * as the response's fault: 502 invalid_response, prefix + its message, same field. */
static int as_response_fault(ag_proto_error *err, const char *prefix)
{
    char msg[sizeof err->message], field[sizeof err->field];
    memcpy(msg, err->message, sizeof msg);
    memcpy(field, err->field, sizeof field);
    return ag_proto_fail(err, 502, "invalid_response", field, "%s%s", prefix, msg);
}

static int tensor_fail(response_decoder *d)
{
    return as_response_fault(d->err, "response ");
}

static int get_number(response_decoder *d, json_t *obj, const char *key, const char *path,
                      double *out)
{
    json_t *v = json_object_get(obj, key);
    if (!v) return 0;
    if (!json_is_number(v)) {
        if (json_is_null(v)) {
            *out = NAN;
            return 0;
        }
        return bad(d, path, "expected a number");
    }
    *out = json_number_value(v);
    return 0;
}

/* output / grad_input: [n, d_model] or [batch, n, d_model], the same for both. */
static int io_tensor(response_decoder *d, json_t *t, const char *path, float **out)
{
    ag_response *r = d->resp;
    ag_tensor_in h;
    if (ag_tensor_header(t, path, &h, d->err)) return tensor_fail(d);
    if (h.ndim < 2 || h.dims[h.ndim - 1] != (size_t)d->cfg->d_model)
        return bad(d, path, "expected shape [n, d_model] or [batch, n, d_model]");
    size_t batch = h.ndim == 3 ? h.dims[0] : 1, n = h.dims[h.ndim - 2];
    if (r->n && (r->batch != batch || r->n != n || r->batched != (h.ndim == 3)))
        return bad(d, path, "shape differs from the other returned tensor");
    if (ag_tensor_check_length(&d->doc, &h, d->err)) return tensor_fail(d);
    r->batch = batch;
    r->n = n;
    r->d_model = (size_t)d->cfg->d_model;
    r->batched = h.ndim == 3;
    *out = malloc(h.count * sizeof(float));
    if (!*out) return ag_proto_fail(d->err, 500, "out_of_memory", path, "out of memory");
    if (ag_tensor_payload(&d->doc, &h, *out, d->err)) return tensor_fail(d);
    return 0;
}

static int grad_weights(response_decoder *d, json_t *gw)
{
    const ag_model_config *cfg = d->cfg;
    ag_response *r = d->resp;
    if (!json_is_array(gw) || json_array_size(gw) != (size_t)cfg->n_layers)
        return bad(d, "grad_weights", "expected an array with one object per layer");
    r->grad_layers = calloc((size_t)cfg->n_layers, sizeof *r->grad_layers);
    if (!r->grad_layers) return ag_proto_fail(d->err, 500, "out_of_memory", "", "out of memory");
    for (int l = 0; l < cfg->n_layers; l++) {
        char lpath[48], path[80];
        ag_proto_path_index(lpath, sizeof lpath, "grad_weights", (size_t)l);
        json_t *layer = json_array_get(gw, (size_t)l);
        if (!json_is_object(layer)) return bad(d, lpath, "expected an object");
        const char *key;
        json_t *v;
        json_object_foreach(layer, key, v) {
            int idx = ag_param_index(key);
            if (idx >= 0 && !ag_param_numel(cfg, idx)) {
                ag_proto_path_key(path, sizeof path, lpath, key);
                return bad(d, path, "a weight this model does not have");
            }
        }
        ag_tensor_in h[AG_P_COUNT];
        for (int idx = 0; idx < AG_P_COUNT; idx++) {
            size_t shape[2];
            int nd = ag_param_shape(cfg, idx, shape);
            if (!nd) continue;
            ag_proto_path_key(path, sizeof path, lpath, ag_param_name(idx));
            json_t *t = json_object_get(layer, ag_param_name(idx));
            if (!t) return bad(d, path, "missing");
            if (ag_tensor_header(t, path, &h[idx], d->err) ||
                ag_tensor_expect(&h[idx], shape, nd, d->err) ||
                ag_tensor_check_length(&d->doc, &h[idx], d->err))
                return tensor_fail(d);
        }
        if (ag_layer_params_alloc(cfg, &r->grad_layers[l], NULL) != AG_OK)
            return ag_proto_fail(d->err, 500, "out_of_memory", "", "out of memory");
        for (int idx = 0; idx < AG_P_COUNT; idx++) {
            if (!ag_param_numel(cfg, idx)) continue;
            if (ag_tensor_payload(&d->doc, &h[idx], r->grad_layers[l].p[idx], d->err))
                return tensor_fail(d);
        }
    }
    return 0;
}

static int method_block(response_decoder *d, json_t *m)
{
    const ag_model_config *cfg = d->cfg;
    ag_response *r = d->resp;
    if (!json_is_object(m)) return bad(d, "method", "expected an object");
    json_t *name = json_object_get(m, "name");
    if (!json_is_string(name)) return bad(d, "method.name", "expected a string");
    snprintf(r->method_name, sizeof r->method_name, "%s", json_string_value(name));
    json_t *layers = json_object_get(m, "layers");
    if (!layers) return 0;
    if (!json_is_array(layers) || json_array_size(layers) != (size_t)cfg->n_layers)
        return bad(d, "method.layers", "expected an array with one entry per layer");

    /* One block: the reports, then their reason strings (ag_head_report.reason points in). */
    size_t n_rep = (size_t)cfg->n_layers * (size_t)cfg->n_heads, text = 0;
    for (int l = 0; l < cfg->n_layers; l++) {
        char lpath[48];
        ag_proto_path_index(lpath, sizeof lpath, "method.layers", (size_t)l);
        json_t *heads = json_object_get(json_array_get(layers, (size_t)l), "heads");
        if (!json_is_array(heads) || json_array_size(heads) != (size_t)cfg->n_heads)
            return bad(d, lpath, "expected {\"heads\": [...]} with one entry per head");
        for (int h = 0; h < cfg->n_heads; h++) {
            json_t *reason = json_object_get(json_array_get(heads, (size_t)h), "reason");
            text += (json_is_string(reason) ? json_string_length(reason) : 0) + 1;
        }
    }
    char *block = calloc(1, n_rep * sizeof(ag_head_report) + text);
    if (!block) return ag_proto_fail(d->err, 500, "out_of_memory", "", "out of memory");
    r->heads = (ag_head_report *)block;
    char *strings = block + n_rep * sizeof(ag_head_report);
    for (int l = 0; l < cfg->n_layers; l++) {
        json_t *heads = json_object_get(json_array_get(layers, (size_t)l), "heads");
        for (int h = 0; h < cfg->n_heads; h++) {
            char path[96];
            snprintf(path, sizeof path, "method.layers[%d].heads[%d]", l, h);
            json_t *o = json_array_get(heads, (size_t)h);
            ag_head_report *rep = &r->heads[(size_t)l * (size_t)cfg->n_heads + (size_t)h];
            if (!json_is_object(o)) return bad(d, path, "expected an object");
            json_t *v = json_object_get(o, "method");
            const char *s = json_is_string(v) ? json_string_value(v) : "";
            if (strcmp(s, ag_method_name(AG_METHOD_APPROX)) == 0) rep->method = AG_METHOD_APPROX;
            else if (strcmp(s, ag_method_name(AG_METHOD_EXACT)) == 0) rep->method = AG_METHOD_EXACT;
            else return bad(d, path, "method must be \"exact\" or \"approx\"");
            v = json_object_get(o, "route");
            rep->route = json_is_string(v) &&
                                 strcmp(json_string_value(v), ag_route_name(AG_ROUTE_PAPER)) == 0
                             ? AG_ROUTE_PAPER : AG_ROUTE_FEATURES;
            v = json_object_get(o, "poly");
            rep->poly = json_is_string(v) &&
                                strcmp(json_string_value(v), ag_poly_name(AG_POLY_TAYLOR)) == 0
                            ? AG_POLY_TAYLOR : AG_POLY_CHEBYSHEV;
            v = json_object_get(o, "degree");
            if (v && (!json_is_integer(v) || json_integer_value(v) < 0 ||
                      json_integer_value(v) > AG_MAX_DEGREE)) {
                char what[48];
                snprintf(what, sizeof what, "degree must be an integer 0..%d", AG_MAX_DEGREE);
                return bad(d, path, what);
            }
            rep->degree = v ? (int)json_integer_value(v) : 0;
            v = json_object_get(o, "rank");
            if (v && (!json_is_integer(v) || json_integer_value(v) < 0))
                return bad(d, path, "rank must be a non-negative integer");
            rep->rank = v ? (size_t)json_integer_value(v) : 0;
            if (get_number(d, o, "bound", path, &rep->bound) ||
                get_number(d, o, "error_bound", path, &rep->error_bound))
                return -1;
            v = json_object_get(o, "reason");
            size_t n = json_is_string(v) ? json_string_length(v) : 0;
            if (n) memcpy(strings, json_string_value(v), n);
            strings[n] = '\0';
            rep->reason = strings;
            strings += n + 1;
        }
    }
    return 0;
}

static int verification(response_decoder *d, json_t *v)
{
    const ag_model_config *cfg = d->cfg;
    ag_response *r = d->resp;
    if (!json_is_object(v)) return bad(d, "verification", "expected an object");
    r->has_verification = 1;
    if (get_number(d, v, "grad_input", "verification.grad_input", &r->verification.grad_input))
        return -1;
    size_t n = (size_t)cfg->n_layers * AG_P_COUNT;
    r->verification.layers = malloc(n * sizeof(double));
    if (!r->verification.layers)
        return ag_proto_fail(d->err, 500, "out_of_memory", "", "out of memory");
    for (size_t i = 0; i < n; i++) r->verification.layers[i] = NAN;
    json_t *layers = json_object_get(v, "layers");
    if (!layers) return 0;
    if (!json_is_array(layers) || json_array_size(layers) != (size_t)cfg->n_layers)
        return bad(d, "verification.layers", "expected an array with one object per layer");
    for (int l = 0; l < cfg->n_layers; l++) {
        char path[64];
        ag_proto_path_index(path, sizeof path, "verification.layers", (size_t)l);
        json_t *o = json_array_get(layers, (size_t)l);
        if (!json_is_object(o)) return bad(d, path, "expected an object");
        for (int idx = 0; idx < AG_P_COUNT; idx++)
            if (get_number(d, o, ag_param_name(idx), path,
                           &r->verification.layers[(size_t)l * AG_P_COUNT + (size_t)idx]))
                return -1;
    }
    return 0;
}

/* {"error": {"code", "message", "field"}} -> err; http_status 0 (the caller has it). */
static int error_body(response_decoder *d, json_t *e)
{
    ag_proto_error_from_json(e, "unknown_error", d->err);
    return -1;
}

static int decode_all(response_decoder *d)
{
    ag_response *r = d->resp;
    json_t *root = d->doc.root;
    if (!json_is_object(root)) return bad(d, "", "expected a JSON object");
    json_t *e = json_object_get(root, "error");
    if (json_is_object(e)) return error_body(d, e);

    r->n_layers = d->cfg->n_layers;
    r->n_heads = d->cfg->n_heads;
    r->verification.grad_input = NAN;
    json_t *v = json_object_get(root, "loss");
    if (v && json_is_number(v)) {
        r->has_loss = 1;
        r->loss = json_number_value(v);
    } else if (v && !json_is_null(v)) {
        return bad(d, "loss", "expected a number or null");
    }
    if ((v = json_object_get(root, "output")) && io_tensor(d, v, "output", &r->output))
        return -1;
    if ((v = json_object_get(root, "grad_input")) && io_tensor(d, v, "grad_input", &r->grad_input))
        return -1;
    if ((v = json_object_get(root, "grad_weights")) && grad_weights(d, v)) return -1;
    if ((v = json_object_get(root, "method")) && method_block(d, v)) return -1;
    if ((v = json_object_get(root, "verification")) && verification(d, v)) return -1;
    if ((v = json_object_get(root, "timing_ms"))) {
        if (!json_is_object(v)) return bad(d, "timing_ms", "expected an object");
        if (get_number(d, v, "decode", "timing_ms.decode", &r->timing.decode_ms) ||
            get_number(d, v, "compute", "timing_ms.compute", &r->timing.compute_ms) ||
            get_number(d, v, "encode", "timing_ms.encode", &r->timing.encode_ms))
            return -1;
    }
    return 0;
}

int ag_response_decode(const char *body, size_t len, const ag_model_config *cfg,
                       ag_response *resp, ag_proto_error *err)
{
    ag_proto_error scratch;
    if (!err) err = &scratch;
    memset(resp, 0, sizeof *resp);
    ag_error ce;
    if (!cfg || ag_model_config_check(cfg, &ce) != AG_OK)
        return ag_proto_fail(err, 400, "invalid_request", "model", "invalid model config");
    response_decoder d = {.cfg = cfg, .resp = resp, .err = err};
    if (ag_jdoc_load(&d.doc, body, len, 1, err)) {
        if (err->http_status == 400 || err->http_status == 413)
            as_response_fault(err, "response: ");
        return -1;
    }
    int rc = decode_all(&d);
    ag_jdoc_free(&d.doc);
    if (rc) ag_response_free(resp);
    return rc;
}

void ag_response_free(ag_response *resp)
{
    if (!resp) return;
    free(resp->output);
    free(resp->grad_input);
    if (resp->grad_layers) {
        for (int l = 0; l < resp->n_layers; l++) ag_layer_params_free(&resp->grad_layers[l]);
        free(resp->grad_layers);
    }
    free(resp->heads);
    free(resp->verification.layers);
    memset(resp, 0, sizeof *resp);
}
