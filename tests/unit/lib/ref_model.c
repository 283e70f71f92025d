/* Double precision reference model; see ref_model.h. Written for clarity, not speed. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ref_model.h"

static void *xmalloc(size_t bytes)
{
    void *p = malloc(bytes ? bytes : 1);
    if (!p) {
        fprintf(stderr, "ref_model: out of memory\n");
        abort();
    }
    return p;
}

static double *dalloc(size_t count)
{
    double *p = xmalloc(count * sizeof *p);
    memset(p, 0, count * sizeof *p);
    return p;
}

void ref_params_from_float(const ag_model_config *cfg, const ag_layer_params *src,
                           ref_params *dst)
{
    for (int i = 0; i < AG_P_COUNT; i++) {
        size_t count = ag_param_numel(cfg, i);
        dst->p[i] = count ? ref_widen(src->p[i], count) : NULL;
    }
}

void ref_params_free(ref_params *p)
{
    if (!p) return;
    for (int i = 0; i < AG_P_COUNT; i++) {
        free(p->p[i]);
        p->p[i] = NULL;
    }
}

double ref_uniform(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (double)(z >> 11) / 4503599627370496.0 - 1.0; /* 53 bits -> [0, 2) - 1 */
}

void ref_fill(float *a, size_t count, double scale, uint64_t *state)
{
    for (size_t i = 0; i < count; i++) a[i] = (float)(scale * ref_uniform(state));
}

double *ref_widen(const float *a, size_t count)
{
    double *d = dalloc(count);
    for (size_t i = 0; i < count; i++) d[i] = a[i];
    return d;
}

/* ---- attention --------------------------------------------------------------------------- */

/* P = softmax(scale q k^T + mask), full n x n. */
static double *attention_probs(size_t n, size_t d, size_t ld, int causal, double scale,
                               const double *q, const double *k)
{
    double *P = dalloc(n * n);
    for (size_t i = 0; i < n; i++) {
        size_t visible = causal ? i + 1 : n;
        double mx = -INFINITY;
        for (size_t j = 0; j < visible; j++) {
            double s = 0;
            for (size_t t = 0; t < d; t++) s += q[i * ld + t] * k[j * ld + t];
            P[i * n + j] = scale * s;
            if (P[i * n + j] > mx) mx = P[i * n + j];
        }
        double sum = 0;
        for (size_t j = 0; j < visible; j++) {
            P[i * n + j] = exp(P[i * n + j] - mx);
            sum += P[i * n + j];
        }
        for (size_t j = 0; j < n; j++) P[i * n + j] = j < visible ? P[i * n + j] / sum : 0.0;
    }
    return P;
}

void ref_attention_forward(size_t n, size_t d, size_t ld, int causal, double scale,
                           const double *q, const double *k, const double *v, double *out)
{
    double *P = attention_probs(n, d, ld, causal, scale, q, k);
    for (size_t i = 0; i < n; i++)
        for (size_t t = 0; t < d; t++) {
            double s = 0;
            for (size_t j = 0; j < n; j++) s += P[i * n + j] * v[j * ld + t];
            out[i * ld + t] = s;
        }
    free(P);
}

/* dV = P^T dO;  dP = dO V^T;  dS_ij = P_ij (dP_ij - sum_l P_il dP_il);  dQ = c dS K;
 * dK = c dS^T Q. */
void ref_attention_backward(size_t n, size_t d, size_t ld, int causal, double scale,
                            const double *q, const double *k, const double *v,
                            const double *dout, double *dq, double *dk, double *dv)
{
    double *P = attention_probs(n, d, ld, causal, scale, q, k);
    double *dS = dalloc(n * n);
    for (size_t i = 0; i < n; i++) {
        double rowdot = 0;
        for (size_t j = 0; j < n; j++) {
            double dp = 0;
            for (size_t t = 0; t < d; t++) dp += dout[i * ld + t] * v[j * ld + t];
            dS[i * n + j] = dp;
            rowdot += P[i * n + j] * dp;
        }
        for (size_t j = 0; j < n; j++) dS[i * n + j] = P[i * n + j] * (dS[i * n + j] - rowdot);
    }
    for (size_t i = 0; i < n; i++)
        for (size_t t = 0; t < d; t++) {
            double a = 0, b = 0, c = 0;
            for (size_t j = 0; j < n; j++) {
                a += dS[i * n + j] * k[j * ld + t];
                b += dS[j * n + i] * q[j * ld + t];
                c += P[j * n + i] * dout[j * ld + t];
            }
            dq[i * ld + t] = scale * a;
            dk[i * ld + t] = scale * b;
            dv[i * ld + t] = c;
        }
    free(P);
    free(dS);
}

/* ---- the model ----------------------------------------------------------------------------- */

void ref_linear(double *y, const double *x, const double *w, const double *b, size_t rows,
                   size_t din, size_t dout)
{
    for (size_t i = 0; i < rows; i++)
        for (size_t j = 0; j < dout; j++) {
            double s = b ? b[j] : 0.0;
            for (size_t t = 0; t < din; t++) s += x[i * din + t] * w[t * dout + j];
            y[i * dout + j] = s;
        }
}

