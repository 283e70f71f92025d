/* Dense layers (core/layers.c): each backward against central finite differences of the
 * double reference of the same layer (tests/unit/lib/ref_model.c), and the fast exp. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../../core/layers.h"
#include "lib/ref_model.h"

#define FD_H 1e-6
/* float32 forward/backward against double finite differences: roundoff ~1e-7 relative per
 * operation, sums of up to 37 terms here; observed < 1e-6. */
#define TOL 1e-5

/* ---- fast exp --------------------------------------------------------------------------- */

static double max_rel_err_expf(float lo, float hi, int base2)
{
    double worst = 0;
    /* every float in [lo, hi] would take too long: a dense stride plus the endpoints */
    for (float x = lo; x <= hi; x = nextafterf(x + (hi - lo) * 1.3e-7f, INFINITY)) {
        double want = base2 ? exp2((double)x) : exp((double)x);
        double got = base2 ? ag_exp2f(x) : ag_expf(x);
        double e = fabs(got - want) / want;
        if (e > worst) worst = e;
    }
    return worst;
}

START_TEST(test_expf_accuracy)
{
    double e = max_rel_err_expf(-87.0f, 88.0f, 0);
    ck_assert_msg(e < 2e-7, "ag_expf max relative error %.3g", e);
    e = max_rel_err_expf(-1.0f, 1.0f, 0);
    ck_assert_msg(e < 2e-7, "ag_expf max relative error near 0: %.3g", e);
    e = max_rel_err_expf(-126.0f, 127.0f, 1);
    ck_assert_msg(e < 2e-7, "ag_exp2f max relative error %.3g", e);
    ck_assert_float_eq(ag_expf(0.0f), 1.0f);
    ck_assert_float_eq(ag_exp2f(0.0f), 1.0f);
    ck_assert_float_eq(ag_exp2f(3.0f), 8.0f);
    /* very negative and -inf give exactly 0; large saturates instead of inf/nan */
    ck_assert_float_eq(ag_expf(-INFINITY), 0.0f);
    ck_assert_float_eq(ag_expf(-87.5f), 0.0f);
    ck_assert_float_eq(ag_expf(-1e30f), 0.0f);
    ck_assert_float_eq(ag_exp2f(-INFINITY), 0.0f);
    ck_assert_float_eq(ag_exp2f(-200.0f), 0.0f);
    ck_assert(isfinite(ag_expf(1e30f)) && ag_expf(1e30f) > 1e38f);
    ck_assert(isfinite(ag_exp2f(INFINITY)));
}
END_TEST

/* ---- helpers ---------------------------------------------------------------------------- */

static float *frand(size_t count, double scale, uint64_t *seed)
{
    float *a = malloc(count * sizeof *a);
    ref_fill(a, count, scale, seed);
    return a;
}

static double dot(const double *a, const double *b, size_t count)
{
    double s = 0;
    for (size_t i = 0; i < count; i++) s += a[i] * b[i];
    return s;
}

/* ---- linear ----------------------------------------------------------------------------- */

/* L(x, w, b) = <G, x w + b> in double */
static double linear_obj(const double *x, const double *w, const double *b, const double *G,
                         size_t rows, size_t din, size_t dout)
{
    double *y = malloc(rows * dout * sizeof *y);
    ref_linear(y, x, w, b, rows, din, dout);
    double l = dot(y, G, rows * dout);
    free(y);
    return l;
}

static void fd(double *t, size_t count, double *grad, double (*obj)(void *), void *ctx)
{
    for (size_t i = 0; i < count; i++) {
        double keep = t[i];
        t[i] = keep + FD_H;
        double up = obj(ctx);
        t[i] = keep - FD_H;
        double down = obj(ctx);
        t[i] = keep;
        grad[i] = (up - down) / (2 * FD_H);
    }
}

typedef struct {
    double *x, *w, *b, *G;
    size_t rows, din, dout;
} linear_ctx;

static double linear_cb(void *p)
{
    linear_ctx *c = p;
    return linear_obj(c->x, c->w, c->b, c->G, c->rows, c->din, c->dout);
}

