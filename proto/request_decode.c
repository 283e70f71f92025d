/* Request body -> ag_request, by the rules of docs/api.md.
 *
 * Three phases so that nothing is allocated for a request that is going to be refused:
 * (1) every field but the tensor payloads is validated (types, names, values, shapes);
 * (2) element counts are checked against the limits and payload lengths against shapes; (3) buffers are allocated and the
 * payloads decoded into them. Each error names the field ("layers[1].w1") it is about. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto_internal.h"

typedef struct {
    ag_jdoc doc;
    ag_proto_limits lim;
    ag_request *req;
    ag_proto_error *err;
    ag_tensor_in *weights; /* [n_layers * AG_P_COUNT]; count 0 where the weight is absent */
    ag_tensor_in input, loss;
    int has_loss_tensor;
} request_decoder;

static int fail_missing(request_decoder *d, const char *path)
{
    return ag_proto_fail(d->err, 400, "missing_field", path, "%s: required", path);
}

/* Every key of obj must be in allowed (NULL-terminated). */
static int check_keys(request_decoder *d, json_t *obj, const char *path, const char *const *allowed,
                      const char *what)
{
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v) {
        int ok = 0;
        for (int i = 0; allowed[i] && !ok; i++) ok = strcmp(key, allowed[i]) == 0;
        if (!ok) {
            char sub[160];
            ag_proto_path_key(sub, sizeof sub, path, key);
            return ag_proto_fail(d->err, 400, "unknown_field", sub, "%s: unknown field (%s)", sub,
                                 what);
        }
    }
    return 0;
}

static int want_object(request_decoder *d, json_t *v, const char *path)
{
    if (json_is_object(v)) return 0;
    return ag_proto_fail(d->err, 400, "invalid_type", path, "%s: expected an object, got %s",
                         path, ag_proto_json_type_name(v));
}

/* A JSON integer (1.0 and 1e0 are not) >= lo; above `limit` (a service limit) -> 413, above
 * INT_MAX otherwise -> 400. */
static int get_int(request_decoder *d, json_t *parent, const char *parent_path, const char *key,
                   long long lo, long long limit, int *out)
{
    char path[160];
    ag_proto_path_key(path, sizeof path, parent_path, key);
    json_t *v = json_object_get(parent, key);
    if (!v) return fail_missing(d, path);
    if (!json_is_integer(v))
        return ag_proto_fail(d->err, 400, "invalid_type", path, "%s: expected an integer, got %s",
                             path, ag_proto_json_type_name(v));
    long long x = json_integer_value(v);
    if (x < lo)
        return ag_proto_fail(d->err, 400, "invalid_value", path, "%s: must be >= %lld, got %lld",
                             path, lo, x);
    if (x > limit && limit < INT_MAX)
        return ag_proto_fail(d->err, 413, "too_large", path,
                             "%s: %lld is over this service's limit of %lld", path, x, limit);
    if (x > INT_MAX)
        return ag_proto_fail(d->err, 400, "invalid_value", path, "%s: %lld is out of range",
                             path, x);
    *out = (int)x;
    return 0;
}

static int get_bool(request_decoder *d, json_t *v, const char *path, int *out)
{
    if (!json_is_boolean(v))
        return ag_proto_fail(d->err, 400, "invalid_type", path, "%s: expected true or false, got %s",
                             path, ag_proto_json_type_name(v));
    *out = json_is_true(v);
    return 0;
}

/* A string that is one of names[0..n); its index in *out. */
static int get_enum(request_decoder *d, json_t *v, const char *path, const char *const *names,
                    int n, int *out)
{
    char list[128] = "";
    size_t len = 0;
    for (int i = 0; i < n; i++) {
        int k = snprintf(list + len, sizeof list - len, "%s\"%s\"",
                         i == 0 ? "" : i == n - 1 ? " or " : ", ", names[i]);
        if (k > 0) len += (size_t)k;
        if (len >= sizeof list) len = sizeof list - 1;
    }
    if (!json_is_string(v))
        return ag_proto_fail(d->err, 400, "invalid_type", path, "%s: expected %s, got %s", path,
                             list, ag_proto_json_type_name(v));
    const char *s = json_string_value(v);
    for (int i = 0; i < n; i++)
        if (strcmp(s, names[i]) == 0) {
            *out = i;
            return 0;
        }
    return ag_proto_fail(d->err, 400, "invalid_value", path, "%s: expected %s", path, list);
}

