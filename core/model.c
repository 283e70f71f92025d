/* The whole model: forward with caches, loss, backward; gradients of every weight and of the
 * input (docs/api.md). Exact or approximate attention per (layer, head).
 *
 * Shapes: N = batch * n tokens (sequence b is rows [b n, (b+1) n)), D = d_model, F = d_ff,
 * H = n_heads, dh = D / H. Per layer the forward caches, all row-major:
 *   Q, K, V, ctx [N, D]      projections and concatenated head outputs
 *   stat [batch, H, n]       row statistic per (sequence, head): lse (exact) / row_stat (approx)
 *   h [N, D]                 after attention (+ residual)
 *   z [N, F]                 MLP pre-activation (F > 0)
 *   y [N, D]                 layer output = next layer's input (aliases h when F == 0)
 *   mean1, rstd1, mean2, rstd2 [N]   layernorm statistics
 *   states                   non-causal approximate heads: the keys' state, rank (dh + 1)
 *                            floats per (sequence, head), within STATE_BUDGET
 * a = norm1(x) and u = norm2(h) are recomputed per row block in the backward: O(N D) flops
 * instead of 2 N D floats per layer.
 *
 * Threads: dense work runs in blocks of ROW_BLOCK rows; attention runs per (sequence, head),
 * and with few heads per part of a head's query rows (its dk, dv go to per-part buffers).
 * Weight gradients are summed per fixed group of row blocks into a partial buffer. Groups and
 * parts depend on the sizes only and partials are added in a fixed order, so the result does
 * not depend on the thread count.
 */
#include <limits.h>
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "altgrad.h"
#include "attention.h"
#include "layers.h"
#include "parallel.h"

enum {
    ROW_BLOCK = 256,       /* rows per dense work unit */
    MAX_GROUPS = 16,       /* partial weight-gradient buffers per layer, at most */
    MAX_THREADS = 256,     /* ag_parallel_for's own cap */
};
/* Floats of partial weight gradients we allow (64 MiB); large models get fewer groups. */
#define PARTIAL_BUDGET ((size_t)16 << 20)
/* With fewer (sequence, head) items than this, each head's queries are split into parts so
 * that several threads share a head; the parts' dk, dv buffers get at most PART_BUDGET floats. */
#define ATTN_UNITS 8
#define PART_BUDGET ((size_t)16 << 20)
/* Floats of approximate-attention states kept from the forward for the backward, all layers
 * together (16 MiB); past it a layer's backward rebuilds them, one more pass over the keys. */
#define STATE_BUDGET ((size_t)4 << 20)

typedef struct {
    float *Q, *K, *V, *ctx, *stat, *h, *z, *y;
    float *mean1, *rstd1, *mean2, *rstd2;
    ag_head_plan *plans; /* [H] */
    /* The keys' states of non-causal approximate heads, kept by the forward for the backward:
     * [batch] blocks of state_seq floats, head hd at state_off[hd] in each. NULL: the backward
     * rebuilds them (no approximate head, causal, or over STATE_BUDGET). */
    float *states;
    size_t *state_off; /* [H] */
    size_t state_seq;
} layer_cache;

typedef struct {
    const ag_model_config *cfg;
    const ag_layer_params *layers;
    const float *input;
    const ag_run_opts *opts;
    size_t batch, n, N, D, F, H, dh;
    int threads, layernorm, mlp;
    layer_cache *cache;      /* [n_layers] */
    float *gA, *gB;          /* backward: dY / dctx and dX, swapped per layer */
    float *dQ, *dK, *dV;     /* [N, D] */
    float *scratch;          /* [threads][scratch_floats] */
    size_t scratch_floats;
    ag_layer_params *partials; /* [groups] */
    size_t groups, nblocks, param_floats;
    size_t parts;            /* query-row parts per (sequence, head) */
    size_t state_left;       /* floats of STATE_BUDGET not yet given to a layer */
    float *dkv;              /* parts > 1: [items][parts][2][n][dh] dk, dv of each part */
    ag_error *terr;          /* [threads]: first error of each worker */
    /* progress, from the calling thread only */
    double work_total, work_done, last_reported;
    atomic_size_t items_done;
} job;

/* One phase of parallel work: what the per-item functions need besides the job. */
typedef struct {
    job *j;
    int layer;
    double item_work; /* progress units per attention unit (item part) */
} phase;

/* ---- helpers -------------------------------------------------------------------------- */

static int mul_ok(size_t a, size_t b, size_t *out)
{
    *out = 0;
    if (a && b > SIZE_MAX / a) return 0;
    *out = a * b;
    return 1;
}

static int add_ok(size_t a, size_t b, size_t *out)
{
    *out = 0;
    if (b > SIZE_MAX - a) return 0;
    *out = a + b;
    return 1;
}

static int cancelled(const job *j)
{
    return j->opts->cancel && atomic_load_explicit(j->opts->cancel, memory_order_relaxed);
}

static void report(job *j, double done)
{
    if (!j->opts->progress) return;
    double f = j->work_total > 0 ? done / j->work_total : 1.0;
    if (f > 1.0) f = 1.0;
    if (f < j->last_reported) f = j->last_reported; /* monotone despite rounding */
    j->last_reported = f;
    j->opts->progress(j->opts->progress_ctx, f);
}

static void advance(job *j, double work)
{
    j->work_done += work;
    report(j, j->work_done);
}

static float *falloc(size_t count)
{
    size_t bytes;
    if (!mul_ok(count ? count : 1, sizeof(float), &bytes)) return NULL;
    return malloc(bytes);
}

static float *thread_scratch(const job *j, int tid)
{
    return j->scratch + (size_t)tid * j->scratch_floats;
}

