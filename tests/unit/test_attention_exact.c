/* Blocked exact attention (core/attention_exact.c) against the naive double reference. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../../core/attention.h"
#include "lib/ref_model.h"

/* Tolerances, relative Frobenius: float32 scores and a 2e-7 exp leave ~1e-6; the backward
 * sums n terms per entry, so it gets a little more room. Observed: < 5e-6 everywhere. */
#define TOL_OUT 2e-5
#define TOL_GRAD 5e-5

typedef struct {
    size_t n, d, ld, off; /* head view: columns [off, off + d) of an [n, ld] buffer */
    int causal;
    float *q, *k, *v, *o, *dout, *dq, *dk, *dv, *lse;
} head_case;

static void case_init(head_case *c, size_t n, size_t d, int causal, double scale_qk,
                      uint64_t seed)
{
    memset(c, 0, sizeof *c);
    c->n = n;
    c->d = d;
    c->off = d + 1; /* a second head before it, plus one odd column: strided, unaligned */
    c->ld = 2 * d + 3;
    c->causal = causal;
    size_t count = n * c->ld;
    float **bufs[] = {&c->q, &c->k, &c->v, &c->o, &c->dout, &c->dq, &c->dk, &c->dv};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) {
        *bufs[i] = calloc(count, sizeof(float));
        ck_assert_ptr_nonnull(*bufs[i]);
    }
    c->lse = calloc(n, sizeof(float));
    ref_fill(c->q, count, scale_qk, &seed);
    ref_fill(c->k, count, scale_qk, &seed);
    ref_fill(c->v, count, 1.0, &seed);
    ref_fill(c->dout, count, 1.0, &seed);
}

static void case_free(head_case *c)
{
    float *bufs[] = {c->q, c->k, c->v, c->o, c->dout, c->dq, c->dk, c->dv, c->lse};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) free(bufs[i]);
}

static ag_attn_shape case_shape(const head_case *c)
{
    ag_attn_shape s = {.n = c->n, .d_head = c->d, .ld = c->ld, .causal = c->causal,
                       .scale = 1.0f / sqrtf((float)c->d), .cancel = NULL};
    return s;
}

/* The view's columns as a contiguous float array [n, d]. */
static float *view_f(const float *buf, const head_case *c)
{
    float *out = malloc(c->n * c->d * sizeof *out);
    for (size_t i = 0; i < c->n; i++)
        for (size_t j = 0; j < c->d; j++) out[i * c->d + j] = buf[i * c->ld + c->off + j];
    return out;
}

static double *view_d(const double *buf, const head_case *c)
{
    double *out = malloc(c->n * c->d * sizeof *out);
    for (size_t i = 0; i < c->n; i++)
        for (size_t j = 0; j < c->d; j++) out[i * c->d + j] = buf[i * c->ld + c->off + j];
    return out;
}

/* Relative Frobenius error, with the reference norm floored at that of entries of 1e-2: a
 * gradient that is zero in exact arithmetic (n = 1: dq = dk = 0) is then held to an
 * absolute standard instead of dividing roundoff by zero. */
static double view_err(const float *got, const double *want, const head_case *c)
{
    float *g = view_f(got, c);
    double *w = view_d(want, c);
    size_t count = c->n * c->d;
    double num = 0, den = 0;
    for (size_t i = 0; i < count; i++) {
        num += ((double)g[i] - w[i]) * ((double)g[i] - w[i]);
        den += w[i] * w[i];
    }
    double floor = 1e-4 * (double)count;
    double e = sqrt(num / (den > floor ? den : floor));
    free(g);
    free(w);
    return e;
}

