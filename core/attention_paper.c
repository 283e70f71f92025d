/* Route paper (AG_ROUTE_PAPER): the paper's Algorithm 1 with its errata fixed. The EXACT
 * softmax-attention gradient formula with the attention matrix replaced by its low-rank
 * polynomial factors, O(n r d_head^2) (arXiv 2408.13233 section 3, Lemmas I.6-I.8;
 * docs/paper_notes.md, "The errata" and "The causal case"; docs/paper_route.md).
 *
 * Shapes, one head (views [n, ld], d = d_head columns used, r = C(d+g, g)), in the kernel's
 * scaled, centred variables (core/approx_internal.h): q^_i = qscale q_i,
 * k^_j = kscale (k_j - mu), s_ij = q^_i . k^_j = c q_i . (k_j - mu):
 *   A_ij = phi_i . psi_j ~ e^{s_ij},  phi = weight o m(q^), psi = m(k^)            [n, r]
 *   D_i = row_stat_i = sum_j A_ij,  P = D^{-1} A,  O = P V  (the approximate forward's o)
 *   G_i = [dO_i, -delta_i] / D_i [d+1],  delta_i = dO_i . O_i;  V'_j = [v_j, 1] [d+1]
 * The exact gradient (docs/paper_notes.md) with P for softmax, with the transposes that the
 * paper's printed dL/dX (f for f^T, W for W^T) and dL/dW_V (f for f^T) drop:
 *   dS_ij = P_ij (dO_i . v_j - delta_i) = A_ij (G_i . V'_j)   dS = P o (dO V^T) - diag(delta) P
 *   dq^_i = sum_j dS_ij k^_j      (dS K)
 *   dk^_j = sum_i dS_ij q^_i      (dS^T Q: a transposed product)
 *   dv_j  = sum_i P_ij dO_i       (P^T dO: a transposed product)
 * The Hadamard product A o (G V'^T) = (Phi (x) G)(Psi (x) V')^T (row-wise Kronecker, rank
 * r (d+1)) is contracted through r x (d+1) x d tensors, never the n x r (d+1) factors:
 *   Mk[a, b, t] = sum_j psi_j[a] V'_j[b] k^_j[t]                       [r, (d+1) d]   keys
 *   dq^_i[t]    = sum_b G_i[b] (sum_a phi_i[a] Mk[a, b, t])
 *   Mq[a, b, t] = sum_i phi_i[a] G_i[b] q''_i[t],  q'' = [q^, 1]       [r, (d+1)(d+1)] queries
 *   dk^_j[t]    = sum_b V'_j[b] (sum_a psi_j[a] Mq[a, b, t])   t < d
 *   dv_j[b]     = sum_a psi_j[a] Mq[a, b, d]                    b < d  (the '1' of q'')
 * Per chunk of C rows each is two GEMMs, Mk += Psi^T W (W_j = V'_j (x) k^_j) and Y = Phi Mk,
 * then a (d+1)-term contraction per row: 4 r (d+1)(2d+1) flops a row, against the features
 * route's ~14 r d: about d/2 times the work.
 * Causal: the forward's chunks (ag_approx_block_rows: within a chunk the exact masked e^s,
 * across chunks the polynomial) define P, so the same chunks here. Within a chunk the exact
 * gradient of the masked block (C x C GEMMs); across chunks Mk is a PREFIX state (the paper's
 * Algorithm 2, by chunks with GEMMs; forward sweep, for dq) and Mq a SUFFIX state (reverse
 * sweep, for dk and dv): the transposed products the paper never writes down.
 * Last dq = qscale dq^, dk' = kscale dk^, dk_j = dk'_j - mean(dk') (the centring's chain rule;
 * about 0 here, since sum_j dS_ij = dO_i . O_i - delta_i = 0).
 *
 * Memory: the states are cut along t into slabs of T columns so that the workspace stays within
 * the features route's (ag_attn_approx_workspace_bytes, which the model's memory estimate
 * reserves): one slab up to d_head 16. A slab costs one more pass of feature generation (r
 * multiplies a row) and no extra GEMM flops. No n x r or n x n array: features per chunk,
 * held [r, C] (monomial-major) so that both GEMMs read them in place.
 */