/* A core error (the method or model contract) as a 400 invalid_value at its field. */
static int fail_core(request_decoder *d, const ag_error *ce)
{
    return ag_proto_fail(d->err, 400, "invalid_value", ce->field, "%s", ce->message);
}

static int decode_model(request_decoder *d, json_t *m)
{
    static const char *const keys[] = {"d_model", "n_heads", "n_layers", "d_ff", "causal",
                                       "norm", "activation", "residual", NULL};
    ag_model_config *cfg = &d->req->cfg;
    if (want_object(d, m, "model")) return -1;
    if (check_keys(d, m, "model", keys,
                   "a model has d_model, n_heads, n_layers, d_ff, causal, norm, activation, "
                   "residual"))
        return -1;
    if (get_int(d, m, "model", "d_model", 1, d->lim.max_d_model, &cfg->d_model) ||
        get_int(d, m, "model", "n_heads", 1, INT_MAX, &cfg->n_heads) ||
        get_int(d, m, "model", "n_layers", 1, d->lim.max_layers, &cfg->n_layers) ||
        get_int(d, m, "model", "d_ff", 0, d->lim.max_d_ff, &cfg->d_ff))
        return -1;
    if (cfg->d_model % cfg->n_heads != 0)
        return ag_proto_fail(d->err, 400, "invalid_value", "model.n_heads",
                             "model.n_heads: d_model (%d) must be divisible by n_heads (%d)",
                             cfg->d_model, cfg->n_heads);
    static const char *const bools[] = {"causal", "residual"};
    int *bool_out[] = {&cfg->causal, &cfg->residual};
    for (int i = 0; i < 2; i++) {
        char path[64];
        ag_proto_path_key(path, sizeof path, "model", bools[i]);
        json_t *v = json_object_get(m, bools[i]);
        if (!v) return fail_missing(d, path);
        if (get_bool(d, v, path, bool_out[i])) return -1;
    }
    static const char *const norms[] = {"none", "layernorm"};
    static const char *const acts[] = {"gelu", "relu"};
    json_t *v = json_object_get(m, "norm");
    int k;
    if (!v) return fail_missing(d, "model.norm");
    if (get_enum(d, v, "model.norm", norms, 2, &k)) return -1;
    cfg->norm = k ? AG_NORM_LAYERNORM : AG_NORM_NONE;
    v = json_object_get(m, "activation");
    if (!v) return fail_missing(d, "model.activation");
    if (get_enum(d, v, "model.activation", acts, 2, &k)) return -1;
    cfg->activation = k ? AG_ACT_RELU : AG_ACT_GELU;

    ag_error ce = {0};
    if (ag_model_config_check(cfg, &ce) != AG_OK) return fail_core(d, &ce);
    return 0;
}

