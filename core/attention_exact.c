/* Exact single-head attention on CPU, FlashAttention schedule with GEMMs.
 *
 * Shapes (one head of one sequence; every view is [n, ld] row-major, d = d_head columns used):
 *   q, k, v, o, dout, dq, dk, dv   [n, d] views      lse [n]
 *   S = c q k^T [+ causal mask]    P = softmax_rows(S)    o = P v     lse_i = log sum_j e^S_ij
 *
 * Forward: for each block of bq query rows, sweep blocks of bk keys: scores by GEMM, then
 * one elementwise pass (2^(s - ref), row sums), then acc += P v by GEMM; at the end
 * o = acc / l and lse from ref and l (online softmax with a lazy reference, see REF_SLACK).
 * Backward: per block, recompute P = exp(S - lse) and dP = dout v^T by GEMMs, one pass for
 * P and dS = c P o (dP - delta) with delta_i = dout_i . o_i, then
 *   dv += P^T dout;   dk += dS^T q;   dq += dS k      (three GEMMs).
 * Causal: key blocks entirely above the diagonal are skipped, the one crossing it is masked.
 * Memory per call: packed copies of the inputs, O(n d), and two score blocks, O(bq bk);
 * never an n x n matrix.
 *
 * Why it is fast enough: with d_head = 8 each score costs 16 flops per product, so the
 * products run far from sgemm's peak and exp is a third of the work. Scores are kept in base
 * 2 (log2 e folded into the GEMM's alpha) so exp is ag_exp2f, branch-free and vectorised by
 * GCC; score blocks are laid out so that every softmax step is an elementwise loop (no
 * horizontal reductions) and every product takes OpenBLAS's unpacked small-matrix path
 * (see below); inputs are packed once per call into contiguous panels.
 */
#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attention.h"
#include "layers.h"

#ifndef AG_ATTN_BQ
#define AG_ATTN_BQ 128
#endif
#ifndef AG_ATTN_BK
#define AG_ATTN_BK 512
#endif

static ag_status check_shape(const ag_attn_shape *s, const void *a, const void *b,
                             const void *c, ag_error *err)
{
    if (!s || !a || !b || !c)
        return ag_error_set(err, AG_ERR_INVALID, "attention", "NULL argument");
    if (s->n < 1 || s->d_head < 1 || s->ld < s->d_head)
        return ag_error_set(err, AG_ERR_INVALID, "attention",
                            "bad shape n=%zu d_head=%zu ld=%zu", s->n, s->d_head, s->ld);
    if (s->n > (size_t)INT_MAX || s->ld > (size_t)INT_MAX / 2)
        return ag_error_set(err, AG_ERR_INVALID, "attention", "n=%zu too large for BLAS", s->n);
    return AG_OK;
}

/* Score blocks. A block of queries i0.. (mi of them) against keys j0.. (nj) is stored
 * column-major, in one of two orientations:
 *   X_qk [mi, nj] (queries contiguous) in the forward pass,
 *   X_kq [nj, mi] (keys contiguous)    in the backward pass.
 * Why: OpenBLAS serves column-major NN/NT products with M*N*K <= 1e6 from unpacked "small"
 * kernels that vectorise along M. With these orientations every product but one (dq) has the
 * block length as M instead of d_head (8: half a vector), and every softmax step is an
 * elementwise loop with no horizontal reduction (which GCC will not vectorise for floats
 * without -ffast-math). */

/* Forward, X_qk: m[r] = max(m[r], max_j X[j][r]). */
static void qk_max(float *restrict m, const float *restrict X, size_t mi, size_t nj)
{
    for (size_t j = 0; j < nj; j++) {
        const float *col = X + j * mi;
        for (size_t r = 0; r < mi; r++) m[r] = col[r] > m[r] ? col[r] : m[r];
    }
}

/* Forward, X_qk, one pass: X[j][r] = 2^(X[j][r] - ref[r]), sum[r] += it, and bm[r] tracks the
 * block's max score (to detect a reference too far below the scores). */
static void qk_exp2_sum_max(float *restrict X, const float *restrict ref, float *restrict sum,
                            float *restrict bm, size_t mi, size_t nj)
{
    for (size_t j = 0; j < nj; j++) {
        float *col = X + j * mi;
        for (size_t r = 0; r < mi; r++) {
            float x = col[r];
            bm[r] = x > bm[r] ? x : bm[r];
            float e = ag_exp2f(x - ref[r]);
            col[r] = e;
            sum[r] += e;
        }
    }
}