static int fail(job *j, int tid, ag_status st, const char *field, const char *msg)
{
    ag_error_set(&j->terr[tid], st, field, "%s", msg);
    return 1;
}

/* Rows [r0, r1) of block b. */
static void block_rows(const job *j, size_t b, size_t *r0, size_t *r1)
{
    *r0 = b * ROW_BLOCK;
    *r1 = *r0 + ROW_BLOCK < j->N ? *r0 + ROW_BLOCK : j->N;
}

/* The layer's input rows: the caller's input for layer 0, else the previous layer's y. */
static const float *layer_input(const job *j, int l)
{
    return l == 0 ? j->input : j->cache[l - 1].y;
}

/* a = norm1(x) for rows [r0, r1) into buf (or x itself without layernorm). With fill_stats
 * the row statistics are written to the cache; else the cached ones are used. */
static const float *norm_rows(const job *j, const float *x, const float *gamma,
                              const float *beta, float *mean, float *rstd, size_t r0,
                              size_t rows, float *buf, int fill_stats)
{
    const size_t D = j->D;
    if (!j->layernorm) return x + r0 * D;
    if (fill_stats) {
        ag_layernorm_forward(buf, mean + r0, rstd + r0, x + r0 * D, gamma, beta, rows, D);
        return buf;
    }
    for (size_t i = 0; i < rows; i++) {
        const float *xi = x + (r0 + i) * D;
        float m = mean[r0 + i], s = rstd[r0 + i];
        for (size_t c = 0; c < D; c++) buf[i * D + c] = (xi[c] - m) * s * gamma[c] + beta[c];
    }
    return buf;
}

/* ---- forward, dense parts -------------------------------------------------------------- */

/* F1: a = norm1(x); Q, K, V = a wq, a wk, a wv. Items are row blocks. */
static int fwd_qkv(void *ctx, size_t begin, size_t end, int tid)
{
    phase *ph = ctx;
    job *j = ph->j;
    const int l = ph->layer;
    const ag_layer_params *P = &j->layers[l];
    layer_cache *c = &j->cache[l];
    const float *x = layer_input(j, l);
    float *buf = thread_scratch(j, tid);
    const size_t D = j->D;
    for (size_t b = begin; b < end; b++) {
        if (cancelled(j)) return fail(j, tid, AG_ERR_CANCELLED, "", "cancelled");
        size_t r0, r1;
        block_rows(j, b, &r0, &r1);
        const size_t rows = r1 - r0;
        const float *a = norm_rows(j, x, P->p[AG_P_LN1_GAMMA], P->p[AG_P_LN1_BETA], c->mean1,
                                   c->rstd1, r0, rows, buf, 1);
        ag_linear_forward(c->Q + r0 * D, a, P->p[AG_P_WQ], NULL, rows, D, D);
        ag_linear_forward(c->K + r0 * D, a, P->p[AG_P_WK], NULL, rows, D, D);
        ag_linear_forward(c->V + r0 * D, a, P->p[AG_P_WV], NULL, rows, D, D);
    }
    return 0;
}

/* F3: h = x + ctx wo; y = h + mlp(norm2(h)). Items are row blocks. */
static int fwd_out(void *ctx, size_t begin, size_t end, int tid)
{
    phase *ph = ctx;
    job *j = ph->j;
    const int l = ph->layer;
    const ag_layer_params *P = &j->layers[l];
    layer_cache *c = &j->cache[l];
    const float *x = layer_input(j, l);
    const size_t D = j->D, F = j->F;
    float *ubuf = thread_scratch(j, tid), *g = ubuf + ROW_BLOCK * D;
    for (size_t b = begin; b < end; b++) {
        if (cancelled(j)) return fail(j, tid, AG_ERR_CANCELLED, "", "cancelled");
        size_t r0, r1;
        block_rows(j, b, &r0, &r1);
        const size_t rows = r1 - r0;
        float *h = c->h + r0 * D;
        ag_linear_forward(h, c->ctx + r0 * D, P->p[AG_P_WO], NULL, rows, D, D);
        if (j->cfg->residual) ag_residual_forward(h, h, x + r0 * D, rows * D);
        if (!j->mlp) continue;
        const float *u = norm_rows(j, c->h, P->p[AG_P_LN2_GAMMA], P->p[AG_P_LN2_BETA],
                                   c->mean2, c->rstd2, r0, rows, ubuf, 1);
        float *z = c->z + r0 * F, *y = c->y + r0 * D;
        ag_linear_forward(z, u, P->p[AG_P_W1], P->p[AG_P_B1], rows, D, F);
        if (j->cfg->activation == AG_ACT_GELU) ag_gelu_forward(g, z, rows * F);
        else ag_relu_forward(g, z, rows * F);
        ag_linear_forward(y, g, P->p[AG_P_W2], P->p[AG_P_B2], rows, F, D);
        if (j->cfg->residual) ag_residual_forward(y, y, h, rows * D);
    }
    return 0;
}

/* ---- attention ------------------------------------------------------------------------- */

static ag_attn_shape head_shape(const job *j)
{
    ag_attn_shape s = {.n = j->n, .d_head = j->dh, .ld = j->D, .causal = j->cfg->causal,
                       .scale = (float)(1.0 / sqrt((double)j->dh)), .cancel = j->opts->cancel};
    return s;
}

/* Item i = (sequence i / H, head i % H): offset of its view and of its statistic. */
static void head_item(const job *j, size_t i, size_t *view, size_t *stat, size_t *head)
{
    size_t b = i / j->H, hd = i % j->H;
    *view = b * j->n * j->D + hd * j->dh;
    *stat = (b * j->H + hd) * j->n;
    *head = hd;
}

