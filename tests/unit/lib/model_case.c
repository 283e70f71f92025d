#include <check.h>
#include <math.h>
#include <stdlib.h>

#include "model_case.h"
#include "ref_model.h"

int mcase_verbose(void)
{
    const char *v = getenv("AG_TEST_VERBOSE");
    return v && *v && *v != '0';
}

/* Random model; attention weights scaled by wscale / sqrt(d_model), so that the score bound R
 * after centring is about 1 for wscale 1 (the headline regime). */
void mcase_make(mcase *m, ag_model_config cfg, size_t batch, size_t n, double wscale,
                uint64_t seed)
{
    m->cfg = cfg;
    m->batch = batch;
    m->n = n;
    m->layers = calloc((size_t)cfg.n_layers, sizeof *m->layers);
    uint64_t s = seed;
    double dm = cfg.d_model;
    for (int l = 0; l < cfg.n_layers; l++) {
        ck_assert_int_eq(ag_layer_params_alloc(&cfg, &m->layers[l], NULL), AG_OK);
        for (int i = 0; i < AG_P_COUNT; i++) {
            float *p = m->layers[l].p[i];
            size_t count = ag_param_numel(&cfg, i);
            if (!p) continue;
            double sc = 1 / sqrt(dm);
            if (i == AG_P_WQ || i == AG_P_WK) sc = wscale / sqrt(dm);
            if (i == AG_P_W2) sc = 1 / sqrt((double)cfg.d_ff);
            ref_fill(p, count, sc, &s);
            if (i == AG_P_LN1_GAMMA || i == AG_P_LN2_GAMMA)
                for (size_t k = 0; k < count; k++) p[k] = 1 + 0.2f * p[k];
            if (i == AG_P_B1 || i == AG_P_B2 || i == AG_P_LN1_BETA || i == AG_P_LN2_BETA)
                for (size_t k = 0; k < count; k++) p[k] *= 0.3f;
        }
    }
    size_t count = batch * n * (size_t)cfg.d_model;
    m->input = malloc(count * sizeof *m->input);
    m->grad_out = malloc(count * sizeof *m->grad_out);
    ref_fill(m->input, count, 1.0, &s);
    ref_fill(m->grad_out, count, 1.0, &s);
    m->loss = (ag_loss){.kind = AG_LOSS_GRAD_OUTPUT, .tensor = m->grad_out};
}

void mcase_free(mcase *m)
{
    for (int l = 0; l < m->cfg.n_layers; l++) ag_layer_params_free(&m->layers[l]);
    free(m->layers);
    free(m->input);
    free(m->grad_out);
}

ag_status mcase_run(const mcase *m, const ag_method *method, ag_result *res, ag_error *err)
{
    ag_run_opts opts = {.threads = 2, .want_output = 1};
    return ag_gradients(&m->cfg, m->layers, m->input, m->batch, m->n, &m->loss, method, &opts,
                        res, err);
}

/* Largest relative error over grad_input and every weight gradient of a against b. */
double worst_grad_error(const mcase *m, const ag_result *a, const ag_result *b,
                               const char **which)
{
    size_t count = m->batch * m->n * (size_t)m->cfg.d_model;
    double worst = ag_rel_error(a->grad_input, b->grad_input, count);
    *which = "grad_input";
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int i = 0; i < AG_P_COUNT; i++) {
            size_t c = ag_param_numel(&m->cfg, i);
            if (!c) continue;
            double e = ag_rel_error(a->grad_layers[l].p[i], b->grad_layers[l].p[i], c);
            if (e > worst) {
                worst = e;
                *which = ag_param_name(i);
            }
        }
    return worst;
}

double max_bound(const ag_result *r)
{
    double b = 0;
    for (int i = 0; i < r->n_layers * r->n_heads; i++)
        if (r->heads[i].error_bound > b) b = r->heads[i].error_bound;
    return b;
}
