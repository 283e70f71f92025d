/* Polynomial approximation of e^x (core/poly.c): the a-priori bounds hold on a fine grid and
 * are tight, degree selection is minimal, and hopeless score bounds are refused. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../core/approx_internal.h"
#include "../../core/poly.h"

static const double RS[] = {0.5, 1, 2, 3};

/* max |p(x) - e^x| / e^x on an M-point grid not aligned with the bound's own grid, evaluated
 * in long double so that the check's rounding stays far below the bound's margin. */
static double measured_rel_error(const double *coef, int g, double R, int M)
{
    long double worst = 0;
    for (int i = 0; i <= M; i++) {
        long double x = -R + 2.0L * R * (i + 0.5L * sinl(i)) / M; /* jittered, may touch +-R */
        if (x < -R) x = -R;
        if (x > R) x = R;
        long double p = coef[g];
        for (int k = g - 1; k >= 0; k--) p = p * x + coef[k];
        long double r = fabsl(p * expl(-x) - 1);
        if (r > worst) worst = r;
    }
    return (double)worst;
}

START_TEST(test_bound_holds_and_is_tight)
{
    for (int kind = 0; kind < 2; kind++) {
        for (size_t ri = 0; ri < sizeof RS / sizeof RS[0]; ri++) {
            for (int g = 1; g <= 15; g++) {
                double R = RS[ri], coef[AG_MAX_DEGREE + 1];
                ck_assert_int_eq(ag_poly_fit((ag_poly)kind, g, R, coef), 0);
                double bound = ag_poly_rel_bound((ag_poly)kind, g, R);
                double meas = measured_rel_error(coef, g, R, 60000);
                ck_assert_msg(meas <= bound, "%s R=%g g=%d: measured %.3e > bound %.3e",
                              kind ? "taylor" : "chebyshev", R, g, meas, bound);
                /* not vacuous: within 2x of the truth (plus the double-rounding margin) */
                ck_assert_msg(bound <= 2 * meas + 1e-11, "%s R=%g g=%d: bound %.3e vs %.3e",
                              kind ? "taylor" : "chebyshev", R, g, bound, meas);
            }
        }
    }
}
END_TEST

START_TEST(test_chebyshev_interpolates_at_nodes)
{
    for (size_t ri = 0; ri < sizeof RS / sizeof RS[0]; ri++) {
        for (int g = 1; g <= AG_MAX_DEGREE; g++) {
            double R = RS[ri], coef[AG_MAX_DEGREE + 1];
            ck_assert_int_eq(ag_poly_fit(AG_POLY_CHEBYSHEV, g, R, coef), 0);
            for (int k = 0; k <= g; k++) {
                double x = R * cos(M_PI * (k + 0.5) / (g + 1));
                double rel = fabs(ag_poly_eval(coef, g, x) * exp(-x) - 1);
                ck_assert_msg(rel < 1e-11, "R=%g g=%d node %d: %.3e", R, g, k, rel);
            }
        }
    }
}
END_TEST

START_TEST(test_taylor_coefficients)
{
    double coef[AG_MAX_DEGREE + 1];
    ck_assert_int_eq(ag_poly_fit(AG_POLY_TAYLOR, 6, 1.0, coef), 0);
    double f = 1;
    for (int k = 0; k <= 6; k++) {
        if (k) f /= k;
        ck_assert_double_eq_tol(coef[k], f, 1e-15);
    }
    for (int k = 7; k <= AG_MAX_DEGREE; k++) ck_assert_double_eq(coef[k], 0);
}
END_TEST

static int min_degree(ag_poly kind, double R, double eps)
{
    for (int g = 1; g <= AG_MAX_DEGREE; g++)
        if (ag_poly_rel_bound(kind, g, R) <= eps) return g;
    return AG_MAX_DEGREE + 1;
}

START_TEST(test_chebyshev_needs_lower_degree)
{
    /* the measured table of docs/paper_notes.md, which the near-tight bounds reproduce */
    ck_assert_int_eq(min_degree(AG_POLY_CHEBYSHEV, 1, 1e-3), 5);
    ck_assert_int_eq(min_degree(AG_POLY_CHEBYSHEV, 2, 1e-3), 7);
    ck_assert_int_eq(min_degree(AG_POLY_CHEBYSHEV, 3, 1e-4), 10);
    ck_assert_int_eq(min_degree(AG_POLY_TAYLOR, 1, 1e-3), 6);
    for (double R = 2; R <= 3; R += 1) {
        int c = min_degree(AG_POLY_CHEBYSHEV, R, 1e-3), t = min_degree(AG_POLY_TAYLOR, R, 1e-3);
        ck_assert_msg(c <= 0.75 * t, "R=%g: chebyshev %d taylor %d", R, c, t);
    }
}
END_TEST