void ref_layernorm(double *y, const double *x, const double *gamma, const double *beta,
                      size_t rows, size_t d)
{
    for (size_t i = 0; i < rows; i++) {
        double mean = 0, var = 0;
        for (size_t j = 0; j < d; j++) mean += x[i * d + j];
        mean /= (double)d;
        for (size_t j = 0; j < d; j++) var += (x[i * d + j] - mean) * (x[i * d + j] - mean);
        var /= (double)d;
        double rstd = 1.0 / sqrt(var + 1e-5);
        for (size_t j = 0; j < d; j++)
            y[i * d + j] = (x[i * d + j] - mean) * rstd * gamma[j] + beta[j];
    }
}

double ref_activation(ag_activation act, double x)
{
    if (act == AG_ACT_RELU) return x > 0 ? x : 0;
    return 0.5 * x * (1.0 + tanh(sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
}

/* One layer on one sequence: x [n, dm] -> y [n, dm]. */
static void layer_forward(const ag_model_config *cfg, const ref_params *L, const double *x,
                          size_t n, double *y)
{
    const size_t dm = (size_t)cfg->d_model, H = (size_t)cfg->n_heads, dh = dm / H;
    const size_t ff = (size_t)cfg->d_ff;
    const int ln = cfg->norm == AG_NORM_LAYERNORM;
    double *a = dalloc(n * dm), *Q = dalloc(n * dm), *K = dalloc(n * dm), *V = dalloc(n * dm);
    double *ctx = dalloc(n * dm), *h = dalloc(n * dm);

    if (ln) ref_layernorm(a, x, L->p[AG_P_LN1_GAMMA], L->p[AG_P_LN1_BETA], n, dm);
    else memcpy(a, x, n * dm * sizeof *a);
    ref_linear(Q, a, L->p[AG_P_WQ], NULL, n, dm, dm);
    ref_linear(K, a, L->p[AG_P_WK], NULL, n, dm, dm);
    ref_linear(V, a, L->p[AG_P_WV], NULL, n, dm, dm);
    for (size_t hd = 0; hd < H; hd++)
        ref_attention_forward(n, dh, dm, cfg->causal, 1.0 / sqrt((double)dh), Q + hd * dh,
                              K + hd * dh, V + hd * dh, ctx + hd * dh);
    ref_linear(h, ctx, L->p[AG_P_WO], NULL, n, dm, dm);
    if (cfg->residual)
        for (size_t i = 0; i < n * dm; i++) h[i] += x[i];

    if (ff == 0) {
        memcpy(y, h, n * dm * sizeof *y);
    } else {
        double *u = dalloc(n * dm), *z = dalloc(n * ff);
        if (ln) ref_layernorm(u, h, L->p[AG_P_LN2_GAMMA], L->p[AG_P_LN2_BETA], n, dm);
        else memcpy(u, h, n * dm * sizeof *u);
        ref_linear(z, u, L->p[AG_P_W1], L->p[AG_P_B1], n, dm, ff);
        for (size_t i = 0; i < n * ff; i++) z[i] = ref_activation(cfg->activation, z[i]);
        ref_linear(y, z, L->p[AG_P_W2], L->p[AG_P_B2], n, ff, dm);
        if (cfg->residual)
            for (size_t i = 0; i < n * dm; i++) y[i] += h[i];
        free(u);
        free(z);
    }
    free(a);
    free(Q);
    free(K);
    free(V);
    free(ctx);
    free(h);
}

double ref_model_loss(const ag_model_config *cfg, const ref_params *layers, const double *x,
                      size_t batch, size_t n, ag_loss_kind kind, const double *loss_tensor,
                      double *y)
{
    const size_t dm = (size_t)cfg->d_model, per = n * dm;
    double *cur = dalloc(per), *next = dalloc(per);
    double loss = 0;
    for (size_t b = 0; b < batch; b++) {
        memcpy(cur, x + b * per, per * sizeof *cur);
        for (int l = 0; l < cfg->n_layers; l++) {
            layer_forward(cfg, &layers[l], cur, n, next);
            double *t = cur;
            cur = next;
            next = t;
        }
        if (y) memcpy(y + b * per, cur, per * sizeof *cur);
        for (size_t i = 0; i < per; i++) {
            double out = cur[i];
            switch (kind) {
            case AG_LOSS_MSE: {
                double diff = out - loss_tensor[b * per + i];
                loss += diff * diff;
                break;
            }
            case AG_LOSS_SUM: loss += out; break;
            case AG_LOSS_GRAD_OUTPUT: loss += loss_tensor[b * per + i] * out; break;
            }
        }
    }
    if (kind == AG_LOSS_MSE) loss /= (double)(batch * per);
    free(cur);
    free(next);
    return loss;
}

void ref_model_fd(const ag_model_config *cfg, const ref_params *layers, const double *x,
                  size_t batch, size_t n, ag_loss_kind kind, const double *loss_tensor,
                  double *target, size_t count, double h, double *grad)
{
    for (size_t i = 0; i < count; i++) {
        double keep = target[i];
        target[i] = keep + h;
        double up = ref_model_loss(cfg, layers, x, batch, n, kind, loss_tensor, NULL);
        target[i] = keep - h;
        double down = ref_model_loss(cfg, layers, x, batch, n, kind, loss_tensor, NULL);
        target[i] = keep;
        grad[i] = (up - down) / (2 * h);
    }
}

double ref_rel_error(const float *a, const double *b, size_t count)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < count; i++) {
        double d = (double)a[i] - b[i];
        num += d * d;
        den += b[i] * b[i];
    }
    return sqrt(num) / (den > 0 ? sqrt(den) : 1e-300);
}
