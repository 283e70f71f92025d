/* The wire format (proto/): request decoding against every rule of docs/api.md, with and
 * without lifting tensor payloads out of jansson (both must agree), the limits, response
 * and request encode -> decode round trips, number formatting, errors. */
#include <check.h>
#include <float.h>
#include <glob.h>
#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../proto/proto.h"
#include "../../proto/proto_internal.h"

/* ---- helpers ---------------------------------------------------------------------------- */

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static float rng_float(uint64_t *s)
{
    return (float)((double)(rng_next(s) >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

/* {"shape": dims, "data": [...]} with deterministic values. */
static json_t *make_tensor(const size_t *dims, int nd, uint64_t *seed)
{
    json_t *shape = json_array(), *data = json_array();
    size_t count = 1;
    for (int i = 0; i < nd; i++) {
        json_array_append_new(shape, json_integer((json_int_t)dims[i]));
        count *= dims[i];
    }
    for (size_t i = 0; i < count; i++) json_array_append_new(data, json_real(rng_float(seed)));
    json_t *t = json_object();
    json_object_set_new(t, "shape", shape);
    json_object_set_new(t, "data", data);
    return t;
}

typedef struct {
    int d_model, n_heads, n_layers, d_ff, causal, layernorm, relu, residual;
    size_t batch, n;
    int batched;
    const char *loss;   /* "mse", "sum", "grad_output" */
    const char *method; /* JSON text or NULL */
} req_spec;

static req_spec base_spec(void)
{
    req_spec s = {.d_model = 8, .n_heads = 2, .n_layers = 2, .d_ff = 16, .causal = 1,
                  .layernorm = 1, .relu = 0, .residual = 1, .batch = 1, .n = 4, .batched = 0,
                  .loss = "mse", .method = "{\"name\": \"approx\", \"epsilon\": 0.001}"};
    return s;
}

static json_t *make_request(const req_spec *s, uint64_t seed)
{
    json_t *model = json_pack("{s:i, s:i, s:i, s:i, s:b, s:s, s:s, s:b}", "d_model", s->d_model,
                              "n_heads", s->n_heads, "n_layers", s->n_layers, "d_ff", s->d_ff,
                              "causal", s->causal, "norm", s->layernorm ? "layernorm" : "none",
                              "activation", s->relu ? "relu" : "gelu", "residual", s->residual);
    ag_model_config cfg = {.d_model = s->d_model, .n_heads = s->n_heads,
                           .n_layers = s->n_layers, .d_ff = s->d_ff,
                           .norm = s->layernorm ? AG_NORM_LAYERNORM : AG_NORM_NONE};
    json_t *layers = json_array();
    for (int l = 0; l < s->n_layers; l++) {
        json_t *layer = json_object();
        for (int idx = 0; idx < AG_P_COUNT; idx++) {
            size_t shape[2];
            int nd = ag_param_shape(&cfg, idx, shape);
            if (nd) json_object_set_new(layer, ag_param_name(idx), make_tensor(shape, nd, &seed));
        }
        json_array_append_new(layers, layer);
    }
    size_t dims[3] = {s->batch, s->n, (size_t)s->d_model};
    size_t *d = s->batched ? dims : dims + 1;
    int nd = s->batched ? 3 : 2;
    json_t *req = json_object();
    json_object_set_new(req, "model", model);
    json_object_set_new(req, "layers", layers);
    json_object_set_new(req, "input", make_tensor(d, nd, &seed));
    json_t *loss = json_pack("{s:s}", "type", s->loss);
    if (strcmp(s->loss, "mse") == 0) json_object_set_new(loss, "target", make_tensor(d, nd, &seed));
    if (strcmp(s->loss, "grad_output") == 0)
        json_object_set_new(loss, "grad", make_tensor(d, nd, &seed));
    json_object_set_new(req, "loss", loss);
    if (s->method) json_object_set_new(req, "method", json_loads(s->method, 0, NULL));
    return req;
}

/* The value at a path like "layers[0].wq.shape", or NULL. */
static json_t *at(json_t *root, const char *path, json_t **parent, char *last_key,
                  long *last_index)
{
    json_t *cur = root, *par = NULL;
    const char *p = path;
    *last_index = -1;
    last_key[0] = '\0';
    while (*p && cur) {
        if (*p == '.') p++;
        if (*p == '[') {
            long i = strtol(p + 1, (char **)&p, 10);
            p++; /* ']' */
            par = cur;
            *last_index = i;
            last_key[0] = '\0';
            cur = json_array_get(cur, (size_t)i);
        } else {
            size_t n = strcspn(p, ".[");
            memcpy(last_key, p, n);
            last_key[n] = '\0';
            p += n;
            par = cur;
            *last_index = -1;
            cur = json_object_get(cur, last_key);
        }
    }
    if (parent) *parent = par;
    return cur;
}

/* Sets (value != NULL, stolen) or deletes (NULL) the member at path. */
static void set_at(json_t *root, const char *path, json_t *value)
{
    json_t *parent;
    char key[128];
    long idx;
    at(root, path, &parent, key, &idx);
    ck_assert_msg(parent != NULL, "no parent for %s", path);
    if (idx >= 0) {
        if (value) json_array_set_new(parent, (size_t)idx, value);
        else json_array_remove(parent, (size_t)idx);
    } else {
        if (value) json_object_set_new(parent, key, value);
        else json_object_del(parent, key);
    }
}

static void set_json(json_t *root, const char *path, const char *text)
{
    json_error_t e;
    json_t *v = json_loads(text, JSON_DECODE_ANY, &e);
    ck_assert_msg(v != NULL, "bad literal %s: %s", text, e.text);
    set_at(root, path, v);
}

/* Replaces "data" of the tensor at path by its base64 (float32 or float64). */
static void to_b64(json_t *root, const char *path, int dtype64)
{
    json_t *parent;
    char key[128];
    long idx;
    json_t *t = at(root, path, &parent, key, &idx);
    json_t *data = json_object_get(t, "data");
    size_t n = json_array_size(data), el = dtype64 ? 8 : 4;
    uint8_t *bytes = malloc(n * el + 1);
    for (size_t i = 0; i < n; i++) {
        double v = json_number_value(json_array_get(data, i));
        if (dtype64) {
            memcpy(bytes + i * 8, &v, 8);
        } else {
            float f = (float)v;
            memcpy(bytes + i * 4, &f, 4);
        }
    }
    char *enc = malloc(ag_b64_encoded_len(n * el) + 1);
    ag_b64_encode(bytes, n * el, enc);
    enc[ag_b64_encoded_len(n * el)] = '\0';
    json_object_del(t, "data");
    json_object_set_new(t, "b64", json_string(enc));
    json_object_set_new(t, "dtype", json_string(dtype64 ? "float64" : "float32"));
    free(bytes);
    free(enc);
}

/* Overwrites character pos of the base64 string of the tensor at path. */
static void b64_set_char(json_t *root, const char *path, size_t pos, char c)
{
    char key[128];
    long idx;
    json_t *t = at(root, path, NULL, key, &idx);
    char *s = strdup(json_string_value(json_object_get(t, "b64")));
    s[pos] = c;
    json_object_set_new(t, "b64", json_string(s));
    free(s);
}

/* Overwrites float32 element i of the base64 tensor at path with the given bits. */
static void b64_poke32(json_t *root, const char *path, size_t i, uint32_t bits)
{
    char key[128];
    long idx;
    json_t *t = at(root, path, NULL, key, &idx);
    const char *s = json_string_value(json_object_get(t, "b64"));
    size_t len = strlen(s), cap = len / 4 * 3;
    uint8_t *bytes = malloc(cap);
    size_t n = ag_b64_decode(s, len, bytes, cap);
    ck_assert(n != (size_t)-1 && 4 * i + 4 <= n);
    memcpy(bytes + 4 * i, &bits, 4);
    char *enc = calloc(1, ag_b64_encoded_len(n) + 1);
    ag_b64_encode(bytes, n, enc);
    json_object_set_new(t, "b64", json_string(enc));
    free(bytes);
    free(enc);
}

static char *dump(const json_t *v)
{
    char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    ck_assert(s != NULL);
    return s;
}

static int floats_equal(const float *a, const float *b, size_t n)
{
    if (!a || !b) return a == b;
    return memcmp(a, b, n * sizeof(float)) == 0;
}

static void assert_requests_equal(const ag_request *a, const ag_request *b)
{
    ck_assert(memcmp(&a->cfg, &b->cfg, sizeof a->cfg) == 0);
    ck_assert_uint_eq(a->batch, b->batch);
    ck_assert_uint_eq(a->n, b->n);
    ck_assert_int_eq(a->input_batched, b->input_batched);
    ck_assert_int_eq(a->method.kind, b->method.kind);
    ck_assert(a->method.epsilon == b->method.epsilon);
    ck_assert_int_eq(a->method.degree, b->method.degree);
    ck_assert_int_eq(a->method.route, b->method.route);
    ck_assert_int_eq(a->method.poly, b->method.poly);
    ck_assert_uint_eq(a->return_mask, b->return_mask);
    ck_assert_int_eq(a->encoding, b->encoding);
    ck_assert_int_eq(a->verify, b->verify);
    ck_assert_int_eq(a->loss.kind, b->loss.kind);
    size_t io = a->batch * a->n * (size_t)a->cfg.d_model;
    ck_assert(floats_equal(a->input, b->input, io));
    ck_assert(floats_equal(a->loss_tensor, b->loss_tensor, io));
    ck_assert(a->loss.tensor == a->loss_tensor);
    for (int l = 0; l < a->cfg.n_layers; l++)
        for (int idx = 0; idx < AG_P_COUNT; idx++) {
            size_t n = ag_param_numel(&a->cfg, idx);
            ck_assert((a->layers[l].p[idx] == NULL) == (n == 0));
            ck_assert(floats_equal(a->layers[l].p[idx], b->layers[l].p[idx], n));
        }
}

static int is_zeroed(const ag_request *r)
{
    static const ag_request zero;
    return memcmp(r, &zero, sizeof zero) == 0;
}

/* Decodes with and without lifting; both must agree (same error, or equal requests).
 * Returns the lifted outcome; *req holds its request on success. */
static int decode_both(const char *body, size_t len, const ag_proto_limits *lim, int lift_only,
                       ag_request *req, ag_proto_error *err)
{
    ag_request plain;
    ag_proto_error perr;
    memset(&perr, 0, sizeof perr);
    memset(err, 0, sizeof *err);
    int rc = ag_request_decode_ex(body, len, lim, 1, req, err);
    if (rc) ck_assert(is_zeroed(req));
    if (lift_only) return rc;
    int prc = ag_request_decode_ex(body, len, lim, 0, &plain, &perr);
    ck_assert_int_eq(rc, prc);
    if (rc) {
        ck_assert(is_zeroed(&plain));
        ck_assert_int_eq(err->http_status, perr.http_status);
        ck_assert_str_eq(err->code, perr.code);
        ck_assert_str_eq(err->field, perr.field);
    } else {
        assert_requests_equal(req, &plain);
        ag_request_free(&plain);
    }
    return rc;
}

/* ---- valid requests --------------------------------------------------------------------- */

static void check_tensor_matches(const json_t *t, const float *v)
{
    const json_t *data = json_object_get(t, "data");
    for (size_t i = 0; i < json_array_size(data); i++)
        ck_assert(v[i] == (float)json_number_value(json_array_get(data, i)));
}

START_TEST(test_decode_base_request)
{
    req_spec s = base_spec();
    json_t *j = make_request(&s, 42);
    char *body = dump(j);
    ag_request req;
    ag_proto_error err;
    ck_assert_msg(decode_both(body, strlen(body), NULL, 0, &req, &err) == 0, "%s: %s", err.code,
                  err.message);
    ck_assert_int_eq(req.cfg.d_model, 8);
    ck_assert_int_eq(req.cfg.n_heads, 2);
    ck_assert_int_eq(req.cfg.n_layers, 2);
    ck_assert_int_eq(req.cfg.d_ff, 16);
    ck_assert_int_eq(req.cfg.causal, 1);
    ck_assert_int_eq(req.cfg.norm, AG_NORM_LAYERNORM);
    ck_assert_int_eq(req.cfg.activation, AG_ACT_GELU);
    ck_assert_int_eq(req.cfg.residual, 1);
    ck_assert_uint_eq(req.batch, 1);
    ck_assert_uint_eq(req.n, 4);
    ck_assert_int_eq(req.input_batched, 0);
    ck_assert_int_eq(req.method.kind, AG_METHOD_APPROX);
    ck_assert(req.method.epsilon == 0.001);
    ck_assert_uint_eq(req.return_mask, AG_RETURN_DEFAULT);
    ck_assert_int_eq(req.encoding, AG_ENCODING_JSON);
    ck_assert_int_eq(req.verify, 0);
    ck_assert_int_eq(req.loss.kind, AG_LOSS_MSE);
    ck_assert_ptr_eq(req.loss.tensor, req.loss_tensor);
    check_tensor_matches(json_object_get(j, "input"), req.input);
    check_tensor_matches(json_object_get(json_object_get(j, "loss"), "target"), req.loss_tensor);
    for (int l = 0; l < 2; l++)
        for (int idx = 0; idx < AG_P_COUNT; idx++) {
            json_t *t = json_object_get(json_array_get(json_object_get(j, "layers"), (size_t)l),
                                        ag_param_name(idx));
            ck_assert(t != NULL);
            check_tensor_matches(t, req.layers[l].p[idx]);
        }
    ag_request_free(&req);
    ck_assert(is_zeroed(&req));
    ag_request_free(&req); /* twice is fine */
    ag_request_free(NULL);
    free(body);
    json_decref(j);
}
END_TEST

START_TEST(test_decode_variants)
{
    static const char *const methods[] = {
        NULL,
        "{\"name\": \"exact\"}",
        "{\"name\": \"approx\"}",
        "{\"name\": \"approx\", \"degree\": 4, \"route\": \"paper\", \"poly\": \"taylor\"}",
        "{\"name\": \"auto\", \"epsilon\": 0.5}",
        "{\"name\": \"auto\", \"degree\": 20}",
        "{\"name\": \"approx\", \"epsilon\": 1e-9, \"route\": \"features\"}",
    };
    static const char *const losses[] = {"mse", "sum", "grad_output"};
    for (int v = 0; v < 24; v++) {
        req_spec s = base_spec();
        s.method = methods[v % 7];
        s.loss = losses[v % 3];
        s.batched = v % 2;
        s.batch = s.batched ? 3 : 1;
        s.n = 1 + (size_t)(v % 5);
        s.layernorm = (v / 2) % 2;
        s.d_ff = (v / 4) % 2 ? 0 : 12;
        s.n_heads = (v / 8) % 2 ? 1 : 4;
        s.n_layers = 1 + v % 3;
        s.relu = v % 2;
        s.causal = (v / 3) % 2;
        s.residual = (v / 5) % 2;
        json_t *j = make_request(&s, (uint64_t)v + 7);
        if (v % 4 == 1) set_json(j, "return", "[]");
        if (v % 4 == 2) set_json(j, "return", "[\"output\", \"loss\"]");
        if (v % 4 == 3) set_json(j, "return", "[\"grad_weights\",\"output\",\"grad_input\",\"loss\"]");
        if (v % 3 == 1) set_json(j, "encoding", "\"b64\"");
        if (v % 3 == 2) set_json(j, "encoding", "\"json\"");
        if (v % 2) set_json(j, "verify", v % 4 == 1 ? "true" : "false");
        char *body = dump(j);
        ag_request req;
        ag_proto_error err;
        ck_assert_msg(decode_both(body, strlen(body), NULL, 0, &req, &err) == 0,
                      "variant %d: %s %s: %s", v, err.code, err.field, err.message);
        ck_assert_int_eq(req.cfg.n_heads, s.n_heads);
        ck_assert_int_eq(req.cfg.d_ff, s.d_ff);
        ck_assert_int_eq(req.cfg.norm, s.layernorm ? AG_NORM_LAYERNORM : AG_NORM_NONE);
        ck_assert_int_eq(req.cfg.causal, s.causal);
        ck_assert_int_eq(req.cfg.residual, s.residual);
        ck_assert_int_eq(req.cfg.activation, s.relu ? AG_ACT_RELU : AG_ACT_GELU);
        ck_assert_uint_eq(req.batch, s.batch);
        ck_assert_uint_eq(req.n, s.n);
        ck_assert_int_eq(req.input_batched, s.batched);
        ck_assert_uint_eq(req.return_mask,
                          v % 4 == 0   ? AG_RETURN_DEFAULT
                          : v % 4 == 1 ? 0u
                          : v % 4 == 2 ? (unsigned)(AG_RETURN_OUTPUT | AG_RETURN_LOSS)
                                       : (unsigned)(AG_RETURN_DEFAULT | AG_RETURN_OUTPUT));
        ck_assert_int_eq(req.encoding, v % 3 == 1 ? AG_ENCODING_B64 : AG_ENCODING_JSON);
        ck_assert_int_eq(req.verify, v % 4 == 1);
        ck_assert_int_eq(req.loss.kind, v % 3 == 0   ? AG_LOSS_MSE
                                        : v % 3 == 1 ? AG_LOSS_SUM
                                                     : AG_LOSS_GRAD_OUTPUT);
        ck_assert((req.loss_tensor == NULL) == (v % 3 == 1));
        switch (v % 7) {
        case 0: case 2:
            ck_assert_int_eq(req.method.kind, v % 7 == 0 ? AG_METHOD_AUTO : AG_METHOD_APPROX);
            ck_assert(req.method.epsilon == AG_DEFAULT_EPSILON);
            ck_assert_int_eq(req.method.degree, 0);
            ck_assert_int_eq(req.method.route, AG_ROUTE_FEATURES);
            ck_assert_int_eq(req.method.poly, AG_POLY_CHEBYSHEV);
            break;
        case 1: ck_assert_int_eq(req.method.kind, AG_METHOD_EXACT); break;
        case 3:
            ck_assert_int_eq(req.method.degree, 4);
            ck_assert_int_eq(req.method.route, AG_ROUTE_PAPER);
            ck_assert_int_eq(req.method.poly, AG_POLY_TAYLOR);
            break;
        case 4: ck_assert(req.method.epsilon == 0.5); break;
        case 5:
            ck_assert_int_eq(req.method.kind, AG_METHOD_AUTO);
            ck_assert_int_eq(req.method.degree, 20);
            break;
        case 6: ck_assert(req.method.epsilon == 1e-9); break;
        }
        ag_request_free(&req);
        free(body);
        json_decref(j);
    }
}
END_TEST

/* The same floats as JSON numbers, float32 base64, float64 base64 and JSON with dtype
 * float64 decode to identical bits. */
START_TEST(test_json_and_b64_identical)
{
    req_spec s = base_spec();
    s.batched = 1;
    s.batch = 2;
    json_t *j = make_request(&s, 99);
    char *body = dump(j);
    ag_request ref;
    ag_proto_error err;
    ck_assert(decode_both(body, strlen(body), NULL, 0, &ref, &err) == 0);
    free(body);
    for (int mode = 0; mode < 3; mode++) {
        json_t *k = json_deep_copy(j);
        const char *paths[] = {"input", "loss.target", "layers[0].wq", "layers[1].b2",
                               "layers[1].ln1_gamma"};
        for (int p = 0; p < 5; p++) {
            if (mode < 2) to_b64(k, paths[p], mode);
            else set_json(k, "input.dtype", "\"float64\"");
        }
        body = dump(k);
        ag_request req;
        ck_assert_msg(decode_both(body, strlen(body), NULL, 0, &req, &err) == 0, "%s", err.message);
        assert_requests_equal(&ref, &req);
        ag_request_free(&req);
        free(body);
        json_decref(k);
    }
    ag_request_free(&ref);
    json_decref(j);
}
END_TEST

/* Lifted number parsing (jdoc.c) and jansson's strtod agree on every spelling. */
START_TEST(test_number_spellings)
{
    static const char *const toks[] = {
        "0", "-0.0", "1", "-1", "0.5", "1e5", "1E5", "1e+5", "1e-5", "-2.5E-3", "123456789",
        "1234567890123456789", "12345678901234567890123.5", "0.1", "0.30000000000000004",
        "3.4028234663852886e38", "3.40282356e38", "-3.40282356e38", "1.17549435e-38",
        "1.4e-45", "7e-46", "1e-400", "0.000000000000000000000000000001", "4.9406564584124654e-324",
        "1e32", "-100000000000000000000000000000000.0", "9007199254740993", "0.1e1", "123.456e-7",
        "1.00000011920928955078125", "1.000000059604644775390625", "16777217",
    };
    size_t nt = sizeof toks / sizeof toks[0];
    req_spec s = base_spec();
    s.n = 4;
    s.d_model = 8;
    json_t *j = make_request(&s, 5);
    char *base = dump(j);
    /* Put the tokens (cycled) into the input's 32 numbers by text surgery. */
    char data[2048] = "[";
    for (size_t i = 0; i < 32; i++) {
        strcat(data, toks[i % nt]);
        strcat(data, i < 31 ? " ,\n" : "]");
    }
    json_t *input = json_object_get(j, "input");
    char *in_text = dump(input);
    char *at_in = strstr(base, in_text);
    ck_assert(at_in != NULL);
    char *dstart = strstr(at_in, "\"data\":") + 7;
    char *dend = strchr(dstart, ']') + 1;
    size_t blen = strlen(base) + strlen(data) + 1;
    char *body = malloc(blen);
    snprintf(body, blen, "%.*s%s%s", (int)(dstart - base), base, data, dend);
    ag_request req;
    ag_proto_error err;
    ck_assert_msg(decode_both(body, strlen(body), NULL, 0, &req, &err) == 0, "%s", err.message);
    for (size_t i = 0; i < 32; i++) {
        float want = (float)strtod(toks[i % nt], NULL);
        ck_assert_msg(memcmp(&req.input[i], &want, 4) == 0, "token %s: %a vs %a", toks[i % nt],
                      (double)req.input[i], (double)want);
    }
    ag_request_free(&req);
    free(body);
    free(in_text);
    free(base);
    json_decref(j);
}
END_TEST

/* docs/example-request.json (what `make run` suggests to curl) is valid and as described. */
START_TEST(test_docs_example)
{
    FILE *f = fopen("docs/example-request.json", "rb");
    if (!f) {
        fprintf(stderr, "test_docs_example: docs/example-request.json not found (skipped)\n");
        return;
    }
    char *body = malloc(1 << 20);
    size_t len = fread(body, 1, 1 << 20, f);
    fclose(f);
    ag_request req;
    ag_proto_error err;
    ck_assert_msg(decode_both(body, len, NULL, 0, &req, &err) == 0, "%s: %s", err.field,
                  err.message);
    ck_assert_int_eq(req.cfg.d_model, 16);
    ck_assert_int_eq(req.cfg.n_heads, 2);
    ck_assert_int_eq(req.cfg.n_layers, 2);
    ck_assert_int_eq(req.cfg.d_ff, 32);
    ck_assert_int_eq(req.cfg.norm, AG_NORM_LAYERNORM);
    ck_assert_int_eq(req.cfg.activation, AG_ACT_GELU);
    ck_assert(req.cfg.residual && req.cfg.causal);
    ck_assert_uint_eq(req.n, 8);
    ck_assert_int_eq(req.loss.kind, AG_LOSS_MSE);
    ck_assert_int_eq(req.method.kind, AG_METHOD_EXACT);
    ag_request_free(&req);
    free(body);
}
END_TEST

START_TEST(test_fixtures)
{
    glob_t g;
    int found = glob("tests/oracle/fixtures/*.json", 0, NULL, &g);
    if (found != 0) {
        fprintf(stderr, "test_fixtures: no fixtures in tests/oracle/fixtures (skipped)\n");
        return;
    }
    for (size_t i = 0; i < g.gl_pathc; i++) {
        json_error_t je;
        json_t *fx = json_load_file(g.gl_pathv[i], 0, &je);
        ck_assert_msg(fx != NULL, "%s: %s", g.gl_pathv[i], je.text);
        json_t *rq = json_object_get(fx, "request");
        ck_assert(rq != NULL);
        for (int b64 = 0; b64 < 2; b64++) {
            json_t *k = json_deep_copy(rq);
            if (b64) to_b64(k, "input", 0);
            char *body = dump(k);
            ag_request req;
            ag_proto_error err;
            ck_assert_msg(decode_both(body, strlen(body), NULL, 0, &req, &err) == 0,
                          "%s: %s %s: %s", g.gl_pathv[i], err.code, err.field, err.message);
            check_tensor_matches(json_object_get(rq, "input"), req.input);
            ck_assert_int_eq(req.cfg.n_layers, (int)json_array_size(json_object_get(rq, "layers")));
            ag_request_free(&req);
            free(body);
            json_decref(k);
        }
        json_decref(fx);
    }
    globfree(&g);
}
END_TEST

/* ---- invalid requests ------------------------------------------------------------------- */

typedef struct {
    const char *what;
    void (*mutate)(json_t *j); /* on the base request; or NULL with `raw` */
    const char *raw;           /* a whole body */
    int status;
    const char *code;
    const char *field;
    int lift_only; /* outcome differs without lifting (documented: 1e999 is invalid JSON) */
} bad_case;

#define MUT(name, ...) static void name(json_t *j) { __VA_ARGS__; }
MUT(m_top_unknown, set_json(j, "foo", "1"))
MUT(m_model_unknown, set_json(j, "model.foo", "1"))
MUT(m_method_unknown, set_json(j, "method.foo", "1"))
MUT(m_loss_unknown, set_json(j, "loss.foo", "1"))
MUT(m_tensor_unknown, set_json(j, "input.foo", "1"))
MUT(m_weight_unknown, set_json(j, "layers[0].wz", "{\"shape\":[1],\"data\":[1]}"))
MUT(m_no_model, set_at(j, "model", NULL))
MUT(m_no_layers, set_at(j, "layers", NULL))
MUT(m_no_input, set_at(j, "input", NULL))
MUT(m_no_loss, set_at(j, "loss", NULL))
MUT(m_no_d_model, set_at(j, "model.d_model", NULL))
MUT(m_no_causal, set_at(j, "model.causal", NULL))
MUT(m_no_norm, set_at(j, "model.norm", NULL))
MUT(m_d_model_real, set_json(j, "model.d_model", "8.0"))
MUT(m_d_model_string, set_json(j, "model.d_model", "\"8\""))
MUT(m_d_model_zero, set_json(j, "model.d_model", "0"))
MUT(m_d_model_huge, set_json(j, "model.d_model", "5000"))
MUT(m_d_model_int_overflow, set_json(j, "model.d_model", "9223372036854775807"))
MUT(m_n_heads_div, set_json(j, "model.n_heads", "3"))
MUT(m_n_heads_neg, set_json(j, "model.n_heads", "-2"))
MUT(m_n_heads_huge, set_json(j, "model.n_heads", "1099511627776"))
MUT(m_n_layers_mismatch, set_json(j, "model.n_layers", "3"))
MUT(m_n_layers_huge, set_json(j, "model.n_layers", "100"))
MUT(m_d_ff_neg, set_json(j, "model.d_ff", "-1"))
MUT(m_d_ff_huge, set_json(j, "model.d_ff", "20000"))
MUT(m_causal_int, set_json(j, "model.causal", "1"))
MUT(m_norm_bad, set_json(j, "model.norm", "\"batchnorm\""))
MUT(m_norm_null, set_json(j, "model.norm", "null"))
MUT(m_act_bad, set_json(j, "model.activation", "\"tanh\""))
MUT(m_residual_str, set_json(j, "model.residual", "\"true\""))
MUT(m_model_array, set_json(j, "model", "[]"))
MUT(m_model_null, set_json(j, "model", "null"))
MUT(m_layers_object, set_json(j, "layers", "{}"))
MUT(m_layer_array, set_json(j, "layers[0]", "[]"))
MUT(m_missing_wv, set_at(j, "layers[1].wv", NULL))
MUT(m_missing_b1, set_at(j, "layers[0].b1", NULL))
MUT(m_wq_shape, set_json(j, "layers[0].wq.shape", "[8, 4]"))
MUT(m_wq_shape_1d, set_json(j, "layers[0].wq.shape", "[64]"))
MUT(m_b1_shape_2d, set_json(j, "layers[0].b1.shape", "[16, 1]"))
MUT(m_w1_transposed, set_json(j, "layers[1].w1.shape", "[16, 8]"))
MUT(m_shape_string, set_json(j, "layers[0].wq.shape", "\"8x8\""))
MUT(m_shape_real, set_json(j, "layers[0].wq.shape", "[8, 8.0]"))
MUT(m_shape_zero, set_json(j, "layers[0].wq.shape", "[8, 0]"))
MUT(m_shape_empty, set_json(j, "layers[0].wq.shape", "[]"))
MUT(m_shape_4d, set_json(j, "layers[0].wq.shape", "[1, 1, 8, 8]"))
MUT(m_no_shape, set_at(j, "layers[0].wq.shape", NULL))
MUT(m_data_short, json_array_remove(json_object_get(json_object_get(json_array_get(
                      json_object_get(j, "layers"), 0), "wq"), "data"), 0))
MUT(m_data_string_elem, set_json(j, "layers[0].wq.data[3]", "\"x\""))
MUT(m_data_null_elem, set_json(j, "layers[1].b2.data[0]", "null"))
MUT(m_data_nested, set_json(j, "input.data[0]", "[1]"))
MUT(m_data_string, set_json(j, "layers[0].wq.data", "\"abc\""))
MUT(m_data_huge_value, set_json(j, "layers[0].wq.data[5]", "1e39"))
MUT(m_data_neg_huge_value, set_json(j, "input.data[31]", "-3.5e38"))
MUT(m_data_and_b64, set_json(j, "layers[0].wq.b64", "\"AAAA\""))
MUT(m_no_data, set_at(j, "layers[0].wq.data", NULL))
MUT(m_dtype_bad, set_json(j, "layers[0].wq.dtype", "\"float16\""))
MUT(m_dtype_int, set_json(j, "layers[0].wq.dtype", "32"))
MUT(m_b64_bad_char, { to_b64(j, "input", 0); b64_set_char(j, "input", 17, '*'); })
MUT(m_b64_len, { to_b64(j, "input", 0); set_json(j, "input.b64", "\"AAAAA\""); })
MUT(m_b64_count, { to_b64(j, "input", 0); set_json(j, "input.dtype", "\"float64\""); })
MUT(m_b64_nan, { to_b64(j, "input", 0); b64_poke32(j, "input", 5, 0x7FC00000u); })
MUT(m_b64_inf, { to_b64(j, "loss.target", 0); b64_poke32(j, "loss.target", 31, 0xFF800000u); })
MUT(m_b64_f64_range, { set_json(j, "layers[0].b1.data[2]", "1e300"); to_b64(j, "layers[0].b1", 1); })
MUT(m_b64_number, { to_b64(j, "input", 0); set_json(j, "input.b64", "12"); })
MUT(m_b64_pad_middle, { to_b64(j, "layers[0].ln1_gamma", 0); set_json(j, "layers[0].ln1_gamma.b64",
                        "\"AAAAAA==AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\""); })
MUT(m_input_1d, set_json(j, "input.shape", "[4]"))
MUT(m_input_last_dim, set_json(j, "input.shape", "[4, 7]"))
MUT(m_input_4d, set_json(j, "input.shape", "[1, 1, 4, 8]"))
MUT(m_input_overflow, set_json(j, "input.shape", "[1000000000, 1000000000, 8]"))
MUT(m_input_tokens, set_json(j, "input.shape", "[2000000, 8]"))
MUT(m_input_string, set_json(j, "input", "\"x\""))
MUT(m_loss_string, set_json(j, "loss", "\"mse\""))
MUT(m_loss_no_type, set_at(j, "loss.type", NULL))
MUT(m_loss_type_bad, set_json(j, "loss.type", "\"l1\""))
MUT(m_loss_no_target, set_at(j, "loss.target", NULL))
MUT(m_loss_sum_target, set_json(j, "loss.type", "\"sum\""))
MUT(m_loss_grad_with_target, set_json(j, "loss.type", "\"grad_output\""))
MUT(m_target_shape, set_json(j, "loss.target.shape", "[3, 8]"))
MUT(m_target_batched, set_json(j, "loss.target.shape", "[1, 4, 8]"))
MUT(m_method_string, set_json(j, "method", "\"exact\""))
MUT(m_method_no_name, set_at(j, "method.name", NULL))
MUT(m_method_name_bad, set_json(j, "method.name", "\"fast\""))
MUT(m_exact_eps, set_json(j, "method", "{\"name\":\"exact\",\"epsilon\":0.01}"))
MUT(m_exact_route, set_json(j, "method", "{\"name\":\"exact\",\"route\":\"paper\"}"))
MUT(m_eps_zero, set_json(j, "method.epsilon", "0"))
MUT(m_eps_one, set_json(j, "method.epsilon", "1"))
MUT(m_eps_neg, set_json(j, "method.epsilon", "-0.1"))
MUT(m_eps_string, set_json(j, "method.epsilon", "\"1e-3\""))
MUT(m_degree_zero, set_json(j, "method", "{\"name\":\"approx\",\"degree\":0}"))
MUT(m_degree_21, set_json(j, "method", "{\"name\":\"auto\",\"degree\":21}"))
MUT(m_degree_real, set_json(j, "method", "{\"name\":\"approx\",\"degree\":4.0}"))
MUT(m_eps_and_degree, set_json(j, "method.degree", "4"))
MUT(m_route_bad, set_json(j, "method.route", "\"fast\""))
MUT(m_poly_bad, set_json(j, "method.poly", "\"pade\""))
MUT(m_return_string, set_json(j, "return", "\"loss\""))
MUT(m_return_dup, set_json(j, "return", "[\"loss\", \"grad_input\", \"loss\"]"))
MUT(m_return_unknown, set_json(j, "return", "[\"weights\"]"))
MUT(m_return_int, set_json(j, "return", "[1]"))
MUT(m_encoding_bad, set_json(j, "encoding", "\"msgpack\""))
MUT(m_encoding_int, set_json(j, "encoding", "1"))
MUT(m_verify_string, set_json(j, "verify", "\"yes\""))
MUT(m_verify_int, set_json(j, "verify", "1"))
MUT(m_norm_none_ln, {
    set_json(j, "model.norm", "\"none\"");
    for (int l = 0; l < 2; l++) {
        char p[64];
        snprintf(p, sizeof p, "layers[%d].ln1_beta", l); set_at(j, p, NULL);
        snprintf(p, sizeof p, "layers[%d].ln2_gamma", l); set_at(j, p, NULL);
        snprintf(p, sizeof p, "layers[%d].ln2_beta", l); set_at(j, p, NULL);
    }
})
MUT(m_no_mlp_w1, {
    set_json(j, "model.d_ff", "0");
    for (int l = 0; l < 2; l++) {
        static const char *const gone[] = {"ln2_gamma", "ln2_beta", "b1", "w2", "b2"};
        for (int k = 0; k < 5; k++) {
            char p[64];
            snprintf(p, sizeof p, "layers[%d].%s", l, gone[k]);
            set_at(j, p, NULL);
        }
    }
})
MUT(m_forged_placeholder, set_json(j, "input.data", "\"\\u00010\""))
MUT(m_control_in_key, set_json(j, "model.\x01x", "1"))

static const bad_case bad_cases[] = {
    {"empty body", NULL, "", 400, "invalid_json", "", 0},
    {"truncated", NULL, "{\"model\": {\"d_model\": 8", 400, "invalid_json", "", 0},
    {"trailing garbage", NULL, "{} x", 400, "invalid_json", "", 0},
    {"top-level array", NULL, "[]", 400, "invalid_type", "", 0},
    {"top-level number", NULL, "42", 400, "invalid_json", "", 0},
    {"top-level null", NULL, "null", 400, "invalid_json", "", 0},
    {"NaN token", NULL, "{\"input\": {\"shape\": [1], \"data\": [NaN]}}", 400, "invalid_json", "", 0},
    {"invalid utf-8", NULL, "{\"\xff\": 1}", 400, "invalid_json", "", 0},
    {"empty object", NULL, "{}", 400, "missing_field", "model", 0},
    {"duplicate top key", NULL, "{\"verify\": true, \"verify\": false}", 400, "duplicate_key",
     "verify", 0},
    {"duplicate nested key", NULL, "{\"model\": {\"d_model\": 8, \"n_heads\": 1, \"d_model\": 8}}",
     400, "duplicate_key", "model.d_model", 0},
    {"duplicate key after data", NULL,
     "{\"layers\": [{}, {\"wq\": {\"shape\": [2], \"data\": [1, 2], \"data\": [3, 4]}}]}", 400,
     "duplicate_key", "layers[1].wq.data", 0},
    {"unknown top field", m_top_unknown, NULL, 400, "unknown_field", "foo", 0},
    {"unknown model field", m_model_unknown, NULL, 400, "unknown_field", "model.foo", 0},
    {"unknown method field", m_method_unknown, NULL, 400, "unknown_field", "method.foo", 0},
    {"unknown loss field", m_loss_unknown, NULL, 400, "unknown_field", "loss.foo", 0},
    {"unknown tensor field", m_tensor_unknown, NULL, 400, "unknown_field", "input.foo", 0},
    {"unknown weight", m_weight_unknown, NULL, 400, "unknown_field", "layers[0].wz", 0},
    {"ln weight with norm none", m_norm_none_ln, NULL, 400, "unknown_field",
     "layers[0].ln1_gamma", 0},
    {"w1 with d_ff 0", m_no_mlp_w1, NULL, 400, "unknown_field", "layers[0].w1", 0},
    {"missing model", m_no_model, NULL, 400, "missing_field", "model", 0},
    {"missing layers", m_no_layers, NULL, 400, "missing_field", "layers", 0},
    {"missing input", m_no_input, NULL, 400, "missing_field", "input", 0},
    {"missing loss", m_no_loss, NULL, 400, "missing_field", "loss", 0},
    {"missing d_model", m_no_d_model, NULL, 400, "missing_field", "model.d_model", 0},
    {"missing causal", m_no_causal, NULL, 400, "missing_field", "model.causal", 0},
    {"missing norm", m_no_norm, NULL, 400, "missing_field", "model.norm", 0},
    {"d_model real", m_d_model_real, NULL, 400, "invalid_type", "model.d_model", 0},
    {"d_model string", m_d_model_string, NULL, 400, "invalid_type", "model.d_model", 0},
    {"d_model zero", m_d_model_zero, NULL, 400, "invalid_value", "model.d_model", 0},
    {"d_model over limit", m_d_model_huge, NULL, 413, "too_large", "model.d_model", 0},
    {"d_model int64 max", m_d_model_int_overflow, NULL, 413, "too_large", "model.d_model", 0},
    {"n_heads not dividing", m_n_heads_div, NULL, 400, "invalid_value", "model.n_heads", 0},
    {"n_heads negative", m_n_heads_neg, NULL, 400, "invalid_value", "model.n_heads", 0},
    {"n_heads over int", m_n_heads_huge, NULL, 400, "invalid_value", "model.n_heads", 0},
    {"n_layers != len(layers)", m_n_layers_mismatch, NULL, 400, "invalid_value", "layers", 0},
    {"n_layers over limit", m_n_layers_huge, NULL, 413, "too_large", "model.n_layers", 0},
    {"d_ff negative", m_d_ff_neg, NULL, 400, "invalid_value", "model.d_ff", 0},
    {"d_ff over limit", m_d_ff_huge, NULL, 413, "too_large", "model.d_ff", 0},
    {"causal as integer", m_causal_int, NULL, 400, "invalid_type", "model.causal", 0},
    {"norm unknown", m_norm_bad, NULL, 400, "invalid_value", "model.norm", 0},
    {"norm null", m_norm_null, NULL, 400, "invalid_type", "model.norm", 0},
    {"activation unknown", m_act_bad, NULL, 400, "invalid_value", "model.activation", 0},
    {"residual as string", m_residual_str, NULL, 400, "invalid_type", "model.residual", 0},
    {"model array", m_model_array, NULL, 400, "invalid_type", "model", 0},
    {"model null", m_model_null, NULL, 400, "invalid_type", "model", 0},
    {"layers object", m_layers_object, NULL, 400, "invalid_type", "layers", 0},
    {"layer array", m_layer_array, NULL, 400, "invalid_type", "layers[0]", 0},
    {"missing wv", m_missing_wv, NULL, 400, "missing_field", "layers[1].wv", 0},
    {"missing b1", m_missing_b1, NULL, 400, "missing_field", "layers[0].b1", 0},
    {"wq wrong shape", m_wq_shape, NULL, 400, "invalid_shape", "layers[0].wq", 0},
    {"wq 1-d", m_wq_shape_1d, NULL, 400, "invalid_shape", "layers[0].wq", 0},
    {"b1 2-d", m_b1_shape_2d, NULL, 400, "invalid_shape", "layers[0].b1", 0},
    {"w1 transposed", m_w1_transposed, NULL, 400, "invalid_shape", "layers[1].w1", 0},
    {"shape string", m_shape_string, NULL, 400, "invalid_type", "layers[0].wq.shape", 0},
    {"shape real dim", m_shape_real, NULL, 400, "invalid_type", "layers[0].wq.shape[1]", 0},
    {"shape zero dim", m_shape_zero, NULL, 400, "invalid_shape", "layers[0].wq", 0},
    {"shape empty", m_shape_empty, NULL, 400, "invalid_shape", "layers[0].wq", 0},
    {"shape 4-d", m_shape_4d, NULL, 400, "invalid_shape", "layers[0].wq", 0},
    {"shape missing", m_no_shape, NULL, 400, "missing_field", "layers[0].wq.shape", 0},
    {"data one short", m_data_short, NULL, 400, "invalid_shape", "layers[0].wq", 0},
    {"data string element", m_data_string_elem, NULL, 400, "invalid_type",
     "layers[0].wq.data[3]", 0},
    {"data null element", m_data_null_elem, NULL, 400, "invalid_type", "layers[1].b2.data[0]", 0},
    {"data nested array", m_data_nested, NULL, 400, "invalid_type", "input.data[0]", 0},
    {"data string", m_data_string, NULL, 400, "invalid_type", "layers[0].wq.data", 0},
    {"value over float32", m_data_huge_value, NULL, 400, "invalid_value", "layers[0].wq", 0},
    {"value under -float32", m_data_neg_huge_value, NULL, 400, "invalid_value", "input", 0},
    {"data and b64", m_data_and_b64, NULL, 400, "invalid_value", "layers[0].wq", 0},
    {"neither data nor b64", m_no_data, NULL, 400, "missing_field", "layers[0].wq.data", 0},
    {"dtype float16", m_dtype_bad, NULL, 400, "invalid_value", "layers[0].wq.dtype", 0},
    {"dtype integer", m_dtype_int, NULL, 400, "invalid_type", "layers[0].wq.dtype", 0},
    {"b64 bad character", m_b64_bad_char, NULL, 400, "invalid_base64", "input", 0},
    {"b64 bad length", m_b64_len, NULL, 400, "invalid_base64", "input", 0},
    {"b64 float32 bytes as float64", m_b64_count, NULL, 400, "invalid_shape", "input", 0},
    {"b64 NaN", m_b64_nan, NULL, 400, "invalid_value", "input", 0},
    {"b64 Inf", m_b64_inf, NULL, 400, "invalid_value", "loss.target", 0},
    {"b64 float64 out of range", m_b64_f64_range, NULL, 400, "invalid_value", "layers[0].b1", 0},
    {"b64 not a string", m_b64_number, NULL, 400, "invalid_type", "input.b64", 0},
    {"b64 padding in the middle", m_b64_pad_middle, NULL, 400, "invalid_base64",
     "layers[0].ln1_gamma", 0},
    {"input 1-d", m_input_1d, NULL, 400, "invalid_shape", "input", 0},
    {"input last dim", m_input_last_dim, NULL, 400, "invalid_shape", "input", 0},
    {"input 4-d", m_input_4d, NULL, 400, "invalid_shape", "input", 0},
    {"input shape overflows", m_input_overflow, NULL, 413, "too_large", "input", 0},
    {"input over token limit", m_input_tokens, NULL, 413, "too_large", "input", 0},
    {"input string", m_input_string, NULL, 400, "invalid_type", "input", 0},
    {"loss string", m_loss_string, NULL, 400, "invalid_type", "loss", 0},
    {"loss without type", m_loss_no_type, NULL, 400, "missing_field", "loss.type", 0},
    {"loss type unknown", m_loss_type_bad, NULL, 400, "invalid_value", "loss.type", 0},
    {"mse without target", m_loss_no_target, NULL, 400, "missing_field", "loss.target", 0},
    {"sum with target", m_loss_sum_target, NULL, 400, "unknown_field", "loss.target", 0},
    {"grad_output with target", m_loss_grad_with_target, NULL, 400, "unknown_field",
     "loss.target", 0},
    {"target shape", m_target_shape, NULL, 400, "invalid_shape", "loss.target", 0},
    {"target batched", m_target_batched, NULL, 400, "invalid_shape", "loss.target", 0},
    {"method string", m_method_string, NULL, 400, "invalid_type", "method", 0},
    {"method without name", m_method_no_name, NULL, 400, "missing_field", "method.name", 0},
    {"method name unknown", m_method_name_bad, NULL, 400, "invalid_value", "method.name", 0},
    {"exact with epsilon", m_exact_eps, NULL, 400, "unknown_field", "method.epsilon", 0},
    {"exact with route", m_exact_route, NULL, 400, "unknown_field", "method.route", 0},
    {"epsilon 0", m_eps_zero, NULL, 400, "invalid_value", "method.epsilon", 0},
    {"epsilon 1", m_eps_one, NULL, 400, "invalid_value", "method.epsilon", 0},
    {"epsilon negative", m_eps_neg, NULL, 400, "invalid_value", "method.epsilon", 0},
    {"epsilon string", m_eps_string, NULL, 400, "invalid_type", "method.epsilon", 0},
    {"degree 0", m_degree_zero, NULL, 400, "invalid_value", "method.degree", 0},
    {"degree 21", m_degree_21, NULL, 400, "invalid_value", "method.degree", 0},
    {"degree real", m_degree_real, NULL, 400, "invalid_type", "method.degree", 0},
    {"epsilon and degree", m_eps_and_degree, NULL, 400, "invalid_value", "method", 0},
    {"route unknown", m_route_bad, NULL, 400, "invalid_value", "method.route", 0},
    {"poly unknown", m_poly_bad, NULL, 400, "invalid_value", "method.poly", 0},
    {"return string", m_return_string, NULL, 400, "invalid_type", "return", 0},
    {"return duplicate", m_return_dup, NULL, 400, "invalid_value", "return[2]", 0},
    {"return unknown", m_return_unknown, NULL, 400, "invalid_value", "return[0]", 0},
    {"return integer", m_return_int, NULL, 400, "invalid_type", "return[0]", 0},
    {"encoding unknown", m_encoding_bad, NULL, 400, "invalid_value", "encoding", 0},
    {"encoding integer", m_encoding_int, NULL, 400, "invalid_type", "encoding", 0},
    {"verify string", m_verify_string, NULL, 400, "invalid_type", "verify", 0},
    {"verify integer", m_verify_int, NULL, 400, "invalid_type", "verify", 0},
    {"forged placeholder", m_forged_placeholder, NULL, 400, "invalid_type", "input.data", 0},
    {"control char in key", m_control_in_key, NULL, 400, "unknown_field", "model.\x01x", 0},
};

static void run_bad_case(const bad_case *c)
{
    char *body;
    if (c->mutate) {
        req_spec s = base_spec();
        json_t *j = make_request(&s, 1234);
        c->mutate(j);
        body = dump(j);
        json_decref(j);
    } else {
        body = strdup(c->raw);
    }
    ag_request req;
    ag_proto_error err;
    int rc = decode_both(body, strlen(body), NULL, c->lift_only, &req, &err);
    ck_assert_msg(rc == -1, "%s: accepted", c->what);
    ck_assert_msg(err.http_status == c->status && strcmp(err.code, c->code) == 0 &&
                      strcmp(err.field, c->field) == 0,
                  "%s: got %d %s \"%s\" (%s), want %d %s \"%s\"", c->what, err.http_status,
                  err.code, err.field, err.message, c->status, c->code, c->field);
    ck_assert_msg(err.message[0] != '\0', "%s: empty message", c->what);
    free(body);
}

START_TEST(test_bad_requests)
{
    size_t n = sizeof bad_cases / sizeof bad_cases[0];
    ck_assert_uint_ge(n, 40);
    for (size_t i = 0; i < n; i++) run_bad_case(&bad_cases[i]);
}
END_TEST

START_TEST(test_shape_message)
{
    req_spec s = base_spec();
    s.d_model = 64;
    s.n_heads = 8;
    s.n_layers = 1;
    s.d_ff = 0;
    s.n = 2;
    json_t *j = make_request(&s, 3);
    set_json(j, "layers[0].wq", "{\"shape\": [64, 32], \"data\": [1]}");
    char *body = dump(j);
    ag_request req;
    ag_proto_error err;
    ck_assert_int_eq(decode_both(body, strlen(body), NULL, 0, &req, &err), -1);
    ck_assert_str_eq(err.code, "invalid_shape");
    ck_assert_str_eq(err.message, "layers[0].wq: expected shape [64,64], got [64,32]");
    free(body);
    json_decref(j);
}
END_TEST

static void expect_message(void (*mutate)(json_t *), const char *code, const char *needle)
{
    req_spec s = base_spec();
    json_t *j = make_request(&s, 1234);
    mutate(j);
    char *body = dump(j);
    ag_request req;
    ag_proto_error err;
    ck_assert_int_eq(decode_both(body, strlen(body), NULL, 0, &req, &err), -1);
    ck_assert_str_eq(err.code, code);
    ck_assert_msg(strstr(err.message, needle) != NULL, "\"%s\" lacks \"%s\"", err.message,
                  needle);
    free(body);
    json_decref(j);
}

START_TEST(test_value_messages)
{
    expect_message(m_b64_nan, "invalid_value", "input: element 5 (nan) is NaN");
    expect_message(m_b64_inf, "invalid_value", "loss.target: element 31 (-inf) is infinite");
    expect_message(m_data_huge_value, "invalid_value", "layers[0].wq: element 5 (1e+39) is outside");
    expect_message(m_data_short, "invalid_shape", "shape [8,8] has 64 elements, data has 63");
    expect_message(m_input_last_dim, "invalid_shape", "last dimension must be d_model (8)");
    expect_message(m_norm_none_ln, "unknown_field", "norm is \"none\"");
    expect_message(m_no_mlp_w1, "unknown_field", "d_ff is 0");
    /* The lifted reader keeps the sign of an integer zero ("-0"), as strtod does. */
    float f = 1;
    double bad;
    ck_assert_uint_eq(ag_jdoc_parse_numbers("[-0]", 4, &f, 1, &bad), 1);
    ck_assert(f == 0 && signbit(f));
}
END_TEST

/* A number too big for a double is an invalid_value when lifted (jansson alone calls the
 * whole body invalid JSON): documented in docs/api.md. */
START_TEST(test_overflowing_number)
{
    req_spec s = base_spec();
    json_t *j = make_request(&s, 8);
    set_json(j, "input.data[7]", "12345.0");
    char *body = dump(j);
    char *p = strstr(body, "12345.0");
    ck_assert(p != NULL);
    size_t len = strlen(body) + 8;
    char *b2 = malloc(len);
    snprintf(b2, len, "%.*s1e999%s", (int)(p - body), body, p + 7);
    ag_request req;
    ag_proto_error err;
    ck_assert_int_eq(ag_request_decode(b2, strlen(b2), NULL, &req, &err), -1);
    ck_assert_str_eq(err.code, "invalid_value");
    ck_assert_str_eq(err.field, "input");
    ck_assert_msg(strstr(err.message, "element 7") != NULL, "%s", err.message);
    free(b2);
    free(body);
    json_decref(j);
}
END_TEST

/* ---- limits ------------------------------------------------------------------------------ */

START_TEST(test_limit_defaults)
{
    ag_proto_limits l = ag_proto_limits_default();
    ck_assert_uint_eq(l.max_elements, 64u << 20);
    ck_assert_uint_eq(l.max_tensor_elements, 16u << 20);
    ck_assert_int_eq(l.max_layers, 64);
    ck_assert_int_eq(l.max_d_model, 4096);
    ck_assert_int_eq(l.max_d_ff, 16384);
    ck_assert_uint_eq(l.max_tokens, 1u << 20);
}
END_TEST

START_TEST(test_custom_limits)
{
    req_spec s = base_spec();
    json_t *j = make_request(&s, 11);
    char *body = dump(j);
    ag_request req;
    ag_proto_error err;
    /* Per layer: 4*64 + 4*8 + 8*16 + 16 + 16*8 + 8 = 568; input 32, target 32. */
    ag_proto_limits lim = ag_proto_limits_default();
    lim.max_elements = 2 * 568 + 32 + 31;
    ck_assert_int_eq(decode_both(body, strlen(body), &lim, 0, &req, &err), -1);
    ck_assert_int_eq(err.http_status, 413);
    ck_assert_str_eq(err.code, "too_large");
    ck_assert_str_eq(err.field, "loss.target");
    lim.max_elements = 2 * 568 + 64;
    ck_assert_int_eq(decode_both(body, strlen(body), &lim, 0, &req, &err), 0);
    ag_request_free(&req);

    lim = ag_proto_limits_default();
    lim.max_tensor_elements = 63;
    ck_assert_int_eq(decode_both(body, strlen(body), &lim, 0, &req, &err), -1);
    ck_assert_str_eq(err.code, "too_large");
    ck_assert_str_eq(err.field, "layers[0].wq");

    lim = ag_proto_limits_default();
    lim.max_tokens = 3;
    ck_assert_int_eq(decode_both(body, strlen(body), &lim, 0, &req, &err), -1);
    ck_assert_str_eq(err.field, "input");
    ck_assert_int_eq(err.http_status, 413);

    lim = ag_proto_limits_default();
    lim.max_layers = 1;
    ck_assert_int_eq(decode_both(body, strlen(body), &lim, 0, &req, &err), -1);
    ck_assert_str_eq(err.field, "model.n_layers");

    /* Zero fields mean "default". */
    ag_proto_limits zero = {0};
    ck_assert_int_eq(decode_both(body, strlen(body), &zero, 0, &req, &err), 0);
    ag_request_free(&req);
    free(body);
    json_decref(j);
}
END_TEST

/* A huge declared shape with a tiny payload is refused before anything is allocated: with
 * every limit lifted, a decoder that allocated first would ask for 2 TB (ASan aborts, plain
 * malloc fails with out_of_memory) instead of reporting the length mismatch. */
START_TEST(test_refused_before_allocation)
{
    req_spec s = base_spec();
    json_t *j = make_request(&s, 12);
    set_json(j, "input.shape", "[68719476736, 8]");
    set_json(j, "loss", "{\"type\": \"sum\"}");
    char *body = dump(j);
    ag_request req;
    ag_proto_error err;
    ck_assert_int_eq(decode_both(body, strlen(body), NULL, 0, &req, &err), -1);
    ck_assert_int_eq(err.http_status, 413);
    ag_proto_limits lim = {.max_elements = SIZE_MAX, .max_tensor_elements = SIZE_MAX,
                           .max_layers = 64, .max_d_model = 4096, .max_d_ff = 16384,
                           .max_tokens = SIZE_MAX};
    ck_assert_int_eq(decode_both(body, strlen(body), &lim, 0, &req, &err), -1);
    ck_assert_int_eq(err.http_status, 400);
    ck_assert_str_eq(err.code, "invalid_shape");
    ck_assert_str_eq(err.field, "input");
    free(body);
    /* The same through base64. */
    to_b64(j, "input", 0);
    body = dump(j);
    ck_assert_int_eq(decode_both(body, strlen(body), &lim, 0, &req, &err), -1);
    ck_assert_str_eq(err.code, "invalid_shape");
    free(body);
    json_decref(j);
}
END_TEST

/* Millions of tiny values outside tensor data are refused before jansson holds them. */
START_TEST(test_json_value_budget)
{
    size_t n = AG_PROTO_MAX_JSON_VALUES + 10, len = 16 + 2 * n;
    char *body = malloc(len);
    size_t p = (size_t)snprintf(body, len, "{\"foo\": [");
    for (size_t i = 0; i < n; i++) {
        body[p++] = '0';
        body[p++] = i + 1 < n ? ',' : ']';
    }
    body[p++] = '}';
    ag_request req;
    ag_proto_error err;
    ck_assert_int_eq(decode_both(body, p, NULL, 0, &req, &err), -1);
    ck_assert_int_eq(err.http_status, 413);
    ck_assert_str_eq(err.code, "too_large");
    /* Objects weigh more (jansson spends ~230 bytes on an empty one): 200K of them is over. */
    p = (size_t)snprintf(body, len, "{\"foo\": [");
    for (size_t i = 0; i < 200000; i++) {
        memcpy(body + p, i + 1 < 200000 ? "{}," : "{}]", 3);
        p += 3;
    }
    body[p++] = '}';
    ck_assert_int_eq(decode_both(body, p, NULL, 0, &req, &err), -1);
    ck_assert_int_eq(err.http_status, 413);
    /* The same count inside a lifted "data" array does not count against the budget: the
     * request fails later, for the unknown field. */
    p = (size_t)snprintf(body, len, "{\"data\": [");
    for (size_t i = 0; i < n; i++) {
        body[p++] = '0';
        body[p++] = i + 1 < n ? ',' : ']';
    }
    body[p++] = '}';
    ck_assert_int_eq(ag_request_decode(body, p, NULL, &req, &err), -1);
    ck_assert_str_eq(err.code, "unknown_field");
    ck_assert_str_eq(err.field, "data");
    free(body);
}
END_TEST

START_TEST(test_deep_nesting)
{
    size_t n = 100000;
    char *body = malloc(2 * n + 16);
    size_t p = 0;
    body[p++] = '{';
    memcpy(body + p, "\"model\":", 8);
    p += 8;
    for (size_t i = 0; i < n; i++) body[p++] = '[';
    for (size_t i = 0; i < n; i++) body[p++] = ']';
    body[p++] = '}';
    ag_request req;
    ag_proto_error err;
    ck_assert_int_eq(decode_both(body, p, NULL, 0, &req, &err), -1);
    ck_assert_str_eq(err.code, "invalid_json");
    free(body);
}
END_TEST

/* ---- responses ---------------------------------------------------------------------------- */

typedef struct {
    ag_request req;
    ag_result res;
    ag_verification ver;
} fake_job;

static void fill(float *v, size_t n, uint64_t *seed)
{
    for (size_t i = 0; i < n; i++) {
        uint32_t bits = (uint32_t)rng_next(seed);
        float f;
        memcpy(&f, &bits, 4);
        /* Random bit patterns cover every exponent; keep them finite. */
        v[i] = isfinite(f) ? f : rng_float(seed);
    }
}

static void make_job(fake_job *fj, int batched, ag_loss_kind loss, unsigned mask, int enc)
{
    memset(fj, 0, sizeof *fj);
    uint64_t seed = 77;
    ag_model_config cfg = {.d_model = 8, .n_heads = 2, .n_layers = 2, .d_ff = 4, .causal = 1,
                           .norm = AG_NORM_LAYERNORM, .activation = AG_ACT_GELU, .residual = 1};
    fj->req.cfg = cfg;
    fj->req.batch = batched ? 2 : 1;
    fj->req.n = 3;
    fj->req.input_batched = batched;
    fj->req.return_mask = mask;
    fj->req.encoding = enc;
    fj->req.method = ag_method_default(AG_METHOD_AUTO);
    fj->req.loss.kind = loss;
    ag_result *r = &fj->res;
    r->has_loss = loss != AG_LOSS_GRAD_OUTPUT;
    r->loss = 0.1234567890123;
    r->batch = fj->req.batch;
    r->n = 3;
    r->d_model = 8;
    size_t io = r->batch * r->n * r->d_model;
    r->output = malloc(io * sizeof(float));
    r->grad_input = malloc(io * sizeof(float));
    fill(r->output, io, &seed);
    fill(r->grad_input, io, &seed);
    r->n_layers = 2;
    r->n_heads = 2;
    r->grad_layers = calloc(2, sizeof *r->grad_layers);
    for (int l = 0; l < 2; l++) {
        ag_layer_params_alloc(&cfg, &r->grad_layers[l], NULL);
        for (int idx = 0; idx < AG_P_COUNT; idx++)
            if (r->grad_layers[l].p[idx])
                fill(r->grad_layers[l].p[idx], ag_param_numel(&cfg, idx), &seed);
    }
    r->heads = calloc(4, sizeof *r->heads);
    for (int h = 0; h < 4; h++) {
        ag_head_report *rep = &r->heads[h];
        rep->method = h % 2 ? AG_METHOD_APPROX : AG_METHOD_EXACT;
        rep->route = h == 3 ? AG_ROUTE_PAPER : AG_ROUTE_FEATURES;
        rep->poly = h == 3 ? AG_POLY_TAYLOR : AG_POLY_CHEBYSHEV;
        rep->degree = rep->method == AG_METHOD_APPROX ? 5 + h : 0;
        rep->rank = rep->method == AG_METHOD_APPROX ? 1287 + (size_t)h : 0;
        rep->bound = 0.93 + h;
        rep->error_bound = rep->method == AG_METHOD_APPROX ? 4e-4 * (h + 1) : 0;
        rep->reason = h == 0 ? "exact cheaper by \"cost\" model\n" : "approx cheaper by cost model";
    }
    fj->ver.grad_input = 2.1e-4;
    fj->ver.layers = malloc(2 * AG_P_COUNT * sizeof(double));
    for (int i = 0; i < 2 * AG_P_COUNT; i++)
        fj->ver.layers[i] = ag_param_numel(&cfg, i % AG_P_COUNT) ? 1e-4 * (i + 1) : NAN;
}

static void free_job(fake_job *fj)
{
    ag_result *r = &fj->res;
    free(r->output);
    free(r->grad_input);
    for (int l = 0; l < r->n_layers; l++) ag_layer_params_free(&r->grad_layers[l]);
    free(r->grad_layers);
    free(r->heads);
    free(fj->ver.layers);
}

START_TEST(test_response_round_trip)
{
    for (int v = 0; v < 8; v++) {
        fake_job fj;
        int batched = v % 2, enc = (v / 2) % 2;
        ag_loss_kind loss = (v / 4) ? AG_LOSS_GRAD_OUTPUT : AG_LOSS_MSE;
        make_job(&fj, batched, loss, AG_RETURN_DEFAULT | AG_RETURN_OUTPUT, enc);
        ag_timing t = {.decode_ms = 1.2, .compute_ms = 35.0, .encode_ms = 0.0};
        size_t len;
        char *body = ag_response_encode(&fj.req, &fj.res, &fj.ver, &t, &len);
        ck_assert(body != NULL);
        ck_assert_uint_eq(len, strlen(body));

        /* Valid JSON with exactly the documented keys. */
        json_error_t je;
        json_t *j = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
        ck_assert_msg(j != NULL, "%s", je.text);
        ck_assert_uint_eq(json_object_size(j), 7);
        ck_assert(loss == AG_LOSS_GRAD_OUTPUT ? json_is_null(json_object_get(j, "loss"))
                                              : json_is_real(json_object_get(j, "loss")));
        json_t *gi = json_object_get(j, "grad_input");
        ck_assert_uint_eq(json_array_size(json_object_get(gi, "shape")), batched ? 3 : 2);
        ck_assert(json_object_get(gi, enc ? "b64" : "data") != NULL);
        json_t *m = json_object_get(j, "method");
        ck_assert_str_eq(json_string_value(json_object_get(m, "name")), "auto");
        json_t *h0 = json_array_get(json_object_get(json_array_get(json_object_get(m, "layers"), 0),
                                                    "heads"), 0);
        ck_assert_str_eq(json_string_value(json_object_get(h0, "method")), "exact");
        ck_assert_ptr_null(json_object_get(h0, "route"));
        ck_assert_int_eq(json_integer_value(json_object_get(h0, "degree")), 0);
        json_decref(j);

        ag_response resp;
        ag_proto_error err;
        ck_assert_msg(ag_response_decode(body, len, &fj.req.cfg, &resp, &err) == 0, "%s %s",
                      err.field, err.message);
        ck_assert_int_eq(resp.has_loss, loss != AG_LOSS_GRAD_OUTPUT);
        if (resp.has_loss) ck_assert(resp.loss == fj.res.loss);
        ck_assert_uint_eq(resp.batch, fj.res.batch);
        ck_assert_uint_eq(resp.n, 3);
        ck_assert_uint_eq(resp.d_model, 8);
        ck_assert_int_eq(resp.batched, batched);
        size_t io = fj.res.batch * 3 * 8;
        ck_assert(floats_equal(resp.output, fj.res.output, io));
        ck_assert(floats_equal(resp.grad_input, fj.res.grad_input, io));
        ck_assert_int_eq(resp.n_layers, 2);
        for (int l = 0; l < 2; l++)
            for (int idx = 0; idx < AG_P_COUNT; idx++)
                ck_assert(floats_equal(resp.grad_layers[l].p[idx], fj.res.grad_layers[l].p[idx],
                                       ag_param_numel(&fj.req.cfg, idx)));
        ck_assert_str_eq(resp.method_name, "auto");
        ck_assert_int_eq(resp.n_heads, 2);
        for (int h = 0; h < 4; h++) {
            const ag_head_report *a = &resp.heads[h], *b = &fj.res.heads[h];
            ck_assert_int_eq(a->method, b->method);
            ck_assert_int_eq(a->degree, b->degree);
            ck_assert_uint_eq(a->rank, b->rank);
            ck_assert(a->bound == b->bound);
            ck_assert(a->error_bound == b->error_bound);
            ck_assert_str_eq(a->reason, b->reason);
            if (a->method == AG_METHOD_APPROX) {
                ck_assert_int_eq(a->route, b->route);
                ck_assert_int_eq(a->poly, b->poly);
            }
        }
        ck_assert_int_eq(resp.has_verification, 1);
        ck_assert(resp.verification.grad_input == fj.ver.grad_input);
        for (int i = 0; i < 2 * AG_P_COUNT; i++) {
            double a = resp.verification.layers[i], b = fj.ver.layers[i];
            ck_assert(isnan(b) ? isnan(a) : a == b);
        }
        ck_assert(resp.timing.decode_ms == 1.2);
        ck_assert(resp.timing.compute_ms == 35.0);
        ck_assert(resp.timing.encode_ms == 0.0);
        /* The server patches the encode time into this exact tail. */
        ck_assert(len > 12 && memcmp(body + len - 12, "\"encode\":0}}", 12) == 0);
        ag_response_free(&resp);
        ag_response_free(&resp);
        free(body);
        free_job(&fj);
    }
}
END_TEST

START_TEST(test_response_return_mask)
{
    fake_job fj;
    make_job(&fj, 0, AG_LOSS_SUM, AG_RETURN_LOSS, AG_ENCODING_JSON);
    size_t len;
    char *body = ag_response_encode(&fj.req, &fj.res, NULL, NULL, &len);
    json_t *j = json_loadb(body, len, JSON_REJECT_DUPLICATES, NULL);
    ck_assert(j != NULL);
    ck_assert_uint_eq(json_object_size(j), 3); /* loss, method, timing_ms */
    ck_assert(json_object_get(j, "loss") && json_object_get(j, "method") &&
              json_object_get(j, "timing_ms"));
    json_decref(j);
    free(body);
    fj.req.return_mask = 0;
    body = ag_response_encode(&fj.req, &fj.res, NULL, NULL, &len);
    j = json_loadb(body, len, 0, NULL);
    ck_assert_uint_eq(json_object_size(j), 2);
    json_decref(j);
    free(body);
    free_job(&fj);
}
END_TEST

/* A non-finite result must still give valid JSON (null), which the client then refuses. */
START_TEST(test_response_non_finite)
{
    fake_job fj;
    make_job(&fj, 0, AG_LOSS_MSE, AG_RETURN_DEFAULT, AG_ENCODING_JSON);
    fj.res.loss = NAN;
    fj.res.grad_input[3] = INFINITY;
    fj.res.heads[1].bound = -INFINITY;
    size_t len;
    char *body = ag_response_encode(&fj.req, &fj.res, NULL, NULL, &len);
    json_t *j = json_loadb(body, len, JSON_REJECT_DUPLICATES, NULL);
    ck_assert(j != NULL);
    ck_assert(json_is_null(json_object_get(j, "loss")));
    ck_assert(json_is_null(json_array_get(json_object_get(json_object_get(j, "grad_input"),
                                                          "data"), 3)));
    json_decref(j);
    ag_response resp;
    ag_proto_error err;
    ck_assert_int_eq(ag_response_decode(body, len, &fj.req.cfg, &resp, &err), -1);
    ck_assert_str_eq(err.code, "invalid_response");
    ck_assert_str_eq(err.field, "grad_input.data[3]");
    free(body);
    free_job(&fj);
}
END_TEST

START_TEST(test_response_decode_errors)
{
    ag_model_config cfg = {.d_model = 8, .n_heads = 2, .n_layers = 1, .d_ff = 0,
                           .norm = AG_NORM_NONE};
    ag_response resp;
    ag_proto_error err;
    const char *e = "{\"error\": {\"code\": \"invalid_shape\", \"message\": \"layers[0].wq: bad\", "
                    "\"field\": \"layers[0].wq\"}}";
    ck_assert_int_eq(ag_response_decode(e, strlen(e), &cfg, &resp, &err), -1);
    ck_assert_str_eq(err.code, "invalid_shape");
    ck_assert_str_eq(err.field, "layers[0].wq");
    ck_assert_str_eq(err.message, "layers[0].wq: bad");
    static const char *const bad[] = {
        "", "[1]", "{\"loss\": \"x\"}",
        "{\"grad_input\": {\"shape\": [3, 7], \"data\": [1]}}",
        "{\"grad_input\": {\"shape\": [1, 8], \"data\": [1]}}",
        "{\"grad_input\": {\"shape\": [1, 8], \"b64\": \"AAAA\"}}",
        "{\"grad_weights\": []}",
        "{\"grad_weights\": [{\"wq\": {\"shape\": [8, 8], \"data\": [1]}}]}",
        "{\"method\": {\"name\": \"exact\", \"layers\": [{\"heads\": [{}]}]}}",
        "{\"method\": {\"name\": \"exact\", \"layers\": [{\"heads\": [{\"method\": \"x\"}, {}]}]}}",
        "{\"timing_ms\": {\"decode\": \"1\"}}",
        "{\"verification\": {\"grad_input\": 1, \"layers\": [1]}}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ck_assert_msg(ag_response_decode(bad[i], strlen(bad[i]), &cfg, &resp, &err) == -1,
                      "accepted %s", bad[i]);
        ck_assert_str_eq(err.code, "invalid_response");
        ck_assert_int_eq(err.http_status, 502);
        static const ag_response zero;
        ck_assert(memcmp(&resp, &zero, sizeof zero) == 0);
    }
    /* Unknown fields are ignored (the service may add fields). */
    const char *ok = "{\"loss\": 1.5, \"new_field\": {\"x\": [1, 2]}, \"method\": {\"name\": "
                     "\"exact\"}}";
    ck_assert_int_eq(ag_response_decode(ok, strlen(ok), &cfg, &resp, &err), 0);
    ck_assert(resp.has_loss && resp.loss == 1.5);
    ck_assert_str_eq(resp.method_name, "exact");
    ag_response_free(&resp);
}
END_TEST

/* ---- request encode ---------------------------------------------------------------------- */

START_TEST(test_request_round_trip)
{
    for (int v = 0; v < 12; v++) {
        req_spec s = base_spec();
        s.batched = v % 2;
        s.batch = s.batched ? 2 : 1;
        s.loss = v % 3 == 0 ? "mse" : v % 3 == 1 ? "sum" : "grad_output";
        s.layernorm = (v / 2) % 2;
        s.d_ff = (v / 3) % 2 ? 0 : 8;
        s.method = v % 4 == 0 ? "{\"name\":\"exact\"}"
                   : v % 4 == 1 ? "{\"name\":\"approx\",\"degree\":3,\"route\":\"paper\"}"
                   : v % 4 == 2 ? "{\"name\":\"auto\",\"epsilon\":0.0123,\"poly\":\"taylor\"}"
                                : NULL;
        json_t *j = make_request(&s, (uint64_t)v + 100);
        if (v % 5 == 1) set_json(j, "return", "[\"output\"]");
        if (v % 5 == 2) set_json(j, "verify", "true");
        char *body = dump(j);
        ag_request a, b;
        ag_proto_error err;
        ck_assert_msg(ag_request_decode(body, strlen(body), NULL, &a, &err) == 0, "%s", err.message);
        for (int enc = 0; enc < 2; enc++) {
            a.encoding = enc ? AG_ENCODING_B64 : AG_ENCODING_JSON;
            size_t len;
            char *out = ag_request_encode(&a, &len);
            ck_assert(out != NULL);
            ck_assert_uint_eq(len, strlen(out));
            ck_assert_msg(decode_both(out, len, NULL, 0, &b, &err) == 0, "%s %s", err.field,
                          err.message);
            assert_requests_equal(&a, &b);
            ag_request_free(&b);
            free(out);
        }
        /* The client may point loss.tensor at its own array. */
        if (a.loss_tensor) {
            float *mine = a.loss_tensor;
            a.loss_tensor = NULL;
            a.loss.tensor = mine;
            size_t len;
            char *out = ag_request_encode(&a, &len);
            ck_assert(out != NULL);
            ck_assert_int_eq(ag_request_decode(out, len, NULL, &b, &err), 0);
            ck_assert(floats_equal(b.loss_tensor, mine, a.batch * a.n * 8));
            ag_request_free(&b);
            free(out);
            a.loss_tensor = mine;
        }
        ag_request_free(&a);
        free(body);
        json_decref(j);
    }
    ag_request empty;
    memset(&empty, 0, sizeof empty);
    size_t len;
    ck_assert_ptr_null(ag_request_encode(&empty, &len));
}
END_TEST

/* ---- numbers, errors ----------------------------------------------------------------------- */

START_TEST(test_format_float9_matches_printf)
{
    uint64_t seed = 2024;
    char a[32], b[32];
    static const float edge[] = {0.0f, -0.0f, 1.0f, -1.0f, 0.1f, 1e-4f, 9.99999975e-05f, 1e-5f,
                                 123456789.0f, 999999999.0f, 1e9f, 1e10f, FLT_MAX, -FLT_MAX,
                                 FLT_MIN, 1.4e-45f, 3e-45f, 0.5f, 100000000.0f, 16777216.0f,
                                 0.000123456789f, 1e38f, 9.5e-7f};
    for (size_t i = 0; i < sizeof edge / sizeof edge[0]; i++) {
        ag_buf_format_float9(edge[i], a);
        snprintf(b, sizeof b, "%.9g", (double)edge[i]);
        ck_assert_str_eq(a, b);
    }
    for (int i = 0; i < 400000; i++) {
        uint32_t bits = (uint32_t)rng_next(&seed);
        float f;
        memcpy(&f, &bits, 4);
        if (!isfinite(f)) continue;
        if (i % 4 == 0) f = (float)(rng_float(&seed) * pow(10, (int)(rng_next(&seed) % 20) - 10));
        size_t n = ag_buf_format_float9(f, a);
        snprintf(b, sizeof b, "%.9g", (double)f);
        ck_assert_msg(strcmp(a, b) == 0, "%a: %s vs %s", (double)f, a, b);
        ck_assert_uint_eq(n, strlen(b));
        ck_assert(strtof(a, NULL) == f || (f == 0 && strtof(a, NULL) == 0));
    }
    /* Powers of ten and their neighbours (boundaries of the exponent estimate). */
    for (int e = -45; e <= 38; e++) {
        float f = (float)pow(10, e);
        float near[3] = {nextafterf(f, 0), f, nextafterf(f, INFINITY)};
        for (int k = 0; k < 3; k++) {
            if (!isfinite(near[k])) continue;
            ag_buf_format_float9(near[k], a);
            snprintf(b, sizeof b, "%.9g", (double)near[k]);
            ck_assert_msg(strcmp(a, b) == 0, "%a: %s vs %s", (double)near[k], a, b);
        }
    }
}
END_TEST

START_TEST(test_error_encode)
{
    ag_proto_error err;
    ck_assert_int_eq(ag_proto_fail(&err, 400, "invalid_shape", "layers[0].wq",
                                   "layers[0].wq: expected shape [%d,%d], got [%d,%d]", 64, 64, 64,
                                   32),
                     -1);
    size_t len;
    char *s = ag_error_encode(&err, &len);
    ck_assert_str_eq(s, "{\"error\":{\"code\":\"invalid_shape\",\"message\":\"layers[0].wq: "
                        "expected shape [64,64], got [64,32]\",\"field\":\"layers[0].wq\"}}");
    ck_assert_uint_eq(len, strlen(s));
    free(s);

    /* Quotes, control characters and a UTF-8 sequence cut by truncation stay valid JSON. */
    char msg[400];
    memset(msg, 'a', sizeof msg);
    msg[0] = '"';
    msg[1] = '\\';
    msg[2] = '\n';
    msg[3] = 1;
    memcpy(msg + 316, "\xc3\xa9\xc3\xa9", 4); /* "éé": cut at 319 bytes */
    msg[399] = '\0';
    ag_proto_fail(&err, 400, "x", "\xe2\x82", "%s", msg);
    s = ag_error_encode(&err, &len);
    json_error_t je;
    json_t *j = json_loadb(s, len, 0, &je);
    ck_assert_msg(j != NULL, "%s", je.text);
    const char *m = json_string_value(json_object_get(json_object_get(j, "error"), "message"));
    ck_assert(strncmp(m, "\"\\\n\x01", 4) == 0);
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(j, "error"), "field")),
                     "\xef\xbf\xbd\xef\xbf\xbd");
    json_decref(j);
    free(s);
}
END_TEST