static int decode_method(request_decoder *d, json_t *m)
{
    static const char *const keys[] = {"name", "epsilon", "degree", "route", "poly", NULL};
    /* The names are core's (ag_*_name); each enum counts from 0. */
    const char *const names[] = {ag_method_name(AG_METHOD_EXACT), ag_method_name(AG_METHOD_APPROX),
                                 ag_method_name(AG_METHOD_AUTO)};
    const char *const routes[] = {ag_route_name(AG_ROUTE_FEATURES), ag_route_name(AG_ROUTE_PAPER)};
    const char *const polys[] = {ag_poly_name(AG_POLY_CHEBYSHEV), ag_poly_name(AG_POLY_TAYLOR)};
    ag_method *meth = &d->req->method;
    if (want_object(d, m, "method")) return -1;
    if (check_keys(d, m, "method", keys, "a method has name, epsilon, degree, route, poly"))
        return -1;
    json_t *name = json_object_get(m, "name");
    int k;
    if (!name) return fail_missing(d, "method.name");
    if (get_enum(d, name, "method.name", names, 3, &k)) return -1;
    ag_method_kind kind = (ag_method_kind)k;
    *meth = ag_method_default(kind);
    if (kind == AG_METHOD_EXACT) {
        for (int i = 1; keys[i]; i++)
            if (json_object_get(m, keys[i])) {
                char path[64];
                ag_proto_path_key(path, sizeof path, "method", keys[i]);
                return ag_proto_fail(d->err, 400, "unknown_field", path,
                                     "%s: not allowed with method \"exact\"", path);
            }
        return 0;
    }
    json_t *eps = json_object_get(m, "epsilon"), *deg = json_object_get(m, "degree");
    if (eps && deg)
        return ag_proto_fail(d->err, 400, "invalid_value", "method",
                             "method: give epsilon or degree, not both");
    ag_error ce;
    if (eps) {
        if (!json_is_number(eps))
            return ag_proto_fail(d->err, 400, "invalid_type", "method.epsilon",
                                 "method.epsilon: expected a number, got %s",
                                 ag_proto_json_type_name(eps));
        meth->epsilon = json_number_value(eps);
    }
    if (deg) {
        if (!json_is_integer(deg))
            return ag_proto_fail(d->err, 400, "invalid_type", "method.degree",
                                 "method.degree: expected an integer, got %s",
                                 ag_proto_json_type_name(deg));
        if (ag_method_degree_check(json_integer_value(deg), &ce) != AG_OK)
            return fail_core(d, &ce);
        meth->degree = (int)json_integer_value(deg);
    }
    if (ag_method_check(meth, &ce) != AG_OK) return fail_core(d, &ce);
    json_t *v = json_object_get(m, "route");
    if (v) {
        if (get_enum(d, v, "method.route", routes, 2, &k)) return -1;
        meth->route = (ag_route)k;
    }
    v = json_object_get(m, "poly");
    if (v) {
        if (get_enum(d, v, "method.poly", polys, 2, &k)) return -1;
        meth->poly = (ag_poly)k;
    }
    return 0;
}

static int decode_return(request_decoder *d, json_t *r)
{
    static const char *const names[] = {"loss", "grad_input", "grad_weights", "output"};
    static const unsigned bits[] = {AG_RETURN_LOSS, AG_RETURN_GRAD_INPUT, AG_RETURN_GRAD_WEIGHTS,
                                    AG_RETURN_OUTPUT};
    if (!json_is_array(r))
        return ag_proto_fail(d->err, 400, "invalid_type", "return",
                             "return: expected an array of strings, got %s",
                             ag_proto_json_type_name(r));
    unsigned mask = 0;
    for (size_t i = 0; i < json_array_size(r); i++) {
        char path[48];
        ag_proto_path_index(path, sizeof path, "return", i);
        int k;
        if (get_enum(d, json_array_get(r, i), path, names, 4, &k)) return -1;
        if (mask & bits[k])
            return ag_proto_fail(d->err, 400, "invalid_value", path, "%s: \"%s\" is listed twice",
                                 path, names[k]);
        mask |= bits[k];
    }
    d->req->return_mask = mask;
    return 0;
}

/* Why the config leaves weight idx out (for the error message). */
static const char *absent_reason(const ag_model_config *cfg, int idx)
{
    if (idx >= AG_P_W1) return "d_ff is 0, so there is no MLP";
    if (cfg->norm == AG_NORM_NONE) return "norm is \"none\"";
    return "d_ff is 0, so there is no second layernorm";
}

