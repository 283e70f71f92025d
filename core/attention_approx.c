/* Polynomial low-rank attention (the approximation of arXiv 2408.13233), one head of one
 * sequence, with the features-route backward.
 *
 * Shapes (views [n, ld], d = d_head columns used; r = C(d+g, g)):
 *   q^ = qscale q,  k^ = kscale (k - mu)       mu = mean of the keys (exact for softmax);
 *                                              q^ . k^ = c q . (k - mu), |q^|, |k^| <= sqrt(R)
 *   phi(q^) = weight o m(q^),  psi(k^) = m(k^) in R^r (m: the monomials, feature_map.h)
 *   V' = [v, 1] [n, d+1]                       S' = Psi^T V' = [S | z]  [r, d+1]
 *   Num = Phi S' [n, d+1];  den = Num[:, d];  o = Num[:, :d] / den;  row_stat = den
 * Backward through exactly that function (docs/paper_notes.md, "The two backward routes"):
 *   G = [dO, -delta] / den  [n, d+1],  delta_i = dO_i . o_i
 *   dPhi = G S'^T;  dS' = Phi^T G;  dPsi = V' dS'^T;  dv += Psi dS'[:, :d]
 *   dq, dk from dPhi, dPsi through the monomial tree; dk -= mean(dk) undoes the centring;
 *   the scalings by the chain rule. The weights fold into the states: Sw = weight o S' serves
 *   the queries (Num = m(q^) Sw, dm(q^) = G Sw^T) and Dw = weight o sum_i m(q^_i) G_i = dS'
 *   the keys, so only pure monomials are ever formed.
 * Causal: chunks of C rows. Across chunks the polynomial state: a prefix S' in the forward,
 * and in the backward a prefix S' (forward sweep, for dPhi) and a suffix dS' (reverse sweep,
 * for dPsi and dv). Within a chunk the exact masked e^{q^ . k^} (BLAS), whose gradient is the
 * usual one. Every attention entry is then exact or within the polynomial's relative error.
 *
 * Layout (why it is fast): a chunk is held transposed, [feature, C]; rows are processed in
 * groups of 16 whose monomials are INTERLEAVED (one 16-float vector per monomial, a lane per
 * row), so forming them is one vector multiply per monomial, the query products reduce
 * nothing across lanes, and states are summed into 16 lane-partials reduced once per chunk.
 * The top degree (no children) is formed on the fly where its consumer reads it once. No
 * n x r or n x n array exists; memory is O(r (d+1) 16 + C r) per call, independent of n.
 *
 * Float32 states are sound while u e^{2R} (times the modest factor of ag_poly_float_bound)
 * stays below epsilon: R up to about 3 at epsilon 1e-3, 2.3 at 2e-4 (d_head 8).
 * ag_head_plan_choose refuses beyond that ("R too large for float32"), auto falls back to
 * exact.
 */
/* -std=c11 turns GCC's floating-point contraction off; the kernels here want a * b + c as one
 * FMA (faster, and one rounding fewer). Clang contracts within expressions by default. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=fast")
#endif
#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "approx_internal.h"
#include "attention.h"
#include "feature_map.h"
#include "layers.h"
#include "poly.h"

/* Chunks hold at most 256 rows: 16 groups of 16. */
#define AG_MAX_CHUNK_GROUPS 16

/* ---- score bound ----------------------------------------------------------------------- */

static void key_mean(const float *k, size_t n, size_t d, size_t ld, double *mu)
{
    for (size_t t = 0; t < d; t++) mu[t] = 0;
    for (size_t j = 0; j < n; j++)
        for (size_t t = 0; t < d; t++) mu[t] += k[j * ld + t];
    for (size_t t = 0; t < d; t++) mu[t] /= (double)n;
}

/* max_i |q_i| and max_j |k_j - mu| (mu may be NULL: no centring). */
static double max_row_norm(const float *x, size_t n, size_t d, size_t ld, const double *mu)
{
    double best = 0;
    for (size_t i = 0; i < n; i++) {
        double s = 0;
        for (size_t t = 0; t < d; t++) {
            double v = x[i * ld + t] - (mu ? mu[t] : 0);
            s += v * v;
        }
        if (!(s <= best)) best = s; /* NaN propagates */
    }
    return sqrt(best);
}

double ag_attn_score_bound(const ag_attn_shape *s, const float *q, const float *k)
{
    if (!s || !q || !k || s->n < 1 || s->d_head < 1) return 0;
    enum { STACK_D = 256 };
    double stack_mu[STACK_D], *mu = stack_mu;
    if (s->d_head > STACK_D) {
        mu = malloc(s->d_head * sizeof *mu);
        if (!mu) return INFINITY; /* no memory: a bound nobody approximates with */
    }
    key_mean(k, s->n, s->d_head, s->ld, mu);
    double R = (double)s->scale * max_row_norm(q, s->n, s->d_head, s->ld, NULL) *
               max_row_norm(k, s->n, s->d_head, s->ld, mu);
    if (mu != stack_mu) free(mu);
    return R;
}

/* ---- plan ------------------------------------------------------------------------------ */

/* Outcome of looking for an approximation meeting the method at this R. */
typedef struct {
    ag_status status; /* AG_OK, AG_ERR_UNREACHABLE, AG_ERR_LIMIT, AG_ERR_INVALID */
    const char *reason;
    int degree;
    size_t rank;
    double error_bound;
    double coef[AG_MAX_DEGREE + 1];
} approx_candidate;

static ag_status candidate_fail(approx_candidate *c, ag_error *err, ag_status st,
                                const char *reason, const char *field, const char *msg)
{
    c->status = st;
    c->reason = reason;
    return ag_error_set(err, st, field, "%s", msg);
}

/* Total a-priori bound at degree g: polynomial + float32 rounding. Fills coef. */
static double total_bound(ag_poly poly, int g, double R, size_t d_head, size_t n, double *coef)
{
    if (ag_poly_fit(poly, g, R, coef) != 0) return INFINITY;
    return ag_poly_rel_bound(poly, g, R) + ag_poly_float_bound(coef, g, R, d_head, n);
}