START_TEST(test_degree_selection_is_minimal)
{
    const double rs[] = {0.05, 0.3, 0.5, 1, 1.5, 2, 2.5};
    const double eps[] = {1e-2, 1e-3, 2e-4};
    const size_t d = 8, n = 4096;
    for (int kind = 0; kind < 2; kind++) {
        for (size_t i = 0; i < sizeof rs / sizeof rs[0]; i++) {
            for (size_t e = 0; e < sizeof eps / sizeof eps[0]; e++) {
                ag_method m = ag_method_default(AG_METHOD_APPROX);
                m.poly = (ag_poly)kind;
                m.epsilon = eps[e];
                ag_head_plan plan;
                ag_error err = {0};
                ag_status st = ag_head_plan_choose(&m, d, n, 0, rs[i], NULL, SIZE_MAX / 2, &plan,
                                                   &err);
                if (st != AG_OK) { /* only float32 may refuse, and only at the largest R */
                    ck_assert_int_eq(st, AG_ERR_UNREACHABLE);
                    ck_assert_double_ge(rs[i], 2);
                    continue;
                }
                int g = plan.report.degree;
                ck_assert_int_eq(plan.report.method, AG_METHOD_APPROX);
                ck_assert_uint_eq(plan.report.rank, ag_poly_rank(d, g));
                ck_assert_double_le(plan.report.error_bound, eps[e]);
                double coef[AG_MAX_DEGREE + 1];
                ck_assert_int_eq(ag_poly_fit((ag_poly)kind, g, rs[i], coef), 0);
                double total = ag_poly_rel_bound((ag_poly)kind, g, rs[i]) +
                               ag_poly_float_bound(coef, g, rs[i], d, n);
                ck_assert_double_eq_tol(plan.report.error_bound, total, 1e-15);
                for (int k = 0; k <= g; k++) ck_assert_double_eq(plan.coef[k], coef[k]);
                if (g > 1) { /* one degree less does not meet epsilon */
                    ck_assert_int_eq(ag_poly_fit((ag_poly)kind, g - 1, rs[i], coef), 0);
                    double below = ag_poly_rel_bound((ag_poly)kind, g - 1, rs[i]) +
                                   ag_poly_float_bound(coef, g - 1, rs[i], d, n);
                    ck_assert_msg(below > eps[e], "R=%g eps=%g: degree %d would do (%.3e)",
                                  rs[i], eps[e], g - 1, below);
                }
            }
        }
    }
}
END_TEST

START_TEST(test_unreachable_at_large_R)
{
    const double big[] = {6, 12, 31, 1e6, INFINITY, NAN};
    for (size_t i = 0; i < sizeof big / sizeof big[0]; i++) {
        ag_method m = ag_method_default(AG_METHOD_APPROX);
        ag_head_plan plan;
        ag_error err = {0};
        ag_status st = ag_head_plan_choose(&m, 8, 8192, 0, big[i], NULL, 0, &plan, &err);
        ck_assert_int_eq(st, AG_ERR_UNREACHABLE);
        ck_assert_str_eq(err.field, "method");
        if (isfinite(big[i])) {
            ck_assert_ptr_nonnull(strstr(err.message, "R = "));
            ck_assert_ptr_nonnull(strstr(err.message, "float32"));
            ck_assert_str_eq(plan.report.reason, "R too large for float32");
        }
        m.kind = AG_METHOD_AUTO;
        st = ag_head_plan_choose(&m, 8, 8192, 0, big[i], NULL, 0, &plan, &err);
        ck_assert_int_eq(st, AG_OK);
        ck_assert_int_eq(plan.report.method, AG_METHOD_EXACT);
        ck_assert_ptr_nonnull(plan.report.reason);
    }
    /* epsilon below the float32 floor at a moderate R: the message names both */
    ag_method m = ag_method_default(AG_METHOD_APPROX);
    m.epsilon = 1e-6;
    ag_head_plan plan;
    ag_error err = {0};
    ck_assert_int_eq(ag_head_plan_choose(&m, 4, 1024, 0, 2.0, NULL, 0, &plan, &err),
                     AG_ERR_UNREACHABLE);
    ck_assert_ptr_nonnull(strstr(err.message, "1e-06"));
    ck_assert_ptr_nonnull(strstr(err.message, "R = 2"));
    /* the float32 term is what refuses it: the polynomial alone could reach 1e-6 */
    ck_assert_double_le(ag_poly_rel_bound(AG_POLY_CHEBYSHEV, 14, 2.0), 1e-6);
}
END_TEST

