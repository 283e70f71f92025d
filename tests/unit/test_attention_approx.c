/* Approximate attention kernels (core/attention_approx.c), per head:
 *  (1) the backward is the gradient of the approximate forward: central finite differences of
 *      a double re-implementation of that forward (same polynomial, same centring, same causal
 *      chunks with the exact masked exp inside), relative error <= 1e-5 (float32 kernel
 *      against a double function, measured <= 1e-6; a wrong term shows up at >= 1e-2);
 *  (2) against exact softmax attention (naive double reference): the output within the
 *      rigorous 2 eps / (1 - eps) max|v| for the reported bound eps, every gradient within
 *      GRAD_FACTOR * eps relative, errors decreasing with the degree;
 *  (3) invariance to adding one vector to every key (the centring), for the approximate
 *      kernel and for the exact one;
 *  (4) the plan: auto picks approx for d_head 8 at n 8192 and small R, exact for d_head 64;
 *      UNREACHABLE / LIMIT / INVALID where due;
 *  and the error paths (cancel, plan bound below the sequence's, NULL).
 * Views are strided (ld = d_head + 3) with sentinels in the foreign columns.
 */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../core/approx_internal.h"
#include "../../core/attention.h"
#include "../../core/parallel.h"
#include "../../core/poly.h"

#include "lib/head_case.h"
#include "lib/model_case.h"

/* The features route differentiates p, whose derivative approximates e^x less well than p
 * does (docs/paper_notes.md, "The two backward routes"): measured gradient errors are <= 1.8 eps
 * over the cases below (AG_TEST_VERBOSE=1 prints them); 5 eps leaves room without being vacuous.
 * The FD check compares a float32 kernel with a double function: measured <= 1e-6. */
#define GRAD_FACTOR 5.0
#define FD_TOL 1e-5

/* ---- double references ----------------------------------------------------------------- */

typedef struct {
    size_t n, d, chunk; /* chunk: the kernel's causal chunk (0 for non-causal) */
    int causal, g;
    double c;
    const double *coef; /* NULL: exact softmax */
} ref_cfg;

/* Attention weights of row i into a[0..n): the approximate kernel's (or exact) function. */
static void ref_row(const ref_cfg *cf, const double *q, const double *kc, size_t i, double *a)
{
    for (size_t j = 0; j < cf->n; j++) {
        if (cf->causal && j > i) {
            a[j] = 0;
            continue;
        }
        double x = 0;
        for (size_t t = 0; t < cf->d; t++) x += q[i * cf->d + t] * kc[j * cf->d + t];
        x *= cf->c;
        int exact = !cf->coef || (cf->causal && i / cf->chunk == j / cf->chunk);
        a[j] = exact ? exp(x) : ag_poly_eval(cf->coef, cf->g, x);
    }
}

/* o [n, d] and the loss sum_i dout_i . o_i. Keys are centred (as the kernel does). */
static double ref_forward(const ref_cfg *cf, const double *q, const double *k, const double *v,
                          const double *dout, double *o)
{
    size_t n = cf->n, d = cf->d;
    double *kc = malloc(n * d * sizeof *kc), *a = malloc(n * sizeof *a), mu[64] = {0};
    for (size_t j = 0; j < n; j++)
        for (size_t t = 0; t < d; t++) mu[t] += k[j * d + t] / (double)n;
    for (size_t j = 0; j < n; j++)
        for (size_t t = 0; t < d; t++) kc[j * d + t] = k[j * d + t] - mu[t];
    double loss = 0;
    for (size_t i = 0; i < n; i++) {
        ref_row(cf, q, kc, i, a);
        double den = 0, num[64] = {0};
        for (size_t j = 0; j < n; j++) {
            den += a[j];
            for (size_t t = 0; t < d; t++) num[t] += a[j] * v[j * d + t];
        }
        for (size_t t = 0; t < d; t++) {
            double oi = num[t] / den;
            if (o) o[i * d + t] = oi;
            loss += dout[i * d + t] * oi;
        }
    }
    free(kc);
    free(a);
    return loss;
}

/* Exact softmax gradients (docs/paper_notes.md), double: dq, dk, dv [n, d] overwritten. */
static void ref_exact_backward(const ref_cfg *cf, const double *q, const double *k,
                               const double *v, const double *dout, double *dq, double *dk,
                               double *dv)
{
    size_t n = cf->n, d = cf->d;
    double *o = malloc(n * d * sizeof *o), *P = malloc(n * sizeof *P);
    ref_forward(cf, q, k, v, dout, o);
    memset(dq, 0, n * d * sizeof *dq);
    memset(dk, 0, n * d * sizeof *dk);
    memset(dv, 0, n * d * sizeof *dv);
    for (size_t i = 0; i < n; i++) {
        ref_row(cf, q, k, i, P); /* uncentred keys: softmax does not care */
        double m = 0, sum = 0;
        for (size_t j = 0; j < n; j++) sum += P[j];
        double delta = 0;
        for (size_t t = 0; t < d; t++) delta += dout[i * d + t] * o[i * d + t];
        for (size_t j = 0; j < n; j++) {
            double p = P[j] / sum, dp = 0;
            if (p == 0) continue;
            for (size_t t = 0; t < d; t++) {
                dp += dout[i * d + t] * v[j * d + t];
                dv[j * d + t] += p * dout[i * d + t];
            }
            double ds = p * (dp - delta) * cf->c;
            for (size_t t = 0; t < d; t++) {
                dq[i * d + t] += ds * k[j * d + t];
                dk[j * d + t] += ds * q[i * d + t];
            }
        }
        (void)m;
    }
    free(o);
    free(P);
}