static ag_status find_approx(const ag_method *m, size_t d_head, size_t n, double R,
                             size_t ceiling, approx_candidate *c, ag_error *err)
{
    char msg[256];
    memset(c, 0, sizeof *c);
    if (!isfinite(R) || R < 0) {
        snprintf(msg, sizeof msg, "the attention score bound R = %g is not finite", R);
        return candidate_fail(c, err, AG_ERR_UNREACHABLE, "R not finite", "method", msg);
    }
    if (R > AG_POLY_MAX_R) {
        snprintf(msg, sizeof msg,
                 "R = %.4g: the float32 rounding of the polynomial features (about u e^{2R}) "
                 "exceeds any epsilon at this score bound; use exact", R);
        return candidate_fail(c, err, AG_ERR_UNREACHABLE, "R too large for float32", "method", msg);
    }
    if (m->degree > 0) {
        int g = m->degree;
        size_t rank = ag_poly_rank(d_head, g);
        if (rank > ceiling) {
            snprintf(msg, sizeof msg, "degree %d with d_head %zu has rank %zu, over the rank "
                     "ceiling %zu", g, d_head, rank, ceiling);
            return candidate_fail(c, err, AG_ERR_LIMIT, "rank over ceiling", "method.degree", msg);
        }
        double b = total_bound(m->poly, g, R, d_head, n, c->coef);
        /* a relative error near 1 would let the denominators reach 0: no gradient to speak of */
        if (!(b <= 0.5)) {
            snprintf(msg, sizeof msg, "degree %d at R = %.4g has relative error bound %.3g "
                     "(over 0.5)%s", g, R, b,
                     ag_poly_float_bound(c->coef, g, R, d_head, n) > 0.25 ?
                     ": R too large for float32" : "");
            return candidate_fail(c, err, AG_ERR_UNREACHABLE, "degree too low for R",
                                  "method.degree", msg);
        }
        c->status = AG_OK;
        c->degree = g;
        c->rank = rank;
        c->error_bound = b;
        return AG_OK;
    }
    double eps = m->epsilon;
    double coef[AG_MAX_DEGREE + 1];
    double float_at_1 = INFINITY;
    for (int g = 1; g <= AG_MAX_DEGREE; g++) {
        size_t rank = ag_poly_rank(d_head, g);
        if (ag_poly_fit(m->poly, g, R, coef) != 0) break;
        double fb = ag_poly_float_bound(coef, g, R, d_head, n);
        if (g == 1) float_at_1 = fb;
        if (fb >= eps) break; /* grows with g: no higher degree helps */
        /* |r(-R)| is a lower bound of the polynomial's error: skip hopeless degrees cheaply */
        double Rf = R < 1e-3 ? 1e-3 : R;
        if (fabs(ag_poly_eval(coef, g, -Rf) * exp(Rf) - 1) + fb > eps) continue;
        double b = ag_poly_rel_bound(m->poly, g, R) + fb;
        if (b > eps) continue;
        if (rank > ceiling) {
            snprintf(msg, sizeof msg, "epsilon %.3g at R = %.4g needs degree %d, rank %zu with "
                     "d_head %zu, over the rank ceiling %zu", eps, R, g, rank, d_head, ceiling);
            return candidate_fail(c, err, AG_ERR_LIMIT, "rank over ceiling", "method", msg);
        }
        c->status = AG_OK;
        c->degree = g;
        c->rank = rank;
        c->error_bound = b;
        memcpy(c->coef, coef, sizeof coef);
        return AG_OK;
    }
    if (float_at_1 >= eps) {
        snprintf(msg, sizeof msg, "epsilon %.3g is unreachable at R = %.4g: float32 rounding "
                 "of the polynomial features alone is about %.2g relative there (it grows like "
                 "u e^{2R}); use exact or a larger epsilon", eps, R, float_at_1);
        return candidate_fail(c, err, AG_ERR_UNREACHABLE, "R too large for float32", "method", msg);
    }
    snprintf(msg, sizeof msg, "epsilon %.3g is unreachable at R = %.4g with degree <= %d in "
             "float32 (the polynomial and rounding errors cannot both fit); use exact or a "
             "larger epsilon", eps, R, AG_MAX_DEGREE);
    return candidate_fail(c, err, AG_ERR_UNREACHABLE, "R too large for float32", "method", msg);
}

static void plan_exact(ag_head_plan *plan, const ag_method *m, double R, const char *reason)
{
    memset(plan, 0, sizeof *plan);
    plan->report.method = AG_METHOD_EXACT;
    plan->report.route = m->route;
    plan->report.poly = m->poly;
    plan->report.bound = R;
    plan->report.reason = reason;
}

ag_status ag_head_plan_choose(const ag_method *method, size_t d_head, size_t n, int causal,
                              double R, const ag_cost_model *cost, size_t rank_ceiling,
                              ag_head_plan *plan, ag_error *err)
{
    if (!method || !plan || d_head < 1 || n < 1)
        return ag_error_set(err, AG_ERR_INVALID, "method", "bad plan arguments");
    ag_status st = ag_method_check(method, err);
    if (st != AG_OK) return st;
    if (method->kind == AG_METHOD_EXACT) {
        plan_exact(plan, method, R, "exact requested");
        return AG_OK;
    }
    size_t ceiling = rank_ceiling ? rank_ceiling : AG_DEFAULT_RANK_CEILING;
    approx_candidate c;
    /* auto swallows the candidate's error: it falls back to exact and says why */
    ag_error scratch;
    st = find_approx(method, d_head, n, R, ceiling, &c,
                     method->kind == AG_METHOD_APPROX ? err : &scratch);
    if (st != AG_OK) {
        if (method->kind == AG_METHOD_APPROX) {
            plan_exact(plan, method, R, c.reason);
            return st;
        }
        plan_exact(plan, method, R, c.reason);
        return AG_OK;
    }
    if (method->kind == AG_METHOD_AUTO) {
        ag_cost_model cm = cost ? *cost : ag_cost_model_default();
        double t_exact = ag_cost_exact_flops(n, d_head, causal) * cm.exact_s_per_flop;
        double f_approx = method->route == AG_ROUTE_PAPER
                              ? ag_cost_paper_flops(n, d_head, c.rank, causal)
                              : ag_cost_approx_flops(n, d_head, c.rank, causal);
        double t_approx = f_approx * cm.approx_s_per_flop;
        if (!(t_approx < t_exact)) {
            plan_exact(plan, method, R, "exact cheaper by cost model");
            return AG_OK;
        }
    }
    memset(plan, 0, sizeof *plan);
    plan->report.method = AG_METHOD_APPROX;
    plan->report.route = method->route;
    plan->report.poly = method->poly;
    plan->report.degree = c.degree;
    plan->report.rank = c.rank;
    plan->report.bound = R;
    plan->report.error_bound = c.error_bound;
    plan->report.reason = method->kind == AG_METHOD_AUTO ? "approx cheaper by cost model"
                                                         : "approx requested";
    memcpy(plan->coef, c.coef, sizeof plan->coef);
    return AG_OK;
}

/* ---- prepared head --------------------------------------------------------------------- */

enum { LANES = AG_GROUP };

size_t ag_approx_block_rows(size_t r, int causal)
{
    /* A causal chunk costs C (14 d + 4) flops a row in exact in-chunk attention and r (d + 1)
     * lane reductions of the prefix state per chunk, against the state's r (14 d + 29) a row:
     * C about r / 6 balances them. Non-causal: 128. Either way the chunk's monomials (C r
     * floats) stay under 8 MB; 32..256 rows, a multiple of the group. */
    size_t C = causal ? (r / 6 + 15) / 16 * 16 : 128;
    size_t cap = ((size_t)1 << 21) / (r ? r : 1) / 16 * 16;
    if (C > cap) C = cap;
    if (C < 32) C = 32;
    if (C > 256) C = 256;
    return C;
}

static ag_status check_views(const ag_attn_shape *s, ag_error *err)
{
    if (!s) return ag_error_set(err, AG_ERR_INVALID, "attention", "NULL shape");
    if (s->n < 1 || s->d_head < 1 || s->ld < s->d_head)
        return ag_error_set(err, AG_ERR_INVALID, "attention", "bad shape n=%zu d_head=%zu ld=%zu",
                            s->n, s->d_head, s->ld);
    if (s->ld > (size_t)INT32_MAX || s->d_head > 4096)
        return ag_error_set(err, AG_ERR_INVALID, "attention", "shape too large for BLAS");
    if (!(s->scale > 0) || !isfinite(s->scale))
        return ag_error_set(err, AG_ERR_INVALID, "attention", "scale must be positive");
    return AG_OK;
}