/* ag_proto_error_decode reads what ag_error_encode writes, and only error bodies. */
START_TEST(test_error_decode)
{
    ag_proto_error err, back;
    ag_proto_fail(&err, 413, "too_large", "layers[2].w1", "layers[2].w1: \"big\"\n, %d", 7);
    size_t len;
    char *s = ag_error_encode(&err, &len);
    memset(&back, 0x5a, sizeof back);
    ck_assert_int_eq(ag_proto_error_decode(s, len, &back), 0);
    free(s);
    ck_assert_int_eq(back.http_status, 0); /* the caller has the HTTP status */
    ck_assert_str_eq(back.code, err.code);
    ck_assert_str_eq(back.field, err.field);
    ck_assert_str_eq(back.message, err.message);
    /* one of code and message is enough; the rest is "" */
    const char *only_code = "{\"error\": {\"code\": \"busy\"}}";
    ck_assert_int_eq(ag_proto_error_decode(only_code, strlen(only_code), &back), 0);
    ck_assert_str_eq(back.code, "busy");
    ck_assert_str_eq(back.message, "");
    ck_assert_str_eq(back.field, "");
    static const char *const not_errors[] = {
        "", "<html>502 Bad Gateway</html>", "[]", "{\"loss\": 1}", "{\"error\": \"text\"}",
        "{\"error\": {\"field\": \"x\"}}", "{\"error\": {\"code\": 3, \"message\": null}}",
    };
    for (size_t i = 0; i < sizeof not_errors / sizeof not_errors[0]; i++) {
        memset(&back, 0x5a, sizeof back);
        ck_assert_msg(ag_proto_error_decode(not_errors[i], strlen(not_errors[i]), &back) == -1,
                      "accepted %s", not_errors[i]);
        ck_assert_int_eq((unsigned char)back.code[0], 0x5a); /* untouched */
    }
    ck_assert_int_eq(ag_proto_error_decode(NULL, 0, &back), -1);
}
END_TEST

