/* PyTorch oracle: every fixture of tests/oracle/fixtures (made by make_fixtures.py, torch
 * float64) through ag_gradients; output, loss and every gradient within 1e-4 relative
 * Frobenius error. Fixtures are read with jansson directly, not through proto/, so that this
 * test checks the core alone. Directory: $ALTGRAD_FIXTURES, default tests/oracle/fixtures. */
#include <check.h>
#include <dirent.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../core/altgrad.h"

#define TOL 1e-4
#define MIN_FIXTURES 8

static const char *fixture_dir(void)
{
    const char *d = getenv("ALTGRAD_FIXTURES");
    return d && *d ? d : "tests/oracle/fixtures";
}

/* A tensor's data as doubles; fills shape/ndim. NULL on a malformed tensor. */
static double *tensor_data(json_t *t, size_t shape[3], int *ndim, size_t *count)
{
    json_t *sh = json_object_get(t, "shape"), *data = json_object_get(t, "data");
    if (!json_is_array(sh) || !json_is_array(data) || json_array_size(sh) > 3) return NULL;
    *ndim = (int)json_array_size(sh);
    *count = 1;
    for (int i = 0; i < *ndim; i++) {
        shape[i] = (size_t)json_integer_value(json_array_get(sh, (size_t)i));
        *count *= shape[i];
    }
    if (json_array_size(data) != *count) return NULL;
    double *out = malloc(*count * sizeof *out);
    for (size_t i = 0; i < *count; i++) out[i] = json_number_value(json_array_get(data, i));
    return out;
}

static float *narrow(const double *d, size_t count)
{
    float *f = malloc(count * sizeof *f);
    for (size_t i = 0; i < count; i++) f[i] = (float)d[i];
    return f;
}

static double rel_err(const float *got, const double *want, size_t count)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < count; i++) {
        num += ((double)got[i] - want[i]) * ((double)got[i] - want[i]);
        den += want[i] * want[i];
    }
    return sqrt(num) / (den > 0 ? sqrt(den) : 1e-300);
}

static ag_norm norm_of(const char *s) { return strcmp(s, "layernorm") == 0 ? AG_NORM_LAYERNORM : AG_NORM_NONE; }
static ag_activation act_of(const char *s) { return strcmp(s, "relu") == 0 ? AG_ACT_RELU : AG_ACT_GELU; }