ag_status ag_approx_head_init(ag_approx_head *h, const ag_attn_shape *s, const ag_head_plan *plan,
                              const float *q, const float *k, ag_error *err)
{
    memset(h, 0, sizeof *h);
    ag_status st = check_views(s, err);
    if (st != AG_OK) return st;
    if (!plan || !q || !k)
        return ag_error_set(err, AG_ERR_INVALID, "attention", "NULL argument");
    const ag_head_report *rep = &plan->report;
    if (rep->method != AG_METHOD_APPROX || rep->degree < 1 || rep->degree > AG_MAX_DEGREE)
        return ag_error_set(err, AG_ERR_INVALID, "method", "not an approximate plan");
    size_t r = ag_poly_rank(s->d_head, rep->degree);
    if (r != rep->rank)
        return ag_error_set(err, AG_ERR_INVALID, "method", "plan rank %zu does not match "
                            "C(%zu + %d, %d) = %zu", rep->rank, s->d_head, rep->degree,
                            rep->degree, r);
    h->s = s;
    h->n = s->n;
    h->d = s->d_head;
    h->ld = s->ld;
    h->r = r;
    h->B = ag_approx_block_rows(r, s->causal);
    h->mu = malloc(h->d * sizeof *h->mu);
    if (!h->mu) return ag_error_set(err, AG_ERR_NOMEM, "", "out of memory");
    key_mean(k, h->n, h->d, h->ld, h->mu);
    double qmax = max_row_norm(q, h->n, h->d, h->ld, NULL);
    double kmax = max_row_norm(k, h->n, h->d, h->ld, h->mu);
    double R = (double)s->scale * qmax * kmax;
    /* The polynomial was fitted on [-bound, bound]; scores beyond it void the error bound. */
    if (!(R <= rep->bound * (1 + 1e-6) + 1e-30)) {
        ag_approx_head_free(h);
        return ag_error_set(err, AG_ERR_INVALID, "method", "this sequence's score bound %.6g "
                            "exceeds the plan's %.6g", R, rep->bound);
    }
    double sc = sqrt((double)s->scale), bal = (qmax > 0 && kmax > 0) ? sqrt(kmax / qmax) : 1;
    h->qscale = (float)(sc * bal);
    h->kscale = (float)(sc / bal);
    st = ag_feature_map_init(&h->map, h->d, rep->degree, plan->coef, r, err);
    if (st != AG_OK) {
        ag_approx_head_free(h);
        return st;
    }
    return AG_OK;
}

void ag_approx_head_free(ag_approx_head *h)
{
    if (!h) return;
    free(h->mu);
    ag_feature_map_free(&h->map);
    memset(h, 0, sizeof *h);
}

void ag_approx_load_t(const ag_approx_head *h, const float *x, int is_key, size_t i0, size_t m,
                      float *xt, size_t ldx)
{
    const float sc = is_key ? h->kscale : h->qscale;
    for (size_t t = 0; t < h->d; t++) {
        const float c = is_key ? (float)h->mu[t] : 0.0f;
        float *restrict row = xt + t * ldx;
        for (size_t b = 0; b < m; b++) row[b] = sc * (x[(i0 + b) * h->ld + t] - c);
        for (size_t b = m; b < ldx; b++) row[b] = 0.0f;
    }
}

/* ---- workspace ------------------------------------------------------------------------- *
 * Per chunk of C rows (C a multiple of 16), everything is TRANSPOSED, [feature, C]: a column
 * is a row of the sequence, so 16 consecutive columns are a group and one 16-float vector
 * holds one quantity for the whole group. Rows past the sequence's end are zero (their V',
 * G and x columns), so they add nothing to any state. */

typedef struct {
    float *Mall;          /* [C/16][r][16] interleaved monomials of every group in the chunk */
    float *dM;            /* [r][16] one group's monomial gradient */
    float *SL;            /* [r][d+1][16] a state being summed, one partial per lane */
    float *S, *Sw;        /* [r][d+1] S' = sum_j psi_j [v_j, 1]^T and weight o S' */
    float *D, *Dw;        /* [r][d+1] D = sum_i m_i G_i^T and weight o D = dS' */
    float *Xq, *Xk;       /* [d][C] scaled rows (keys centred), zero past the end */
    float *dXq, *dXk;     /* [d][C] their gradients */
    float *VpT, *GT;      /* [d+1][C] V'^T = [v, 1]^T;  G^T = ([dO, -delta] / den)^T */
    float *NumT, *dvT;    /* [d+1][C] numerators; [d][C] the chunk's dv */
    float *T, *E, *dT;    /* [C][C] causal chunk scores, masked exp, score gradient */
    double *ksum;         /* [d] sum of dk' over the rows, for the centring's gradient */
    void *block;
} approx_ws;

static size_t pad16(size_t x)
{
    return (x + 15) / 16 * 16;
}

static size_t ws_floats(size_t d, size_t r, size_t C, int causal)
{
    size_t dv1 = d + 1;
    return C * r + LANES * r + LANES * r * dv1 + 4 * pad16(r * dv1) + 4 * d * C + 4 * dv1 * C +
           (causal ? 3 * C * C : 0) + 2 * pad16(d) /* ksum, as doubles */;
}

size_t ag_attn_approx_state_floats(size_t d_head, size_t rank, int causal)
{
    if (causal) return 0;
    if (d_head == SIZE_MAX || (rank && d_head + 1 > SIZE_MAX / rank)) return SIZE_MAX;
    return rank * (d_head + 1);
}

size_t ag_attn_approx_workspace_bytes(size_t d_head, size_t rank, int causal)
{
    if (d_head < 1 || d_head > 4096 || rank < 1 || rank > (size_t)INT32_MAX / LANES)
        return SIZE_MAX;
    size_t C = ag_approx_block_rows(rank, causal);
    if (rank > SIZE_MAX / 8 / (C + LANES * (d_head + 2) + 4 * (d_head + 1) + 16)) return SIZE_MAX;
    size_t bytes = ws_floats(d_head, rank, C, causal) * sizeof(float);
    /* the feature map (parent, var, weight) and its build scratch, pieces, the key mean */
    return bytes + rank * (4 + 4 + 4 + 4 + 8) + (size_t)AG_MAX_DEGREE * d_head * 16 +
           d_head * 8;
}