/* ---- kernel runs ----------------------------------------------------------------------- */

typedef struct {
    float *o, *stat, *dq, *dk, *dv; /* views [n, ld] (stat [n]) */
} run_out;

static void run_alloc(run_out *r, const head *h)
{
    r->o = view_alloc(h->n, h->ld);
    r->dq = view_alloc(h->n, h->ld);
    r->dk = view_alloc(h->n, h->ld);
    r->dv = view_alloc(h->n, h->ld);
    r->stat = malloc(h->n * sizeof *r->stat);
    /* start the gradients at 0.25 to check that the backward accumulates */
    for (size_t i = 0; i < h->n; i++)
        for (size_t t = 0; t < h->d; t++)
            r->dq[i * h->ld + t] = r->dk[i * h->ld + t] = r->dv[i * h->ld + t] = 0.25f;
}

static void run_free(run_out *r)
{
    free(r->o);
    free(r->stat);
    free(r->dq);
    free(r->dk);
    free(r->dv);
}

static void check_sentinels(const head *h, const float *x)
{
    for (size_t i = 0; i < h->n; i++)
        for (size_t t = h->d; t < h->ld; t++) ck_assert_float_eq(x[i * h->ld + t], SENTINEL);
}

static ag_head_plan plan_for(const head *h, int degree, double eps)
{
    ag_method m = ag_method_default(AG_METHOD_APPROX);
    m.degree = degree;
    if (eps > 0) m.epsilon = eps;
    ag_head_plan plan;
    ag_error err = {0};
    double R = ag_attn_score_bound(&h->s, h->q, h->k);
    ag_status st = ag_head_plan_choose(&m, h->d, h->n, h->causal, R, NULL, SIZE_MAX / 2, &plan,
                                       &err);
    ck_assert_msg(st == AG_OK, "plan: %s", err.message);
    return plan;
}

/* Forward keeping the keys' state, backward from it (the model's path); then the backward
 * again without it (the state rebuilt), which must give the same bits. */
static void run_kernels(const head *h, const ag_head_plan *plan, run_out *r)
{
    ag_error err = {0};
    size_t sf = ag_attn_approx_state_floats(h->d, plan->report.rank, h->causal);
    ck_assert(sf != SIZE_MAX);
    float *state = sf ? malloc(sf * sizeof *state) : NULL;
    ck_assert(!sf || state);
    size_t all = h->n * h->ld;
    float *start = malloc(3 * all * sizeof *start);
    ck_assert_ptr_nonnull(start);
    memcpy(start, r->dq, all * sizeof *start);
    memcpy(start + all, r->dk, all * sizeof *start);
    memcpy(start + 2 * all, r->dv, all * sizeof *start);
    ag_status st = ag_attn_approx_forward(&h->s, plan, h->q, h->k, h->v, r->o, r->stat, state,
                                          &err);
    ck_assert_msg(st == AG_OK, "forward: %s", err.message);
    st = ag_attn_approx_backward(&h->s, plan, h->q, h->k, h->v, r->o, r->stat, state, h->dout,
                                 r->dq, r->dk, r->dv, &err);
    ck_assert_msg(st == AG_OK, "backward: %s", err.message);
    if (state) {
        st = ag_attn_approx_backward(&h->s, plan, h->q, h->k, h->v, r->o, r->stat, NULL,
                                     h->dout, start, start + all, start + 2 * all, &err);
        ck_assert_msg(st == AG_OK, "backward without the state: %s", err.message);
        ck_assert_msg(!memcmp(start, r->dq, all * sizeof *start) &&
                      !memcmp(start + all, r->dk, all * sizeof *start) &&
                      !memcmp(start + 2 * all, r->dv, all * sizeof *start),
                      "n=%zu d=%zu: the backward from the kept state differs from the rebuilt one",
                      h->n, h->d);
    }
    free(state);
    free(start);
    check_sentinels(h, r->o);
    check_sentinels(h, r->dq);
    check_sentinels(h, r->dk);
    check_sentinels(h, r->dv);
    for (size_t i = 0; i < h->n; i++) /* undo the 0.25 start */
        for (size_t t = 0; t < h->d; t++) {
            r->dq[i * h->ld + t] -= 0.25f;
            r->dk[i * h->ld + t] -= 0.25f;
            r->dv[i * h->ld + t] -= 0.25f;
        }
}