/* Forward, X_qk: hides key j0+j from query i0+r when j0+j > i0+r. */
static void qk_mask(float *X, size_t i0, size_t mi, size_t j0, size_t nj)
{
    if (j0 + nj <= i0 + 1) return; /* the block lies on or below the diagonal */
    for (size_t j = 0; j < nj; j++) {
        size_t key = j0 + j, hidden = key > i0 ? key - i0 : 0; /* queries r < hidden */
        if (hidden > mi) hidden = mi;
        for (size_t r = 0; r < hidden; r++) X[j * mi + r] = -INFINITY;
    }
}

/* Backward, X_kq: the number of keys of this block that query i0+r sees. */
static size_t kq_visible(size_t i0, size_t r, size_t j0, size_t nj, int causal)
{
    if (!causal) return nj;
    size_t q = i0 + r;
    if (q < j0) return 0;
    return q - j0 + 1 < nj ? q - j0 + 1 : nj;
}

/* Column-major sgemm with A not transposed: the form the small kernels accept. */
static void gemm(CBLAS_TRANSPOSE tb, size_t M, size_t N, size_t K, float alpha, const float *A,
                 size_t lda, const float *B, size_t ldb, float beta, float *C, size_t ldc)
{
    cblas_sgemm(CblasColMajor, CblasNoTrans, tb, (int)M, (int)N, (int)K, alpha, A, (int)lda, B,
                (int)ldb, beta, C, (int)ldc);
}

/* Copies the d columns of an [n, ld] view into a contiguous [n, d] buffer. */
static void pack(float *restrict dst, const float *restrict src, size_t n, size_t d, size_t ld)
{
    for (size_t i = 0; i < n; i++) memcpy(dst + i * d, src + i * ld, d * sizeof *dst);
}

/* Copies the d columns of an [n, ld] view transposed into a contiguous [d, n] buffer. */
static void pack_t(float *restrict dst, const float *restrict src, size_t n, size_t d, size_t ld)
{
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < d; j++) dst[j * n + i] = src[i * ld + j];
}

/* mean[j] = average over the n rows of column j of an [n, ld] view (in double). */
static void col_mean(float *mean, const float *src, size_t n, size_t d, size_t ld)
{
    for (size_t j = 0; j < d; j++) {
        double t = 0;
        for (size_t i = 0; i < n; i++) t += src[i * ld + j];
        mean[j] = (float)(t / (double)n);
    }
}

/* pack() of src - mean. */
static void pack_centred(float *restrict dst, const float *restrict src,
                         const float *restrict mean, size_t n, size_t d, size_t ld)
{
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < d; j++) dst[i * d + j] = src[i * ld + j] - mean[j];
}

/* pack_t() of src - mean. */
static void pack_t_centred(float *restrict dst, const float *restrict src,
                           const float *restrict mean, size_t n, size_t d, size_t ld)
{
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < d; j++) dst[j * n + i] = src[i * ld + j] - mean[j];
}

/* dst view [n, ld] += src [n, d]. */
static void unpack_add(float *restrict dst, const float *restrict src, size_t n, size_t d,
                       size_t ld)
{
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < d; j++) dst[i * ld + j] += src[i * d + j];
}

/* Rows [0, rows) of the view dst [., ld] += transpose of src [d, n]. */
static void unpack_t_add(float *restrict dst, const float *restrict src, size_t rows, size_t d,
                         size_t ld, size_t n)
{
    for (size_t i = 0; i < rows; i++)
        for (size_t j = 0; j < d; j++) dst[i * ld + j] += src[j * n + i];
}

/* Block sizes: bk keys by bq queries, with bq * bk * d <= 2^19 so that every product stays
 * on the small-kernel path, bq a multiple of 16 (one zmm) and at least 16. Wide heads take
 * shorter key blocks for taller query blocks (measured: d_head 64 runs 18% faster with
 * 256 x 32 than with 512 x 16; d_head 8 is indifferent between 512 and 256 keys). */