static ag_status ws_alloc(approx_ws *w, const ag_approx_head *h, ag_error *err)
{
    memset(w, 0, sizeof *w);
    size_t d = h->d, r = h->r, C = h->B, dv1 = d + 1;
    int causal = h->s->causal;
    size_t total = ws_floats(d, r, C, causal);
    if (posix_memalign(&w->block, 64, total * sizeof(float)) != 0) {
        w->block = NULL;
        return ag_error_set(err, AG_ERR_NOMEM, "", "out of memory for approximate attention "
                            "(%zu bytes)", total * sizeof(float));
    }
    float *p = w->block;
#define TAKE(ptr, count) do { (ptr) = p; p += pad16(count); } while (0)
    TAKE(w->Mall, C * r);
    TAKE(w->dM, LANES * r);
    TAKE(w->SL, LANES * r * dv1);
    TAKE(w->S, r * dv1);
    TAKE(w->Sw, r * dv1);
    TAKE(w->D, r * dv1);
    TAKE(w->Dw, r * dv1);
    TAKE(w->Xq, d * C);
    TAKE(w->Xk, d * C);
    TAKE(w->dXq, d * C);
    TAKE(w->dXk, d * C);
    TAKE(w->VpT, dv1 * C);
    TAKE(w->GT, dv1 * C);
    TAKE(w->NumT, dv1 * C);
    TAKE(w->dvT, d * C);
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

static void ws_free(approx_ws *w)
{
    free(w->block);
    memset(w, 0, sizeof *w);
}

static ag_status cancel_error(ag_error *err)
{
    return ag_error_set(err, AG_ERR_CANCELLED, "", "cancelled");
}

static void zero(float *x, size_t count)
{
    memset(x, 0, count * sizeof *x);
}

/* ---- group kernels --------------------------------------------------------------------- *
 * GCC/Clang vector extensions over 16 floats (one AVX-512 register; narrower targets split
 * it), loads and stores through memcpy (no alignment or aliasing assumptions), no vector
 * crossing a function boundary (no ABI dependence). No BLAS: every product here has one
 * dimension of d+1 (9 in the headline case), where BLAS spends more time packing than
 * multiplying. Lanes are rows, so the query side never reduces across lanes. */

typedef float v16 __attribute__((vector_size(64)));
#define VLOAD(v, p) memcpy(&(v), (p), sizeof(v16))
#define VSTORE(p, v) memcpy((p), &(v), sizeof(v16))

#define AG_INLINE static inline __attribute__((always_inline))

/* The kernels below take their short counts (groups per chunk, state columns) as constants
 * through a switch, so that GCC keeps every accumulator in a register. */
#define AG_DISPATCH16(n, call)                                                              \
    switch (n) {                                                                            \
    case 1: call(1); break;   case 2: call(2); break;   case 3: call(3); break;            \
    case 4: call(4); break;   case 5: call(5); break;   case 6: call(6); break;            \
    case 7: call(7); break;   case 8: call(8); break;   case 9: call(9); break;            \
    case 10: call(10); break; case 11: call(11); break; case 12: call(12); break;          \
    case 13: call(13); break; case 14: call(14); break; case 15: call(15); break;          \
    default: call(16); break;                                                               \
    }

/* sl[c] += sum_g Y_g[c] m[g], c < ncol: one monomial's state row (16 lanes per entry: the
 * lanes keep 16 partial sums; Y^T [ncol][ldy], group g at column 16 g). */
AG_INLINE void row_acc(float *restrict sl, const v16 *m, const size_t NG,
                       const float *restrict Yt, size_t ldy, size_t ncol)
{
    for (size_t c = 0; c < ncol; c++) {
        v16 acc, y;
        VLOAD(acc, sl + c * LANES);
        for (size_t g = 0; g < NG; g++) {
            VLOAD(y, Yt + c * ldy + g * LANES);
            acc += y * m[g];
        }
        VSTORE(sl + c * LANES, acc);
    }
}

/* The same for two monomials: each Y vector loaded feeds two FMAs, which makes the loop
 * FMA-bound instead of load-bound. NG <= 8 keeps 2 NG + 3 vectors in 32 registers. */
AG_INLINE void row_acc2(float *restrict sl0, float *restrict sl1, const v16 *m0, const v16 *m1,
                        const size_t NG, const float *restrict Yt, size_t ldy, size_t ncol)
{
    for (size_t c = 0; c < ncol; c++) {
        v16 acc0, acc1, y;
        VLOAD(acc0, sl0 + c * LANES);
        VLOAD(acc1, sl1 + c * LANES);
        for (size_t g = 0; g < NG; g++) {
            VLOAD(y, Yt + c * ldy + g * LANES);
            acc0 += y * m0[g];
            acc1 += y * m1[g];
        }
        VSTORE(sl0 + c * LANES, acc0);
        VSTORE(sl1 + c * LANES, acc1);
    }
}

/* SL[a][c] += sum_g Y_g[c] * M_g[a] over the NG groups of a chunk, every monomial read from
 * Mall [NG][r][16]. */
AG_INLINE void state_acc_n(float *restrict SL, const float *restrict Mall, const size_t NG,
                           const float *restrict Yt, size_t ldy, size_t ncol, size_t r)
{
    for (size_t a = 0; a < r; a++) {
        v16 m[AG_MAX_CHUNK_GROUPS];
        for (size_t g = 0; g < NG; g++) VLOAD(m[g], Mall + (g * r + a) * LANES);
        row_acc(SL + a * ncol * LANES, m, NG, Yt, ldy, ncol);
    }
}

/* The same for monomials [a0, a1), two at a time (row_acc2); NG <= 8. */
AG_INLINE void state_acc_pair_n(float *restrict SL, const float *restrict Mall, const size_t NG,
                                const float *restrict Yt, size_t ldy, size_t ncol, size_t r,
                                size_t a0, size_t a1)
{
    size_t a = a0;
    for (; a + 1 < a1; a += 2) {
        v16 m0[8], m1[8];
        for (size_t g = 0; g < NG; g++) {
            VLOAD(m0[g], Mall + (g * r + a) * LANES);
            VLOAD(m1[g], Mall + (g * r + a + 1) * LANES);
        }
        float *sl0 = SL + a * ncol * LANES;
        row_acc2(sl0, sl0 + ncol * LANES, m0, m1, NG, Yt, ldy, ncol);
    }
    if (a < a1) { /* an odd count: the last monomial alone */
        v16 m0[8];
        for (size_t g = 0; g < NG; g++) VLOAD(m0[g], Mall + (g * r + a) * LANES);
        row_acc(SL + a * ncol * LANES, m0, NG, Yt, ldy, ncol);
    }
}

/* The top degree's monomials (62% of them at d 8, g 5: no children) formed on the fly from
 * their parents, m = x_t m[src], two at a time, so that they are never stored and read back:
 * Mall then holds only the lower degrees (ag_monomials_group_partial). NG <= 8: x, m0, m1
 * and three more vectors fit 32 registers. */
AG_INLINE void state_acc_top_n(float *restrict SL, const float *restrict Mall, const size_t NG,
                               const float *restrict Yt, size_t ldy, size_t ncol, size_t r,
                               const ag_feature_map *map, const float *restrict xt, size_t ldx)
{
    for (size_t p = map->top_piece; p < map->npiece; p++) {
        const ag_mono_piece pc = map->piece[p];
        v16 x[8];
        for (size_t g = 0; g < NG; g++) VLOAD(x[g], xt + (size_t)pc.var * ldx + g * LANES);
        size_t i = 0;
        for (; i + 1 < pc.len; i += 2) {
            v16 m0[8], m1[8];
            for (size_t g = 0; g < NG; g++) {
                VLOAD(m0[g], Mall + (g * r + pc.src + i) * LANES);
                VLOAD(m1[g], Mall + (g * r + pc.src + i + 1) * LANES);
                m0[g] *= x[g];
                m1[g] *= x[g];
            }
            float *sl0 = SL + ((size_t)pc.dst + i) * ncol * LANES;
            row_acc2(sl0, sl0 + ncol * LANES, m0, m1, NG, Yt, ldy, ncol);
        }
        if (i < pc.len) {
            v16 m0[8];
            for (size_t g = 0; g < NG; g++) {
                VLOAD(m0[g], Mall + (g * r + pc.src + i) * LANES);
                m0[g] *= x[g];
            }
            row_acc(SL + ((size_t)pc.dst + i) * ncol * LANES, m0, NG, Yt, ldy, ncol);
        }
    }
}

/* SL += the chunk's monomials against Y^T. Up to 8 groups (the non-causal chunk of 128 rows)
 * the top degree is formed on the fly and Mall need only hold the lower degrees; more groups
 * (causal chunks) read every monomial from Mall. */
static void state_acc(float *restrict SL, const float *restrict Mall, size_t ng,
                      const float *restrict Yt, size_t ldy, size_t ncol, size_t r,
                      const ag_feature_map *map, const float *restrict xt, size_t ldx)
{
#define CALL(NG) state_acc_n(SL, Mall, NG, Yt, ldy, ncol, r)
#define CALL2(NG)                                                                           \
    do {                                                                                    \
        state_acc_pair_n(SL, Mall, NG, Yt, ldy, ncol, r, 0, map->deg_start[map->g]);        \
        state_acc_top_n(SL, Mall, NG, Yt, ldy, ncol, r, map, xt, ldx);                      \
    } while (0)
    switch (ng) {
    case 1: CALL2(1); break; case 2: CALL2(2); break; case 3: CALL2(3); break;
    case 4: CALL2(4); break; case 5: CALL2(5); break; case 6: CALL2(6); break;
    case 7: CALL2(7); break; case 8: CALL2(8); break;
    default: AG_DISPATCH16(ng, CALL) break;
    }
#undef CALL2
#undef CALL
}

/* S[a][c] = sum of the 16 lanes of SL[a][c]; Sw = weight o S. */
static void reduce_state(float *restrict S, float *restrict Sw, const float *restrict SL,
                         const float *restrict wt, size_t ncol, size_t r)
{
    for (size_t a = 0; a < r; a++)
        for (size_t c = 0; c < ncol; c++) {
            const float *l = SL + (a * ncol + c) * LANES;
            float t = 0;
            for (int i = 0; i < LANES; i++) t += l[i];
            S[a * ncol + c] = t;
            Sw[a * ncol + c] = wt[a] * t;
        }
}

/* outT[c0 + j][g] += sum_a M[a] S[a][c0 + j], j < NC (S row stride lds), one group: lanes are
 * the group's rows, so the result lands transposed with no reduction. */
AG_INLINE void group_dots_n(float *restrict outT, size_t ldo, const float *restrict M,
                            const float *restrict S, size_t lds, size_t c0, const size_t NC,
                            size_t r)
{
    v16 acc[16];
    for (size_t j = 0; j < NC; j++) acc[j] = (v16){0};
    for (size_t a = 0; a < r; a++) {
        v16 m;
        VLOAD(m, M + a * LANES);
        const float *s = S + a * lds + c0;
        for (size_t j = 0; j < NC; j++) acc[j] += m * s[j];
    }
    for (size_t j = 0; j < NC; j++) {
        v16 o;
        VLOAD(o, outT + (c0 + j) * ldo);
        o += acc[j];
        VSTORE(outT + (c0 + j) * ldo, o);
    }
}

static void group_dots(float *restrict outT, size_t ldo, const float *restrict M,
                       const float *restrict S, size_t lds, size_t ncol, size_t r)
{
    for (size_t c0 = 0; c0 < ncol; c0 += 16) {
        size_t nc = ncol - c0 < 16 ? ncol - c0 : 16;
#define CALL(NC) group_dots_n(outT, ldo, M, S, lds, c0, NC, r)
        AG_DISPATCH16(nc, CALL)
#undef CALL
    }
}

/* dM[a] (+)= sum_j Y[c0 + j] S[a][c0 + j], j < NC, one group (Y^T [ncol][ldy] at the group's
 * column); the first block of columns overwrites. */
AG_INLINE void group_expand_n(float *restrict dM, const float *restrict Yt, size_t ldy,
                              const float *restrict S, size_t lds, size_t c0, const size_t NC,
                              size_t r)
{
    v16 y[16];
    for (size_t j = 0; j < NC; j++) VLOAD(y[j], Yt + (c0 + j) * ldy);
    for (size_t a = 0; a < r; a++) {
        v16 acc = {0};
        if (c0 > 0) VLOAD(acc, dM + a * LANES);
        const float *s = S + a * lds + c0;
        for (size_t j = 0; j < NC; j++) acc += y[j] * s[j];
        VSTORE(dM + a * LANES, acc);
    }
}

static void group_expand(float *restrict dM, const float *restrict Yt, size_t ldy,
                         const float *restrict S, size_t ncol, size_t r)
{
    for (size_t c0 = 0; c0 < ncol; c0 += 16) {
        size_t nc = ncol - c0 < 16 ? ncol - c0 : 16;
#define CALL(NC) group_expand_n(dM, Yt, ldy, S, ncol, c0, NC, r)
        AG_DISPATCH16(nc, CALL)
#undef CALL
    }
}

/* ---- chunk helpers --------------------------------------------------------------------- */

void ag_approx_load_vp(const ag_approx_head *h, const float *v, size_t j0, size_t m, float *VpT)
{
    size_t d = h->d, C = h->B;
    for (size_t t = 0; t < d; t++) {
        float *row = VpT + t * C;
        for (size_t b = 0; b < m; b++) row[b] = v[(j0 + b) * h->ld + t];
        for (size_t b = m; b < C; b++) row[b] = 0.0f;
    }
    for (size_t b = 0; b < C; b++) VpT[d * C + b] = b < m ? 1.0f : 0.0f;
}

ag_status ag_approx_load_g(const ag_approx_head *h, const float *o, const float *row_stat,
                           const float *dout, size_t i0, size_t m, float *GT, ag_error *err)
{
    size_t d = h->d, C = h->B;
    for (size_t b = 0; b < C; b++) {
        if (b >= m) {
            for (size_t t = 0; t <= d; t++) GT[t * C + b] = 0.0f;
            continue;
        }
        const float *dO = dout + (i0 + b) * h->ld, *oi = o + (i0 + b) * h->ld;
        float den = row_stat[i0 + b];
        if (!(den > 0) || !isfinite(den))
            return ag_error_set(err, AG_ERR_INVALID, "attention", "row_stat[%zu] = %g is not "
                                "a positive denominator from the approximate forward", i0 + b,
                                (double)den);
        float inv = 1.0f / den, delta = 0;
        for (size_t t = 0; t < d; t++) {
            GT[t * C + b] = dO[t] * inv;
            delta += dO[t] * oi[t];
        }
        GT[d * C + b] = -delta * inv;
    }
    return AG_OK;
}

/* o rows i0.. = NumT[:d] / NumT[d]; row_stat = NumT[d]. */
static ag_status store_output(const ag_approx_head *h, const float *NumT, size_t i0, size_t m,
                              float *o, float *row_stat, ag_error *err)
{
    size_t d = h->d, C = h->B;
    for (size_t b = 0; b < m; b++) {
        float den = NumT[d * C + b];
        if (!(den > 0) || !isfinite(den))
            return ag_error_set(err, AG_ERR_UNREACHABLE, "method", "approximate softmax "
                                "denominator %g at row %zu is not positive: the polynomial's "
                                "error bound does not hold for these inputs", (double)den, i0 + b);
        float inv = 1.0f / den;
        float *oi = o + (i0 + b) * h->ld;
        for (size_t t = 0; t < d; t++) oi[t] = NumT[t * C + b] * inv;
        row_stat[i0 + b] = den;
    }
    return AG_OK;
}

/* x rows i0.. += scale * XT[:, b] (XT [d][C]); ksum (when not NULL) gathers the adds. */
static void add_rows_t(const ag_approx_head *h, float *x, size_t i0, size_t m, const float *XT,
                       float scale, double *ksum)
{
    size_t d = h->d, C = h->B;
    for (size_t b = 0; b < m; b++) {
        float *row = x + (i0 + b) * h->ld;
        for (size_t t = 0; t < d; t++) {
            float g = scale * XT[t * C + b];
            row[t] += g;
            if (ksum) ksum[t] += g;
        }
    }
}

/* dk_j -= mean_j(dk'_j): the gradient through k' = k - mean(k). */
static void uncentre(const ag_approx_head *h, float *dk, const double *ksum)
{
    float mean[64];
    for (size_t t0 = 0; t0 < h->d; t0 += 64) { /* rows outer: one pass over the view */
        size_t nt = h->d - t0 < 64 ? h->d - t0 : 64;
        for (size_t t = 0; t < nt; t++) mean[t] = (float)(ksum[t0 + t] / (double)h->n);
        for (size_t j = 0; j < h->n; j++) {
            float *row = dk + j * h->ld + t0;
            for (size_t t = 0; t < nt; t++) row[t] -= mean[t];
        }
    }
}

/* Causal chunk: E [m, m] (ld C) = masked e^{q^_i . k^_j}, j <= i, from Xq, Xk. */
static void chunk_exp(const ag_approx_head *h, approx_ws *w, size_t m)
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

/* The exact masked part of a causal chunk: with E = masked e^{T}, Num += E V', so
 * dT = E o (G V'^T), dq^ += dT k^, dk^ += dT^T q^, dv += E^T G[:, :d] (into dXq, dXk, dvT). */
static void chunk_grad(const ag_approx_head *h, approx_ws *w, size_t m)
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
                1.0f, w->dXq, C);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, d, mm, mm, 1.0f, w->Xq, C, w->dT, C,
                1.0f, w->dXk, C);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, d, mm, mm, 1.0f, w->GT, C, w->E, C,
                1.0f, w->dvT, C);
}