/* -std=c11 turns GCC's floating-point contraction off; the loops here want a * b + c as one
 * FMA. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=fast")
#endif
#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "approx_internal.h"
#include "layers.h"

static size_t pad16(size_t x)
{
    return (x + 15) / 16 * 16;
}

/* ---- workspace ------------------------------------------------------------------------- */

typedef struct {
    float *F;              /* [r][C] the chunk's features (phi or psi), monomial-major */
    float *St;             /* [r][(d+1) T] the state slab, Mk or Mq */
    float *WY;             /* [C][(d+1) T] a chunk's outer products, then F^T St */
    float *Xq, *Xk;        /* [d][C] scaled rows (keys centred), zero past the chunk's m rows */
    float *VpT, *GT;       /* [d+1][C] V'^T and G^T, zero past m */
    float *dXq, *dXk, *dvT;/* [d][C] the causal chunk's exact in-chunk gradient */
    float *T, *E, *dT;     /* [C][C] causal chunk scores, masked exp, score gradient */
    double *ksum;          /* [d] sum of dk' over the rows, for the centring's gradient */
    size_t slab;           /* T: state columns per slab, 1..d+1 */
    void *block;
} paper_ws;

static size_t fixed_floats(size_t d, size_t r, size_t C, int causal)
{
    return pad16(r * C) + 5 * pad16(d * C) + 2 * pad16((d + 1) * C) +
           (causal ? 3 * pad16(C * C) : 0) + 2 * pad16(d) /* ksum, as doubles */;
}

static size_t slab_floats(size_t d, size_t r, size_t C, size_t T)
{
    return pad16(r * (d + 1) * T) + pad16(C * (d + 1) * T);
}

/* The feature map (parent, var, weight), its build scratch, pieces and the key mean: what
 * ag_approx_head_init allocates besides the workspace. */
static size_t head_bytes(size_t d, size_t r)
{
    return r * (4 + 4 + 4 + 4 + 8) + (size_t)AG_MAX_DEGREE * d * 16 + d * 8;
}

/* Widest slab (1..d+1 columns) whose workspace fits the features route's; 1 when none does
 * (tiny ranks, where every size is small). max_cols > 0 caps it (tests). */
static size_t choose_slab(size_t d, size_t r, size_t C, int causal, size_t max_cols)
{
    size_t budget = ag_attn_approx_workspace_bytes(d, r, causal);
    size_t T = d + 1;
    if (max_cols > 0 && max_cols < T) T = max_cols;
    if (budget == SIZE_MAX) return 1;
    size_t fixed = fixed_floats(d, r, C, causal);
    while (T > 1 && (fixed + slab_floats(d, r, C, T)) * sizeof(float) + head_bytes(d, r) > budget)
        T--;
    return T;
}

size_t ag_attn_paper_workspace_bytes(size_t d_head, size_t rank, int causal)
{
    if (d_head < 1 || d_head > 4096 || rank < 1 || rank > (size_t)INT32_MAX / 16)
        return SIZE_MAX;
    size_t d = d_head, C = ag_approx_block_rows(rank, causal);
    /* the largest product below is r (d+1)^2 (one slab of d+1 columns) */
    if (rank > SIZE_MAX / 8 / ((d + 1) * (d + 1) + C + 16)) return SIZE_MAX;
    size_t T = choose_slab(d, rank, C, causal, 0);
    return (fixed_floats(d, rank, C, causal) + slab_floats(d, rank, C, T)) * sizeof(float) +
           head_bytes(d, rank);
}