static size_t attn_parts(size_t items, size_t n, size_t dh)
{
    size_t p = (ATTN_UNITS + items - 1) / items;
    size_t by_rows = n / 128 ? n / 128 : 1;     /* parts of at least 128 query rows */
    size_t per_part = 2 * n * dh * items;       /* no overflow: below the workspace total */
    size_t by_mem = per_part ? PART_BUDGET / per_part : 1;
    if (p > by_rows) p = by_rows;
    if (p > by_mem) p = by_mem;
    return p ? p : 1;
}

/* Query rows of part p. Causal rows cost in proportion to their index, so the cuts are at
 * n sqrt(p / parts) to give every part the same work. */
static void part_rows(const job *j, size_t p, size_t *r0, size_t *r1)
{
    const size_t S = j->parts, n = j->n;
    if (j->cfg->causal) {
        *r0 = (size_t)llround((double)n * sqrt((double)p / (double)S));
        *r1 = (size_t)llround((double)n * sqrt((double)(p + 1) / (double)S));
    } else {
        *r0 = n * p / S;
        *r1 = n * (p + 1) / S;
    }
}

/* Only the calling thread (tid 0) reports progress, from the shared count of items done. */
static void item_done(phase *ph, int tid, double base)
{
    size_t done = atomic_fetch_add(&ph->j->items_done, 1) + 1;
    if (tid == 0) report(ph->j, base + (double)done * ph->item_work);
}

/* The kept state of unit u's head hd, or NULL. Items are (sequence, head), sequence-major. */
static float *head_state(const job *j, const layer_cache *c, size_t u, size_t hd)
{
    if (!c->states || c->state_off[hd] == SIZE_MAX) return NULL;
    size_t seq = u / j->parts / j->H;
    return c->states + seq * c->state_seq + c->state_off[hd];
}

/* Units are (item, part) pairs: unit u is part u % parts of item u / parts. An approximate
 * head is not split: its part 0 does all of it. */
static int attn_fwd(void *ctx, size_t begin, size_t end, int tid)
{
    phase *ph = ctx;
    job *j = ph->j;
    layer_cache *c = &j->cache[ph->layer];
    ag_attn_shape s = head_shape(j);
    for (size_t u = begin; u < end; u++) {
        if (cancelled(j)) return fail(j, tid, AG_ERR_CANCELLED, "", "cancelled");
        size_t off, so, hd, p = u % j->parts, r0, r1;
        head_item(j, u / j->parts, &off, &so, &hd);
        const ag_head_plan *plan = &c->plans[hd];
        ag_error *e = &j->terr[tid];
        ag_status st = AG_OK;
        if (plan->report.method != AG_METHOD_EXACT) {
            if (p == 0)
                st = ag_attn_approx_forward(&s, plan, c->Q + off, c->K + off, c->V + off,
                                            c->ctx + off, c->stat + so, head_state(j, c, u, hd),
                                            e);
        } else if (j->parts == 1) {
            st = ag_attn_exact_forward(&s, c->Q + off, c->K + off, c->V + off, c->ctx + off,
                                       c->stat + so, e);
        } else {
            part_rows(j, p, &r0, &r1);
            st = ag_attn_exact_forward_rows(&s, r0, r1, c->Q + off, c->K + off, c->V + off,
                                            c->ctx + off, c->stat + so, e);
        }
        if (st) return 1;
        item_done(ph, tid, j->work_done);
    }
    return 0;
}

static int attn_bwd(void *ctx, size_t begin, size_t end, int tid)
{
    phase *ph = ctx;
    job *j = ph->j;
    layer_cache *c = &j->cache[ph->layer];
    ag_attn_shape s = head_shape(j);
    const size_t nd = j->n * j->dh;
    for (size_t u = begin; u < end; u++) {
        if (cancelled(j)) return fail(j, tid, AG_ERR_CANCELLED, "", "cancelled");
        size_t off, so, hd, p = u % j->parts, r0, r1;
        head_item(j, u / j->parts, &off, &so, &hd);
        const ag_head_plan *plan = &c->plans[hd];
        const float *Q = c->Q + off, *K = c->K + off, *V = c->V + off, *O = c->ctx + off;
        const float *dctx = j->gA + off, *stat = c->stat + so;
        ag_error *e = &j->terr[tid];
        ag_status st = AG_OK;
        if (plan->report.method != AG_METHOD_EXACT) {
            if (p == 0)
                st = ag_attn_approx_backward(&s, plan, Q, K, V, O, stat,
                                             head_state(j, c, u, hd), dctx, j->dQ + off,
                                             j->dK + off, j->dV + off, e);
        } else if (j->parts == 1) {
            st = ag_attn_exact_backward(&s, Q, K, V, O, stat, dctx, j->dQ + off, j->dK + off,
                                        j->dV + off, e);
        } else {
            float *dk = j->dkv + u * 2 * nd, *dv = dk + nd;
            memset(dk, 0, 2 * nd * sizeof *dk);
            part_rows(j, p, &r0, &r1);
            st = ag_attn_exact_backward_rows(&s, r0, r1, Q, K, V, O, stat, dctx, j->dQ + off,
                                             dk, dv, e);
        }
        if (st) return 1;
        item_done(ph, tid, j->work_done);
    }
    return 0;
}