static ref_cfg cfg_for(const head *h, const ag_head_plan *plan)
{
    ref_cfg cf = {.n = h->n, .d = h->d, .causal = h->causal, .c = h->s.scale,
                  .chunk = ag_approx_block_rows(plan ? plan->report.rank : 1, 1),
                  .g = plan ? plan->report.degree : 0, .coef = plan ? plan->coef : NULL};
    return cf;
}

/* Relative Frobenius error of a kernel view against a double [n, d] array. */
static double rel_err(const head *h, const float *x, const double *ref)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < h->n; i++)
        for (size_t t = 0; t < h->d; t++) {
            double e = x[i * h->ld + t] - ref[i * h->d + t];
            num += e * e;
            den += ref[i * h->d + t] * ref[i * h->d + t];
        }
    return sqrt(num / den);
}

/* ---- (1) backward vs finite differences of the approximate forward --------------------- */

/* Central differences of ref_forward's loss w.r.t. up to `most` coordinates of x (double
 * copy, perturbed in place), compared with the kernel's gradient view g. */
static double fd_compare(const ref_cfg *cf, double *q, double *k, double *v, const double *dout,
                         double *x, const float *g, size_t ld, size_t most,
                         unsigned long long *s)
{
    size_t total = cf->n * cf->d, count = total < most ? total : most;
    double num = 0, den = 0;
    for (size_t c = 0; c < count; c++) {
        size_t idx = total <= most ? c : (size_t)((urand(s) + 1) / 2 * (double)total) % total;
        double x0 = x[idx], h = 1e-5 * (1 + fabs(x0));
        x[idx] = x0 + h;
        double lp = ref_forward(cf, q, k, v, dout, NULL);
        x[idx] = x0 - h;
        double lm = ref_forward(cf, q, k, v, dout, NULL);
        x[idx] = x0;
        double fd = (lp - lm) / (2 * h);
        double got = g[(idx / cf->d) * ld + idx % cf->d];
        num += (got - fd) * (got - fd);
        den += fd * fd;
    }
    return sqrt(num / den);
}

static void fd_case(size_t n, size_t d, int causal, double R, int degree, unsigned long long seed)
{
    head h;
    head_make(&h, n, d, causal, R, seed);
    ag_head_plan plan = plan_for(&h, degree, 0);
    run_out r;
    run_alloc(&r, &h);
    run_kernels(&h, &plan, &r);
    ref_cfg cf = cfg_for(&h, &plan);
    double *q = to_double(h.q, n, d, h.ld), *k = to_double(h.k, n, d, h.ld);
    double *v = to_double(h.v, n, d, h.ld), *dout = to_double(h.dout, n, d, h.ld);
    double *o = malloc(n * d * sizeof *o);
    ref_forward(&cf, q, k, v, dout, o);

    /* the float32 output against the double function: within the rounding model */
    double fb = ag_poly_float_bound(plan.coef, degree, R, d, n), vmax = 0,
           oerr = 0;
    for (size_t i = 0; i < n * d; i++) vmax = fmax(vmax, fabs(v[i]));
    for (size_t i = 0; i < n; i++)
        for (size_t t = 0; t < d; t++) oerr = fmax(oerr, fabs(r.o[i * h.ld + t] - o[i * d + t]));
    ck_assert_msg(oerr <= (2 * fb / (1 - fb) + 1e-6) * vmax,
                  "n=%zu d=%zu causal=%d g=%d: output off the double function by %.3e (model %.3e)",
                  n, d, causal, degree, oerr, 2 * fb * vmax);

    unsigned long long s = seed * 7 + 1;
    double eq = fd_compare(&cf, q, k, v, dout, q, r.dq, h.ld, 160, &s);
    double ek = fd_compare(&cf, q, k, v, dout, k, r.dk, h.ld, 160, &s);
    double ev = fd_compare(&cf, q, k, v, dout, v, r.dv, h.ld, 160, &s);
    if (mcase_verbose())
        fprintf(stderr, "fd n=%zu d=%zu causal=%d R=%g g=%d r=%zu: out-vs-double %.2e (model "
                "%.2e) FD rel dq %.2e dk %.2e dv %.2e\n", n, d, causal, R, degree,
                plan.report.rank, oerr / vmax, 2 * fb, eq, ek, ev);
    ck_assert_msg(eq < FD_TOL && ek < FD_TOL && ev < FD_TOL,
                  "n=%zu d=%zu causal=%d R=%g g=%d: FD relative errors dq %.2e dk %.2e dv %.2e",
                  n, d, causal, R, degree, eq, ek, ev);
    free(q);
    free(k);
    free(v);
    free(dout);
    free(o);
    run_free(&r);
    head_free(&h);
}