/* Runs forward + backward and compares with the reference; returns the worst error. */
static double check_case(head_case *c, double tol_out, double tol_grad)
{
    ag_attn_shape s = case_shape(c);
    ag_error err = {0};
    size_t off = c->off, count = c->n * c->ld;
    ck_assert_int_eq(ag_attn_exact_forward(&s, c->q + off, c->k + off, c->v + off, c->o + off,
                                           c->lse, &err), AG_OK);
    /* the backward accumulates: start dq, dk, dv from a known offset */
    for (size_t i = 0; i < count; i++) c->dq[i] = c->dk[i] = c->dv[i] = 0.25f;
    ck_assert_int_eq(ag_attn_exact_backward(&s, c->q + off, c->k + off, c->v + off,
                                            c->o + off, c->lse, c->dout + off, c->dq + off,
                                            c->dk + off, c->dv + off, &err), AG_OK);
    for (size_t i = 0; i < count; i++) {
        c->dq[i] -= 0.25f;
        c->dk[i] -= 0.25f;
        c->dv[i] -= 0.25f;
    }
    /* columns outside the view are untouched */
    for (size_t i = 0; i < c->n; i++)
        for (size_t j = 0; j < c->ld; j++)
            if (j < off || j >= off + c->d) {
                ck_assert_float_eq(c->o[i * c->ld + j], 0.0f);
                ck_assert_float_eq(c->dq[i * c->ld + j], 0.0f);
            }

    double *q = ref_widen(c->q, count), *k = ref_widen(c->k, count), *v = ref_widen(c->v, count);
    double *dout = ref_widen(c->dout, count);
    double *o = calloc(count, sizeof *o), *dq = calloc(count, sizeof *dq);
    double *dk = calloc(count, sizeof *dk), *dv = calloc(count, sizeof *dv);
    double scale = 1.0 / sqrt((double)c->d);
    ref_attention_forward(c->n, c->d, c->ld, c->causal, scale, q + off, k + off, v + off,
                          o + off);
    ref_attention_backward(c->n, c->d, c->ld, c->causal, scale, q + off, k + off, v + off,
                           dout + off, dq + off, dk + off, dv + off);
    /* lse against a direct log-sum-exp of the float inputs */
    double lse_err = 0;
    for (size_t i = 0; i < c->n; i++) {
        size_t vis = c->causal ? i + 1 : c->n;
        double mx = -INFINITY, sum = 0;
        double *sc = malloc(vis * sizeof *sc);
        for (size_t j = 0; j < vis; j++) {
            double t = 0;
            for (size_t u = 0; u < c->d; u++) t += q[i * c->ld + off + u] * k[j * c->ld + off + u];
            sc[j] = scale * t;
            if (sc[j] > mx) mx = sc[j];
        }
        for (size_t j = 0; j < vis; j++) sum += exp(sc[j] - mx);
        free(sc);
        double want = mx + log(sum), e = fabs(c->lse[i] - want) / (1.0 + fabs(want));
        if (e > lse_err) lse_err = e;
    }
    double eo = view_err(c->o, o, c), eq = view_err(c->dq, dq, c);
    double ek = view_err(c->dk, dk, c), ev = view_err(c->dv, dv, c);
    ck_assert_msg(lse_err < 1e-5, "n=%zu d=%zu causal=%d: lse error %.3g", c->n, c->d,
                  c->causal, lse_err);
    ck_assert_msg(eo < tol_out, "n=%zu d=%zu causal=%d: output error %.3g", c->n, c->d,
                  c->causal, eo);
    ck_assert_msg(eq < tol_grad && ek < tol_grad && ev < tol_grad,
                  "n=%zu d=%zu causal=%d: grad errors dq %.3g dk %.3g dv %.3g", c->n, c->d,
                  c->causal, eq, ek, ev);
    free(q);
    free(k);
    free(v);
    free(dout);
    free(o);
    free(dq);
    free(dk);
    free(dv);
    double worst = eo;
    if (eq > worst) worst = eq;
    if (ek > worst) worst = ek;
    if (ev > worst) worst = ev;
    return worst;
}

static const size_t ns[] = {1, 7, 300, 1000};
static const size_t ds[] = {1, 8, 16, 64};

/* loop index -> (n, d, causal) over every combination */
START_TEST(test_against_reference)
{
    size_t n = ns[_i % 4], d = ds[(_i / 4) % 4];
    int causal = (_i / 16) % 2;
    head_case c;
    case_init(&c, n, d, causal, 1.0, 1000 + (uint64_t)_i);
    check_case(&c, TOL_OUT, TOL_GRAD);
    case_free(&c);
}
END_TEST

/* Scores spanning hundreds of units: softmax saturates, and keys after the first block score
 * far above it, which exercises the forward's reference-raising path. */
START_TEST(test_extreme_scores)
{
    for (int causal = 0; causal <= 1; causal++) {
        head_case c;
        case_init(&c, 1200, 8, causal, 1.0, 77);
        for (size_t i = 0; i < c.n; i++)
            for (size_t j = 0; j < c.d; j++) {
                float *q = &c.q[i * c.ld + c.off + j], *k = &c.k[i * c.ld + c.off + j];
                *q = 10.0f + *q;
                *k = i < 600 ? 0.1f * *k : (i % 97 == 0 ? 3.0f : -1.0f) + 0.1f * *k;
            }
        check_case(&c, TOL_OUT, 2e-4);
        case_free(&c);
    }
}
END_TEST