static size_t groups(size_t m)
{
    return (m + LANES - 1) / LANES;
}

/* SL += the chunk's rows of X (Xq or Xk, loaded) against Y^T (VpT or GT, loaded). */
static void chunk_into_state(const ag_approx_head *h, approx_ws *w, const float *X,
                             const float *Yt, size_t m)
{
    size_t ng = groups(m), r = h->r, C = h->B;
    size_t pieces = ng <= 8 ? h->map.top_piece : h->map.npiece; /* see state_acc */
    for (size_t g = 0; g < ng; g++)
        ag_monomials_group_partial(&h->map, X + g * LANES, C, w->Mall + g * r * LANES, pieces);
    state_acc(w->SL, w->Mall, ng, Yt, C, h->d + 1, r, &h->map, X, C);
}

/* ---- the top degree, fused ------------------------------------------------------------ *
 * The degree-g monomials (62% of them at d 8, g 5) have no children: where a consumer reads
 * each once, they are formed on the fly (v = x_t m[src]) and never stored. The lower degrees
 * come from ag_monomials_group_partial. NC = the state columns used, <= 16. */

/* outT[j][g] += sum_a m[a] S[a][j], j < NC, with m's top degree formed on the fly. */
AG_INLINE void fused_dots_n(const ag_feature_map *map, const float *restrict xt, size_t ldx,
                            const float *restrict M, const float *restrict S, size_t lds,
                            const size_t NC, float *restrict outT, size_t ldo)
{
    v16 acc[16];
    for (size_t j = 0; j < NC; j++) acc[j] = (v16){0};
    const size_t lo = map->deg_start[map->g];
    for (size_t a = 0; a < lo; a++) {
        v16 m;
        VLOAD(m, M + a * LANES);
        const float *s = S + a * lds;
        for (size_t j = 0; j < NC; j++) acc[j] += m * s[j];
    }
    for (size_t p = map->top_piece; p < map->npiece; p++) {
        const ag_mono_piece pc = map->piece[p];
        v16 x;
        VLOAD(x, xt + (size_t)pc.var * ldx);
        for (size_t i = 0; i < pc.len; i++) {
            v16 m;
            VLOAD(m, M + ((size_t)pc.src + i) * LANES);
            m *= x;
            const float *s = S + ((size_t)pc.dst + i) * lds;
            for (size_t j = 0; j < NC; j++) acc[j] += m * s[j];
        }
    }
    for (size_t j = 0; j < NC; j++) {
        v16 o;
        VLOAD(o, outT + j * ldo);
        o += acc[j];
        VSTORE(outT + j * ldo, o);
    }
}

