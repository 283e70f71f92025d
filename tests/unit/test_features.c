/* Monomial feature maps (core/feature_map.c): the tree enumerates every multi-index once in
 * graded colex order, phi(q) . psi(k) = p(q . k) up to float32 rounding computed the way the
 * attention kernels do it (and the rounding model of ag_poly_float_bound covers the worst,
 * cancelling, case), and the VJP matches central finite differences of an independent double
 * implementation. Groups of 16 rows, interleaved, as the kernels use them. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../core/feature_map.h"
#include "../../core/poly.h"

static double urand(unsigned long long *s)
{
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return (double)(*s >> 11) / 9007199254740992.0 * 2 - 1;
}

/* Independent enumeration: all sorted coordinate tuples t_1 <= ... <= t_k (as exponent
 * vectors), degree by degree, each degree sorted colexicographically (compare t_k, then
 * t_{k-1}, ...), which is the order feature_map.h promises. */
typedef struct {
    size_t d, count, cap;
    int *alpha; /* [cap, d] */
    int *tuple; /* [cap, AG_MAX_DEGREE] sorted coordinates, for the sort */
    int *deg;   /* [cap] */
} mi_list;

static void mi_rec(mi_list *l, int *tuple, int pos, int k, int first)
{
    if (pos == k) {
        ck_assert_uint_lt(l->count, l->cap);
        int *a = l->alpha + l->count * l->d;
        memset(a, 0, l->d * sizeof *a);
        for (int i = 0; i < k; i++) a[tuple[i]]++;
        memcpy(l->tuple + l->count * AG_MAX_DEGREE, tuple, (size_t)k * sizeof *tuple);
        l->deg[l->count] = k;
        l->count++;
        return;
    }
    for (int t = first; t < (int)l->d; t++) {
        tuple[pos] = t;
        mi_rec(l, tuple, pos + 1, k, t);
    }
}

static const mi_list *sort_list;

static int colex_cmp(const void *pa, const void *pb)
{
    size_t i = *(const size_t *)pa, j = *(const size_t *)pb;
    const mi_list *l = sort_list;
    if (l->deg[i] != l->deg[j]) return l->deg[i] - l->deg[j];
    for (int p = l->deg[i] - 1; p >= 0; p--) {
        int a = l->tuple[i * AG_MAX_DEGREE + p], b = l->tuple[j * AG_MAX_DEGREE + p];
        if (a != b) return a - b;
    }
    return 0;
}

static mi_list mi_enumerate(size_t d, int g)
{
    mi_list l = {.d = d, .count = 0, .cap = ag_poly_rank(d, g)};
    l.alpha = malloc(l.cap * d * sizeof *l.alpha);
    l.tuple = malloc(l.cap * AG_MAX_DEGREE * sizeof *l.tuple);
    l.deg = malloc(l.cap * sizeof *l.deg);
    int tuple[AG_MAX_DEGREE];
    for (int k = 0; k <= g; k++) mi_rec(&l, tuple, 0, k, 0);
    size_t *idx = malloc(l.count * sizeof *idx);
    for (size_t i = 0; i < l.count; i++) idx[i] = i;
    sort_list = &l;
    qsort(idx, l.count, sizeof *idx, colex_cmp);
    int *sorted = malloc(l.cap * d * sizeof *sorted);
    for (size_t i = 0; i < l.count; i++)
        memcpy(sorted + i * d, l.alpha + idx[i] * d, d * sizeof *sorted);
    free(l.alpha);
    free(l.tuple);
    free(l.deg);
    free(idx);
    l.alpha = sorted;
    l.tuple = l.deg = NULL;
    return l;
}

static double factorial(int k)
{
    double f = 1;
    for (int i = 2; i <= k; i++) f *= i;
    return f;
}

/* Double features of x [d] at multi-index a: weighted -> a_|a| |a|!/a! x^a, else x^a. */
static double feature_d(const int *a, size_t d, const double *x, const double *coef, int weighted)
{
    double m = 1, af = 1;
    int k = 0;
    for (size_t t = 0; t < d; t++) {
        for (int e = 0; e < a[t]; e++) m *= x[t];
        af *= factorial(a[t]);
        k += a[t];
    }
    return weighted ? coef[k] * factorial(k) / af * m : m;
}