/* Runs one fixture; returns its worst relative error. */
static double run_fixture(const char *path)
{
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    ck_assert_msg(root != NULL, "%s: %s", path, jerr.text);
    json_t *req = json_object_get(root, "request"), *exp = json_object_get(root, "expected");
    json_t *model = json_object_get(req, "model");
    ag_model_config cfg = {
        .d_model = (int)json_integer_value(json_object_get(model, "d_model")),
        .n_heads = (int)json_integer_value(json_object_get(model, "n_heads")),
        .n_layers = (int)json_integer_value(json_object_get(model, "n_layers")),
        .d_ff = (int)json_integer_value(json_object_get(model, "d_ff")),
        .causal = json_is_true(json_object_get(model, "causal")),
        .norm = norm_of(json_string_value(json_object_get(model, "norm"))),
        .activation = act_of(json_string_value(json_object_get(model, "activation"))),
        .residual = json_is_true(json_object_get(model, "residual")),
    };
    ck_assert_int_eq(ag_model_config_check(&cfg, NULL), AG_OK);
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(req, "method"), "name")),
                     "exact");

    json_t *jl = json_object_get(req, "layers");
    ck_assert_uint_eq(json_array_size(jl), (size_t)cfg.n_layers);
    ag_layer_params *layers = calloc((size_t)cfg.n_layers, sizeof *layers);
    for (int l = 0; l < cfg.n_layers; l++) {
        ck_assert_int_eq(ag_layer_params_alloc(&cfg, &layers[l], NULL), AG_OK);
        const char *key;
        json_t *val;
        int seen = 0;
        json_object_foreach(json_array_get(jl, (size_t)l), key, val) {
            int idx = ag_param_index(key);
            size_t want[2], shape[3], count;
            int nd;
            ck_assert_msg(idx >= 0, "%s: unknown parameter %s", path, key);
            int wnd = ag_param_shape(&cfg, idx, want);
            double *d = tensor_data(val, shape, &nd, &count);
            ck_assert_msg(d && nd == wnd && shape[0] == want[0] && (nd == 1 || shape[1] == want[1]),
                          "%s: layers[%d].%s has the wrong shape", path, l, key);
            for (size_t i = 0; i < count; i++) layers[l].p[idx][i] = (float)d[i];
            free(d);
            seen++;
        }
        int used = 0;
        for (int i = 0; i < AG_P_COUNT; i++) used += ag_param_numel(&cfg, i) > 0;
        ck_assert_int_eq(seen, used);
    }

    size_t shape[3], count;
    int nd;
    double *xin = tensor_data(json_object_get(req, "input"), shape, &nd, &count);
    ck_assert(xin && (nd == 2 || nd == 3));
    size_t batch = nd == 3 ? shape[0] : 1, n = nd == 3 ? shape[1] : shape[0];
    ck_assert_uint_eq(count, batch * n * (size_t)cfg.d_model);
    float *input = narrow(xin, count);

    json_t *jloss = json_object_get(req, "loss");
    const char *type = json_string_value(json_object_get(jloss, "type"));
    ag_loss loss = {.kind = AG_LOSS_SUM, .tensor = NULL};
    float *ltensor = NULL;
    if (strcmp(type, "sum") != 0) {
        int mse = strcmp(type, "mse") == 0;
        loss.kind = mse ? AG_LOSS_MSE : AG_LOSS_GRAD_OUTPUT;
        size_t ls[3], lc;
        int lnd;
        double *t = tensor_data(json_object_get(jloss, mse ? "target" : "grad"), ls, &lnd, &lc);
        ck_assert(t && lc == count);
        ltensor = narrow(t, lc);
        free(t);
        loss.tensor = ltensor;
    }

    ag_method method = ag_method_default(AG_METHOD_EXACT);
    ag_run_opts opts = {.threads = 2, .want_output = 1};
    ag_result res;
    ag_error err = {0};
    ck_assert_msg(ag_gradients(&cfg, layers, input, batch, n, &loss, &method, &opts, &res,
                               &err) == AG_OK, "%s: %s", path, err.message);

    double worst = 0, e;
    json_t *jl_exp = json_object_get(exp, "loss");
    if (json_is_null(jl_exp)) {
        ck_assert_int_eq(res.has_loss, 0);
    } else {
        double want = json_number_value(jl_exp);
        ck_assert_int_eq(res.has_loss, 1);
        e = fabs(res.loss - want) / fmax(fabs(want), 1e-12);
        ck_assert_msg(e <= TOL, "%s: loss %.9g, expected %.9g", path, res.loss, want);
        if (e > worst) worst = e;
    }
    const char *names[2] = {"output", "grad_input"};
    const float *got[2] = {res.output, res.grad_input};
    for (int k = 0; k < 2; k++) {
        size_t es[3], ec;
        int end;
        double *want = tensor_data(json_object_get(exp, names[k]), es, &end, &ec);
        ck_assert(want && ec == count && end == nd);
        e = rel_err(got[k], want, ec);
        ck_assert_msg(e <= TOL, "%s: %s error %.3g", path, names[k], e);
        if (e > worst) worst = e;
        free(want);
    }
    json_t *gw = json_object_get(exp, "grad_weights");
    for (int l = 0; l < cfg.n_layers; l++) {
        const char *key;
        json_t *val;
        json_object_foreach(json_array_get(gw, (size_t)l), key, val) {
            int idx = ag_param_index(key);
            size_t es[3], ec;
            int end;
            double *want = tensor_data(val, es, &end, &ec);
            ck_assert(idx >= 0 && want && ec == ag_param_numel(&cfg, idx));
            e = rel_err(res.grad_layers[l].p[idx], want, ec);
            ck_assert_msg(e <= TOL, "%s: layers[%d].%s gradient error %.3g", path, l, key, e);
            if (e > worst) worst = e;
            free(want);
        }
    }

    ag_result_free(&res);
    for (int l = 0; l < cfg.n_layers; l++) ag_layer_params_free(&layers[l]);
    free(layers);
    free(xin);
    free(input);
    free(ltensor);
    json_decref(root);
    return worst;
}

START_TEST(test_fixtures)
{
    DIR *dir = opendir(fixture_dir());
    ck_assert_msg(dir != NULL, "no fixture directory %s (run from the repository root or set "
                  "ALTGRAD_FIXTURES)", fixture_dir());
    int count = 0;
    struct dirent *de;
    while ((de = readdir(dir))) {
        size_t len = strlen(de->d_name);
        if (len < 6 || strcmp(de->d_name + len - 5, ".json") != 0) continue;
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", fixture_dir(), de->d_name);
        double worst = run_fixture(path);
        printf("  %-40s worst relative error %.2e\n", de->d_name, worst);
        count++;
    }
    closedir(dir);
    ck_assert_msg(count >= MIN_FIXTURES, "only %d fixtures in %s", count, fixture_dir());
}
END_TEST

int main(void)
{
    Suite *s = suite_create("oracle");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_fixtures);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK); /* the per-fixture lines go straight to stdout */
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