/* One group's gradient through its monomials given dm[a] = sum_j Y[j] S[a][j] (j < NC,
 * Y^T [NC][ldy]): accumulates dxt. With ND > 0 also outT[j] += sum_a m[a] S[a][j], j < ND
 * (the keys' dv). The top degree's dm and m are formed on the fly; dM holds the lower ones. */
AG_INLINE void fused_grad_n(const ag_feature_map *map, const float *restrict xt, size_t ldx,
                            const float *restrict M, float *restrict dM,
                            const float *restrict Yt, size_t ldy, const float *restrict S,
                            const size_t NC, const size_t ND, float *restrict outT, size_t ldo,
                            float *restrict dxt, size_t lddx)
{
    v16 y[16], dv[16];
    for (size_t j = 0; j < NC; j++) VLOAD(y[j], Yt + j * ldy);
    for (size_t j = 0; j < ND; j++) dv[j] = (v16){0};
    const size_t lo = map->deg_start[map->g];
    for (size_t a = 0; a < lo; a++) {
        const float *s = S + a * NC;
        v16 acc = {0}, m;
        for (size_t j = 0; j < NC; j++) acc += y[j] * s[j];
        VSTORE(dM + a * LANES, acc);
        if (ND) {
            VLOAD(m, M + a * LANES);
            for (size_t j = 0; j < ND; j++) dv[j] += m * s[j];
        }
    }
    for (size_t p = map->top_piece; p < map->npiece; p++) {
        const ag_mono_piece pc = map->piece[p];
        v16 x, acc = {0}, dx;
        VLOAD(x, xt + (size_t)pc.var * ldx);
        const float *mpar = M + (size_t)pc.src * LANES;
        float *dpar = dM + (size_t)pc.src * LANES;
        for (size_t i = 0; i < pc.len; i++) {
            const float *s = S + ((size_t)pc.dst + i) * NC;
            v16 dc = {0}, mp, dp;
            for (size_t j = 0; j < NC; j++) dc += y[j] * s[j];
            VLOAD(mp, mpar + i * LANES);
            VLOAD(dp, dpar + i * LANES);
            acc += dc * mp;
            dp += x * dc;
            VSTORE(dpar + i * LANES, dp);
            if (ND) {
                v16 m = mp * x;
                for (size_t j = 0; j < ND; j++) dv[j] += m * s[j];
            }
        }
        VLOAD(dx, dxt + (size_t)pc.var * lddx);
        dx += acc;
        VSTORE(dxt + (size_t)pc.var * lddx, dx);
    }
    ag_monomials_group_vjp_partial(map, xt, ldx, M, dM, dxt, lddx, map->top_piece);
    for (size_t j = 0; j < ND; j++) {
        v16 o;
        VLOAD(o, outT + j * ldo);
        o += dv[j];
        VSTORE(outT + j * ldo, o);
    }
}

