/* Single-head attention kernels, exact and approximate, for one sequence.
 *
 * Every kernel works on strided views: q, k, v, o, dq, dk, dv point at the first element of
 * this head's column group inside [n, ld] row-major buffers (ld = d_model), so heads are read
 * in place. scale c = 1/sqrt(d_head). No kernel allocates an n x n matrix.
 *
 * Backward kernels accumulate (+=) into dq, dk, dv.
 */
#ifndef ALTGRAD_ATTENTION_H
#define ALTGRAD_ATTENTION_H

#include "altgrad.h"

typedef struct {
    size_t n;      /* sequence length, >= 1 */
    size_t d_head; /* head width, >= 1 */
    size_t ld;     /* row stride of every view, >= d_head */
    int causal;
    float scale;   /* c */
    const atomic_int *cancel; /* may be NULL */
} ag_attn_shape;

/* Non-zero once the shape's cancel flag (if any) is raised; kernels check it between blocks. */
static inline int ag_attn_cancelled(const ag_attn_shape *s)
{
    return s->cancel && atomic_load_explicit(s->cancel, memory_order_relaxed);
}

/* ---- exact (core/attention_exact.c) ---------------------------------------------------- */

/* o = softmax(c q k^T [+mask]) v. lse [n]: each row's log-sum-exp of the scaled scores, kept
 * for the backward. AG_ERR_NOMEM / AG_ERR_CANCELLED on failure. */
ag_status ag_attn_exact_forward(const ag_attn_shape *s, const float *q, const float *k,
                                const float *v, float *o, float *lse, ag_error *err);

/* Given dout [n, ld-view], accumulates dq, dk, dv, recomputing P block by block from lse. */
ag_status ag_attn_exact_backward(const ag_attn_shape *s, const float *q, const float *k,
                                 const float *v, const float *o, const float *lse,
                                 const float *dout, float *dq, float *dk, float *dv,
                                 ag_error *err);

/* The same for query rows [r0, r1) only (0 <= r0 < r1 <= n), so that one head can be split
 * over threads. The forward writes o and lse rows r0..r1-1. The backward reads those rows of
 * o, lse, dout, accumulates dq rows r0..r1-1 (view), and accumulates the contribution of these
 * queries to dk and dv into dk_part, dv_part: CONTIGUOUS [n, d_head] arrays owned by the
 * caller (one pair per concurrent call; sum them into the dk, dv views afterwards). */
ag_status ag_attn_exact_forward_rows(const ag_attn_shape *s, size_t r0, size_t r1,
                                     const float *q, const float *k, const float *v, float *o,
                                     float *lse, ag_error *err);
ag_status ag_attn_exact_backward_rows(const ag_attn_shape *s, size_t r0, size_t r1,
                                      const float *q, const float *k, const float *v,
                                      const float *o, const float *lse, const float *dout,
                                      float *dq, float *dk_part, float *dv_part,
                                      ag_error *err);

/* ---- approximate (core/attention_approx.c, core/poly.c, core/feature_map.c) --------------- */

/* How one head is computed; chosen once per (layer, head) before its forward pass. */
typedef struct {
    ag_head_report report;            /* method, degree, rank, bound, error_bound, reason */
    double coef[AG_MAX_DEGREE + 1];   /* p(x) = sum_k coef[k] x^k approximating e^x on [-R, R] */
} ag_head_plan;

/* R = c * max_i |q_i| * max_j |k_j - mean(k)| for one sequence (O(n d_head)). */
double ag_attn_score_bound(const ag_attn_shape *s, const float *q, const float *k);

/* Picks exact or approx for a head of width d_head over n tokens whose score bound is R:
 * method->kind exact -> exact; approx -> the degree meeting epsilon (or the fixed degree),
 * AG_ERR_UNREACHABLE when epsilon cannot be met in float32 at this R, AG_ERR_LIMIT when the
 * rank exceeds rank_ceiling; auto -> the cheaper by cost, exact whenever approx cannot meet
 * epsilon. */
ag_status ag_head_plan_choose(const ag_method *method, size_t d_head, size_t n, int causal,
                              double R, const ag_cost_model *cost, size_t rank_ceiling,
                              ag_head_plan *plan, ag_error *err);

/* Approximate forward under plan (report.method == AG_METHOD_APPROX). row_stat [n]: the
 * denominators, kept for the backward. state: NULL, or ag_attn_approx_state_floats() floats
 * (owned by the caller) that receive the keys' state for the backward; left untouched when
 * causal (the backward needs the prefix states, which it rebuilds). */
ag_status ag_attn_approx_forward(const ag_attn_shape *s, const ag_head_plan *plan,
                                 const float *q, const float *k, const float *v, float *o,
                                 float *row_stat, float *state, ag_error *err);

/* Gradient of the approximate forward (route features) or the paper's Algorithm 1 (route
 * paper); accumulates into dq, dk, dv. state: NULL (the keys' state is rebuilt, one more
 * pass over the keys), or what ag_attn_approx_forward wrote for these same q, k, v and plan;
 * the gradients are bitwise the same either way. Route paper and causal heads ignore it. */
ag_status ag_attn_approx_backward(const ag_attn_shape *s, const ag_head_plan *plan,
                                  const float *q, const float *k, const float *v,
                                  const float *o, const float *row_stat, const float *state,
                                  const float *dout, float *dq, float *dk, float *dv,
                                  ag_error *err);

/* Floats of the state ag_attn_approx_forward can keep for a non-causal head of width d_head
 * at this rank: rank (d_head + 1); 0 when causal; SIZE_MAX on overflow. */
size_t ag_attn_approx_state_floats(size_t d_head, size_t rank, int causal);

/* Upper bound of the bytes one approximate forward or backward call allocates for a head of
 * width d_head at this rank (independent of n: features are made per block of rows).
 * SIZE_MAX on overflow or bad arguments. */
size_t ag_attn_approx_workspace_bytes(size_t d_head, size_t rank, int causal);

#endif