static ag_status ws_alloc(paper_ws *w, const ag_approx_head *h, size_t max_cols, ag_error *err)
{
    memset(w, 0, sizeof *w);
    size_t d = h->d, r = h->r, C = h->B;
    int causal = h->s->causal;
    if (ag_attn_paper_workspace_bytes(d, r, causal) == SIZE_MAX)
        return ag_error_set(err, AG_ERR_LIMIT, "method", "route paper: rank %zu with d_head %zu "
                            "is too large", r, d);
    w->slab = choose_slab(d, r, C, causal, max_cols);
    size_t total = fixed_floats(d, r, C, causal) + slab_floats(d, r, C, w->slab);
    if (posix_memalign(&w->block, 64, total * sizeof(float)) != 0) {
        w->block = NULL;
        return ag_error_set(err, AG_ERR_NOMEM, "", "out of memory for route paper (%zu bytes)",
                            total * sizeof(float));
    }
    float *p = w->block;
#define TAKE(ptr, count) do { (ptr) = p; p += pad16(count); } while (0)
    TAKE(w->F, r * C);
    TAKE(w->St, r * (d + 1) * w->slab);
    TAKE(w->WY, C * (d + 1) * w->slab);
    TAKE(w->Xq, d * C);
    TAKE(w->Xk, d * C);
    TAKE(w->dXq, d * C);
    TAKE(w->dXk, d * C);
    TAKE(w->dvT, d * C);
    TAKE(w->VpT, (d + 1) * C);
    TAKE(w->GT, (d + 1) * C);
    if (causal) {
        TAKE(w->T, C * C);
        TAKE(w->E, C * C);
        TAKE(w->dT, C * C);
    }
#undef TAKE
    w->ksum = (double *)p;
    for (size_t t = 0; t < d; t++) w->ksum[t] = 0;
    return AG_OK;
}

static void ws_free(paper_ws *w)
{
    free(w->block);
    memset(w, 0, sizeof *w);
}

/* ---- chunk loads ----------------------------------------------------------------------- */

/* F [r][C] = the monomials of the chunk's rows (columns of xt [d][C]), times the weights for
 * the queries (phi) or not for the keys (psi). Columns past m are garbage-free (xt is zero
 * there) but never read: every GEMM below stops at m. */
static void features(const ag_approx_head *h, const float *xt, size_t m, int weighted, float *F)
{
    const ag_feature_map *map = &h->map;
    const size_t C = h->B, mm = pad16(m) < C ? pad16(m) : C;
    for (size_t b = 0; b < mm; b++) F[b] = 1.0f;
    for (size_t p = 0; p < map->npiece; p++) {
        const ag_mono_piece pc = map->piece[p];
        const float *restrict x = xt + (size_t)pc.var * C;
        for (size_t i = 0; i < pc.len; i++) {
            const float *restrict src = F + ((size_t)pc.src + i) * C;
            float *restrict dst = F + ((size_t)pc.dst + i) * C;
            for (size_t b = 0; b < mm; b++) dst[b] = x[b] * src[b];
        }
    }
    if (!weighted) return;
    for (size_t a = 0; a < h->r; a++) {
        const float wa = map->weight[a];
        float *restrict row = F + a * C;
        for (size_t b = 0; b < mm; b++) row[b] *= wa;
    }
}

/* ---- the low-rank contractions ---------------------------------------------------------- */

/* St [r][NT] += F[:, :m] W, W [m][NT] with W_j[b T + u] = Y^T[b][j] X^T[t0 + u][j]
 * (Y^T [d+1][C]; X^T [d][C]; coordinate t0 + u == d reads 1: the '1' of q''). */
static void state_add(const ag_approx_head *h, paper_ws *w, const float *Yt, const float *Xt,
                      size_t t0, size_t T, size_t m)
{
    const size_t C = h->B, d = h->d, NT = (d + 1) * T;
    for (size_t j = 0; j < m; j++) {
        float *restrict row = w->WY + j * NT;
        for (size_t u = 0; u < T; u++) {
            const float x = t0 + u < d ? Xt[(t0 + u) * C + j] : 1.0f;
            for (size_t b = 0; b <= d; b++) row[b * T + u] = Yt[b * C + j] * x;
        }
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)h->r, (int)NT, (int)m, 1.0f,
                w->F, (int)C, w->WY, (int)NT, 1.0f, w->St, (int)NT);
}

/* WY [m][NT] = F[:, :m]^T St: each row's features against the state slab. */
static void state_read(const ag_approx_head *h, paper_ws *w, size_t T, size_t m)
{
    const size_t C = h->B, NT = (h->d + 1) * T;
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)m, (int)NT, (int)h->r, 1.0f, w->F,
                (int)C, w->St, (int)NT, 0.0f, w->WY, (int)NT);
}