/* Forward queries of one group: NumT columns += phi . Sw (all d+1 state columns). */
static void group_query_out(const ag_approx_head *h, approx_ws *w, size_t g)
{
    size_t C = h->B, dv1 = h->d + 1;
    const float *xt = w->Xq + g * LANES;
    float *out = w->NumT + g * LANES;
    if (dv1 > 16) {
        ag_monomials_group(&h->map, xt, C, w->Mall);
        group_dots(out, C, w->Mall, w->Sw, dv1, dv1, h->r);
        return;
    }
    ag_monomials_group_partial(&h->map, xt, C, w->Mall, h->map.top_piece);
#define CALL(NC) fused_dots_n(&h->map, xt, C, w->Mall, w->Sw, dv1, NC, out, C)
    AG_DISPATCH16(dv1, CALL)
#undef CALL
}

/* dXq += VJP of phi for the chunk's queries: dm = weight o dPhi = G Sw^T per row. */
static void chunk_queries_grad(const ag_approx_head *h, approx_ws *w, size_t m)
{
    size_t r = h->r, C = h->B, dv1 = h->d + 1;
    for (size_t g = 0; g < groups(m); g++) {
        const float *xt = w->Xq + g * LANES, *yt = w->GT + g * LANES;
        float *dxt = w->dXq + g * LANES;
        if (dv1 > 16) {
            ag_monomials_group(&h->map, xt, C, w->Mall);
            group_expand(w->dM, yt, C, w->Sw, dv1, r);
            ag_monomials_group_vjp(&h->map, xt, C, w->Mall, w->dM, dxt, C);
            continue;
        }
        ag_monomials_group_partial(&h->map, xt, C, w->Mall, h->map.top_piece);
#define CALL(NC) fused_grad_n(&h->map, xt, C, w->Mall, w->dM, yt, C, w->Sw, NC, 0, NULL, C, dxt, C)
        AG_DISPATCH16(dv1, CALL)
#undef CALL
    }
}

/* For the chunk's keys, with dS' = Dw: dvT += (Psi dS'[:, :d])^T, dXk += VJP of psi given
 * dPsi = dS' V'. */
static void chunk_keys_grad(const ag_approx_head *h, approx_ws *w, size_t m)
{
    size_t r = h->r, C = h->B, d = h->d, dv1 = d + 1;
    for (size_t g = 0; g < groups(m); g++) {
        const float *xt = w->Xk + g * LANES, *yt = w->VpT + g * LANES;
        float *dxt = w->dXk + g * LANES, *out = w->dvT + g * LANES;
        if (dv1 > 16) {
            ag_monomials_group(&h->map, xt, C, w->Mall);
            group_dots(out, C, w->Mall, w->Dw, dv1, d, r);
            group_expand(w->dM, yt, C, w->Dw, dv1, r);
            ag_monomials_group_vjp(&h->map, xt, C, w->Mall, w->dM, dxt, C);
            continue;
        }
        ag_monomials_group_partial(&h->map, xt, C, w->Mall, h->map.top_piece);
#define CALL(NC) fused_grad_n(&h->map, xt, C, w->Mall, w->dM, yt, C, w->Dw, NC, NC - 1, out, C, dxt, C)
        AG_DISPATCH16(dv1, CALL)
#undef CALL
    }
}

/* dv rows i0.. += dvT columns. */
static void add_dv(const ag_approx_head *h, float *dv, size_t i0, size_t m, const float *dvT)
{
    add_rows_t(h, dv, i0, m, dvT, 1.0f, NULL);
}

/* ---- forward --------------------------------------------------------------------------- */

static ag_status forward_run(const ag_approx_head *h, approx_ws *w, const float *q,
                             const float *k, const float *v, float *o, float *row_stat,
                             float *state, ag_error *err)
{
    size_t n = h->n, C = h->B, r = h->r, dv1 = h->d + 1;
    int causal = h->s->causal;
    ag_status st;
    zero(w->SL, LANES * r * dv1);
    zero(w->S, r * dv1);
    zero(w->Sw, r * dv1);
    if (!causal) {
        for (size_t j0 = 0; j0 < n; j0 += C) {
            if (ag_attn_cancelled(h->s)) return cancel_error(err);
            size_t m = n - j0 < C ? n - j0 : C;
            ag_approx_load_t(h, k, 1, j0, m, w->Xk, C);
            ag_approx_load_vp(h, v, j0, m, w->VpT);
            chunk_into_state(h, w, w->Xk, w->VpT, m);
        }
        reduce_state(w->S, w->Sw, w->SL, h->map.weight, dv1, r);
        if (state) memcpy(state, w->S, r * dv1 * sizeof *state);
    }
    for (size_t i0 = 0; i0 < n; i0 += C) {
        if (ag_attn_cancelled(h->s)) return cancel_error(err);
        size_t m = n - i0 < C ? n - i0 : C;
        ag_approx_load_t(h, q, 0, i0, m, w->Xq, C);
        if (causal) { /* the exact masked part of the chunk, then the prefix state */
            ag_approx_load_t(h, k, 1, i0, m, w->Xk, C);
            ag_approx_load_vp(h, v, i0, m, w->VpT);
            chunk_exp(h, w, m);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)dv1, (int)m, (int)m, 1.0f,
                        w->VpT, (int)C, w->E, (int)C, 0.0f, w->NumT, (int)C);
        } else {
            zero(w->NumT, dv1 * C);
        }
        for (size_t g = 0; g < groups(m); g++) group_query_out(h, w, g);
        st = store_output(h, w->NumT, i0, m, o, row_stat, err);
        if (st != AG_OK) return st;
        if (causal) {
            chunk_into_state(h, w, w->Xk, w->VpT, m);
            reduce_state(w->S, w->Sw, w->SL, h->map.weight, dv1, r);
        }
    }
    return AG_OK;
}

ag_status ag_attn_approx_forward(const ag_attn_shape *s, const ag_head_plan *plan,
                                 const float *q, const float *k, const float *v, float *o,
                                 float *row_stat, float *state, ag_error *err)
{
    if (!v || !o || !row_stat)
        return ag_error_set(err, AG_ERR_INVALID, "attention", "NULL argument");
    ag_approx_head h;
    ag_status st = ag_approx_head_init(&h, s, plan, q, k, err);
    if (st != AG_OK) return st;
    approx_ws w;
    st = ws_alloc(&w, &h, err);
    if (st == AG_OK) st = forward_run(&h, &w, q, k, v, o, row_stat, state, err);
    ws_free(&w);
    ag_approx_head_free(&h);
    return st;
}

/* ---- backward, route features ---------------------------------------------------------- */