START_TEST(test_backward_matches_finite_differences)
{
    /* Non-causal chunks are 128 rows; causal chunks grow with the rank (exact inside, the
     * polynomial across): n exceeds one chunk and is not a multiple of it or of the 16-row
     * groups. The d 16 case runs the kernels without the fused top degree (d + 1 > 16). */
    const struct { size_t d; int g; double R; size_t n, n_causal; } cases[] = {
        {1, 6, 1.0, 300, 300},   /* r 7, causal chunk 32 */
        {4, 15, 3.0, 150, 300},  /* r 3876, causal chunk 256 */
        {4, 5, 1.5, 150, 150},   /* r 126, causal chunk 32 */
        {8, 8, 2.0, 150, 200},   /* r 12870, causal chunk 160 */
        {8, 5, 1.0, 150, 300},   /* r 1287, causal chunk 224 */
        {16, 3, 1.0, 140, 200},  /* r 969, causal chunk 176 */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        for (int causal = 0; causal < 2; causal++) {
            size_t n = causal ? cases[i].n_causal : cases[i].n;
            ck_assert_uint_gt(n, ag_approx_block_rows(ag_poly_rank(cases[i].d, cases[i].g),
                                                      causal));
            fd_case(n, cases[i].d, causal, cases[i].R, cases[i].g, 1 + i);
        }
}
END_TEST

/* ---- (2) against exact attention ------------------------------------------------------- */

typedef struct {
    double out, dq, dk, dv, bound;
} exact_errs;

static exact_errs exact_case(size_t n, size_t d, int causal, double R, int degree, double eps,
                             unsigned long long seed)
{
    head h;
    head_make(&h, n, d, causal, R, seed);
    ag_head_plan plan = plan_for(&h, degree, eps);
    run_out r;
    run_alloc(&r, &h);
    run_kernels(&h, &plan, &r);
    ref_cfg cf = cfg_for(&h, NULL);
    double *q = to_double(h.q, n, d, h.ld), *k = to_double(h.k, n, d, h.ld);
    double *v = to_double(h.v, n, d, h.ld), *dout = to_double(h.dout, n, d, h.ld);
    double *o = malloc(n * d * sizeof *o), *dq = malloc(n * d * sizeof *dq);
    double *dk = malloc(n * d * sizeof *dk), *dv = malloc(n * d * sizeof *dv);
    ref_forward(&cf, q, k, v, dout, o);
    ref_exact_backward(&cf, q, k, v, dout, dq, dk, dv);
    exact_errs e = {.bound = plan.report.error_bound};
    double vmax = 0;
    for (size_t i = 0; i < n * d; i++) vmax = fmax(vmax, fabs(v[i]));
    for (size_t i = 0; i < n; i++)
        for (size_t t = 0; t < d; t++) e.out = fmax(e.out, fabs(r.o[i * h.ld + t] - o[i * d + t]));
    e.out /= vmax;
    e.dq = rel_err(&h, r.dq, dq);
    e.dk = rel_err(&h, r.dk, dk);
    e.dv = rel_err(&h, r.dv, dv);
    free(q);
    free(k);
    free(v);
    free(dout);
    free(o);
    free(dq);
    free(dk);
    free(dv);
    run_free(&r);
    head_free(&h);
    return e;
}

START_TEST(test_within_bound_of_exact)
{
    /* n = 300 exceeds every causal chunk here (at most 224 rows, for d 8 at degree 5) */
    const size_t ds[] = {1, 4, 8};
    const double eps[] = {1e-2, 1e-3, 2e-4};
    for (int causal = 0; causal < 2; causal++)
        for (size_t di = 0; di < 3; di++)
            for (size_t ei = 0; ei < 3; ei++) {
                double R = di == 2 ? 1.0 : 2.0;
                exact_errs e = exact_case(300, ds[di], causal, R, 0, eps[ei], 10 + di);
                double b = e.bound, out_bound = 2 * b / (1 - b);
                if (mcase_verbose())
                    fprintf(stderr, "exact d=%zu causal=%d eps=%g bound %.2e: out %.2e dq %.2e "
                            "(%.1fx) dk %.2e (%.1fx) dv %.2e (%.1fx)\n", ds[di], causal, eps[ei],
                            b, e.out, e.dq, e.dq / b, e.dk, e.dk / b, e.dv, e.dv / b);
                ck_assert_double_le(b, eps[ei]);
                ck_assert_msg(e.out <= out_bound, "d=%zu causal=%d eps=%g: output error %.3e > "
                              "2 eps/(1-eps) = %.3e", ds[di], causal, eps[ei], e.out, out_bound);
                ck_assert_msg(e.dq <= GRAD_FACTOR * b && e.dk <= GRAD_FACTOR * b &&
                              e.dv <= GRAD_FACTOR * b,
                              "d=%zu causal=%d eps=%g bound %.2e: dq %.2e dk %.2e dv %.2e",
                              ds[di], causal, eps[ei], b, e.dq, e.dk, e.dv);
            }
}
END_TEST

START_TEST(test_error_decreases_with_degree)
{
    for (int causal = 0; causal < 2; causal++) {
        exact_errs prev = {0};
        for (int g = 2; g <= 7; g++) {
            exact_errs e = exact_case(160, 4, causal, 1.2, g, 0, 21);
            ck_assert_double_le(e.out, 2 * e.bound / (1 - e.bound));
            if (mcase_verbose())
                fprintf(stderr, "degree causal=%d g=%d bound %.2e: out %.2e dq %.2e dk %.2e "
                        "dv %.2e\n", causal, g, e.bound, e.out, e.dq, e.dk, e.dv);
            if (g > 2) {
                ck_assert_msg(e.dq < prev.dq && e.dk < prev.dk && e.dv < prev.dv && e.out < prev.out,
                              "causal=%d g=%d: errors did not drop (dq %.2e -> %.2e, dk %.2e -> "
                              "%.2e, dv %.2e -> %.2e)", causal, g, prev.dq, e.dq, prev.dk, e.dk,
                              prev.dv, e.dv);
                ck_assert_double_lt(e.bound, prev.bound);
            }
            prev = e;
        }
        ck_assert_double_le(prev.dq, 1e-4); /* g = 7 at R = 1.2 */
    }
}
END_TEST

/* ---- (3) key centring ------------------------------------------------------------------ */

static void shift_keys(head *h, float amount)
{
    for (size_t i = 0; i < h->n; i++)
        for (size_t t = 0; t < h->d; t++) h->k[i * h->ld + t] += amount * (float)(1 + t % 3);
}

static double view_rel(const head *h, const float *a, const float *b)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < h->n; i++)
        for (size_t t = 0; t < h->d; t++) {
            double e = (double)a[i * h->ld + t] - b[i * h->ld + t];
            num += e * e;
            den += (double)b[i * h->ld + t] * b[i * h->ld + t];
        }
    return sqrt(num / den);
}