/* Subtracting the mean key (what the approximation does) leaves softmax, the output and
 * dq, dv unchanged; dk too, since dS is unchanged. */
START_TEST(test_key_centring)
{
    for (int causal = 0; causal <= 1; causal++) {
        head_case a, b;
        case_init(&a, 333, 8, causal, 1.0, 5);
        case_init(&b, 333, 8, causal, 1.0, 5);
        for (size_t j = 0; j < b.d; j++) {
            double mean = 0;
            for (size_t i = 0; i < b.n; i++) mean += b.k[i * b.ld + b.off + j];
            mean /= (double)b.n;
            for (size_t i = 0; i < b.n; i++) b.k[i * b.ld + b.off + j] -= (float)mean;
        }
        ag_attn_shape s = case_shape(&a);
        ag_error err;
        size_t off = a.off;
        head_case *cs[2] = {&a, &b};
        for (int t = 0; t < 2; t++) {
            head_case *c = cs[t];
            ck_assert_int_eq(ag_attn_exact_forward(&s, c->q + off, c->k + off, c->v + off,
                                                   c->o + off, c->lse, &err), AG_OK);
            ck_assert_int_eq(ag_attn_exact_backward(&s, c->q + off, c->k + off, c->v + off,
                                                    c->o + off, c->lse, c->dout + off,
                                                    c->dq + off, c->dk + off, c->dv + off,
                                                    &err), AG_OK);
        }
        size_t count = a.n * a.ld;
        /* causal rows see different key sets, so centring with the global mean still only
         * shifts each row's scores by a row constant: everything stays invariant */
        ck_assert_double_lt(ag_rel_error(b.o, a.o, count), 1e-5);
        ck_assert_double_lt(ag_rel_error(b.dq, a.dq, count), 1e-4);
        ck_assert_double_lt(ag_rel_error(b.dk, a.dk, count), 1e-4);
        ck_assert_double_lt(ag_rel_error(b.dv, a.dv, count), 1e-5);
        case_free(&a);
        case_free(&b);
    }
}
END_TEST

/* Splitting the queries into row ranges (what the model does to put one head on several
 * threads) gives the same output, lse and gradients as one call. */
START_TEST(test_row_ranges)
{
    for (int causal = 0; causal <= 1; causal++) {
        head_case c;
        case_init(&c, 700, 8, causal, 1.0, 13);
        ag_attn_shape s = case_shape(&c);
        ag_error err;
        size_t off = c.off, n = c.n, d = c.d, count = n * c.ld;
        ck_assert_int_eq(ag_attn_exact_forward(&s, c.q + off, c.k + off, c.v + off, c.o + off,
                                               c.lse, &err), AG_OK);
        ck_assert_int_eq(ag_attn_exact_backward(&s, c.q + off, c.k + off, c.v + off,
                                                c.o + off, c.lse, c.dout + off, c.dq + off,
                                                c.dk + off, c.dv + off, &err), AG_OK);
        float *o2 = calloc(count, sizeof *o2), *lse2 = calloc(n, sizeof *lse2);
        float *dq2 = calloc(count, sizeof *dq2), *dk2 = calloc(count, sizeof *dk2);
        float *dv2 = calloc(count, sizeof *dv2);
        const size_t cuts[] = {0, 1, 130, 417, 700}; /* uneven, one single-row range */
        for (int p = 0; p < 4; p++)
            ck_assert_int_eq(ag_attn_exact_forward_rows(&s, cuts[p], cuts[p + 1], c.q + off,
                                                        c.k + off, c.v + off, o2 + off, lse2,
                                                        &err), AG_OK);
        for (int p = 0; p < 4; p++) {
            float *dkp = calloc(n * d, sizeof *dkp), *dvp = calloc(n * d, sizeof *dvp);
            ck_assert_int_eq(ag_attn_exact_backward_rows(&s, cuts[p], cuts[p + 1], c.q + off,
                                                         c.k + off, c.v + off, o2 + off, lse2,
                                                         c.dout + off, dq2 + off, dkp, dvp,
                                                         &err), AG_OK);
            for (size_t i = 0; i < n; i++)
                for (size_t j = 0; j < d; j++) {
                    /* causal: queries before cuts[p+1] never see later keys */
                    if (causal && i >= cuts[p + 1])
                        ck_assert(dkp[i * d + j] == 0.0f && dvp[i * d + j] == 0.0f);
                    dk2[i * c.ld + off + j] += dkp[i * d + j];
                    dv2[i * c.ld + off + j] += dvp[i * d + j];
                }
            free(dkp);
            free(dvp);
        }
        ck_assert_double_lt(ag_rel_error(o2, c.o, count), 1e-6);
        ck_assert_double_lt(ag_rel_error(lse2, c.lse, n), 1e-6);
        ck_assert_double_lt(ag_rel_error(dq2, c.dq, count), 1e-6);
        ck_assert_double_lt(ag_rel_error(dk2, c.dk, count), 1e-5);
        ck_assert_double_lt(ag_rel_error(dv2, c.dv, count), 1e-5);
        /* bad ranges */
        ck_assert_int_eq(ag_attn_exact_forward_rows(&s, 5, 5, c.q, c.k, c.v, o2, lse2, &err),
                         AG_ERR_INVALID);
        ck_assert_int_eq(ag_attn_exact_forward_rows(&s, 0, n + 1, c.q, c.k, c.v, o2, lse2, &err),
                         AG_ERR_INVALID);
        ck_assert_int_eq(ag_attn_exact_backward_rows(&s, 9, 3, c.q, c.k, c.v, o2, lse2, c.dout,
                                                     dq2, dk2, dv2, &err), AG_ERR_INVALID);
        free(o2); free(lse2); free(dq2); free(dk2); free(dv2);
        case_free(&c);
    }
}
END_TEST