static int check_limit(request_decoder *d, const ag_tensor_in *t, size_t *total)
{
    if (t->count > d->lim.max_tensor_elements)
        return ag_proto_fail(d->err, 413, "too_large", t->path,
                             "%s: %zu elements is over this service's limit of %zu per tensor",
                             t->path, t->count, d->lim.max_tensor_elements);
    *total += t->count;
    if (*total > d->lim.max_elements)
        return ag_proto_fail(d->err, 413, "too_large", t->path,
                             "%s: the request's tensors hold more than this service's limit of "
                             "%zu elements in all",
                             t->path, d->lim.max_elements);
    return 0;
}

static int decode_layers_headers(request_decoder *d, json_t *layers)
{
    const ag_model_config *cfg = &d->req->cfg;
    if (!json_is_array(layers))
        return ag_proto_fail(d->err, 400, "invalid_type", "layers",
                             "layers: expected an array of objects, got %s",
                             ag_proto_json_type_name(layers));
    if (json_array_size(layers) != (size_t)cfg->n_layers)
        return ag_proto_fail(d->err, 400, "invalid_value", "layers",
                             "layers: model.n_layers is %d but layers has %zu entries",
                             cfg->n_layers, json_array_size(layers));
    d->weights = calloc((size_t)cfg->n_layers * AG_P_COUNT, sizeof *d->weights);
    if (!d->weights) return ag_proto_fail(d->err, 500, "out_of_memory", "", "out of memory");
    for (int l = 0; l < cfg->n_layers; l++) {
        char lpath[32], path[64];
        ag_proto_path_index(lpath, sizeof lpath, "layers", (size_t)l);
        json_t *layer = json_array_get(layers, (size_t)l);
        if (want_object(d, layer, lpath)) return -1;
        const char *key;
        json_t *v;
        json_object_foreach(layer, key, v) {
            int idx = ag_param_index(key);
            size_t shape[2];
            if (idx < 0 || ag_param_shape(cfg, idx, shape) == 0) {
                char sub[160];
                ag_proto_path_key(sub, sizeof sub, lpath, key);
                if (idx < 0)
                    return ag_proto_fail(d->err, 400, "unknown_field", sub,
                                         "%s: unknown weight (the names are wq, wk, wv, wo, "
                                         "ln1_gamma, ln1_beta, ln2_gamma, ln2_beta, w1, b1, w2, b2)",
                                         sub);
                return ag_proto_fail(d->err, 400, "unknown_field", sub,
                                     "%s: not used by this model (%s); leave it out", sub,
                                     absent_reason(cfg, idx));
            }
        }
        for (int idx = 0; idx < AG_P_COUNT; idx++) {
            size_t shape[2];
            int nd = ag_param_shape(cfg, idx, shape);
            if (!nd) continue;
            ag_proto_path_key(path, sizeof path, lpath, ag_param_name(idx));
            json_t *t = json_object_get(layer, ag_param_name(idx));
            if (!t) return fail_missing(d, path);
            ag_tensor_in *h = &d->weights[(size_t)l * AG_P_COUNT + (size_t)idx];
            if (ag_tensor_header(t, path, h, d->err) || ag_tensor_expect(h, shape, nd, d->err))
                return -1;
        }
    }
    return 0;
}

static int decode_input_header(request_decoder *d, json_t *t)
{
    ag_tensor_in *h = &d->input;
    if (ag_tensor_header(t, "input", h, d->err)) return -1;
    char got[96];
    ag_tensor_shape_str(h->dims, h->ndim, got, sizeof got);
    if (h->ndim < 2)
        return ag_proto_fail(d->err, 400, "invalid_shape", "input",
                             "input: expected shape [n, d_model] or [batch, n, d_model], got %s",
                             got);
    size_t dm = h->dims[h->ndim - 1];
    if (dm != (size_t)d->req->cfg.d_model)
        return ag_proto_fail(d->err, 400, "invalid_shape", "input",
                             "input: the last dimension must be d_model (%d), got shape %s",
                             d->req->cfg.d_model, got);
    size_t batch = h->ndim == 3 ? h->dims[0] : 1, n = h->dims[h->ndim - 2];
    if (batch > d->lim.max_tokens || n > d->lim.max_tokens / batch)
        return ag_proto_fail(d->err, 413, "too_large", "input",
                             "input: %s is more than this service's limit of %zu tokens "
                             "(batch * n)", got, d->lim.max_tokens);
    d->req->batch = batch;
    d->req->n = n;
    d->req->input_batched = h->ndim == 3;
    return 0;
}