START_TEST(test_key_shift_invariance_approx)
{
    for (int causal = 0; causal < 2; causal++) {
        head h;
        head_make(&h, 200, 8, causal, 1.0, 31);
        ag_head_plan plan = plan_for(&h, 0, 1e-3);
        run_out a, b;
        run_alloc(&a, &h);
        run_alloc(&b, &h);
        run_kernels(&h, &plan, &a);
        shift_keys(&h, 0.75f);
        /* the centred bound is the same up to the rounding of k + shift */
        double R = ag_attn_score_bound(&h.s, h.q, h.k);
        ck_assert_double_le(fabs(R - plan.report.bound), 1e-5 * plan.report.bound);
        plan.report.bound = fmax(plan.report.bound, R);
        run_kernels(&h, &plan, &b);
        double eo = view_rel(&h, b.o, a.o), eq = view_rel(&h, b.dq, a.dq);
        double ek = view_rel(&h, b.dk, a.dk), ev = view_rel(&h, b.dv, a.dv);
        ck_assert_msg(eo < 1e-5 && eq < 1e-4 && ek < 1e-4 && ev < 1e-4,
                      "causal=%d: shift changed o %.2e dq %.2e dk %.2e dv %.2e", causal, eo, eq,
                      ek, ev);
        /* and the key gradient sums to ~0 over the tokens (the centring's signature) */
        for (size_t t = 0; t < h.d; t++) {
            double sum = 0, mag = 0;
            for (size_t j = 0; j < h.n; j++) {
                sum += a.dk[j * h.ld + t];
                mag += fabs(a.dk[j * h.ld + t]);
            }
            ck_assert_double_le(fabs(sum), 1e-5 * mag + 1e-6);
        }
        run_free(&a);
        run_free(&b);
        head_free(&h);
    }
}
END_TEST

START_TEST(test_key_shift_invariance_exact)
{
    for (int causal = 0; causal < 2; causal++) {
        head h;
        head_make(&h, 300, 8, causal, 2.0, 41);
        float *lse = malloc(h.n * sizeof *lse);
        run_out a, b;
        run_alloc(&a, &h);
        run_alloc(&b, &h);
        run_out *runs[2] = {&a, &b};
        for (int pass = 0; pass < 2; pass++) {
            run_out *r = runs[pass];
            ag_error err = {0};
            ck_assert_int_eq(ag_attn_exact_forward(&h.s, h.q, h.k, h.v, r->o, lse, &err), AG_OK);
            ck_assert_int_eq(ag_attn_exact_backward(&h.s, h.q, h.k, h.v, r->o, lse, h.dout, r->dq,
                                                    r->dk, r->dv, &err), AG_OK);
            if (pass == 0) shift_keys(&h, 0.75f);
        }
        double eo = view_rel(&h, b.o, a.o), eq = view_rel(&h, b.dq, a.dq);
        double ek = view_rel(&h, b.dk, a.dk), ev = view_rel(&h, b.dv, a.dv);
        ck_assert_msg(eo < 1e-5 && eq < 1e-4 && ek < 1e-4 && ev < 1e-4,
                      "exact causal=%d: shift changed o %.2e dq %.2e dk %.2e dv %.2e", causal, eo,
                      eq, ek, ev);
        free(lse);
        run_free(&a);
        run_free(&b);
        head_free(&h);
    }
}
END_TEST