/* dq rows i0.. columns [t0, t0+T) += qscale sum_b G_i[b] WY_i[b T + u]. */
static void contract_dq(const ag_approx_head *h, const paper_ws *w, float *dq, size_t i0,
                        size_t m, size_t t0, size_t T)
{
    const size_t C = h->B, d = h->d, NT = (d + 1) * T;
    for (size_t i = 0; i < m; i++) {
        const float *restrict y = w->WY + i * NT;
        float *restrict out = dq + (i0 + i) * h->ld + t0;
        for (size_t u = 0; u < T; u++) {
            float acc = 0;
            for (size_t b = 0; b <= d; b++) acc += w->GT[b * C + i] * y[b * T + u];
            out[u] += h->qscale * acc;
        }
    }
}

/* Keys j0.. from WY = Psi^T Mq: columns t < d of the slab give dk' = kscale sum_b V'_j[b]
 * WY_j[b T + u] (into dk and ksum); the column t = d gives dv_j[b] = WY_j[b T + u], b < d. */
static void contract_dkv(const ag_approx_head *h, paper_ws *w, float *dk, float *dv, size_t j0,
                         size_t m, size_t t0, size_t T)
{
    const size_t C = h->B, d = h->d, NT = (d + 1) * T;
    for (size_t j = 0; j < m; j++) {
        const float *restrict y = w->WY + j * NT;
        for (size_t u = 0; u < T; u++) {
            const size_t t = t0 + u;
            if (t == d) {
                float *restrict out = dv + (j0 + j) * h->ld;
                for (size_t b = 0; b < d; b++) out[b] += y[b * T + u];
                continue;
            }
            float acc = 0;
            for (size_t b = 0; b <= d; b++) acc += w->VpT[b * C + j] * y[b * T + u];
            const float g = h->kscale * acc;
            dk[(j0 + j) * h->ld + t] += g;
            w->ksum[t] += g;
        }
    }
}

/* ---- the causal chunk's exact block ---------------------------------------------------- */

/* E [m, m] (ld C) = masked e^{q^_i . k^_j}, j <= i: the forward's in-chunk weights. */
static void chunk_exp(const ag_approx_head *h, paper_ws *w, size_t m)
{
    int C = (int)h->B;
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)m, (int)m, (int)h->d, 1.0f, w->Xq,
                C, w->Xk, C, 0.0f, w->T, C);
    for (size_t i = 0; i < m; i++) {
        const float *t = w->T + i * h->B;
        float *e = w->E + i * h->B;
        for (size_t j = 0; j <= i; j++) e[j] = ag_expf(t[j]);
        for (size_t j = i + 1; j < m; j++) e[j] = 0.0f;
    }
}

/* The exact in-chunk part: dS = E o (G V'^T) (G carries 1/D), dq^ += dS k^, dk^ += dS^T q^,
 * dv += E^T G[:, :d]; added into dq, dk (and ksum), dv. The same in both routes: these
 * entries of A are e^s itself. */
static void chunk_exact_grad(const ag_approx_head *h, paper_ws *w, size_t i0, size_t m,
                             float *dq, float *dk, float *dv)
{
    int C = (int)h->B, dv1 = (int)h->d + 1, d = (int)h->d, mm = (int)m;
    chunk_exp(h, w, m);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, mm, mm, dv1, 1.0f, w->GT, C, w->VpT, C,
                0.0f, w->dT, C);
    for (size_t i = 0; i < m; i++) {
        float *dt = w->dT + i * h->B;
        const float *e = w->E + i * h->B;
        for (size_t j = 0; j < m; j++) dt[j] *= e[j];
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, d, mm, mm, 1.0f, w->Xk, C, w->dT, C,
                0.0f, w->dXq, C);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, d, mm, mm, 1.0f, w->Xq, C, w->dT, C,
                0.0f, w->dXk, C);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, d, mm, mm, 1.0f, w->GT, C, w->E, C,
                0.0f, w->dvT, C);
    for (size_t b = 0; b < m; b++) {
        float *q = dq + (i0 + b) * h->ld, *k = dk + (i0 + b) * h->ld, *v = dv + (i0 + b) * h->ld;
        for (size_t t = 0; t < h->d; t++) {
            q[t] += h->qscale * w->dXq[t * h->B + b];
            const float g = h->kscale * w->dXk[t * h->B + b];
            k[t] += g;
            w->ksum[t] += g;
            v[t] += w->dvT[t * h->B + b];
        }
    }
}

/* ---- sweeps ---------------------------------------------------------------------------- */

typedef struct {
    const float *q, *k, *v, *o, *row_stat, *dout;
    float *dq, *dk, *dv;
} paper_io;