START_TEST(test_linear)
{
    uint64_t seed = 11;
    const size_t rows = 7, din = 5, dout = 6;
    float *x = frand(rows * din, 1, &seed), *w = frand(din * dout, 1, &seed);
    float *b = frand(dout, 1, &seed), *G = frand(rows * dout, 1, &seed);
    float *y = malloc(rows * dout * sizeof *y);
    ag_linear_forward(y, x, w, b, rows, din, dout);
    linear_ctx c = {ref_widen(x, rows * din), ref_widen(w, din * dout), ref_widen(b, dout),
                    ref_widen(G, rows * dout), rows, din, dout};
    double *yr = malloc(rows * dout * sizeof *yr);
    ref_linear(yr, c.x, c.w, c.b, rows, din, dout);
    ck_assert_double_lt(ref_rel_error(y, yr, rows * dout), TOL);

    /* backward accumulates into pre-filled gradients */
    float *dx = calloc(rows * din, sizeof *dx), *dw = calloc(din * dout, sizeof *dw);
    float *db = calloc(dout, sizeof *db);
    for (size_t i = 0; i < din * dout; i++) dw[i] = 1.0f;
    ag_linear_backward(dx, dw, db, G, x, w, rows, din, dout);
    for (size_t i = 0; i < din * dout; i++) dw[i] -= 1.0f;
    double *gx = malloc(rows * din * sizeof *gx), *gw = malloc(din * dout * sizeof *gw);
    double *gb = malloc(dout * sizeof *gb);
    fd(c.x, rows * din, gx, linear_cb, &c);
    fd(c.w, din * dout, gw, linear_cb, &c);
    fd(c.b, dout, gb, linear_cb, &c);
    ck_assert_double_lt(ref_rel_error(dx, gx, rows * din), TOL);
    ck_assert_double_lt(ref_rel_error(dw, gw, din * dout), TOL);
    ck_assert_double_lt(ref_rel_error(db, gb, dout), TOL);

    /* no bias: y = x w */
    ag_linear_forward(y, x, w, NULL, rows, din, dout);
    ref_linear(yr, c.x, c.w, NULL, rows, din, dout);
    ck_assert_double_lt(ref_rel_error(y, yr, rows * dout), TOL);
    /* NULL gradients are skipped */
    ag_linear_backward(NULL, NULL, NULL, G, x, w, rows, din, dout);

    free(x); free(w); free(b); free(G); free(y); free(dx); free(dw); free(db);
    free(c.x); free(c.w); free(c.b); free(c.G); free(yr); free(gx); free(gw); free(gb);
}
END_TEST

/* ---- layernorm -------------------------------------------------------------------------- */

typedef struct {
    double *x, *gamma, *beta, *G;
    size_t rows, d;
} ln_ctx;

static double ln_cb(void *p)
{
    ln_ctx *c = p;
    double *y = malloc(c->rows * c->d * sizeof *y);
    ref_layernorm(y, c->x, c->gamma, c->beta, c->rows, c->d);
    double l = dot(y, c->G, c->rows * c->d);
    free(y);
    return l;
}

START_TEST(test_layernorm)
{
    uint64_t seed = 12;
    const size_t rows = 6, d = 9;
    float *x = frand(rows * d, 2, &seed), *gamma = frand(d, 1, &seed);
    float *beta = frand(d, 1, &seed), *G = frand(rows * d, 1, &seed);
    /* one row with an offset 100x its spread: catches a one-pass float variance */
    for (size_t j = 0; j < d; j++) x[2 * d + j] = 10.0f + 0.1f * x[2 * d + j];
    float *y = malloc(rows * d * sizeof *y), *mean = malloc(rows * sizeof *mean);
    float *rstd = malloc(rows * sizeof *rstd);
    ag_layernorm_forward(y, mean, rstd, x, gamma, beta, rows, d);
    ln_ctx c = {ref_widen(x, rows * d), ref_widen(gamma, d), ref_widen(beta, d),
                ref_widen(G, rows * d), rows, d};
    double *yr = malloc(rows * d * sizeof *yr);
    ref_layernorm(yr, c.x, c.gamma, c.beta, rows, d);
    ck_assert_double_lt(ref_rel_error(y, yr, rows * d), 1e-5);

    float *dx = calloc(rows * d, sizeof *dx), *dg = calloc(d, sizeof *dg);
    float *dbt = calloc(d, sizeof *dbt);
    ag_layernorm_backward(dx, dg, dbt, G, x, mean, rstd, gamma, rows, d);
    double *gx = malloc(rows * d * sizeof *gx), *gg = malloc(d * sizeof *gg);
    double *gb = malloc(d * sizeof *gb);
    fd(c.x, rows * d, gx, ln_cb, &c);
    fd(c.gamma, d, gg, ln_cb, &c);
    fd(c.beta, d, gb, ln_cb, &c);
    /* the offset row: its rstd is ~10 and the float mean is off by ~6e-7 (5e-6 of the row's
     * spread), which dominates; observed ~1e-6 */
    double ex = ref_rel_error(dx, gx, rows * d);
    ck_assert_msg(ex < 1e-4, "layernorm dx error %.3g", ex);
    ck_assert_double_lt(ref_rel_error(dg, gg, d), 1e-4);
    ck_assert_double_lt(ref_rel_error(dbt, gb, d), TOL);

    free(x); free(gamma); free(beta); free(G); free(y); free(mean); free(rstd);
    free(c.x); free(c.gamma); free(c.beta); free(c.G); free(yr);
    free(dx); free(dg); free(dbt); free(gx); free(gg); free(gb);
}
END_TEST