static int decode_loss_header(request_decoder *d, json_t *loss)
{
    static const char *const keys[] = {"type", "target", "grad", NULL};
    static const char *const types[] = {"mse", "sum", "grad_output"};
    if (want_object(d, loss, "loss")) return -1;
    if (check_keys(d, loss, "loss", keys, "a loss has type, and target or grad")) return -1;
    json_t *type = json_object_get(loss, "type");
    int k;
    if (!type) return fail_missing(d, "loss.type");
    if (get_enum(d, type, "loss.type", types, 3, &k)) return -1;
    d->req->loss.kind = k == 0 ? AG_LOSS_MSE : k == 1 ? AG_LOSS_SUM : AG_LOSS_GRAD_OUTPUT;
    const char *need = k == 0 ? "target" : k == 2 ? "grad" : NULL;
    for (int i = 1; keys[i]; i++) {
        if (need && strcmp(keys[i], need) == 0) continue;
        if (json_object_get(loss, keys[i])) {
            char path[32];
            ag_proto_path_key(path, sizeof path, "loss", keys[i]);
            return ag_proto_fail(d->err, 400, "unknown_field", path,
                                 "%s: not used by loss type \"%s\"", path, types[k]);
        }
    }
    if (!need) return 0;
    char path[32];
    ag_proto_path_key(path, sizeof path, "loss", need);
    json_t *t = json_object_get(loss, need);
    if (!t) return fail_missing(d, path);
    d->has_loss_tensor = 1;
    return ag_tensor_header(t, path, &d->loss, d->err) ||
                   ag_tensor_expect(&d->loss, d->input.dims, d->input.ndim, d->err)
               ? -1
               : 0;
}