/* parts > 1: dK, dV views += every part's buffers, in part order. Items are (seq, head). */
static int attn_reduce(void *ctx, size_t begin, size_t end, int tid)
{
    (void)tid;
    phase *ph = ctx;
    job *j = ph->j;
    layer_cache *c = &j->cache[ph->layer];
    const size_t nd = j->n * j->dh, dh = j->dh, D = j->D;
    for (size_t item = begin; item < end; item++) {
        size_t off, so, hd;
        head_item(j, item, &off, &so, &hd);
        if (c->plans[hd].report.method != AG_METHOD_EXACT) continue;
        for (size_t p = 0; p < j->parts; p++) {
            const float *dk = j->dkv + (item * j->parts + p) * 2 * nd, *dv = dk + nd;
            size_t r0, r1;
            part_rows(j, p, &r0, &r1);
            const size_t keys = j->cfg->causal ? r1 : j->n;
            for (size_t i = 0; i < keys; i++)
                for (size_t t = 0; t < dh; t++) {
                    j->dK[off + i * D + t] += dk[i * dh + t];
                    j->dV[off + i * D + t] += dv[i * dh + t];
                }
        }
    }
    return 0;
}

/* Floats of STATE_BUDGET a job of this shape may keep (ag_gradients_workspace_bytes reserves
 * them): the states of every head of every layer at the default rank ceiling, at most
 * STATE_BUDGET; 0 for exact or causal attention. */
static size_t state_budget(const ag_model_config *cfg, size_t batch, const ag_method *method)
{
    if (!method || method->kind == AG_METHOD_EXACT || cfg->causal) return 0;
    size_t dh = (size_t)cfg->d_model / (size_t)cfg->n_heads, all;
    size_t per = ag_attn_approx_state_floats(dh, AG_DEFAULT_RANK_CEILING, 0);
    if (per == SIZE_MAX || !mul_ok(per, batch, &all) || !mul_ok(all, (size_t)cfg->n_heads, &all) ||
        !mul_ok(all, (size_t)cfg->n_layers, &all) || all > STATE_BUDGET)
        return STATE_BUDGET;
    return all;
}

/* Gives the layer's non-causal approximate heads a state slot each, from what is left of
 * STATE_BUDGET (reserved by ag_gradients_workspace_bytes); without one (over the budget, or
 * out of memory) their backward rebuilds the state, with the same result. */
static void keep_states(job *j, layer_cache *c)
{
    size_t seq = 0;
    for (size_t hd = 0; hd < j->H; hd++) {
        const ag_head_report *rep = &c->plans[hd].report;
        size_t f = rep->method == AG_METHOD_APPROX && rep->route == AG_ROUTE_FEATURES
                       ? ag_attn_approx_state_floats(j->dh, rep->rank, j->cfg->causal)
                       : 0;
        c->state_off[hd] = f ? seq : SIZE_MAX;
        if (f > j->state_left || seq > j->state_left - f) return; /* states stays NULL */
        seq += f;
    }
    size_t total;
    if (seq == 0 || !mul_ok(seq, j->batch, &total) || total > j->state_left) return;
    c->states = falloc(total);
    if (!c->states) return;
    c->state_seq = seq;
    j->state_left -= total;
}

/* Per head: R = max over the sequences of the score bound, then one plan for all of them. */
static ag_status plan_heads(job *j, int l, const ag_method *method, ag_head_report *reports,
                            ag_error *err)
{
    layer_cache *c = &j->cache[l];
    ag_attn_shape s = head_shape(j);
    ag_cost_model cost = j->opts->cost ? *j->opts->cost : ag_cost_model_default();
    size_t ceiling = j->opts->rank_ceiling ? j->opts->rank_ceiling : AG_DEFAULT_RANK_CEILING;
    for (size_t hd = 0; hd < j->H; hd++) {
        double R = 0;
        for (size_t b = 0; b < j->batch; b++) {
            size_t off = b * j->n * j->D + hd * j->dh;
            double r = ag_attn_score_bound(&s, c->Q + off, c->K + off);
            if (r > R || r != r) R = r; /* NaN propagates to the planner */
        }
        ag_status st = ag_head_plan_choose(method, j->dh, j->n, j->cfg->causal, R, &cost,
                                           ceiling, &c->plans[hd], err);
        if (st) {
            if (err && !err->field[0]) snprintf(err->field, sizeof err->field, "method");
            return st;
        }
        reports[(size_t)l * j->H + hd] = c->plans[hd].report;
    }
    keep_states(j, c);
    return AG_OK;
}

/* ---- backward, dense parts ------------------------------------------------------------- */

/* Group g of row blocks: [g nblocks / groups, (g+1) nblocks / groups). */
static void group_blocks(const job *j, size_t g, size_t *b0, size_t *b1)
{
    *b0 = g * j->nblocks / j->groups;
    *b1 = (g + 1) * j->nblocks / j->groups;
}

/* B1: through the MLP, norm2, the residual and wo. In: dY rows (gA). Out: dctx rows (over
 * dY in gA), dX rows (gB) = the residual branch. Items are groups. */
