/* The auto method's cost model: predicted time = flops x measured seconds per flop.
 *
 * Flop counts per head and sequence, forward + backward:
 *   exact:   14 n^2 d  (forward q k^T and P v: 4 n^2 d; backward recomputes the scores and
 *            forms dv, dP, dq, dk: 10 n^2 d); causal skips the half above the diagonal. The
 *            n^2 exps are not counted: the measured constant absorbs them.
 *   approx:  n r (12 d + 26) for the features route as core/attention_approx.c does it,
 *            non-causal: products with the states 4 r (d+1) per row forward (state, query)
 *            and 6 r (d+1) + 2 r d backward (the query state D, dPhi, dPsi, dv; the keys'
 *            state comes from the forward); monomial trees ~2 r forward and ~11 r backward.
 *            Causal, n r (14 d + 29): the backward rebuilds the prefix states (2 r (d+1) and
 *            ~r more), plus the exact in-chunk part, C (14 d + 4) per row for chunks of C rows.
 *   paper:   n r (8 (d+1)^2 + 8) for route paper (core/attention_paper.c): the same forward,
 *            4 r (d+1) + 2 r, and a backward of two GEMM pairs (build a state, read it)
 *            through the r x (d+1) x d and r x (d+1) x (d+1) states, 4 r (d+1)(2d+1), plus
 *            four feature generations and the weights, ~6 r; causal adds the same in-chunk
 *            part. About 5.4 times the features route at d 8 (2d/3 for large d). Its GEMMs
 *            run faster per flop than the features route's vector loops, so with the
 *            features route's measured constant the model overestimates it
 *            (docs/paper_route.md): auto then errs toward exact.
 * The constants come from timing both kernels on this machine (ag_cost_model_calibrate) at
 * d_head 8, degree 5 (rank 1287), n 2048; the defaults are such a measurement.
 */
#include <math.h>
#include <stdlib.h>
#include <time.h>

#include "approx_internal.h"
#include "poly.h"

ag_cost_model ag_cost_model_default(void)
{
    /* ag_cost_model_calibrate() on the 2-core development machine (Xeon, AVX-512; OpenBLAS
     * 0.3.21, one BLAS thread), best of 5: exact 27 GFLOP/s with OPENBLAS_CORETYPE=SkylakeX or
     * Cooperlake (10.8 with the SSE3 "Prescott" kernels OpenBLAS falls back to on CPUs it does
     * not know), approx 40 GFLOP/s (no BLAS in its hot loops). The faster exact figure is the
     * default: auto then errs toward exact where the machine is slower than measured. */
    ag_cost_model m = {.exact_s_per_flop = 1.0 / 27e9, .approx_s_per_flop = 1.0 / 40e9};
    return m;
}

double ag_cost_exact_flops(size_t n, size_t d_head, int causal)
{
    double nn = (double)n, d = (double)d_head;
    return causal ? 14.0 * d * nn * (nn + 1) / 2 : 14.0 * d * nn * nn;
}

double ag_cost_approx_flops(size_t n, size_t d_head, size_t rank, int causal)
{
    double nn = (double)n, d = (double)d_head, r = (double)rank;
    /* non-causal, the backward starts from the state the forward kept: one pass fewer */
    double f = causal ? nn * r * (14 * d + 29) : nn * r * (12 * d + 26);
    if (causal) f += nn * (double)ag_approx_block_rows(rank, 1) * (14 * d + 4);
    return f;
}

double ag_cost_paper_flops(size_t n, size_t d_head, size_t rank, int causal)
{
    double nn = (double)n, d1 = (double)d_head + 1, r = (double)rank;
    double f = nn * r * (8 * d1 * d1 + 8);
    if (causal) f += nn * (double)ag_approx_block_rows(rank, 1) * (14 * (d1 - 1) + 4);
    return f;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Deterministic uniform(-a, a) fill (a 64-bit LCG: no global state). */
static void fill(float *x, size_t count, float a, unsigned long long *state)
{
    for (size_t i = 0; i < count; i++) {
        *state = *state * 6364136223846793005ULL + 1442695040888963407ULL;
        x[i] = a * (2.0f * (float)((*state >> 40) & 0xffffff) / 16777216.0f - 1.0f);
    }
}

enum { CAL_N = 2048, CAL_D = 8, CAL_DEGREE = 5, CAL_REPS = 3 };

ag_status ag_cost_model_calibrate(ag_cost_model *model, ag_error *err)
{
    const size_t n = CAL_N, d = CAL_D;
    *model = ag_cost_model_default();
    /* the keys' state the forward keeps for the backward, as in the model */
    const size_t sf = ag_attn_approx_state_floats(d, ag_poly_rank(d, CAL_DEGREE), 0);
    float *buf = malloc((8 * n * d + 2 * n + sf) * sizeof *buf);
    if (!buf) return ag_error_set(err, AG_ERR_NOMEM, "", "out of memory for calibration");
    float *q = buf, *k = q + n * d, *v = k + n * d, *o = v + n * d, *dout = o + n * d;
    float *dq = dout + n * d, *dk = dq + n * d, *dv = dk + n * d, *lse = dv + n * d;
    float *stat = lse + n, *state = stat + n; /* lse, stat [n] */
    unsigned long long seed = 12345;
    /* |q|, |k| ~ 0.8 sqrt(d) a: with a = 0.45 the score bound R is about 1, the headline case */
    fill(q, n * d, 0.45f, &seed);
    fill(k, n * d, 0.45f, &seed);
    fill(v, n * d, 1.0f, &seed);
    fill(dout, n * d, 1.0f, &seed);
    ag_attn_shape s = {.n = n, .d_head = d, .ld = d, .causal = 0,
                       .scale = (float)(1 / sqrt((double)d)), .cancel = NULL};

    ag_method m = ag_method_default(AG_METHOD_APPROX);
    m.degree = CAL_DEGREE;
    ag_head_plan plan;
    double R = ag_attn_score_bound(&s, q, k);
    ag_status st = ag_head_plan_choose(&m, d, n, 0, R, NULL, 0, &plan, err);

    double best_exact = INFINITY, best_approx = INFINITY;
    for (int rep = 0; st == AG_OK && rep <= CAL_REPS; rep++) {
        double t0 = now_s();
        st = ag_attn_exact_forward(&s, q, k, v, o, lse, err);
        if (st == AG_OK) st = ag_attn_exact_backward(&s, q, k, v, o, lse, dout, dq, dk, dv, err);
        double t1 = now_s();
        if (st == AG_OK) st = ag_attn_approx_forward(&s, &plan, q, k, v, o, stat, state, err);
        if (st == AG_OK)
            st = ag_attn_approx_backward(&s, &plan, q, k, v, o, stat, state, dout, dq, dk, dv,
                                         err);
        double t2 = now_s();
        if (rep == 0) continue; /* warm-up: page faults, BLAS buffers */
        if (t1 - t0 < best_exact) best_exact = t1 - t0;
        if (t2 - t1 < best_approx) best_approx = t2 - t1;
    }
    free(buf);
    if (st != AG_OK) return st;
    if (best_exact > 0 && best_approx > 0) {
        model->exact_s_per_flop = best_exact / ag_cost_exact_flops(n, d, 0);
        model->approx_s_per_flop = best_approx / ag_cost_approx_flops(n, d, plan.report.rank, 0);
    }
    return AG_OK;
}