static void block_sizes(size_t n, size_t d, size_t *bq, size_t *bk)
{
    size_t k = d >= 32 ? 256 : AG_ATTN_BK, q = ((size_t)1 << 19) / (k * d);
    q = q > AG_ATTN_BQ ? AG_ATTN_BQ : q;
    q = q < 16 ? 16 : q / 16 * 16;
    *bq = q < n ? q : n;
    *bk = k < n ? k : n;
}

/* Online softmax in base 2 with a lazy reference: each query row keeps ref (the max score of
 * its first key block) and sums 2^(s - ref) over later blocks without rescaling, as long as
 * no score exceeds ref + REF_SLACK (so no term exceeds 2^64 and the sums stay far from float's
 * range). A block that breaks this is redone with ref raised to its max. This saves the
 * separate max pass of the textbook online softmax. */
#define REF_SLACK 64.0f

static ag_status check_rows(const ag_attn_shape *s, size_t r0, size_t r1, ag_error *err)
{
    if (r0 >= r1 || r1 > s->n)
        return ag_error_set(err, AG_ERR_INVALID, "attention", "bad row range [%zu, %zu) of %zu",
                            r0, r1, s->n);
    return AG_OK;
}

ag_status ag_attn_exact_forward(const ag_attn_shape *s, const float *q, const float *k,
                                const float *v, float *o, float *lse, ag_error *err)
{
    return ag_attn_exact_forward_rows(s, 0, s ? s->n : 0, q, k, v, o, lse, err);
}

ag_status ag_attn_exact_forward_rows(const ag_attn_shape *s, size_t r0, size_t r1,
                                     const float *q, const float *k, const float *v, float *o,
                                     float *lse, ag_error *err)
{
    ag_status st = check_shape(s, q, k, v, err);
    if (st || (st = check_rows(s, r0, r1, err))) return st;
    if (!o || !lse) return ag_error_set(err, AG_ERR_INVALID, "attention", "NULL output");
    const size_t n = s->n, d = s->d_head, ld = s->ld;
    size_t bq, bk;
    block_sizes(n, d, &bq, &bk);
    const float c2 = s->scale * (float)M_LOG2E; /* scores in base 2 */

    /* qT, vT [d, n]; k [n, d]; X [bq, bk]; acc [d, bq]; ref, l, lsum, bm, alpha [bq] */
    size_t total = 3 * n * d + bk * bq + bq * d + 5 * bq;
    float *buf = malloc(total * sizeof *buf);
    if (!buf) return ag_error_set(err, AG_ERR_NOMEM, "attention", "out of memory");
    float *qT = buf, *vT = qT + n * d, *kp = vT + n * d, *X = kp + n * d;
    float *acc = X + bk * bq, *ref = acc + bq * d, *l = ref + bq, *lsum = l + bq;
    float *bm = lsum + bq, *alpha = bm + bq;
    pack_t(qT, q, n, d, ld);
    pack_t(vT, v, n, d, ld);
    pack(kp, k, n, d, ld);

    for (size_t i0 = r0; i0 < r1; i0 += bq) {
        if (ag_attn_cancelled(s)) {
            free(buf);
            return ag_error_set(err, AG_ERR_CANCELLED, "", "cancelled");
        }
        const size_t mi = r1 - i0 < bq ? r1 - i0 : bq;
        const size_t jend = s->causal ? i0 + mi : n;
        memset(acc, 0, mi * d * sizeof *acc);
        for (size_t j0 = 0; j0 < jend; j0 += bk) {
            const size_t nj = jend - j0 < bk ? jend - j0 : bk;
            /* X = c log2(e) q_i k_j^T */
            gemm(CblasNoTrans, mi, nj, d, c2, qT + i0, n, kp + j0 * d, d, 0.0f, X, mi);
            if (s->causal) qk_mask(X, i0, mi, j0, nj);
            for (size_t r = 0; r < mi; r++) {
                lsum[r] = 0;
                bm[r] = -INFINITY;
            }
            if (j0 == 0) {
                /* key 0 is visible to every query: ref is finite */
                for (size_t r = 0; r < mi; r++) ref[r] = -INFINITY;
                qk_max(ref, X, mi, nj);
                for (size_t r = 0; r < mi; r++) l[r] = 0;
            }
            qk_exp2_sum_max(X, ref, lsum, bm, mi, nj);
            int redo = 0;
            for (size_t r = 0; r < mi; r++) redo |= bm[r] > ref[r] + REF_SLACK;
            if (redo) {
                /* rare: scores jumped far above the reference; raise it and rescale */
                for (size_t r = 0; r < mi; r++) {
                    float nr = bm[r] > ref[r] ? bm[r] : ref[r];
                    alpha[r] = ag_exp2f(ref[r] - nr);
                    ref[r] = nr;
                    l[r] *= alpha[r];
                    lsum[r] = 0;
                    bm[r] = -INFINITY;
                }
                for (size_t j = 0; j < d; j++)
                    for (size_t r = 0; r < mi; r++) acc[j * mi + r] *= alpha[r];
                gemm(CblasNoTrans, mi, nj, d, c2, qT + i0, n, kp + j0 * d, d, 0.0f, X, mi);
                if (s->causal) qk_mask(X, i0, mi, j0, nj);
                qk_exp2_sum_max(X, ref, lsum, bm, mi, nj);
            }
            for (size_t r = 0; r < mi; r++) l[r] += lsum[r];
            /* acc (col-major [mi, d]) += P v_j */
            gemm(CblasNoTrans, mi, d, nj, 1.0f, X, mi, vT + j0, n, 1.0f, acc, mi);
        }
        for (size_t r = 0; r < mi; r++) {
            float inv = 1.0f / l[r];
            for (size_t j = 0; j < d; j++) o[(i0 + r) * ld + j] = acc[j * mi + r] * inv;
            lse[i0 + r] = (ref[r] + log2f(l[r])) * (float)M_LN2;
        }
    }
    free(buf);
    return AG_OK;
}