static ag_status cancel_error(ag_error *err)
{
    return ag_error_set(err, AG_ERR_CANCELLED, "", "cancelled");
}

/* Loads the chunk's keys side (Xk, V') or queries side (Xq, G). */
static void load_keys(const ag_approx_head *h, paper_ws *w, const paper_io *io, size_t i0,
                      size_t m)
{
    ag_approx_load_t(h, io->k, 1, i0, m, w->Xk, h->B);
    ag_approx_load_vp(h, io->v, i0, m, w->VpT);
}

static ag_status load_queries(const ag_approx_head *h, paper_ws *w, const paper_io *io,
                              size_t i0, size_t m, ag_error *err)
{
    ag_approx_load_t(h, io->q, 0, i0, m, w->Xq, h->B);
    return ag_approx_load_g(h, io->o, io->row_stat, io->dout, i0, m, w->GT, err);
}

/* dq columns [t0, t0+T) from Mk. Non-causal: Mk over every key, then every query reads it.
 * Causal (chunks in order): chunk c's queries read the prefix Mk of chunks < c, then its keys
 * join it; with exact_part the chunk's exact block too (once, on the first slab). */
static ag_status sweep_dq(const ag_approx_head *h, paper_ws *w, const paper_io *io, size_t t0,
                          size_t T, int exact_part, ag_error *err)
{
    const size_t n = h->n, C = h->B;
    ag_status st;
    memset(w->St, 0, h->r * (h->d + 1) * T * sizeof(float));
    if (!h->s->causal) {
        for (size_t j0 = 0; j0 < n; j0 += C) {
            if (ag_attn_cancelled(h->s)) return cancel_error(err);
            size_t m = n - j0 < C ? n - j0 : C;
            load_keys(h, w, io, j0, m);
            features(h, w->Xk, m, 0, w->F);
            state_add(h, w, w->VpT, w->Xk, t0, T, m);
        }
        for (size_t i0 = 0; i0 < n; i0 += C) {
            if (ag_attn_cancelled(h->s)) return cancel_error(err);
            size_t m = n - i0 < C ? n - i0 : C;
            if ((st = load_queries(h, w, io, i0, m, err)) != AG_OK) return st;
            features(h, w->Xq, m, 1, w->F);
            state_read(h, w, T, m);
            contract_dq(h, w, io->dq, i0, m, t0, T);
        }
        return AG_OK;
    }
    for (size_t i0 = 0; i0 < n; i0 += C) {
        if (ag_attn_cancelled(h->s)) return cancel_error(err);
        size_t m = n - i0 < C ? n - i0 : C;
        if ((st = load_queries(h, w, io, i0, m, err)) != AG_OK) return st;
        load_keys(h, w, io, i0, m);
        if (exact_part) chunk_exact_grad(h, w, i0, m, io->dq, io->dk, io->dv);
        if (i0 > 0) {
            features(h, w->Xq, m, 1, w->F);
            state_read(h, w, T, m);
            contract_dq(h, w, io->dq, i0, m, t0, T);
        }
        if (i0 + m < n) {
            features(h, w->Xk, m, 0, w->F);
            state_add(h, w, w->VpT, w->Xk, t0, T, m);
        }
    }
    return AG_OK;
}

/* dk columns [t0, t0+T) (and dv, from the column t = d) from Mq. Non-causal: Mq over every
 * query, then every key reads it. Causal (chunks in reverse): chunk c's keys read the suffix
 * Mq of chunks > c, then its queries join it. */