/* ---- activations -------------------------------------------------------------------------- */

static void check_activation(ag_activation act)
{
    /* values across the interesting range, none within FD_H of ReLU's kink */
    const size_t count = 401;
    float *x = malloc(count * sizeof *x), *y = malloc(count * sizeof *y);
    float *G = malloc(count * sizeof *G), *dx = malloc(count * sizeof *dx);
    uint64_t seed = 13;
    for (size_t i = 0; i < count; i++) x[i] = -10.0f + 20.0f * (float)i / (float)(count - 1) + 0.0123f;
    ref_fill(G, count, 1.0, &seed);
    if (act == AG_ACT_GELU) ag_gelu_forward(y, x, count);
    else ag_relu_forward(y, x, count);
    double worst_y = 0, num = 0, den = 0;
    for (size_t i = 0; i < count; i++) {
        double xd = x[i], want = ref_activation(act, xd);
        double e = fabs(y[i] - want) / (fabs(want) + 1e-3);
        if (e > worst_y) worst_y = e;
        dx[i] = 0.5f; /* accumulates */
    }
    ck_assert_msg(worst_y < 1e-6, "activation %d forward error %.3g", act, worst_y);
    if (act == AG_ACT_GELU) ag_gelu_backward(dx, G, x, count);
    else ag_relu_backward(dx, G, x, count);
    for (size_t i = 0; i < count; i++) {
        double xd = x[i];
        double g = (ref_activation(act, xd + FD_H) - ref_activation(act, xd - FD_H)) / (2 * FD_H);
        double want = G[i] * g, got = dx[i] - 0.5;
        num += (got - want) * (got - want);
        den += want * want;
    }
    ck_assert_msg(sqrt(num / den) < TOL, "activation %d backward error %.3g", act,
                  sqrt(num / den));
    /* aliasing y = x is allowed */
    memcpy(y, x, count * sizeof *y);
    if (act == AG_ACT_GELU) ag_gelu_forward(y, y, count);
    else ag_relu_forward(y, y, count);
    for (size_t i = 0; i < count; i++)
        ck_assert_double_lt(fabs(y[i] - ref_activation(act, x[i])), 1e-5 * (1 + fabs(y[i])));
    free(x); free(y); free(G); free(dx);
}

START_TEST(test_gelu) { check_activation(AG_ACT_GELU); }
END_TEST

START_TEST(test_relu) { check_activation(AG_ACT_RELU); }
END_TEST

START_TEST(test_gelu_extremes)
{
    float x[] = {-1e4f, -100.0f, -20.0f, 0.0f, 20.0f, 100.0f, 1e4f}, y[7], dx[7] = {0};
    float G[7] = {1, 1, 1, 1, 1, 1, 1};
    ag_gelu_forward(y, x, 7);
    ag_gelu_backward(dx, G, x, 7);
    for (int i = 0; i < 7; i++) {
        ck_assert(isfinite(y[i]) && isfinite(dx[i]));
        ck_assert_double_lt(fabs(y[i] - ref_activation(AG_ACT_GELU, x[i])), 1e-6 * (1 + fabs(x[i])));
    }
    ck_assert_float_eq(dx[3], 0.5f);
    ck_assert_double_lt(fabs(dx[6] - 1.0f), 1e-6);
    ck_assert_double_lt(fabs(dx[0]), 1e-6);
}
END_TEST

START_TEST(test_residual)
{
    float a[5] = {1, 2, 3, 4, 5}, b[5] = {5, 4, 3, 2, 1}, y[5], da[5] = {1, 1, 1, 1, 1};
    ag_residual_forward(y, a, b, 5);
    for (int i = 0; i < 5; i++) ck_assert_float_eq(y[i], 6.0f);
    ag_residual_backward(da, b, 5);
    for (int i = 0; i < 5; i++) ck_assert_float_eq(da[i], 1.0f + b[i]);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("layers");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_expf_accuracy);
    tcase_add_test(tc, test_linear);
    tcase_add_test(tc, test_layernorm);
    tcase_add_test(tc, test_gelu);
    tcase_add_test(tc, test_relu);
    tcase_add_test(tc, test_gelu_extremes);
    tcase_add_test(tc, test_residual);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