static int bwd_out(void *ctx, size_t begin, size_t end, int tid)
{
    phase *ph = ctx;
    job *j = ph->j;
    const int l = ph->layer;
    const ag_layer_params *P = &j->layers[l];
    layer_cache *c = &j->cache[l];
    const size_t D = j->D, F = j->F;
    float *dH = thread_scratch(j, tid), *ubuf = dH + ROW_BLOCK * D, *du = ubuf + ROW_BLOCK * D;
    float *g = du + ROW_BLOCK * D, *dg = g + ROW_BLOCK * F;
    for (size_t grp = begin; grp < end; grp++) {
        ag_layer_params *G = &j->partials[grp];
        size_t b0, b1;
        group_blocks(j, grp, &b0, &b1);
        for (size_t b = b0; b < b1; b++) {
            if (cancelled(j)) return fail(j, tid, AG_ERR_CANCELLED, "", "cancelled");
            size_t r0, r1;
            block_rows(j, b, &r0, &r1);
            const size_t rows = r1 - r0;
            float *dY = j->gA + r0 * D;
            if (j->mlp) {
                const float *z = c->z + r0 * F;
                const float *u = norm_rows(j, c->h, P->p[AG_P_LN2_GAMMA], P->p[AG_P_LN2_BETA],
                                           c->mean2, c->rstd2, r0, rows, ubuf, 0);
                if (j->cfg->activation == AG_ACT_GELU) ag_gelu_forward(g, z, rows * F);
                else ag_relu_forward(g, z, rows * F);
                /* dw2 += g^T dY, db2 += dY, dg = dY w2^T */
                memset(dg, 0, rows * F * sizeof *dg);
                ag_linear_backward(dg, G->p[AG_P_W2], G->p[AG_P_B2], dY, g, P->p[AG_P_W2],
                                   rows, F, D);
                memset(g, 0, rows * F * sizeof *g); /* g becomes dz */
                if (j->cfg->activation == AG_ACT_GELU) ag_gelu_backward(g, dg, z, rows * F);
                else ag_relu_backward(g, dg, z, rows * F);
                memset(du, 0, rows * D * sizeof *du);
                ag_linear_backward(du, G->p[AG_P_W1], G->p[AG_P_B1], g, u, P->p[AG_P_W1],
                                   rows, D, F);
                if (j->cfg->residual) memcpy(dH, dY, rows * D * sizeof *dH);
                else memset(dH, 0, rows * D * sizeof *dH);
                if (j->layernorm)
                    ag_layernorm_backward(dH, G->p[AG_P_LN2_GAMMA], G->p[AG_P_LN2_BETA], du,
                                          c->h + r0 * D, c->mean2 + r0, c->rstd2 + r0,
                                          P->p[AG_P_LN2_GAMMA], rows, D);
                else ag_residual_backward(dH, du, rows * D);
            } else {
                memcpy(dH, dY, rows * D * sizeof *dH);
            }
            /* attention output projection: dwo += ctx^T dH; dctx = dH wo^T over dY */
            memset(dY, 0, rows * D * sizeof *dY);
            ag_linear_backward(dY, G->p[AG_P_WO], NULL, dH, c->ctx + r0 * D, P->p[AG_P_WO],
                               rows, D, D);
            float *dX = j->gB + r0 * D;
            if (j->cfg->residual) memcpy(dX, dH, rows * D * sizeof *dX);
            else memset(dX, 0, rows * D * sizeof *dX);
        }
    }
    return 0;
}

/* B3: through the projections and norm1. In: dQ, dK, dV rows. Out: dX rows += (gB). */
static int bwd_in(void *ctx, size_t begin, size_t end, int tid)
{
    phase *ph = ctx;
    job *j = ph->j;
    const int l = ph->layer;
    const ag_layer_params *P = &j->layers[l];
    layer_cache *c = &j->cache[l];
    const float *x = layer_input(j, l);
    const size_t D = j->D;
    float *abuf = thread_scratch(j, tid), *da = abuf + ROW_BLOCK * D;
    for (size_t grp = begin; grp < end; grp++) {
        ag_layer_params *G = &j->partials[grp];
        size_t b0, b1;
        group_blocks(j, grp, &b0, &b1);
        for (size_t b = b0; b < b1; b++) {
            if (cancelled(j)) return fail(j, tid, AG_ERR_CANCELLED, "", "cancelled");
            size_t r0, r1;
            block_rows(j, b, &r0, &r1);
            const size_t rows = r1 - r0;
            const float *a = norm_rows(j, x, P->p[AG_P_LN1_GAMMA], P->p[AG_P_LN1_BETA],
                                       c->mean1, c->rstd1, r0, rows, abuf, 0);
            memset(da, 0, rows * D * sizeof *da);
            ag_linear_backward(da, G->p[AG_P_WQ], NULL, j->dQ + r0 * D, a, P->p[AG_P_WQ], rows,
                               D, D);
            ag_linear_backward(da, G->p[AG_P_WK], NULL, j->dK + r0 * D, a, P->p[AG_P_WK], rows,
                               D, D);
            ag_linear_backward(da, G->p[AG_P_WV], NULL, j->dV + r0 * D, a, P->p[AG_P_WV], rows,
                               D, D);
            float *dX = j->gB + r0 * D;
            if (j->layernorm)
                ag_layernorm_backward(dX, G->p[AG_P_LN1_GAMMA], G->p[AG_P_LN1_BETA], da,
                                      x + r0 * D, c->mean1 + r0, c->rstd1 + r0,
                                      P->p[AG_P_LN1_GAMMA], rows, D);
            else ag_residual_backward(dX, da, rows * D);
        }
    }
    return 0;
}

/* ---- driver ---------------------------------------------------------------------------- */

/* Runs fn over count items on the job's threads; on failure returns the first worker's error
 * (in thread order) through err. */
static ag_status run(job *j, size_t count, ag_parallel_fn fn, phase *ph, ag_error *err)
{
    for (int t = 0; t < j->threads; t++) j->terr[t] = (ag_error){0};
    atomic_store(&j->items_done, 0);
    if (ag_parallel_for(j->threads, count, fn, ph) == 0) return AG_OK;
    for (int t = 0; t < j->threads; t++)
        if (j->terr[t].status != AG_OK) {
            if (err) *err = j->terr[t];
            return j->terr[t].status;
        }
    return ag_error_set(err, AG_ERR_INVALID, "", "a worker failed without a reason");
}

static void cache_free(job *j)
{
    if (!j->cache) return;
    for (int l = 0; l < j->cfg->n_layers; l++) {
        layer_cache *c = &j->cache[l];
        if (c->y != c->h) free(c->y);
        float *bufs[] = {c->Q, c->K, c->V, c->ctx, c->stat, c->h, c->z,
                         c->mean1, c->rstd1, c->mean2, c->rstd2, c->states};
        for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) free(bufs[i]);
        free(c->plans);
        free(c->state_off);
    }
    free(j->cache);
    j->cache = NULL;
}