/* ---- (4) plan choice ------------------------------------------------------------------- */

static ag_status choose(ag_method_kind kind, size_t d, size_t n, int causal, double R,
                        size_t ceiling, ag_head_plan *plan, ag_error *err)
{
    ag_method m = ag_method_default(kind);
    return ag_head_plan_choose(&m, d, n, causal, R, NULL, ceiling, plan, err);
}

START_TEST(test_plan_choice)
{
    ag_head_plan p;
    ag_error err = {0};
    /* auto: approx for d_head 8 at n 8192 with small R, exact for d_head 64 */
    ck_assert_int_eq(choose(AG_METHOD_AUTO, 8, 8192, 0, 1.0, 0, &p, &err), AG_OK);
    ck_assert_int_eq(p.report.method, AG_METHOD_APPROX);
    ck_assert_str_eq(p.report.reason, "approx cheaper by cost model");
    ck_assert_int_eq(p.report.degree, 5);
    ck_assert_uint_eq(p.report.rank, 1287);
    ck_assert_double_eq(p.report.bound, 1.0);
    ck_assert_double_le(p.report.error_bound, AG_DEFAULT_EPSILON);
    ck_assert_int_eq(p.report.route, AG_ROUTE_FEATURES);
    ck_assert_int_eq(p.report.poly, AG_POLY_CHEBYSHEV);
    ck_assert_int_eq(choose(AG_METHOD_AUTO, 8, 8192, 1, 1.0, 0, &p, &err), AG_OK);
    ck_assert_int_eq(p.report.method, AG_METHOD_APPROX);
    ck_assert_int_eq(choose(AG_METHOD_AUTO, 64, 8192, 0, 1.0, 0, &p, &err), AG_OK);
    ck_assert_int_eq(p.report.method, AG_METHOD_EXACT);
    ck_assert_str_eq(p.report.reason, "rank over ceiling");
    /* even without a ceiling d_head 64 is dearer by the cost model */
    ck_assert_int_eq(choose(AG_METHOD_AUTO, 64, 8192, 0, 1.0, SIZE_MAX / 2, &p, &err), AG_OK);
    ck_assert_int_eq(p.report.method, AG_METHOD_EXACT);
    ck_assert_str_eq(p.report.reason, "exact cheaper by cost model");
    ck_assert_double_eq(p.report.error_bound, 0);
    ck_assert_int_eq(p.report.degree, 0);
    /* short sequences: exact */
    ck_assert_int_eq(choose(AG_METHOD_AUTO, 8, 256, 0, 1.0, 0, &p, &err), AG_OK);
    ck_assert_int_eq(p.report.method, AG_METHOD_EXACT);
    /* large R: auto falls back, approx refuses */
    ck_assert_int_eq(choose(AG_METHOD_AUTO, 8, 65536, 0, 8.0, 0, &p, &err), AG_OK);
    ck_assert_int_eq(p.report.method, AG_METHOD_EXACT);
    ck_assert_str_eq(p.report.reason, "R too large for float32");
    ck_assert_int_eq(choose(AG_METHOD_APPROX, 8, 65536, 0, 8.0, 0, &p, &err), AG_ERR_UNREACHABLE);
    ck_assert_ptr_nonnull(strstr(err.message, "R = 8"));
    /* rank ceiling */
    ck_assert_int_eq(choose(AG_METHOD_APPROX, 8, 8192, 0, 1.0, 1000, &p, &err), AG_ERR_LIMIT);
    ck_assert_ptr_nonnull(strstr(err.message, "1287"));
    ck_assert_int_eq(choose(AG_METHOD_AUTO, 8, 8192, 0, 1.0, 1000, &p, &err), AG_OK);
    ck_assert_int_eq(p.report.method, AG_METHOD_EXACT);
    ck_assert_str_eq(p.report.reason, "rank over ceiling");
    ck_assert_int_eq(choose(AG_METHOD_APPROX, 16, 8192, 0, 2.0, 0, &p, &err), AG_ERR_LIMIT);
    /* exact requested */
    ck_assert_int_eq(choose(AG_METHOD_EXACT, 8, 8192, 0, 1.0, 0, &p, &err), AG_OK);
    ck_assert_int_eq(p.report.method, AG_METHOD_EXACT);
    ck_assert_str_eq(p.report.reason, "exact requested");
    ck_assert_double_eq(p.report.bound, 1.0);
}
END_TEST

