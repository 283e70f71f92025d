/* The whole model with approximate attention (core/model.c driving core/attention_approx.c)
 * against the same model with exact attention: every gradient (input and every weight) within
 * MODEL_FACTOR times the largest reported per-head error bound, for causal and non-causal,
 * one and several heads, several layers with layernorm, MLP and residual; errors shrink as the
 * degree grows; the method block reports what was done; approx refuses what it cannot bound
 * and auto falls back to exact.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../core/altgrad.h"
#include "lib/model_case.h"
#include "lib/ref_model.h"

/* Measured: gradient errors <= 2.4x the largest per-head bound over the cases below
 * (AG_TEST_VERBOSE=1 prints them). The bound is for one attention matrix; through layers and
 * heads the model-level factor stays small because each head's error enters linearly. */
#define MODEL_FACTOR 8.0

/* Runs exact and approx (epsilon or fixed degree), checks reports and errors; returns the
 * worst gradient error and stores the largest bound in *bound. */
static double compare_case(const mcase *m, double eps, int degree, double *bound)
{
    ag_result ex = {0}, ap = {0};
    ag_error err = {0};
    ag_method exact = ag_method_default(AG_METHOD_EXACT);
    ag_method approx = ag_method_default(AG_METHOD_APPROX);
    if (degree) approx.degree = degree;
    else approx.epsilon = eps;
    ck_assert_msg(mcase_run(m, &exact, &ex, &err) == AG_OK, "exact: %s", err.message);
    ck_assert_msg(mcase_run(m, &approx, &ap, &err) == AG_OK, "approx: %s", err.message);
    for (int i = 0; i < ap.n_layers * ap.n_heads; i++) {
        const ag_head_report *h = &ap.heads[i];
        ck_assert_int_eq(h->method, AG_METHOD_APPROX);
        ck_assert_int_eq(h->route, AG_ROUTE_FEATURES);
        ck_assert_int_ge(h->degree, 1);
        ck_assert_uint_gt(h->rank, 0);
        ck_assert_double_gt(h->bound, 0);
        ck_assert_double_gt(h->error_bound, 0);
        if (!degree) ck_assert_double_le(h->error_bound, eps);
        ck_assert_int_eq(ex.heads[i].method, AG_METHOD_EXACT);
        /* the same R, up to what the approximation changed in earlier layers */
        ck_assert_double_eq_tol(ex.heads[i].bound, h->bound, 1e-3 * h->bound);
    }
    *bound = max_bound(&ap);
    const char *which;
    double e = worst_grad_error(m, &ap, &ex, &which);
    double eo = ag_rel_error(ap.output, ex.output, m->batch * m->n * (size_t)m->cfg.d_model);
    if (mcase_verbose())
        fprintf(stderr, "model L=%d H=%d dh=%d causal=%d ln=%d ff=%d res=%d n=%zu: R<=%.2f "
                "deg %d bound %.2e: output %.2e worst grad %.2e (%s, %.2fx)\n",
                m->cfg.n_layers, m->cfg.n_heads, m->cfg.d_model / m->cfg.n_heads, m->cfg.causal,
                m->cfg.norm, m->cfg.d_ff, m->cfg.residual, m->n, ap.heads[0].bound,
                ap.heads[0].degree, *bound, eo, e, which, e / *bound);
    ck_assert_double_le(eo, 2 * *bound / (1 - *bound) * 4);
    ag_result_free(&ex);
    ag_result_free(&ap);
    return e;
}

static ag_model_config config(int d_model, int heads, int layers, int d_ff, int causal, int ln,
                              int residual)
{
    ag_model_config c = {.d_model = d_model, .n_heads = heads, .n_layers = layers, .d_ff = d_ff,
                         .causal = causal, .norm = ln ? AG_NORM_LAYERNORM : AG_NORM_NONE,
                         .activation = AG_ACT_GELU, .residual = residual};
    return c;
}