static void job_free(job *j)
{
    cache_free(j);
    free(j->gA);
    free(j->gB);
    free(j->dQ);
    free(j->dK);
    free(j->dV);
    free(j->scratch);
    free(j->dkv);
    if (j->partials)
        for (size_t g = 0; g < j->groups; g++) ag_layer_params_free(&j->partials[g]);
    free(j->partials);
    free(j->terr);
}

/* Everything the job needs, allocated up front so that a NOMEM comes before any work. */
static ag_status job_alloc(job *j, ag_error *err)
{
    const size_t N = j->N, D = j->D, F = j->F, L = (size_t)j->cfg->n_layers;
    const size_t ND = N * D, NF = N * F; /* no overflow: checked by the workspace estimate */
    j->cache = calloc(L, sizeof *j->cache);
    j->terr = calloc((size_t)j->threads, sizeof *j->terr);
    j->partials = calloc(j->groups, sizeof *j->partials);
    if (!j->cache || !j->terr || !j->partials) goto nomem;
    for (size_t l = 0; l < L; l++) {
        layer_cache *c = &j->cache[l];
        c->Q = falloc(ND);
        c->K = falloc(ND);
        c->V = falloc(ND);
        c->ctx = falloc(ND);
        c->h = falloc(ND);
        c->stat = falloc(j->batch * j->H * j->n);
        c->plans = calloc(j->H, sizeof *c->plans);
        c->state_off = calloc(j->H, sizeof *c->state_off);
        if (!c->Q || !c->K || !c->V || !c->ctx || !c->h || !c->stat || !c->plans ||
            !c->state_off)
            goto nomem;
        if (j->mlp) {
            c->z = falloc(NF);
            c->y = falloc(ND);
            if (!c->z || !c->y) goto nomem;
        } else {
            c->y = c->h;
        }
        if (j->layernorm) {
            c->mean1 = falloc(N);
            c->rstd1 = falloc(N);
            if (!c->mean1 || !c->rstd1) goto nomem;
            if (j->mlp) {
                c->mean2 = falloc(N);
                c->rstd2 = falloc(N);
                if (!c->mean2 || !c->rstd2) goto nomem;
            }
        }
    }
    j->gA = falloc(ND);
    j->gB = falloc(ND);
    j->dQ = falloc(ND);
    j->dK = falloc(ND);
    j->dV = falloc(ND);
    j->scratch_floats = 3 * ROW_BLOCK * D + 2 * ROW_BLOCK * F;
    j->scratch = falloc((size_t)j->threads * j->scratch_floats);
    if (!j->gA || !j->gB || !j->dQ || !j->dK || !j->dV || !j->scratch) goto nomem;
    if (j->parts > 1 && !(j->dkv = falloc(j->batch * j->H * j->parts * 2 * j->n * j->dh)))
        goto nomem;
    for (size_t g = 0; g < j->groups; g++)
        if (ag_layer_params_alloc(j->cfg, &j->partials[g], NULL) != AG_OK) goto nomem;
    return AG_OK;
nomem:
    return ag_error_set(err, AG_ERR_NOMEM, "", "out of memory for the model's activations");
}

static ag_status result_alloc(const job *j, ag_result *res, ag_error *err)
{
    const int L = j->cfg->n_layers;
    res->grad_layers = calloc((size_t)L, sizeof *res->grad_layers);
    res->heads = calloc((size_t)L * j->H, sizeof *res->heads);
    if (!res->grad_layers || !res->heads) goto nomem;
    res->n_layers = L;
    for (int l = 0; l < L; l++)
        if (ag_layer_params_alloc(j->cfg, &res->grad_layers[l], NULL) != AG_OK) goto nomem;
    return AG_OK;
nomem:
    return ag_error_set(err, AG_ERR_NOMEM, "", "out of memory for the result");
}

/* The loss and dY (into gA); the loss accumulates in double. */
static void loss_grad(job *j, const ag_loss *loss, ag_result *res)
{
    const float *y = j->cache[j->cfg->n_layers - 1].y;
    const size_t count = j->N * j->D;
    float *dY = j->gA;
    double acc = 0;
    switch (loss->kind) {
    case AG_LOSS_MSE: {
        const double scale = 2.0 / (double)count;
        for (size_t i = 0; i < count; i++) {
            double diff = (double)y[i] - (double)loss->tensor[i];
            acc += diff * diff;
            dY[i] = (float)(scale * diff);
        }
        res->loss = acc / (double)count;
        res->has_loss = 1;
        break;
    }
    case AG_LOSS_SUM:
        for (size_t i = 0; i < count; i++) {
            acc += y[i];
            dY[i] = 1.0f;
        }
        res->loss = acc;
        res->has_loss = 1;
        break;
    case AG_LOSS_GRAD_OUTPUT:
        memcpy(dY, loss->tensor, count * sizeof *dY);
        res->loss = 0;
        res->has_loss = 0;
        break;
    }
}

/* res.grad_layers[l] += the partial sums, in group order (thread-count independent). */
static void reduce_partials(job *j, ag_layer_params *out)
{
    for (int i = 0; i < AG_P_COUNT; i++) {
        size_t count = ag_param_numel(j->cfg, i);
        if (!count) continue;
        for (size_t g = 0; g < j->groups; g++) {
            const float *p = j->partials[g].p[i];
            float *o = out->p[i];
            for (size_t e = 0; e < count; e++) o[e] += p[e];
        }
    }
}

static void partials_zero(job *j)
{
    for (size_t g = 0; g < j->groups; g++)
        memset(j->partials[g].block, 0, j->param_floats * sizeof(float));
}