START_TEST(test_plan_fixed_degree_and_invalid)
{
    ag_head_plan p;
    ag_error err = {0};
    ag_method m = ag_method_default(AG_METHOD_APPROX);
    m.degree = 3;
    ck_assert_int_eq(ag_head_plan_choose(&m, 8, 4096, 0, 1.0, NULL, 0, &p, &err), AG_OK);
    ck_assert_int_eq(p.report.degree, 3);
    ck_assert_uint_eq(p.report.rank, 165);
    ck_assert_double_ge(p.report.error_bound, ag_poly_rel_bound(AG_POLY_CHEBYSHEV, 3, 1.0));
    ck_assert_double_le(p.report.error_bound, 1.3e-2);
    m.degree = 1; /* relative error bound ~ 33 at R = 3: refused */
    ck_assert_int_eq(ag_head_plan_choose(&m, 8, 4096, 0, 3.0, NULL, 0, &p, &err),
                     AG_ERR_UNREACHABLE);
    ck_assert_str_eq(err.field, "method.degree");
    m.degree = AG_MAX_DEGREE + 1;
    ck_assert_int_eq(ag_head_plan_choose(&m, 8, 4096, 0, 1.0, NULL, 0, &p, &err), AG_ERR_INVALID);
    m.degree = 0;
    const double bad_eps[] = {0, 1, -1e-3, NAN};
    for (size_t i = 0; i < 4; i++) {
        m.epsilon = bad_eps[i];
        ck_assert_int_eq(ag_head_plan_choose(&m, 8, 4096, 0, 1.0, NULL, 0, &p, &err),
                         AG_ERR_INVALID);
        ck_assert_str_eq(err.field, "method.epsilon");
    }
    m.epsilon = 1e-3;
    m.kind = (ag_method_kind)7;
    ck_assert_int_eq(ag_head_plan_choose(&m, 8, 4096, 0, 1.0, NULL, 0, &p, &err), AG_ERR_INVALID);
    ck_assert_int_eq(ag_head_plan_choose(NULL, 8, 4096, 0, 1.0, NULL, 0, &p, &err),
                     AG_ERR_INVALID);
    /* Taylor needs a higher degree than Chebyshev for the same epsilon */
    m = ag_method_default(AG_METHOD_APPROX);
    m.poly = AG_POLY_TAYLOR;
    ck_assert_int_eq(ag_head_plan_choose(&m, 4, 4096, 0, 2.0, NULL, 0, &p, &err), AG_OK);
    ck_assert_int_eq(p.report.poly, AG_POLY_TAYLOR);
    ck_assert_int_eq(p.report.degree, 10);
}
END_TEST

/* ---- error paths ----------------------------------------------------------------------- */

START_TEST(test_kernel_errors)
{
    head h;
    head_make(&h, 100, 4, 0, 1.0, 51);
    ag_head_plan plan = plan_for(&h, 0, 1e-3);
    run_out r;
    run_alloc(&r, &h);
    ag_error err = {0};
    /* a plan whose bound is below this sequence's */
    ag_head_plan low = plan;
    low.report.bound = 0.5;
    ck_assert_int_eq(ag_attn_approx_forward(&h.s, &low, h.q, h.k, h.v, r.o, r.stat, NULL, &err),
                     AG_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(err.message, "score bound"));
    /* a plan that is not approx, or whose rank does not match */
    ag_head_plan bad = plan;
    bad.report.method = AG_METHOD_EXACT;
    ck_assert_int_eq(ag_attn_approx_forward(&h.s, &bad, h.q, h.k, h.v, r.o, r.stat, NULL, &err),
                     AG_ERR_INVALID);
    bad = plan;
    bad.report.rank++;
    ck_assert_int_eq(ag_attn_approx_forward(&h.s, &bad, h.q, h.k, h.v, r.o, r.stat, NULL, &err),
                     AG_ERR_INVALID);
    ck_assert_int_eq(ag_attn_approx_forward(&h.s, &plan, h.q, h.k, NULL, r.o, r.stat, NULL, &err),
                     AG_ERR_INVALID);
    ag_attn_shape s0 = h.s;
    s0.ld = 2;
    ck_assert_int_eq(ag_attn_approx_forward(&s0, &plan, h.q, h.k, h.v, r.o, r.stat, NULL, &err),
                     AG_ERR_INVALID);
    /* cancellation */
    atomic_int flag = 1;
    ag_attn_shape sc = h.s;
    sc.cancel = &flag;
    ck_assert_int_eq(ag_attn_approx_forward(&sc, &plan, h.q, h.k, h.v, r.o, r.stat, NULL, &err),
                     AG_ERR_CANCELLED);
    ck_assert_int_eq(ag_attn_approx_forward(&h.s, &plan, h.q, h.k, h.v, r.o, r.stat, NULL, &err),
                     AG_OK);
    ck_assert_int_eq(ag_attn_approx_backward(&sc, &plan, h.q, h.k, h.v, r.o, r.stat, NULL, h.dout,
                                             r.dq, r.dk, r.dv, &err), AG_ERR_CANCELLED);
    /* a corrupted row_stat */
    r.stat[17] = -1;
    ck_assert_int_eq(ag_attn_approx_backward(&h.s, &plan, h.q, h.k, h.v, r.o, r.stat, NULL, h.dout,
                                             r.dq, r.dk, r.dv, &err), AG_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(err.message, "row_stat[17]"));
    run_free(&r);
    head_free(&h);
}
END_TEST