START_TEST(test_float_bound_grows_with_R)
{
    double prev = 0;
    for (double R = 0.5; R <= 5; R += 0.5) {
        double coef[AG_MAX_DEGREE + 1];
        ag_poly_fit(AG_POLY_CHEBYSHEV, 8, R, coef);
        double fb = ag_poly_float_bound(coef, 8, R, 8, 4096);
        ck_assert_double_gt(fb, prev);
        /* about u e^{2R} times a modest factor, plus the summation's sqrt(rank) u e^R */
        ck_assert_double_ge(fb, AG_FLOAT_U * exp(2 * R) * 0.5);
        ck_assert_double_le(fb, AG_FLOAT_U * (exp(2 * R) * 100 + 4 * sqrt(12870.0) * exp(R)));
        prev = fb;
    }
    ck_assert(isinf(ag_poly_float_bound((double[AG_MAX_DEGREE + 1]){1}, 1, 31, 9, 10)));
}
END_TEST

START_TEST(test_rank)
{
    ck_assert_uint_eq(ag_poly_rank(8, 5), 1287);
    ck_assert_uint_eq(ag_poly_rank(4, 2), 15);
    ck_assert_uint_eq(ag_poly_rank(16, 5), 20349);
    ck_assert_uint_eq(ag_poly_rank(64, 3), 47905);
    ck_assert_uint_eq(ag_poly_rank(1, 20), 21);
    ck_assert_uint_eq(ag_poly_rank(8, 0), 1);
    ck_assert_uint_eq(ag_poly_rank((size_t)1 << 40, 20), SIZE_MAX);
    ck_assert_uint_eq(ag_poly_rank(SIZE_MAX - 3, 5), SIZE_MAX);
}
END_TEST

START_TEST(test_bad_arguments)
{
    double coef[AG_MAX_DEGREE + 1] = {0};
    ck_assert_int_eq(ag_poly_fit(AG_POLY_CHEBYSHEV, 0, 1, coef), -1);
    ck_assert_int_eq(ag_poly_fit(AG_POLY_CHEBYSHEV, AG_MAX_DEGREE + 1, 1, coef), -1);
    ck_assert_int_eq(ag_poly_fit(AG_POLY_CHEBYSHEV, 3, -1, coef), -1);
    ck_assert_int_eq(ag_poly_fit(AG_POLY_CHEBYSHEV, 3, NAN, coef), -1);
    ck_assert(isinf(ag_poly_rel_bound(AG_POLY_TAYLOR, 0, 1)));
    /* R = 0 (one token, or identical keys): any degree is exact enough */
    ck_assert_int_eq(ag_poly_fit(AG_POLY_CHEBYSHEV, 1, 0, coef), 0);
    ck_assert_double_le(ag_poly_rel_bound(AG_POLY_CHEBYSHEV, 1, 0), 1e-6);
    ck_assert_double_eq_tol(ag_poly_eval(coef, 1, 0), 1, 1e-6);
    /* the fitted polynomial may be used at degree 20 for tiny R without blowing up */
    ck_assert_int_eq(ag_poly_fit(AG_POLY_CHEBYSHEV, 20, 1e-4, coef), 0);
    ck_assert_double_le(fabs(ag_poly_eval(coef, 20, 1e-4) * exp(-1e-4) - 1), 1e-13);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("poly");
    TCase *tc = tcase_create("poly");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_bound_holds_and_is_tight);
    tcase_add_test(tc, test_chebyshev_interpolates_at_nodes);
    tcase_add_test(tc, test_taylor_coefficients);
    tcase_add_test(tc, test_chebyshev_needs_lower_degree);
    tcase_add_test(tc, test_degree_selection_is_minimal);
    tcase_add_test(tc, test_unreachable_at_large_R);
    tcase_add_test(tc, test_float_bound_grows_with_R);
    tcase_add_test(tc, test_rank);
    tcase_add_test(tc, test_bad_arguments);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