START_TEST(test_tree_enumeration)
{
    const size_t ds[] = {1, 2, 4, 8};
    for (size_t di = 0; di < 4; di++) {
        for (int g = 1; g <= 6; g++) {
            size_t d = ds[di];
            double coef[AG_MAX_DEGREE + 1];
            ag_poly_fit(AG_POLY_TAYLOR, g, 1, coef);
            ag_feature_map map;
            ck_assert_int_eq(ag_feature_map_init(&map, d, g, coef, SIZE_MAX, NULL), AG_OK);
            ck_assert_uint_eq(map.r, ag_poly_rank(d, g));
            mi_list l = mi_enumerate(d, g);
            ck_assert_uint_eq(l.count, map.r);
            /* rebuild each monomial's exponents through the parent links */
            int *a = calloc(d, sizeof *a);
            for (size_t m = 0; m < map.r; m++) {
                memset(a, 0, d * sizeof *a);
                int k = 0;
                for (int32_t p = (int32_t)m; p > 0; p = map.parent[p]) {
                    ck_assert_int_lt(map.parent[p], p); /* parents first */
                    a[map.var[p]]++;
                    k++;
                }
                ck_assert_int_eq(memcmp(a, l.alpha + m * d, d * sizeof *a), 0);
                ck_assert_uint_ge(m, map.deg_start[k]);
                ck_assert_uint_lt(m, map.deg_start[k + 1]);
            }
            free(a);
            free(l.alpha);
            ag_feature_map_free(&map);
            ck_assert_ptr_null(map.parent);
        }
    }
}
END_TEST

START_TEST(test_forward_matches_double_features)
{
    const size_t d = 5, ld = 19, G = AG_GROUP;
    const int g = 4;
    unsigned long long s = 3;
    double coef[AG_MAX_DEGREE + 1];
    ag_poly_fit(AG_POLY_CHEBYSHEV, g, 1.3, coef);
    ag_feature_map map;
    ck_assert_int_eq(ag_feature_map_init(&map, d, g, coef, SIZE_MAX, NULL), AG_OK);
    mi_list l = mi_enumerate(d, g);
    float xt[5 * 19], *m = malloc(map.r * G * sizeof *m);
    for (size_t i = 0; i < d * ld; i++) xt[i] = (float)urand(&s);
    ag_monomials_group(&map, xt, ld, m);
    for (size_t b = 0; b < G; b++) {
        double x[5];
        for (size_t t = 0; t < d; t++) x[t] = xt[t * ld + b];
        for (size_t a = 0; a < map.r; a++) {
            double want = feature_d(l.alpha + a * d, d, x, coef, 0);
            ck_assert_double_eq_tol(m[a * G + b], want, 1e-6 * (fabs(want) + 1e-3));
            double wantw = feature_d(l.alpha + a * d, d, x, coef, 1);
            double gotw = (double)map.weight[a] * m[a * G + b];
            ck_assert_double_eq_tol(gotw, wantw, 1e-6 * (fabs(wantw) + 1e-3));
        }
    }
    free(m);
    free(l.alpha);
    ag_feature_map_free(&map);
}
END_TEST

/* phi(q) . psi(k) in float32 the way the kernels form it (the key side folded into a weighted
 * state sw = weight o psi(k), then sum_a m_q[a] sw[a] in feature order, lanes = query rows)
 * against p(q . k) in double, for random pairs with |q| |k| <= R and anti-aligned pairs
 * (x = -R, the cancelling worst case). The error relative to e^x must stay under
 * ag_poly_float_bound at n = 1 (its rounding model). */