START_TEST(test_single_token_and_workspace)
{
    head h;
    head_make(&h, 1, 4, 1, 1.0, 61); /* n = 1: R = 0 after centring */
    ag_head_plan plan = plan_for(&h, 0, 1e-3);
    ck_assert_double_eq(plan.report.bound, 0);
    run_out r;
    run_alloc(&r, &h);
    run_kernels(&h, &plan, &r);
    for (size_t t = 0; t < 4; t++) {
        ck_assert_float_eq_tol(r.o[t], h.v[t], 1e-6);
        ck_assert_float_eq_tol(r.dv[t], h.dout[t], 1e-6);
        ck_assert_float_eq_tol(r.dq[t], 0, 1e-6);
        ck_assert_float_eq_tol(r.dk[t], 0, 1e-6);
    }
    run_free(&r);
    head_free(&h);
    /* n-independent: the lane state r (d+1) 16 floats dominates, plus one chunk's monomials */
    size_t w = ag_attn_approx_workspace_bytes(8, 1287, 0);
    ck_assert_uint_gt(w, 1287 * 9 * 16 * 4);
    ck_assert_uint_lt(w, 4u << 20);
    ck_assert_uint_lt(ag_attn_approx_workspace_bytes(16, 20000, 1), 48u << 20);
    ck_assert_uint_eq(ag_attn_approx_workspace_bytes(8, 0, 0), SIZE_MAX);
}
END_TEST

/* Two heads of one sequence on two threads give the serial results bit for bit. */
typedef struct {
    head *h;
    ag_head_plan *plan;
    run_out *r;
} par_ctx;

static int par_body(void *ctx, size_t begin, size_t end, int tid)
{
    (void)tid;
    par_ctx *c = ctx;
    for (size_t i = begin; i < end; i++) {
        ag_error err;
        if (ag_attn_approx_forward(&c[i].h->s, c[i].plan, c[i].h->q, c[i].h->k, c[i].h->v,
                                   c[i].r->o, c[i].r->stat, NULL, &err) != AG_OK) return 1;
        if (ag_attn_approx_backward(&c[i].h->s, c[i].plan, c[i].h->q, c[i].h->k, c[i].h->v,
                                    c[i].r->o, c[i].r->stat, NULL, c[i].h->dout, c[i].r->dq,
                                    c[i].r->dk,
                                    c[i].r->dv, &err) != AG_OK) return 1;
    }
    return 0;
}

START_TEST(test_thread_safety)
{
    head h[2];
    ag_head_plan plan[2];
    run_out par[2], ser[2];
    par_ctx ctx[2];
    for (int i = 0; i < 2; i++) {
        head_make(&h[i], 300, 8, i, 1.0, 71 + i);
        plan[i] = plan_for(&h[i], 0, 1e-3);
        run_alloc(&par[i], &h[i]);
        run_alloc(&ser[i], &h[i]);
        ctx[i] = (par_ctx){&h[i], &plan[i], &par[i]};
    }
    ck_assert_int_eq(ag_parallel_for(2, 2, par_body, ctx), 0);
    for (int i = 0; i < 2; i++) {
        par_ctx one = {&h[i], &plan[i], &ser[i]};
        ck_assert_int_eq(par_body(&one, 0, 1, 0), 0);
        ck_assert_int_eq(memcmp(par[i].dk, ser[i].dk, h[i].n * h[i].ld * sizeof(float)), 0);
        ck_assert_int_eq(memcmp(par[i].o, ser[i].o, h[i].n * h[i].ld * sizeof(float)), 0);
        run_free(&par[i]);
        run_free(&ser[i]);
        head_free(&h[i]);
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("attention_approx");
    TCase *tc = tcase_create("attention_approx");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_backward_matches_finite_differences);
    tcase_add_test(tc, test_within_bound_of_exact);
    tcase_add_test(tc, test_error_decreases_with_degree);
    tcase_add_test(tc, test_key_shift_invariance_approx);
    tcase_add_test(tc, test_key_shift_invariance_exact);
    tcase_add_test(tc, test_plan_choice);
    tcase_add_test(tc, test_plan_fixed_degree_and_invalid);
    tcase_add_test(tc, test_kernel_errors);
    tcase_add_test(tc, test_single_token_and_workspace);
    tcase_add_test(tc, test_thread_safety);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
