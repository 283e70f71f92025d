/* Requests from plain arrays, results from response bodies, the synchronous call and its
 * data-parallel (sharded) form. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client_internal.h"

/* ---- requests -------------------------------------------------------------------------- */

altgrad_request altgrad_request_init(const ag_model_config *cfg)
{
    altgrad_request r;
    memset(&r, 0, sizeof r);
    if (cfg) r.cfg = *cfg;
    r.batch = 1;
    r.loss = AG_LOSS_SUM;
    r.method = ag_method_default(AG_METHOD_AUTO);
    r.return_mask = AG_RETURN_DEFAULT;
    return r;
}

/* First non-finite element of a[0..count), or -1. */
static long long first_nonfinite(const float *a, size_t count)
{
    for (size_t i = 0; i < count; i++)
        if (!isfinite(a[i])) return (long long)i;
    return -1;
}

altgrad_status altgrad_request_check(const altgrad_request *req, altgrad_error *err)
{
    client_error_clear(err);
    if (!req) return client_fail(err, ALTGRAD_E_ARG, "bad_argument", "", "request is NULL");
    ag_error cerr;
    if (ag_model_config_check(&req->cfg, &cerr) != AG_OK)
        return client_fail(err, ALTGRAD_E_ARG, "invalid_model", cerr.field, "%s", cerr.message);
    if (req->batch < 1 || req->n < 1)
        return client_fail(err, ALTGRAD_E_ARG, "invalid_shape", "input",
                           "batch and n must be >= 1 (got %zu, %zu)", req->batch, req->n);
    if (!req->batched && req->batch != 1)
        return client_fail(err, ALTGRAD_E_ARG, "invalid_shape", "input",
                           "a 2-d input has batch 1, got %zu (set batched)", req->batch);
    size_t d = (size_t)req->cfg.d_model;
    if (req->n > SIZE_MAX / d || req->batch > SIZE_MAX / sizeof(float) / (req->n * d))
        return client_fail(err, ALTGRAD_E_ARG, "invalid_shape", "input", "input too large");
    size_t count = req->batch * req->n * d;
    if (!req->input)
        return client_fail(err, ALTGRAD_E_ARG, "missing_field", "input", "input is NULL");
    long long bad = first_nonfinite(req->input, count);
    if (bad >= 0)
        return client_fail(err, ALTGRAD_E_ARG, "invalid_value", "input",
                           "input[%lld] is not finite", bad);
    if (!req->layers)
        return client_fail(err, ALTGRAD_E_ARG, "missing_field", "layers", "layers is NULL");
    for (int l = 0; l < req->cfg.n_layers; l++) {
        for (int i = 0; i < AG_P_COUNT; i++) {
            size_t numel = ag_param_numel(&req->cfg, i);
            if (numel == 0) continue;
            char field[64];
            snprintf(field, sizeof field, "layers[%d].%s", l, ag_param_name(i));
            if (!req->layers[l].p[i])
                return client_fail(err, ALTGRAD_E_ARG, "missing_field", field,
                                   "%s is NULL but the model uses it", field);
            bad = first_nonfinite(req->layers[l].p[i], numel);
            if (bad >= 0)
                return client_fail(err, ALTGRAD_E_ARG, "invalid_value", field,
                                   "%s[%lld] is not finite", field, bad);
        }
    }
    switch (req->loss) {
    case AG_LOSS_SUM:
        break;
    case AG_LOSS_MSE:
    case AG_LOSS_GRAD_OUTPUT: {
        const char *field = req->loss == AG_LOSS_MSE ? "loss.target" : "loss.grad";
        if (!req->loss_tensor)
            return client_fail(err, ALTGRAD_E_ARG, "missing_field", field, "%s is NULL", field);
        bad = first_nonfinite(req->loss_tensor, count);
        if (bad >= 0)
            return client_fail(err, ALTGRAD_E_ARG, "invalid_value", field,
                               "%s[%lld] is not finite", field, bad);
        break;
    }
    default:
        return client_fail(err, ALTGRAD_E_ARG, "invalid_value", "loss.type", "unknown loss");
    }
    if (ag_method_check(&req->method, &cerr) != AG_OK)
        return client_fail(err, ALTGRAD_E_ARG, "invalid_value", cerr.field, "%s", cerr.message);
    return ALTGRAD_OK;
}