static double dot_check(size_t d, int g, double R, ag_poly kind, unsigned long long seed)
{
    const size_t G = AG_GROUP, NK = 48;
    double coef[AG_MAX_DEGREE + 1];
    ck_assert_int_eq(ag_poly_fit(kind, g, R, coef), 0);
    ag_feature_map map;
    ck_assert_int_eq(ag_feature_map_init(&map, d, g, coef, SIZE_MAX, NULL), AG_OK);
    size_t r = map.r;
    float *xq = malloc(d * G * sizeof *xq), *xk = malloc(d * NK * sizeof *xk);
    float *mq = malloc(r * G * sizeof *mq), *mk = malloc(r * G * sizeof *mk);
    float *sw = malloc(r * sizeof *sw);
    unsigned long long s = seed;
    double u[3][64];
    for (int i = 0; i < 3; i++) { /* three directions: queries and keys mostly share them */
        double nu = 0;
        for (size_t t = 0; t < d; t++) {
            u[i][t] = urand(&s);
            nu += u[i][t] * u[i][t];
        }
        for (size_t t = 0; t < d; t++) u[i][t] /= sqrt(nu);
    }
    for (size_t b = 0; b < G; b++) {
        double c = sqrt(R) * (b % 4 ? 1 : fabs(urand(&s)));
        for (size_t t = 0; t < d; t++) xq[t * G + b] = (float)(c * u[b % 3][t]);
    }
    for (size_t j = 0; j < NK; j++) {
        double c = sqrt(R) * (j % 2 ? fabs(urand(&s)) : 1);
        for (size_t t = 0; t < d; t++) /* even keys: -q direction (x = -R); odd: + or random */
            xk[t * NK + j] = (float)(j % 2 ? c * urand(&s) / sqrt((double)d) : -c * u[j % 3][t]);
    }
    ag_monomials_group(&map, xq, G, mq);
    double worst = 0;
    for (size_t j0 = 0; j0 < NK; j0 += G) {
        ag_monomials_group(&map, xk + j0, NK, mk);
        for (size_t j = 0; j < G; j++) {
            for (size_t a = 0; a < r; a++) sw[a] = map.weight[a] * mk[a * G + j];
            float acc[16] = {0};
            for (size_t a = 0; a < r; a++)
                for (size_t b = 0; b < G; b++) acc[b] += mq[a * G + b] * sw[a];
            for (size_t b = 0; b < G; b++) {
                double x = 0;
                for (size_t t = 0; t < d; t++) x += (double)xq[t * G + b] * xk[t * NK + j0 + j];
                double e = fabs(acc[b] - ag_poly_eval(coef, g, x)) / exp(x);
                if (e > worst) worst = e;
            }
        }
    }
    double model = ag_poly_float_bound(coef, g, R, d, 1);
    ck_assert_msg(worst <= model, "d=%zu g=%d R=%g: float error %.3e over the model %.3e", d, g,
                  R, worst, model);
    if (getenv("AG_TEST_VERBOSE"))
        fprintf(stderr, "dot d=%zu g=%d R=%g kind=%d: worst %.3e model %.3e ratio %.3f\n", d, g,
                R, (int)kind, worst, model, worst / model);
    free(xq);
    free(xk);
    free(mq);
    free(mk);
    free(sw);
    ag_feature_map_free(&map);
    return worst / model;
}

START_TEST(test_dot_products_equal_polynomial)
{
    /* (d, g, R) over the range the planner can pick */
    const struct { size_t d; int g; double R; } cases[] = {
        {1, 20, 5}, {2, 12, 3}, {4, 5, 1}, {4, 15, 4}, {8, 2, 0.3}, {8, 5, 1},
        {8, 7, 2}, {8, 8, 2.5}, {16, 4, 1}, {16, 3, 0.5},
    };
    double worst_ratio = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        for (int kind = 0; kind < 2; kind++) {
            double ratio = dot_check(cases[i].d, cases[i].g, cases[i].R, (ag_poly)kind, 17 + i);
            if (ratio > worst_ratio) worst_ratio = ratio;
        }
    /* the model is a statistical one; a margin under 1.5x would make it a coin flip */
    ck_assert_double_le(worst_ratio, 1 / 1.5);
}
END_TEST

/* L(x) = sum_{a,b} c[a][b] f[a][b](x): the VJP of ag_monomials_group_vjp against central
 * finite differences of the double features (step 1e-5, truncation ~1e-10 relative). */