START_TEST(test_model_within_bound)
{
    /* causal chunks are up to 224 rows at d_head 8 (exact inside): n exceeds them; with
     * layernorm the attention inputs are larger, so its weights are scaled down for R ~ 1 */
    struct {
        ag_model_config cfg;
        size_t batch, n;
        double wscale;
    } cases[] = {
        {config(8, 1, 1, 0, 0, 0, 0), 1, 300, 1.0},    /* one head, bare attention */
        {config(8, 1, 1, 0, 1, 0, 0), 1, 300, 1.0},
        {config(16, 4, 1, 0, 0, 0, 1), 2, 150, 1.0},   /* four heads of 4, residual */
        {config(16, 4, 1, 0, 1, 0, 1), 2, 150, 1.0},
        {config(16, 2, 2, 32, 0, 1, 1), 2, 260, 0.55}, /* two layers: layernorm, MLP, residual */
        {config(16, 2, 2, 32, 1, 1, 1), 2, 260, 0.55},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        mcase m;
        mcase_make(&m, cases[i].cfg, cases[i].batch, cases[i].n, cases[i].wscale, 100 + i);
        double bound;
        double e = compare_case(&m, 1e-3, 0, &bound);
        ck_assert_msg(e <= MODEL_FACTOR * bound, "case %zu: gradient error %.3e > %g x bound %.3e",
                      i, e, MODEL_FACTOR, bound);
        mcase_free(&m);
    }
}
END_TEST

START_TEST(test_model_error_decreases_with_degree)
{
    for (int causal = 0; causal < 2; causal++) {
        mcase m;
        mcase_make(&m, config(16, 2, 2, 32, causal, 1, 1), 1, 260, 0.55, 200 + causal);
        double prev = INFINITY, bound;
        for (int g = 3; g <= 7; g += 2) {
            double e = compare_case(&m, 0, g, &bound);
            ck_assert_msg(e < prev / 3, "causal=%d g=%d: %.3e after %.3e", causal, g, e, prev);
            ck_assert_double_le(e, MODEL_FACTOR * bound);
            prev = e;
        }
        mcase_free(&m);
    }
}
END_TEST

START_TEST(test_model_refuses_and_falls_back)
{
    mcase m;
    mcase_make(&m, config(16, 2, 1, 0, 0, 0, 1), 1, 64, 12.0, 300); /* large scores */
    ag_result res = {0}, ex = {0};
    ag_error err = {0};
    ag_method approx = ag_method_default(AG_METHOD_APPROX);
    ck_assert_int_eq(mcase_run(&m, &approx, &res, &err), AG_ERR_UNREACHABLE);
    ck_assert_ptr_nonnull(strstr(err.message, "R = "));
    ck_assert_ptr_null(res.grad_input);
    ag_method autom = ag_method_default(AG_METHOD_AUTO);
    ck_assert_int_eq(mcase_run(&m, &autom, &res, &err), AG_OK);
    for (int i = 0; i < res.n_layers * res.n_heads; i++) {
        ck_assert_int_eq(res.heads[i].method, AG_METHOD_EXACT);
        ck_assert_str_eq(res.heads[i].reason, "R too large for float32");
    }
    ag_method exact = ag_method_default(AG_METHOD_EXACT);
    ck_assert_int_eq(mcase_run(&m, &exact, &ex, &err), AG_OK);
    const char *which;
    ck_assert_double_eq(worst_grad_error(&m, &res, &ex, &which), 0);
    ag_result_free(&res);
    ag_result_free(&ex);
    mcase_free(&m);
    /* small R but a short sequence: auto keeps exact, by the cost model */
    mcase_make(&m, config(16, 2, 1, 0, 0, 0, 1), 1, 64, 1.0, 301);
    ck_assert_int_eq(mcase_run(&m, &autom, &res, &err), AG_OK);
    ck_assert_int_eq(res.heads[0].method, AG_METHOD_EXACT);
    ck_assert_str_eq(res.heads[0].reason, "exact cheaper by cost model");
    ag_result_free(&res);
    mcase_free(&m);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("approx_model");
    TCase *tc = tcase_create("approx_model");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_model_within_bound);
    tcase_add_test(tc, test_model_error_decreases_with_degree);
    tcase_add_test(tc, test_model_refuses_and_falls_back);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