char *altgrad_request_encode(const altgrad_request *req, ag_encoding encoding, size_t *len,
                             altgrad_error *err)
{
    if (altgrad_request_check(req, err) != ALTGRAD_OK) return NULL;
    /* The wire carrier is proto's ag_request; it is only read, so borrowed pointers are safe,
     * and parameters the config does not use are dropped rather than sent. */
    ag_layer_params *views = calloc((size_t)req->cfg.n_layers, sizeof *views);
    if (!views) {
        client_fail(err, ALTGRAD_E_NOMEM, "out_of_memory", "", "out of memory");
        return NULL;
    }
    for (int l = 0; l < req->cfg.n_layers; l++)
        for (int i = 0; i < AG_P_COUNT; i++)
            if (ag_param_numel(&req->cfg, i)) views[l].p[i] = (float *)req->layers[l].p[i];
    ag_request w;
    memset(&w, 0, sizeof w);
    w.cfg = req->cfg;
    w.layers = views;
    w.batch = req->batch;
    w.n = req->n;
    w.input_batched = req->batched ? 1 : 0;
    w.input = (float *)req->input;
    w.loss.kind = req->loss;
    w.loss.tensor = req->loss == AG_LOSS_SUM ? NULL : req->loss_tensor;
    w.loss_tensor = (float *)w.loss.tensor;
    w.method = req->method;
    if (w.method.degree > 0) w.method.epsilon = 0; /* docs/api.md: both is an error */
    w.return_mask = req->return_mask ? req->return_mask : AG_RETURN_DEFAULT;
    w.encoding = encoding;
    w.verify = req->verify ? 1 : 0;
    size_t n = 0;
    char *body = ag_request_encode(&w, &n);
    free(views);
    if (!body) {
        client_fail(err, ALTGRAD_E_NOMEM, "out_of_memory", "", "out of memory encoding");
        return NULL;
    }
    if (len) *len = n;
    return body;
}

/* ---- results --------------------------------------------------------------------------- */

void altgrad_result_free(altgrad_result *res)
{
    ag_response_free(res);
}

altgrad_status client_result_decode(const char *body, size_t len, const ag_model_config *cfg,
                                    size_t batch, size_t n, altgrad_result *res,
                                    altgrad_error *err)
{
    ag_proto_error perr;
    memset(&perr, 0, sizeof perr);
    if (ag_response_decode(body, len, cfg, res, &perr) != 0)
        return client_fail(err, ALTGRAD_E_PROTOCOL, "bad_response", perr.field,
                           "response: %s", perr.message);
    if (batch != 0 && (res->grad_input || res->output) &&
        (res->batch != batch || res->n != n || res->d_model != (size_t)cfg->d_model)) {
        client_fail(err, ALTGRAD_E_PROTOCOL, "bad_response", "grad_input",
                    "response shape [%zu, %zu, %zu], expected [%zu, %zu, %d]", res->batch,
                    res->n, res->d_model, batch, n, cfg->d_model);
        ag_response_free(res);
        return ALTGRAD_E_PROTOCOL;
    }
    return ALTGRAD_OK;
}

altgrad_status altgrad_result_decode(const char *body, size_t len, const ag_model_config *cfg,
                                     altgrad_result *res, altgrad_error *err)
{
    client_error_clear(err);
    if (!body || !cfg || !res)
        return client_fail(err, ALTGRAD_E_ARG, "bad_argument", "", "NULL argument");
    return client_result_decode(body, len, cfg, 0, 0, res, err);
}

/* ---- synchronous ----------------------------------------------------------------------- */

altgrad_status altgrad_gradients(altgrad_client *c, const altgrad_request *req,
                                 altgrad_result *res, altgrad_error *err)
{
    client_error_clear(err);
    if (res) memset(res, 0, sizeof *res);
    if (!c || !res) return client_fail(err, ALTGRAD_E_ARG, "bad_argument", "", "NULL argument");
    size_t len = 0;
    char *body = altgrad_request_encode(req, c->opts.encoding, &len, err);
    if (!body) return err ? err->status : ALTGRAD_E_ARG;
    xfer x;
    if (xfer_init(&x, c, XFER_POST, "/v1/gradients") != ALTGRAD_OK) {
        free(body);
        return client_fail(err, ALTGRAD_E_NOMEM, "out_of_memory", "", "out of memory");
    }
    x.body = body;
    x.body_len = len;
    x.retry_io = 1; /* computing gradients changes nothing on the server */
    altgrad_status st = xfer_run(c, &x, 1, 1, err, NULL);
    free(body);
    if (st == ALTGRAD_OK) {
        st = client_result_decode(x.resp, x.resp_len, &req->cfg, req->batch, req->n, res, err);
        if (err && st == ALTGRAD_OK) err->attempts = x.attempts;
    }
    xfer_cleanup(&x);
    return st;
}