static int decode_all(request_decoder *d)
{
    static const char *const top[] = {"model", "layers", "input", "loss", "method",
                                      "return", "encoding", "verify", NULL};
    static const char *const encodings[] = {"json", "b64"};
    ag_request *req = d->req;
    json_t *root = d->doc.root;
    if (!json_is_object(root))
        return ag_proto_fail(d->err, 400, "invalid_type", "",
                             "the request body must be a JSON object, got %s",
                             ag_proto_json_type_name(root));
    if (check_keys(d, root, "", top,
                   "a request has model, layers, input, loss, method, return, encoding, verify"))
        return -1;
    for (int i = 0; i < 4; i++)
        if (!json_object_get(root, top[i])) return fail_missing(d, top[i]);

    /* (1) everything but the payloads; cheap fields first. */
    if (decode_model(d, json_object_get(root, "model"))) return -1;
    req->method = ag_method_default(AG_METHOD_AUTO);
    json_t *v = json_object_get(root, "method");
    if (v && decode_method(d, v)) return -1;
    req->return_mask = AG_RETURN_DEFAULT;
    v = json_object_get(root, "return");
    if (v && decode_return(d, v)) return -1;
    v = json_object_get(root, "encoding");
    int k = 0;
    if (v && get_enum(d, v, "encoding", encodings, 2, &k)) return -1;
    req->encoding = k ? AG_ENCODING_B64 : AG_ENCODING_JSON;
    v = json_object_get(root, "verify");
    if (v && get_bool(d, v, "verify", &req->verify)) return -1;
    if (decode_layers_headers(d, json_object_get(root, "layers"))) return -1;
    if (decode_input_header(d, json_object_get(root, "input"))) return -1;
    if (decode_loss_header(d, json_object_get(root, "loss"))) return -1;

    /* (2) limits, in the order the tensors appear in the API. */
    size_t total = 0, n_w = (size_t)req->cfg.n_layers * AG_P_COUNT;
    for (size_t i = 0; i < n_w; i++)
        if (d->weights[i].count && check_limit(d, &d->weights[i], &total)) return -1;
    if (check_limit(d, &d->input, &total)) return -1;
    if (d->has_loss_tensor && check_limit(d, &d->loss, &total)) return -1;
    for (size_t i = 0; i < n_w; i++)
        if (d->weights[i].count && ag_tensor_check_length(&d->doc, &d->weights[i], d->err))
            return -1;
    if (ag_tensor_check_length(&d->doc, &d->input, d->err)) return -1;
    if (d->has_loss_tensor && ag_tensor_check_length(&d->doc, &d->loss, d->err)) return -1;

    /* (3) allocate and decode. */
    req->layers = calloc((size_t)req->cfg.n_layers, sizeof *req->layers);
    if (!req->layers) goto nomem;
    for (int l = 0; l < req->cfg.n_layers; l++) {
        if (ag_layer_params_alloc(&req->cfg, &req->layers[l], NULL) != AG_OK) goto nomem;
        for (int idx = 0; idx < AG_P_COUNT; idx++) {
            const ag_tensor_in *h = &d->weights[(size_t)l * AG_P_COUNT + (size_t)idx];
            if (!h->count) continue;
            if (ag_tensor_payload(&d->doc, h, req->layers[l].p[idx], d->err)) return -1;
        }
    }
    req->input = malloc(d->input.count * sizeof(float));
    if (!req->input) goto nomem;
    if (ag_tensor_payload(&d->doc, &d->input, req->input, d->err)) return -1;
    if (d->has_loss_tensor) {
        req->loss_tensor = malloc(d->loss.count * sizeof(float));
        if (!req->loss_tensor) goto nomem;
        if (ag_tensor_payload(&d->doc, &d->loss, req->loss_tensor, d->err)) return -1;
    }
    req->loss.tensor = req->loss_tensor;
    return 0;
nomem:
    return ag_proto_fail(d->err, 500, "out_of_memory", "", "out of memory decoding the request");
}

/* ag_request_decode with the payload lifting of jdoc.c switchable (tests compare both). */
int ag_request_decode_ex(const char *body, size_t len, const ag_proto_limits *limits, int lift,
                         ag_request *req, ag_proto_error *err)
{
    ag_proto_error scratch;
    if (!err) err = &scratch;
    memset(req, 0, sizeof *req);
    request_decoder d = {.lim = limits ? *limits : ag_proto_limits_default(), .req = req,
                         .err = err};
    /* A zero field means the default: a caller that sets only some limits gets sane ones. */
    ag_proto_limits def = ag_proto_limits_default();
    if (!d.lim.max_elements) d.lim.max_elements = def.max_elements;
    if (!d.lim.max_tensor_elements) d.lim.max_tensor_elements = def.max_tensor_elements;
    if (!d.lim.max_layers) d.lim.max_layers = def.max_layers;
    if (!d.lim.max_d_model) d.lim.max_d_model = def.max_d_model;
    if (!d.lim.max_d_ff) d.lim.max_d_ff = def.max_d_ff;
    if (!d.lim.max_tokens) d.lim.max_tokens = def.max_tokens;
    if (ag_jdoc_load(&d.doc, body, len, lift, err)) return -1;
    int rc = decode_all(&d);
    ag_jdoc_free(&d.doc);
    free(d.weights);
    if (rc) ag_request_free(req);
    return rc;
}

int ag_request_decode(const char *body, size_t len, const ag_proto_limits *limits,
                      ag_request *req, ag_proto_error *err)
{
    return ag_request_decode_ex(body, len, limits, 1, req, err);
}

void ag_request_free(ag_request *req)
{
    if (!req) return;
    if (req->layers) {
        for (int l = 0; l < req->cfg.n_layers; l++) ag_layer_params_free(&req->layers[l]);
        free(req->layers);
    }
    free(req->input);
    free(req->loss_tensor);
    memset(req, 0, sizeof *req);
}