START_TEST(test_cancel)
{
    head_case c;
    case_init(&c, 700, 8, 0, 1.0, 9);
    atomic_int flag = 1;
    ag_attn_shape s = case_shape(&c);
    s.cancel = &flag;
    ag_error err = {0};
    size_t off = c.off;
    ck_assert_int_eq(ag_attn_exact_forward(&s, c.q + off, c.k + off, c.v + off, c.o + off,
                                           c.lse, &err), AG_ERR_CANCELLED);
    ck_assert_int_eq(err.status, AG_ERR_CANCELLED);
    ck_assert_int_eq(ag_attn_exact_backward(&s, c.q + off, c.k + off, c.v + off, c.o + off,
                                            c.lse, c.dout + off, c.dq + off, c.dk + off,
                                            c.dv + off, &err), AG_ERR_CANCELLED);
    case_free(&c);
}
END_TEST

START_TEST(test_bad_arguments)
{
    float buf[64] = {0}, lse[4];
    ag_error err = {0};
    ag_attn_shape ok = {.n = 4, .d_head = 2, .ld = 4, .causal = 0, .scale = 1.0f};
    ag_attn_shape bad[] = {ok, ok, ok};
    bad[0].n = 0;
    bad[1].d_head = 0;
    bad[2].ld = 1;
    for (size_t i = 0; i < 3; i++) {
        ck_assert_int_eq(ag_attn_exact_forward(&bad[i], buf, buf, buf, buf, lse, &err),
                         AG_ERR_INVALID);
        ck_assert_int_eq(ag_attn_exact_backward(&bad[i], buf, buf, buf, buf, lse, buf, buf,
                                                buf, buf, &err), AG_ERR_INVALID);
    }
    ck_assert_int_eq(ag_attn_exact_forward(NULL, buf, buf, buf, buf, lse, &err), AG_ERR_INVALID);
    ck_assert_int_eq(ag_attn_exact_forward(&ok, NULL, buf, buf, buf, lse, &err), AG_ERR_INVALID);
    ck_assert_int_eq(ag_attn_exact_forward(&ok, buf, buf, buf, buf, NULL, &err), AG_ERR_INVALID);
    ck_assert_int_eq(ag_attn_exact_backward(&ok, buf, buf, buf, buf, lse, NULL, buf, buf, buf,
                                            &err), AG_ERR_INVALID);
    /* NULL err is allowed */
    ck_assert_int_eq(ag_attn_exact_forward(&bad[0], buf, buf, buf, buf, lse, NULL),
                     AG_ERR_INVALID);
    ck_assert_int_eq(ag_attn_exact_forward(&ok, buf, buf, buf, buf, lse, &err), AG_OK);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("attention_exact");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 600);
    tcase_add_loop_test(tc, test_against_reference, 0, 32);
    tcase_add_test(tc, test_extreme_scores);
    tcase_add_test(tc, test_key_centring);
    tcase_add_test(tc, test_row_ranges);
    tcase_add_test(tc, test_cancel);
    tcase_add_test(tc, test_bad_arguments);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