/* ---- sharded --------------------------------------------------------------------------- */

static double fmax_nan(double a, double b)
{
    return isnan(a) ? b : isnan(b) ? a : (a > b ? a : b);
}

/* Allocates the merged arrays of a result shaped like the first decoded shard `like`. */
static altgrad_status merged_alloc(altgrad_result *m, const altgrad_request *req,
                                   const altgrad_result *like)
{
    size_t d = (size_t)req->cfg.d_model;
    size_t count = req->batch * req->n * d;
    memset(m, 0, sizeof *m);
    m->batch = req->batch;
    m->n = req->n;
    m->d_model = d;
    m->batched = like->batched; /* shards go out 3-d */
    m->n_layers = like->n_layers;
    m->n_heads = like->n_heads;
    m->has_loss = like->has_loss;
    snprintf(m->method_name, sizeof m->method_name, "%s", like->method_name);
    m->has_verification = like->has_verification;
    m->verification.grad_input = NAN;
    int fail = 0;
    if (like->grad_input && !(m->grad_input = calloc(count, sizeof(float)))) fail = 1;
    if (like->output && !(m->output = calloc(count, sizeof(float)))) fail = 1;
    if (like->grad_layers && !fail) {
        m->grad_layers = calloc((size_t)like->n_layers, sizeof *m->grad_layers);
        if (!m->grad_layers) fail = 1;
        for (int l = 0; l < like->n_layers && !fail; l++)
            if (ag_layer_params_alloc(&req->cfg, &m->grad_layers[l], NULL) != AG_OK) fail = 1;
    }
    size_t nh = (size_t)like->n_layers * (size_t)like->n_heads;
    if (like->heads && !fail) {
        m->heads = calloc(nh, sizeof *m->heads);
        if (!m->heads) fail = 1;
        for (size_t i = 0; i < nh && !fail; i++) m->heads[i].error_bound = -1.0;
    }
    if (like->has_verification && like->verification.layers && !fail) {
        size_t nv = (size_t)like->n_layers * AG_P_COUNT;
        m->verification.layers = malloc(nv * sizeof(double));
        if (!m->verification.layers) fail = 1;
        for (size_t i = 0; i < nv && !fail; i++) m->verification.layers[i] = NAN;
    }
    return fail ? ALTGRAD_E_NOMEM : ALTGRAD_OK;
}

/* Adds shard s (rows [off, off + rows) of the batch, weight w) into the merged result. */
static altgrad_status merge_shard(altgrad_result *m, const altgrad_request *req,
                                  const altgrad_result *s, size_t off, size_t rows, double w)
{
    size_t row = req->n * (size_t)req->cfg.d_model;
    if (!!s->grad_input != !!m->grad_input || !!s->output != !!m->output ||
        !!s->grad_layers != !!m->grad_layers || !!s->heads != !!m->heads ||
        s->has_loss != m->has_loss || s->n_layers != m->n_layers || s->n_heads != m->n_heads)
        return ALTGRAD_E_PROTOCOL;
    float wf = (float)w;
    if (s->has_loss) m->loss += w * s->loss;
    if (s->grad_input)
        for (size_t i = 0; i < rows * row; i++) m->grad_input[off * row + i] = wf * s->grad_input[i];
    if (s->output) memcpy(m->output + off * row, s->output, rows * row * sizeof(float));
    if (s->grad_layers)
        for (int l = 0; l < m->n_layers; l++)
            for (int p = 0; p < AG_P_COUNT; p++) {
                size_t numel = ag_param_numel(&req->cfg, p);
                float *dst = m->grad_layers[l].p[p];
                const float *src = s->grad_layers[l].p[p];
                if (!numel || !dst || !src) continue;
                for (size_t i = 0; i < numel; i++) dst[i] += wf * src[i];
            }
    if (s->heads) {
        size_t nh = (size_t)m->n_layers * (size_t)m->n_heads;
        for (size_t i = 0; i < nh; i++)
            if (s->heads[i].error_bound > m->heads[i].error_bound) {
                m->heads[i] = s->heads[i];
                m->heads[i].reason = NULL; /* it may point into the shard's response */
            }
    }
    if (s->has_verification) {
        m->has_verification = 1;
        ag_verification *mv = &m->verification;
        const ag_verification *sv = &s->verification;
        mv->grad_input = fmax_nan(mv->grad_input, sv->grad_input);
        if (mv->layers && sv->layers)
            for (size_t i = 0; i < (size_t)m->n_layers * AG_P_COUNT; i++)
                mv->layers[i] = fmax_nan(mv->layers[i], sv->layers[i]);
    }
    m->timing.decode_ms = fmax_nan(m->timing.decode_ms, s->timing.decode_ms);
    m->timing.compute_ms = fmax_nan(m->timing.compute_ms, s->timing.compute_ms);
    m->timing.encode_ms = fmax_nan(m->timing.encode_ms, s->timing.encode_ms);
    return ALTGRAD_OK;
}