/* Loads the chunk's Xq, Xk, V'^T, G^T and zeroes its gradient buffers. */
static ag_status load_chunk(const ag_approx_head *h, approx_ws *w, const float *q,
                            const float *k, const float *v, const float *o,
                            const float *row_stat, const float *dout, size_t i0, size_t m,
                            ag_error *err)
{
    size_t C = h->B, d = h->d;
    ag_approx_load_t(h, q, 0, i0, m, w->Xq, C);
    ag_approx_load_t(h, k, 1, i0, m, w->Xk, C);
    ag_approx_load_vp(h, v, i0, m, w->VpT);
    zero(w->dXq, d * C);
    zero(w->dXk, d * C);
    zero(w->dvT, d * C);
    return ag_approx_load_g(h, o, row_stat, dout, i0, m, w->GT, err);
}

/* Adds the chunk's gradient buffers into dq, dk, dv. */
static void store_chunk_grads(const ag_approx_head *h, approx_ws *w, size_t i0, size_t m,
                              float *dq, float *dk, float *dv)
{
    add_rows_t(h, dq, i0, m, w->dXq, h->qscale, NULL);
    add_rows_t(h, dk, i0, m, w->dXk, h->kscale, w->ksum);
    add_dv(h, dv, i0, m, w->dvT);
}

static ag_status backward_noncausal(const ag_approx_head *h, approx_ws *w, const float *q,
                                    const float *k, const float *v, const float *o,
                                    const float *row_stat, const float *state,
                                    const float *dout, float *dq, float *dk, float *dv,
                                    ag_error *err)
{
    size_t n = h->n, C = h->B, r = h->r, dv1 = h->d + 1;
    ag_status st;
    /* pass 1: the state S' (keys; the forward's when it kept it), then D = sum_i m_i G_i^T
     * (queries), one lane buffer */
    if (state) {
        memcpy(w->S, state, r * dv1 * sizeof *state);
        for (size_t a = 0; a < r; a++)
            for (size_t c = 0; c < dv1; c++)
                w->Sw[a * dv1 + c] = h->map.weight[a] * w->S[a * dv1 + c];
    }
    for (int which = state ? 1 : 0; which < 2; which++) {
        zero(w->SL, LANES * r * dv1);
        for (size_t i0 = 0; i0 < n; i0 += C) {
            if (ag_attn_cancelled(h->s)) return cancel_error(err);
            size_t m = n - i0 < C ? n - i0 : C;
            if (which == 0) {
                ag_approx_load_t(h, k, 1, i0, m, w->Xk, C);
                ag_approx_load_vp(h, v, i0, m, w->VpT);
                chunk_into_state(h, w, w->Xk, w->VpT, m);
            } else {
                ag_approx_load_t(h, q, 0, i0, m, w->Xq, C);
                st = ag_approx_load_g(h, o, row_stat, dout, i0, m, w->GT, err);
                if (st != AG_OK) return st;
                chunk_into_state(h, w, w->Xq, w->GT, m);
            }
        }
        if (which == 0) reduce_state(w->S, w->Sw, w->SL, h->map.weight, dv1, r);
        else reduce_state(w->D, w->Dw, w->SL, h->map.weight, dv1, r);
    }
    /* pass 2: every row's feature gradient through the tree */
    for (size_t i0 = 0; i0 < n; i0 += C) {
        if (ag_attn_cancelled(h->s)) return cancel_error(err);
        size_t m = n - i0 < C ? n - i0 : C;
        st = load_chunk(h, w, q, k, v, o, row_stat, dout, i0, m, err);
        if (st != AG_OK) return st;
        chunk_queries_grad(h, w, m);
        chunk_keys_grad(h, w, m);
        store_chunk_grads(h, w, i0, m, dq, dk, dv);
    }
    uncentre(h, dk, w->ksum);
    return AG_OK;
}

static ag_status backward_causal(const ag_approx_head *h, approx_ws *w, const float *q,
                                 const float *k, const float *v, const float *o,
                                 const float *row_stat, const float *dout, float *dq, float *dk,
                                 float *dv, ag_error *err)
{
    size_t n = h->n, C = h->B, r = h->r, dv1 = h->d + 1;
    ag_status st;
    /* sweep A, chunks in order: the exact in-chunk part; the prefix state S' -> dq */
    zero(w->SL, LANES * r * dv1);
    zero(w->S, r * dv1);
    zero(w->Sw, r * dv1);
    for (size_t i0 = 0; i0 < n; i0 += C) {
        if (ag_attn_cancelled(h->s)) return cancel_error(err);
        size_t m = n - i0 < C ? n - i0 : C;
        st = load_chunk(h, w, q, k, v, o, row_stat, dout, i0, m, err);
        if (st != AG_OK) return st;
        chunk_grad(h, w, m);
        chunk_queries_grad(h, w, m);
        store_chunk_grads(h, w, i0, m, dq, dk, dv);
        chunk_into_state(h, w, w->Xk, w->VpT, m);
        reduce_state(w->S, w->Sw, w->SL, h->map.weight, dv1, r);
    }
    /* sweep B, chunks in reverse: the suffix D (queries after the chunk) -> dk, dv */
    zero(w->SL, LANES * r * dv1);
    zero(w->D, r * dv1);
    zero(w->Dw, r * dv1);
    for (size_t c = (n + C - 1) / C; c-- > 0;) {
        size_t i0 = c * C;
        if (ag_attn_cancelled(h->s)) return cancel_error(err);
        size_t m = n - i0 < C ? n - i0 : C;
        st = load_chunk(h, w, q, k, v, o, row_stat, dout, i0, m, err);
        if (st != AG_OK) return st;
        chunk_keys_grad(h, w, m);
        zero(w->dXq, h->d * C); /* only dk and dv come from this sweep */
        store_chunk_grads(h, w, i0, m, dq, dk, dv);
        chunk_into_state(h, w, w->Xq, w->GT, m);
        reduce_state(w->D, w->Dw, w->SL, h->map.weight, dv1, r);
    }
    uncentre(h, dk, w->ksum);
    return AG_OK;
}

ag_status ag_attn_approx_backward(const ag_attn_shape *s, const ag_head_plan *plan,
                                  const float *q, const float *k, const float *v,
                                  const float *o, const float *row_stat, const float *state,
                                  const float *dout, float *dq, float *dk, float *dv,
                                  ag_error *err)
{
    if (!plan || !v || !o || !row_stat || !dout || !dq || !dk || !dv)
        return ag_error_set(err, AG_ERR_INVALID, "attention", "NULL argument");
    if (plan->report.route == AG_ROUTE_PAPER)
        return ag_attn_approx_backward_paper(s, plan, q, k, v, o, row_stat, dout, dq, dk, dv, err);
    ag_approx_head h;
    ag_status st = ag_approx_head_init(&h, s, plan, q, k, err);
    if (st != AG_OK) return st;
    approx_ws w;
    st = ws_alloc(&w, &h, err);
    if (st == AG_OK)
        st = s->causal ? backward_causal(&h, &w, q, k, v, o, row_stat, dout, dq, dk, dv, err)
                       : backward_noncausal(&h, &w, q, k, v, o, row_stat, state, dout, dq, dk,
                                            dv, err);
    ws_free(&w);
    ag_approx_head_free(&h);
    return st;
}