static ag_status sweep_dkv(const ag_approx_head *h, paper_ws *w, const paper_io *io, size_t t0,
                           size_t T, ag_error *err)
{
    const size_t n = h->n, C = h->B, nchunks = (n + C - 1) / C;
    ag_status st;
    memset(w->St, 0, h->r * (h->d + 1) * T * sizeof(float));
    if (!h->s->causal) {
        for (size_t i0 = 0; i0 < n; i0 += C) {
            if (ag_attn_cancelled(h->s)) return cancel_error(err);
            size_t m = n - i0 < C ? n - i0 : C;
            if ((st = load_queries(h, w, io, i0, m, err)) != AG_OK) return st;
            features(h, w->Xq, m, 1, w->F);
            state_add(h, w, w->GT, w->Xq, t0, T, m);
        }
        for (size_t j0 = 0; j0 < n; j0 += C) {
            if (ag_attn_cancelled(h->s)) return cancel_error(err);
            size_t m = n - j0 < C ? n - j0 : C;
            load_keys(h, w, io, j0, m);
            features(h, w->Xk, m, 0, w->F);
            state_read(h, w, T, m);
            contract_dkv(h, w, io->dk, io->dv, j0, m, t0, T);
        }
        return AG_OK;
    }
    for (size_t c = nchunks; c-- > 0;) {
        if (ag_attn_cancelled(h->s)) return cancel_error(err);
        size_t i0 = c * C, m = n - i0 < C ? n - i0 : C;
        if ((st = load_queries(h, w, io, i0, m, err)) != AG_OK) return st;
        load_keys(h, w, io, i0, m);
        if (c + 1 < nchunks) {
            features(h, w->Xk, m, 0, w->F);
            state_read(h, w, T, m);
            contract_dkv(h, w, io->dk, io->dv, i0, m, t0, T);
        }
        if (c > 0) {
            features(h, w->Xq, m, 1, w->F);
            state_add(h, w, w->GT, w->Xq, t0, T, m);
        }
    }
    return AG_OK;
}

/* dk_j -= mean_j(dk'_j): the gradient through k' = k - mean(k). */
static void uncentre(const ag_approx_head *h, float *dk, const double *ksum)
{
    for (size_t t = 0; t < h->d; t++) {
        const float mean = (float)(ksum[t] / (double)h->n);
        for (size_t j = 0; j < h->n; j++) dk[j * h->ld + t] -= mean;
    }
}

ag_status ag_attn_approx_backward_paper_slabs(const ag_attn_shape *s, const ag_head_plan *plan,
                                              const float *q, const float *k, const float *v,
                                              const float *o, const float *row_stat,
                                              const float *dout, float *dq, float *dk,
                                              float *dv, size_t slab_cols, ag_error *err)
{
    if (!plan || !v || !o || !row_stat || !dout || !dq || !dk || !dv)
        return ag_error_set(err, AG_ERR_INVALID, "attention", "NULL argument");
    ag_approx_head h;
    ag_status st = ag_approx_head_init(&h, s, plan, q, k, err);
    if (st != AG_OK) return st;
    /* every denominator checked before anything is accumulated: a bad one leaves dq, dk, dv
     * as they were */
    for (size_t i = 0; i < h.n; i++)
        if (!(row_stat[i] > 0) || !isfinite(row_stat[i])) {
            ag_approx_head_free(&h);
            return ag_error_set(err, AG_ERR_INVALID, "attention", "row_stat[%zu] = %g is not a "
                                "positive denominator from the approximate forward", i,
                                (double)row_stat[i]);
        }
    paper_ws w;
    st = ws_alloc(&w, &h, slab_cols, err);
    const paper_io io = {q, k, v, o, row_stat, dout, dq, dk, dv};
    /* dq: slabs of the key tensor's last index t < d; dk, dv: t <= d (t = d is dv) */
    for (size_t t0 = 0; st == AG_OK && t0 < h.d; t0 += w.slab) {
        size_t T = h.d - t0 < w.slab ? h.d - t0 : w.slab;
        st = sweep_dq(&h, &w, &io, t0, T, t0 == 0, err);
    }
    for (size_t t0 = 0; st == AG_OK && t0 <= h.d; t0 += w.slab) {
        size_t T = h.d + 1 - t0 < w.slab ? h.d + 1 - t0 : w.slab;
        st = sweep_dkv(&h, &w, &io, t0, T, err);
    }
    if (st == AG_OK) uncentre(&h, dk, w.ksum);
    ws_free(&w);
    ag_approx_head_free(&h);
    return st;
}

ag_status ag_attn_approx_backward_paper(const ag_attn_shape *s, const ag_head_plan *plan,
                                        const float *q, const float *k, const float *v,
                                        const float *o, const float *row_stat,
                                        const float *dout, float *dq, float *dk, float *dv,
                                        ag_error *err)
{
    return ag_attn_approx_backward_paper_slabs(s, plan, q, k, v, o, row_stat, dout, dq, dk, dv,
                                               0, err);
}