altgrad_status altgrad_gradients_sharded(altgrad_client *c, const altgrad_request *req, int k,
                                         altgrad_result *res, altgrad_error *err)
{
    client_error_clear(err);
    if (res) memset(res, 0, sizeof *res);
    if (!c || !res) return client_fail(err, ALTGRAD_E_ARG, "bad_argument", "", "NULL argument");
    altgrad_status st = altgrad_request_check(req, err);
    if (st != ALTGRAD_OK) return st;
    size_t shards = k < 1 ? 1 : (size_t)k;
    if (shards > req->batch) shards = req->batch;
    if (shards == 1) return altgrad_gradients(c, req, res, err);

    size_t row = req->n * (size_t)req->cfg.d_model;
    xfer *xs = calloc(shards, sizeof *xs);
    char **bodies = calloc(shards, sizeof *bodies);
    if (!xs || !bodies) {
        free(xs);
        free(bodies);
        return client_fail(err, ALTGRAD_E_NOMEM, "out_of_memory", "", "out of memory");
    }
    size_t base = req->batch / shards, extra = req->batch % shards, off = 0;
    for (size_t s = 0; s < shards && st == ALTGRAD_OK; s++) {
        size_t rows = base + (s < extra);
        altgrad_request sub = *req;
        sub.batched = 1;
        sub.batch = rows;
        sub.input = req->input + off * row;
        if (req->loss_tensor) sub.loss_tensor = req->loss_tensor + off * row;
        size_t len = 0;
        bodies[s] = altgrad_request_encode(&sub, c->opts.encoding, &len, err);
        if (!bodies[s]) st = err ? err->status : ALTGRAD_E_NOMEM;
        else if (xfer_init(&xs[s], c, XFER_POST, "/v1/gradients") != ALTGRAD_OK)
            st = client_fail(err, ALTGRAD_E_NOMEM, "out_of_memory", "", "out of memory");
        xs[s].body = bodies[s];
        xs[s].body_len = len;
        xs[s].retry_io = 1;
        off += rows;
    }
    size_t failed = 0;
    if (st == ALTGRAD_OK) {
        st = xfer_run(c, xs, shards, 1, err, &failed);
        if (st != ALTGRAD_OK && err) { /* the same error, its message naming the shard */
            altgrad_error was = *err;
            client_fail(err, st, was.code, was.field, "shard %zu of %zu: %s", failed + 1, shards,
                        was.message);
        }
    }
    for (size_t s = 0; s < shards; s++) {
        free(bodies[s]);
        bodies[s] = NULL;
    }
    altgrad_result merged;
    memset(&merged, 0, sizeof merged);
    int allocated = 0;
    off = 0;
    for (size_t s = 0; s < shards && st == ALTGRAD_OK; s++) {
        size_t rows = base + (s < extra);
        altgrad_result part;
        st = client_result_decode(xs[s].resp, xs[s].resp_len, &req->cfg, rows, req->n, &part,
                                  err);
        /* the body is no longer needed once decoded: keep the peak to merged + one shard */
        free(xs[s].resp);
        xs[s].resp = NULL;
        if (st != ALTGRAD_OK) break;
        if (!allocated) {
            allocated = 1;
            if (merged_alloc(&merged, req, &part) != ALTGRAD_OK)
                st = client_fail(err, ALTGRAD_E_NOMEM, "out_of_memory", "", "out of memory");
        }
        double w = req->loss == AG_LOSS_MSE ? (double)rows / (double)req->batch : 1.0;
        if (st == ALTGRAD_OK && merge_shard(&merged, req, &part, off, rows, w) != ALTGRAD_OK)
            st = client_fail(err, ALTGRAD_E_PROTOCOL, "bad_response", "",
                             "shard %zu answered a differently shaped response", s + 1);
        altgrad_result_free(&part);
        off += rows;
    }
    int attempts = 0;
    for (size_t s = 0; s < shards; s++) {
        attempts += xs[s].attempts;
        xfer_cleanup(&xs[s]);
    }
    free(xs);
    free(bodies);
    if (st != ALTGRAD_OK) {
        altgrad_result_free(&merged);
        return st;
    }
    if (err) err->attempts = attempts;
    *res = merged;
    return ALTGRAD_OK;
}