static ag_status validate(const ag_model_config *cfg, const ag_layer_params *layers,
                          const float *input, size_t batch, size_t n, const ag_loss *loss,
                          const ag_method *method, const ag_result *res, ag_error *err)
{
    if (!res) return ag_error_set(err, AG_ERR_INVALID, "", "NULL result");
    ag_status st = ag_model_config_check(cfg, err);
    if (st) return st;
    if (!layers) return ag_error_set(err, AG_ERR_INVALID, "layers", "missing layers");
    for (int l = 0; l < cfg->n_layers; l++)
        for (int i = 0; i < AG_P_COUNT; i++)
            if (ag_param_numel(cfg, i) && !layers[l].p[i]) {
                char field[96];
                snprintf(field, sizeof field, "layers[%d].%s", l, ag_param_name(i));
                return ag_error_set(err, AG_ERR_INVALID, field, "%s: missing parameter", field);
            }
    if (!input) return ag_error_set(err, AG_ERR_INVALID, "input", "missing input");
    if (batch == 0 || n == 0)
        return ag_error_set(err, AG_ERR_INVALID, "input",
                            "empty input: batch (%zu) and n (%zu) must be >= 1", batch, n);
    if (n > (size_t)INT_MAX)
        return ag_error_set(err, AG_ERR_LIMIT, "input", "sequence of %zu tokens is too long", n);
    if (!loss) return ag_error_set(err, AG_ERR_INVALID, "loss", "missing loss");
    switch (loss->kind) {
    case AG_LOSS_MSE:
        if (!loss->tensor)
            return ag_error_set(err, AG_ERR_INVALID, "loss.target", "mse needs a target");
        break;
    case AG_LOSS_SUM: break;
    case AG_LOSS_GRAD_OUTPUT:
        if (!loss->tensor)
            return ag_error_set(err, AG_ERR_INVALID, "loss.grad", "grad_output needs grad");
        break;
    default: return ag_error_set(err, AG_ERR_INVALID, "loss.type", "unknown loss type");
    }
    if (ag_method_check(method, err) != AG_OK) return AG_ERR_INVALID;
    if (ag_gradients_workspace_bytes(cfg, batch, n, method) == SIZE_MAX)
        return ag_error_set(err, AG_ERR_LIMIT, "input", "job too large: sizes overflow");
    return AG_OK;
}

/* Partial-sum groups: fixed by the sizes alone (never by the thread count). */
static size_t group_count(size_t nblocks, size_t param_floats)
{
    size_t g = PARTIAL_BUDGET / (param_floats ? param_floats : 1);
    if (g > MAX_GROUPS) g = MAX_GROUPS;
    if (g > nblocks) g = nblocks;
    return g ? g : 1;
}

static size_t param_floats(const ag_model_config *cfg)
{
    size_t w = 0;
    for (int i = 0; i < AG_P_COUNT; i++) w += ag_param_numel(cfg, i);
    return w;
}

ag_status ag_gradients(const ag_model_config *cfg, const ag_layer_params *layers,
                       const float *input, size_t batch, size_t n, const ag_loss *loss,
                       const ag_method *method, const ag_run_opts *opts, ag_result *res,
                       ag_error *err)
{
    if (res) memset(res, 0, sizeof *res);
    ag_status st = validate(cfg, layers, input, batch, n, loss, method, res, err);
    if (st) return st;
    const ag_run_opts defaults = {.threads = 1};
    if (!opts) opts = &defaults;

    job j = {.cfg = cfg, .layers = layers, .input = input, .opts = opts, .batch = batch,
             .n = n, .N = batch * n, .D = (size_t)cfg->d_model, .F = (size_t)cfg->d_ff,
             .H = (size_t)cfg->n_heads};
    j.dh = j.D / j.H;
    j.layernorm = cfg->norm == AG_NORM_LAYERNORM;
    j.mlp = cfg->d_ff > 0;
    j.threads = opts->threads < 1 ? 1 : opts->threads > MAX_THREADS ? MAX_THREADS : opts->threads;
    j.nblocks = (j.N + ROW_BLOCK - 1) / ROW_BLOCK;
    j.param_floats = param_floats(cfg);
    j.groups = group_count(j.nblocks, j.param_floats);
    j.parts = attn_parts(batch * j.H, n, j.dh);
    j.state_left = state_budget(cfg, batch, method);
    atomic_init(&j.items_done, 0);

    const int L = cfg->n_layers;
    const size_t items = batch * j.H, units = items * j.parts, N = j.N, D = j.D, F = j.F;
    /* progress units: flops, attention counted as exact */
    const double attn_item = 4.0 * (double)n * (double)n * (double)j.dh * (cfg->causal ? 0.5 : 1);
    const double f1 = 2.0 * N * 3 * D * D, f3 = 2.0 * N * (D * D + 2.0 * D * F);
    const double f2 = attn_item * (double)items;
    j.work_total = (double)L * 3 * (f1 + f2 + f3);

    if ((st = job_alloc(&j, err)) || (st = result_alloc(&j, res, err))) goto fail;
    res->batch = batch;
    res->n = n;
    res->d_model = D;
    res->n_heads = (int)j.H;
    report(&j, 0);

    for (int l = 0; l < L; l++) {
        phase ph = {.j = &j, .layer = l, .item_work = attn_item / (double)j.parts};
        if ((st = run(&j, j.nblocks, fwd_qkv, &ph, err))) goto fail;
        advance(&j, f1);
        if ((st = plan_heads(&j, l, method, res->heads, err))) goto fail;
        if ((st = run(&j, units, attn_fwd, &ph, err))) goto fail;
        advance(&j, f2);
        if ((st = run(&j, j.nblocks, fwd_out, &ph, err))) goto fail;
        advance(&j, f3);
    }
    loss_grad(&j, loss, res);

    for (int l = L - 1; l >= 0; l--) {
        phase ph = {.j = &j, .layer = l, .item_work = 2 * attn_item / (double)j.parts};
        partials_zero(&j);
        if ((st = run(&j, j.groups, bwd_out, &ph, err))) goto fail;
        advance(&j, 2 * f3);
        memset(j.dQ, 0, N * D * sizeof *j.dQ);
        memset(j.dK, 0, N * D * sizeof *j.dK);
        memset(j.dV, 0, N * D * sizeof *j.dV);
        if ((st = run(&j, units, attn_bwd, &ph, err))) goto fail;
        if (j.parts > 1 && (st = run(&j, items, attn_reduce, &ph, err))) goto fail;
        advance(&j, 2 * f2);
        if ((st = run(&j, j.groups, bwd_in, &ph, err))) goto fail;
        advance(&j, 2 * f1);
        reduce_partials(&j, &res->grad_layers[l]);
        float *t = j.gA; /* this layer's dX is the previous layer's dY */
        j.gA = j.gB;
        j.gB = t;
    }
    res->grad_input = j.gA;
    j.gA = NULL;
    if (opts->want_output) {
        layer_cache *c = &j.cache[L - 1];
        res->output = c->y;
        if (c->h == c->y) c->h = NULL;
        c->y = NULL;
    }
    job_free(&j);
    report(&j, j.work_total);
    return AG_OK;

fail:
    job_free(&j);
    ag_result_free(res);
    return st;
}

