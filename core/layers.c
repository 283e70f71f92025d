/* Dense layers: linear, layernorm, GELU, ReLU, residual; forward/backward pairs.
 * Sizes passed to BLAS must fit in int; ag_gradients checks that before calling in. */
#include <cblas.h>
#include <math.h>

#include "layers.h"

/* x [rows, d_in] @ w [d_in, d_out] + b [d_out] -> y [rows, d_out] */
void ag_linear_forward(float *y, const float *x, const float *w, const float *b, size_t rows,
                       size_t d_in, size_t d_out)
{
    if (rows == 0) return;
    float beta = 0.0f;
    if (b) {
        for (size_t i = 0; i < rows; i++) memcpy(y + i * d_out, b, d_out * sizeof *y);
        beta = 1.0f;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows, (int)d_out, (int)d_in,
                1.0f, x, (int)d_in, w, (int)d_out, beta, y, (int)d_out);
}

/* dx += dy w^T;  dw += x^T dy;  db += sum over rows of dy */
void ag_linear_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                        const float *w, size_t rows, size_t d_in, size_t d_out)
{
    if (rows == 0) return;
    if (dx)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)d_in, (int)d_out,
                    1.0f, dy, (int)d_out, w, (int)d_out, 1.0f, dx, (int)d_in);
    if (dw)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)d_in, (int)d_out, (int)rows,
                    1.0f, x, (int)d_in, dy, (int)d_out, 1.0f, dw, (int)d_out);
    if (db)
        for (size_t i = 0; i < rows; i++) {
            const float *row = dy + i * d_out;
            for (size_t j = 0; j < d_out; j++) db[j] += row[j];
        }
}

/* x, y [rows, d]; gamma, beta [d]; mean, rstd [rows] */
void ag_layernorm_forward(float *y, float *mean, float *rstd, const float *x,
                          const float *gamma, const float *beta, size_t rows, size_t d)
{
    for (size_t i = 0; i < rows; i++) {
        const float *xi = x + i * d;
        float *yi = y + i * d;
        /* statistics in double, two passes: residual streams drift, and a row with a large
         * offset and a small spread loses its digits in a float sum (cost: 2d flops/row) */
        double md = 0;
        for (size_t j = 0; j < d; j++) md += xi[j];
        md /= (double)d;
        double vd = 0;
        for (size_t j = 0; j < d; j++) vd += ((double)xi[j] - md) * ((double)xi[j] - md);
        vd /= (double)d;
        float m = (float)md, v = (float)vd;
        float s = 1.0f / sqrtf(v + AG_LN_EPS);
        for (size_t j = 0; j < d; j++) yi[j] = (xi[j] - m) * s * gamma[j] + beta[j];
        mean[i] = m;
        rstd[i] = s;
    }
}

/* With u = (x - mean) rstd and g = gamma o dy:
 * dx += rstd (g - mean(g) - u mean(g o u));  dgamma += u o dy;  dbeta += dy */
void ag_layernorm_backward(float *dx, float *dgamma, float *dbeta, const float *dy,
                           const float *x, const float *mean, const float *rstd,
                           const float *gamma, size_t rows, size_t d)
{
    for (size_t i = 0; i < rows; i++) {
        const float *xi = x + i * d, *dyi = dy + i * d;
        const float m = mean[i], s = rstd[i];
        float gm = 0, gum = 0;
        for (size_t j = 0; j < d; j++) {
            float u = (xi[j] - m) * s, g = gamma[j] * dyi[j];
            gm += g;
            gum += g * u;
        }
        gm /= (float)d;
        gum /= (float)d;
        if (dx)
            for (size_t j = 0; j < d; j++)
                dx[i * d + j] += s * (gamma[j] * dyi[j] - gm - (xi[j] - m) * s * gum);
        if (dgamma)
            for (size_t j = 0; j < d; j++) dgamma[j] += (xi[j] - m) * s * dyi[j];
        if (dbeta)
            for (size_t j = 0; j < d; j++) dbeta[j] += dyi[j];
    }
}

/* GELU (tanh form) rewritten without tanh: 0.5 (1 + tanh(u)) = 1 / (1 + e^{-2u}), which keeps
 * full relative precision for negative x and vectorises through ag_expf. */
#define GELU_K0 0.7978845608028654f /* sqrt(2/pi) */
#define GELU_K1 0.044715f

void ag_gelu_forward(float *y, const float *x, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        float v = x[i];
        float u = GELU_K0 * (v + GELU_K1 * v * v * v);
        y[i] = v / (1.0f + ag_expf(-2.0f * u));
    }
}

/* gelu'(x) = s + x s (1 - s) 2 u'(x), s = sigmoid(2u), u' = K0 (1 + 3 K1 x^2) */
void ag_gelu_backward(float *dx, const float *dy, const float *x, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        float v = x[i];
        float u = GELU_K0 * (v + GELU_K1 * v * v * v);
        float s = 1.0f / (1.0f + ag_expf(-2.0f * u));
        float du = GELU_K0 * (1.0f + 3.0f * GELU_K1 * v * v);
        dx[i] += dy[i] * (s + v * s * (1.0f - s) * 2.0f * du);
    }
}

void ag_relu_forward(float *y, const float *x, size_t count)
{
    for (size_t i = 0; i < count; i++) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

void ag_relu_backward(float *dx, const float *dy, const float *x, size_t count)
{
    for (size_t i = 0; i < count; i++) dx[i] += x[i] > 0.0f ? dy[i] : 0.0f;
}

void ag_residual_forward(float *y, const float *a, const float *b, size_t count)
{
    for (size_t i = 0; i < count; i++) y[i] = a[i] + b[i];
}

void ag_residual_backward(float *da, const float *dy, size_t count)
{
    for (size_t i = 0; i < count; i++) da[i] += dy[i];
}