static ag_status backward(const ag_attn_shape *s, size_t r0, size_t r1, const float *q,
                          const float *k, const float *v, const float *o, const float *lse,
                          const float *dout, float *dq, float *dk, float *dv, size_t dkv_ld,
                          ag_error *err);

ag_status ag_attn_exact_backward(const ag_attn_shape *s, const float *q, const float *k,
                                 const float *v, const float *o, const float *lse,
                                 const float *dout, float *dq, float *dk, float *dv,
                                 ag_error *err)
{
    return backward(s, 0, s ? s->n : 0, q, k, v, o, lse, dout, dq, dk, dv, s ? s->ld : 0, err);
}

ag_status ag_attn_exact_backward_rows(const ag_attn_shape *s, size_t r0, size_t r1,
                                      const float *q, const float *k, const float *v,
                                      const float *o, const float *lse, const float *dout,
                                      float *dq, float *dk_part, float *dv_part,
                                      ag_error *err)
{
    return backward(s, r0, r1, q, k, v, o, lse, dout, dq, dk_part, dv_part,
                    s ? s->d_head : 0, err);
}

/* dk, dv are views with row stride dkv_ld (s->ld, or d_head for the contiguous parts). */
static ag_status backward(const ag_attn_shape *s, size_t r0, size_t r1, const float *q,
                          const float *k, const float *v, const float *o, const float *lse,
                          const float *dout, float *dq, float *dk, float *dv, size_t dkv_ld,
                          ag_error *err)
{
    ag_status st = check_shape(s, q, k, v, err);
    if (st || (st = check_rows(s, r0, r1, err))) return st;
    if (!o || !lse || !dout || !dq || !dk || !dv)
        return ag_error_set(err, AG_ERR_INVALID, "attention", "NULL argument");
    const size_t n = s->n, d = s->d_head, ld = s->ld;
    size_t bq, bk;
    block_sizes(n, d, &bq, &bk);
    const float c = s->scale, c2 = c * (float)M_LOG2E;

    /* [d, n]: qT, kT, vT, doT, dkT, dvT;  [n, d]: q, k, dout, dq;  P, dS [bq, bk];
     * delta, lse2 [n]; vmean, kmean [d] */
    size_t nd = n * d, total = 10 * nd + 2 * bk * bq + 2 * n + 2 * d;
    float *buf = malloc(total * sizeof *buf);
    if (!buf) return ag_error_set(err, AG_ERR_NOMEM, "attention", "out of memory");
    float *qT = buf, *kT = qT + nd, *vT = kT + nd, *doT = vT + nd, *dkT = doT + nd;
    float *dvT = dkT + nd, *qp = dvT + nd, *kp = qp + nd, *dop = kp + nd, *dqp = dop + nd;
    float *P = dqp + nd, *dS = P + bk * bq, *delta = dS + bk * bq, *lse2 = delta + n;
    /* Centring, for precision: dP_ij - delta_i = dout_i . (v_j - o_i) cancels badly when the
     * values are close to each other (a layer whose tokens look alike), so both terms use
     * v - mean(v) and o - mean(v); and dq_i = c sum_j dS_ij k_j with sum_j dS_ij = 0 uses
     * k - mean(k). Both are exact identities; the scores keep the uncentred k (lse). */
    float *vmean = lse2 + n, *kmean = vmean + d;
    col_mean(vmean, v, n, d, ld);
    col_mean(kmean, k, n, d, ld);
    pack_t(qT, q, n, d, ld);
    pack_t(kT, k, n, d, ld);
    pack_t_centred(vT, v, vmean, n, d, ld);
    pack_t(doT, dout, n, d, ld);
    pack(qp, q, n, d, ld);
    pack_centred(kp, k, kmean, n, d, ld);
    pack(dop, dout, n, d, ld);
    memset(dkT, 0, 2 * nd * sizeof *dkT);
    memset(dqp, 0, nd * sizeof *dqp);
    for (size_t i = r0; i < r1; i++) {
        double t = 0;
        for (size_t j = 0; j < d; j++)
            t += (double)dout[i * ld + j] * ((double)o[i * ld + j] - (double)vmean[j]);
        delta[i] = (float)t;
        lse2[i] = lse[i] * (float)M_LOG2E;
    }

    for (size_t i0 = r0; i0 < r1; i0 += bq) {
        if (ag_attn_cancelled(s)) {
            free(buf);
            return ag_error_set(err, AG_ERR_CANCELLED, "", "cancelled");
        }
        const size_t mi = r1 - i0 < bq ? r1 - i0 : bq;
        const size_t jend = s->causal ? i0 + mi : n;
        for (size_t j0 = 0; j0 < jend; j0 += bk) {
            const size_t nj = jend - j0 < bk ? jend - j0 : bk;
            /* P (col-major [nj, mi], keys contiguous) = 2^(c log2(e) k_j q_i^T - lse2_i);
             * dP^T = v_j dout_i^T; then, in one pass, P and dS = c P o (dP - delta) */
            gemm(CblasNoTrans, nj, mi, d, c2, kT + j0, n, qp + i0 * d, d, 0.0f, P, nj);
            gemm(CblasNoTrans, nj, mi, d, 1.0f, vT + j0, n, dop + i0 * d, d, 0.0f, dS, nj);
            for (size_t r = 0; r < mi; r++) {
                float *p = P + r * nj, *g = dS + r * nj;
                const float shift = lse2[i0 + r], dl = delta[i0 + r];
                size_t vis = kq_visible(i0, r, j0, nj, s->causal);
                for (size_t j = 0; j < vis; j++) {
                    float e = ag_exp2f(p[j] - shift);
                    p[j] = e;
                    g[j] = c * e * (g[j] - dl);
                }
                for (size_t j = vis; j < nj; j++) p[j] = g[j] = 0;
            }
            /* dv_j (col-major [nj, d] in dvT) += P^T dout_i */
            gemm(CblasNoTrans, nj, d, mi, 1.0f, P, nj, doT + i0, n, 1.0f, dvT + j0, n);
            /* dk_j += dS^T q_i (keys contiguous, M = nj);  dq_i^T += k_j^T dS^T (M = d) */
            gemm(CblasNoTrans, nj, d, mi, 1.0f, dS, nj, qT + i0, n, 1.0f, dkT + j0, n);
            gemm(CblasNoTrans, d, mi, nj, 1.0f, kp + j0 * d, d, dS, nj, 1.0f, dqp + i0 * d, d);
        }
    }
    /* these queries touched dq rows [r0, r1) and the keys they see */
    const size_t keys = s->causal ? r1 : n;
    unpack_add(dq + r0 * ld, dqp + r0 * d, r1 - r0, d, ld);
    unpack_t_add(dk, dkT, keys, d, dkv_ld, n);
    unpack_t_add(dv, dvT, keys, d, dkv_ld, n);
    free(buf);
    return AG_OK;
}