void ag_result_free(ag_result *res)
{
    if (!res) return;
    free(res->output);
    free(res->grad_input);
    if (res->grad_layers)
        for (int l = 0; l < res->n_layers; l++) ag_layer_params_free(&res->grad_layers[l]);
    free(res->grad_layers);
    free(res->heads);
    memset(res, 0, sizeof *res);
}

/* ---- workspace estimate ---------------------------------------------------------------- */

static size_t smul(size_t a, size_t b, int *of)
{
    size_t r = 0;
    if (!mul_ok(a, b, &r)) *of = 1;
    return r;
}

static size_t sadd(size_t a, size_t b, int *of)
{
    size_t r = 0;
    if (!add_ok(a, b, &r)) *of = 1;
    return r;
}

/* Assumes up to one worker thread per online CPU (the server gives a job its free cores);
 * the estimate has no ag_run_opts to read the real count from. */
size_t ag_gradients_workspace_bytes(const ag_model_config *cfg, size_t batch, size_t n,
                                    const ag_method *method)
{
    if (!cfg || ag_model_config_check(cfg, NULL) != AG_OK || batch == 0 || n == 0)
        return SIZE_MAX;
    int of = 0;
    const size_t D = (size_t)cfg->d_model, F = (size_t)cfg->d_ff, H = (size_t)cfg->n_heads;
    const size_t L = (size_t)cfg->n_layers, dh = D / H;
    const int ln = cfg->norm == AG_NORM_LAYERNORM, mlp = F > 0;
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    const size_t T = cpus < 1 ? 1 : cpus > MAX_THREADS ? MAX_THREADS : (size_t)cpus;

    const size_t N = smul(batch, n, &of), ND = smul(N, D, &of), NF = smul(N, F, &of);
    /* per-layer caches: Q K V ctx h (+ z y), stat, layernorm statistics */
    size_t layer = smul(5, ND, &of);
    if (mlp) layer = sadd(layer, sadd(ND, NF, &of), &of);
    layer = sadd(layer, smul(smul(batch, H, &of), n, &of), &of);
    if (ln) layer = sadd(layer, smul(mlp ? 4 : 2, N, &of), &of);
    size_t floats = smul(L, layer, &of);
    /* backward: dY/dctx, dX (becomes grad_input), dQ, dK, dV; the output */
    floats = sadd(floats, smul(6, ND, &of), &of);
    /* weight gradients, their partial sums, per-thread row-block scratch */
    const size_t W = param_floats(cfg);
    const size_t nblocks = N / ROW_BLOCK + 1;
    floats = sadd(floats, smul(sadd(L, group_count(nblocks, W), &of), W, &of), &of);
    floats = sadd(floats, smul(T, ROW_BLOCK * (3 * D + 2 * F), &of), &of);
    /* per-thread attention scratch: the exact backward packs 10 [n, dh] arrays plus two
     * score blocks (at most 2^16 floats each) and two [n] vectors */
    size_t attn = sadd(smul(smul(10, n, &of), dh, &of), 2 * 65536 + 2 * n, &of);
    floats = sadd(floats, smul(T, attn, &of), &of);
    /* per-part dk, dv buffers when heads are split (bounded by PART_BUDGET) */
    if (!of) {
        size_t items = smul(batch, H, &of), parts = of ? 1 : attn_parts(items, n, dh);
        if (parts > 1) floats = sadd(floats, smul(smul(items * parts, 2 * n, &of), dh, &of), &of);
    }
    size_t bytes = smul(floats, sizeof(float), &of);
    if (method && method->kind != AG_METHOD_EXACT) {
        size_t a = ag_attn_approx_workspace_bytes(dh, AG_DEFAULT_RANK_CEILING, cfg->causal);
        if (a == SIZE_MAX) return SIZE_MAX;
        bytes = sadd(bytes, smul(T, a, &of), &of);
        bytes = sadd(bytes, smul(state_budget(cfg, batch, method), sizeof(float), &of), &of);
    }
    /* plans and reports, and allocator slack */
    bytes = sadd(bytes, smul(smul(L, H, &of), sizeof(ag_head_plan) + sizeof(ag_head_report), &of),
                 &of);
    bytes = sadd(bytes, sadd(bytes / 64, (size_t)1 << 20, &of), &of);
    return of ? SIZE_MAX : bytes;
}