START_TEST(test_from_core)
{
    static const struct { ag_status st; int http; const char *code; } map[] = {
        {AG_ERR_INVALID, 400, "invalid_request"},
        {AG_ERR_UNREACHABLE, 400, "epsilon_unreachable"},
        {AG_ERR_LIMIT, 400, "limit_exceeded"},
        {AG_ERR_CANCELLED, 503, "cancelled"},
        {AG_ERR_NOMEM, 500, "out_of_memory"},
    };
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++) {
        ag_error ce;
        ag_error_set(&ce, map[i].st, "layers[1].wq", "reason %d", (int)i);
        ag_proto_error err;
        ag_proto_from_core(&ce, &err);
        ck_assert_int_eq(err.http_status, map[i].http);
        ck_assert_str_eq(err.code, map[i].code);
        ck_assert_str_eq(err.field, "layers[1].wq");
        char want[32];
        snprintf(want, sizeof want, "reason %d", (int)i);
        ck_assert_str_eq(err.message, want);
    }
}
END_TEST

static Suite *proto_suite(void)
{
    Suite *s = suite_create("proto");
    TCase *tc = tcase_create("decode");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_decode_base_request);
    tcase_add_test(tc, test_decode_variants);
    tcase_add_test(tc, test_json_and_b64_identical);
    tcase_add_test(tc, test_number_spellings);
    tcase_add_test(tc, test_fixtures);
    tcase_add_test(tc, test_docs_example);
    tcase_add_test(tc, test_bad_requests);
    tcase_add_test(tc, test_shape_message);
    tcase_add_test(tc, test_overflowing_number);
    tcase_add_test(tc, test_value_messages);
    suite_add_tcase(s, tc);
    tc = tcase_create("limits");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_limit_defaults);
    tcase_add_test(tc, test_custom_limits);
    tcase_add_test(tc, test_refused_before_allocation);
    tcase_add_test(tc, test_json_value_budget);
    tcase_add_test(tc, test_deep_nesting);
    suite_add_tcase(s, tc);
    tc = tcase_create("encode");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_response_round_trip);
    tcase_add_test(tc, test_response_return_mask);
    tcase_add_test(tc, test_response_non_finite);
    tcase_add_test(tc, test_response_decode_errors);
    tcase_add_test(tc, test_request_round_trip);
    tcase_add_test(tc, test_format_float9_matches_printf);
    tcase_add_test(tc, test_error_encode);
    tcase_add_test(tc, test_error_decode);
    tcase_add_test(tc, test_from_core);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(proto_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