START_TEST(test_vjp_matches_finite_differences)
{
    const size_t ds[] = {1, 3, 6};
    const int gs[] = {6, 4, 3};
    const size_t G = AG_GROUP, ld = 21;
    for (size_t di = 0; di < 3; di++) {
        for (int weighted = 0; weighted < 2; weighted++) {
            size_t d = ds[di];
            int g = gs[di];
            unsigned long long s = 99 + di;
            double coef[AG_MAX_DEGREE + 1];
            ag_poly_fit(AG_POLY_CHEBYSHEV, g, 2.0, coef);
            ag_feature_map map;
            ck_assert_int_eq(ag_feature_map_init(&map, d, g, coef, SIZE_MAX, NULL), AG_OK);
            size_t r = map.r;
            mi_list l = mi_enumerate(d, g);
            float *xt = malloc(d * ld * sizeof *xt), *dxt = calloc(d * ld, sizeof *dxt);
            float *m = malloc(r * G * sizeof *m), *dm = malloc(r * G * sizeof *dm);
            double *c = malloc(r * G * sizeof *c);
            for (size_t i = 0; i < d * ld; i++) xt[i] = (float)(0.8 * urand(&s));
            for (size_t i = 0; i < r * G; i++) c[i] = urand(&s);
            for (size_t a = 0; a < r; a++)
                for (size_t b = 0; b < G; b++)
                    dm[a * G + b] = (float)(c[a * G + b] * (weighted ? map.weight[a] : 1));
            for (size_t t = 0; t < d; t++) dxt[t * ld + G] = 7; /* column 16 is not ours */
            ag_monomials_group(&map, xt, ld, m);
            ag_monomials_group_vjp(&map, xt, ld, m, dm, dxt, ld);
            ck_assert_float_eq(dxt[G], 7);
            double num = 0, den = 0;
            for (size_t b = 0; b < G; b++) {
                for (size_t t = 0; t < d; t++) {
                    double x[16], h = 1e-5, lp = 0, lm = 0;
                    for (size_t u = 0; u < d; u++) x[u] = xt[u * ld + b];
                    x[t] += h;
                    for (size_t a = 0; a < r; a++)
                        lp += c[a * G + b] * feature_d(l.alpha + a * d, d, x, coef, weighted);
                    x[t] -= 2 * h;
                    for (size_t a = 0; a < r; a++)
                        lm += c[a * G + b] * feature_d(l.alpha + a * d, d, x, coef, weighted);
                    double fd = (lp - lm) / (2 * h), got = dxt[t * ld + b];
                    num += (got - fd) * (got - fd);
                    den += fd * fd;
                }
            }
            double rel = sqrt(num / den);
            ck_assert_msg(rel < 1e-5, "d=%zu g=%d weighted=%d: VJP relative error %.3e", d, g,
                          weighted, rel);
            free(xt);
            free(dxt);
            free(m);
            free(dm);
            free(c);
            free(l.alpha);
            ag_feature_map_free(&map);
        }
    }
}
END_TEST

START_TEST(test_init_limits)
{
    double coef[AG_MAX_DEGREE + 1] = {1, 1};
    ag_feature_map map;
    ag_error err = {0};
    ck_assert_int_eq(ag_feature_map_init(&map, 8, 5, coef, 1286, &err), AG_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(err.message, "1287"));
    ck_assert_ptr_null(map.parent);
    ck_assert_int_eq(ag_feature_map_init(&map, 0, 5, coef, SIZE_MAX, &err), AG_ERR_INVALID);
    ck_assert_int_eq(ag_feature_map_init(&map, 4, 0, coef, SIZE_MAX, &err), AG_ERR_INVALID);
    ck_assert_int_eq(ag_feature_map_init(&map, 4, AG_MAX_DEGREE + 1, coef, SIZE_MAX, &err),
                     AG_ERR_INVALID);
    /* an absurd rank is refused before any allocation */
    ck_assert_int_eq(ag_feature_map_init(&map, 1000000, 20, coef, SIZE_MAX, &err),
                     AG_ERR_INVALID);
    ag_feature_map_free(&map);
    ag_feature_map_free(NULL);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("features");
    TCase *tc = tcase_create("features");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_tree_enumeration);
    tcase_add_test(tc, test_forward_matches_double_features);
    tcase_add_test(tc, test_dot_products_equal_polynomial);
    tcase_add_test(tc, test_vjp_matches_finite_differences);
    tcase_add_test(tc, test_init_limits);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
