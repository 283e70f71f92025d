/* Internals shared by the approximate attention kernels (core/attention_approx.c, the
 * features route, and core/attention_paper.c, the paper's route) and the cost model
 * (core/cost.c). Not part of the public API.
 */
#ifndef ALTGRAD_APPROX_INTERNAL_H
#define ALTGRAD_APPROX_INTERNAL_H

#include "attention.h"
#include "feature_map.h"

/* One head of one sequence, prepared for the low-rank kernels: the key mean, the balanced
 * scalings (q^ = qscale q, k^ = kscale (k - mu), q^ . k^ = c q . (k - mu), and
 * max |q^| = max |k^| = sqrt(R) so no monomial overflows however q and k are scaled), the
 * feature map of the plan's polynomial, and the block size. */
typedef struct {
    const ag_attn_shape *s;
    size_t n, d, ld, r;
    size_t B;         /* rows per chunk, C: a multiple of 16 (ag_approx_block_rows) */
    double *mu;       /* [d] key mean, double */
    float qscale, kscale;
    ag_feature_map map;
} ag_approx_head;

/* Validates shape and plan (approx method, degree, rank, and that this sequence's score bound
 * does not exceed plan->report.bound), then prepares h. Frees everything on failure. */
ag_status ag_approx_head_init(ag_approx_head *h, const ag_attn_shape *s, const ag_head_plan *plan,
                              const float *q, const float *k, ag_error *err);
/* Frees what init allocated; NULL-safe. */
void ag_approx_head_free(ag_approx_head *h);

/* xt [d, ldx] <- transposed scaled rows i0..i0+m-1 of q (is_key 0) or of k - mu (is_key 1);
 * columns m..ldx-1 are zeroed. */
void ag_approx_load_t(const ag_approx_head *h, const float *x, int is_key, size_t i0, size_t m,
                      float *xt, size_t ldx);

/* VpT [d+1, C] <- [v rows j0..j0+m-1, 1]^T (C = h->B), zero past the m rows. */
void ag_approx_load_vp(const ag_approx_head *h, const float *v, size_t j0, size_t m, float *VpT);

/* GT [d+1, C] <- ([dO_i, -dO_i . o_i] / den_i)^T for rows i0..i0+m-1, zero past the m rows.
 * AG_ERR_INVALID when a denominator is one the approximate forward cannot have produced. */
ag_status ag_approx_load_g(const ag_approx_head *h, const float *o, const float *row_stat,
                           const float *dout, size_t i0, size_t m, float *GT, ag_error *err);

/* Rows per chunk for rank r: 128 non-causal; about r / 6 causal (the exact in-chunk part
 * against the per-chunk state reduction); 32..256, a multiple of 16, and C r floats <= 8 MB. */
size_t ag_approx_block_rows(size_t r, int causal);

/* Route paper (AG_ROUTE_PAPER): the paper's Algorithm 1, same contract as
 * ag_attn_approx_backward. core/attention_paper.c. */
ag_status ag_attn_approx_backward_paper(const ag_attn_shape *s, const ag_head_plan *plan,
                                        const float *q, const float *k, const float *v,
                                        const float *o, const float *row_stat,
                                        const float *dout, float *dq, float *dk, float *dv,
                                        ag_error *err);

/* The same with the route's state tensors cut into slabs of at most slab_cols of their last
 * index (0: as wide as the workspace budget allows, what ag_attn_approx_backward_paper does);
 * lets tests run the slab loop at any d_head. */
ag_status ag_attn_approx_backward_paper_slabs(const ag_attn_shape *s, const ag_head_plan *plan,
                                              const float *q, const float *k, const float *v,
                                              const float *o, const float *row_stat,
                                              const float *dout, float *dq, float *dk,
                                              float *dv, size_t slab_cols, ag_error *err);

/* Bytes one route-paper backward call allocates for a head of width d_head at this rank
 * (independent of n), workspace and feature map. The states are sliced to keep it within
 * ag_attn_approx_workspace_bytes (what the model's memory estimate reserves; true for every
 * d_head <= 128 and rank <= 20000). SIZE_MAX on overflow or bad arguments. */
size_t ag_attn_paper_workspace_bytes(size_t d_head, size_t rank, int causal);

/* Flop counts of the cost model, per head and sequence, forward + backward: exact blocked
 * attention (the causal one skips the blocks above the diagonal) and the features route. */
double ag_cost_exact_flops(size_t n, size_t d_head, int causal);
double ag_cost_approx_flops(size_t n, size_t d_head, size_t rank, int causal);
/* The same for route paper: the approximate forward plus the paper's backward, whose
 * Hadamard contractions cost 4 r (d+1)(2d+1) a row (core/attention_paper.c). */
double ag_cost_paper_flops(size_t n, size_t d_head, size_t rank, int causal);

#endif
