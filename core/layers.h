/* Per-layer forward/backward pairs of the dense parts of the model (llm.c style).
 *
 * Every function works on `rows` independent rows (rows = tokens of any number of sequences),
 * row-major float32. Forward functions overwrite their output; backward functions ACCUMULATE
 * (+=) into every gradient they are given (dx, dW, db, dgamma, dbeta), so callers zero them
 * once and may split the rows into chunks. A NULL gradient pointer skips that gradient.
 * No function allocates; none fails.
 */
#ifndef ALTGRAD_LAYERS_H
#define ALTGRAD_LAYERS_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define AG_LN_EPS 1e-5f

/* ---- fast exp ------------------------------------------------------------------------- */

/* e^x in float32 with relative error < 2e-7 for x in [-87, 88]; 0 for x < -87 (and -inf),
 * saturates at e^88 above. Branch-free so that GCC vectorises loops calling it (the libm
 * expf call is not vectorised without -ffast-math, and exp is a third of attention's time).
 * Cody-Waite reduction x = k ln2 + r, |r| <= ln2/2, then Cephes' degree-6 polynomial. */
static inline float ag_expf(float x)
{
    const float hi = 88.0f, lo = -87.0f;
    /* written as (a < b ? a : b) so that each clamp is one vminps / vmaxps */
    float xc = x < hi ? x : hi;
    xc = xc > lo ? xc : lo;
    /* round(x log2 e) via the 1.5*2^23 shifter: the integer lands in the low mantissa bits */
    const float shifter = 12582912.0f;
    float t = __builtin_fmaf(xc, 1.44269504088896341f, shifter);
    float kf = t - shifter;
    float r = __builtin_fmaf(kf, -0.693359375f, xc);
    r = __builtin_fmaf(kf, 2.12194440e-4f, r);
    float p = 1.9875691500e-4f;
    p = __builtin_fmaf(p, r, 1.3981999507e-3f);
    p = __builtin_fmaf(p, r, 8.3334519073e-3f);
    p = __builtin_fmaf(p, r, 4.1665795894e-2f);
    p = __builtin_fmaf(p, r, 1.6666665459e-1f);
    p = __builtin_fmaf(p, r, 5.0000001201e-1f);
    p = __builtin_fmaf(p, r * r, r + 1.0f);
    int32_t tb;
    memcpy(&tb, &t, sizeof tb);
    /* the low 23 bits of t hold k + 2^22; k in [-126, 127] so k + 127 is a normal exponent */
    int32_t k = (tb & 0x7fffff) - 0x400000;
    int32_t eb = (k + 127) << 23;
    float scale;
    memcpy(&scale, &eb, sizeof scale);
    float y = p * scale;
    return x < lo ? 0.0f : y;
}

/* 2^x in float32 with relative error < 2e-7 for x in [-126, 127]; 0 for x < -126 (and -inf),
 * saturates at 2^127 above. The attention kernels score in base 2 (log2 e folded into the
 * GEMM's alpha) because 2^x needs no Cody-Waite reduction: r = x - round(x) is exact. */
static inline float ag_exp2f(float x)
{
    const float hi = 127.0f, lo = -126.0f;
    float xc = x < hi ? x : hi;
    xc = xc > lo ? xc : lo;
    const float shifter = 12582912.0f; /* 1.5 * 2^23: t's low mantissa bits hold round(x) */
    float t = xc + shifter;
    float r = xc - (t - shifter);
    /* Cephes exp2f polynomial for 2^r on [-1/2, 1/2] */
    float p = 1.535336188319500e-4f;
    p = __builtin_fmaf(p, r, 1.339887440266574e-3f);
    p = __builtin_fmaf(p, r, 9.618437357674640e-3f);
    p = __builtin_fmaf(p, r, 5.550332471162809e-2f);
    p = __builtin_fmaf(p, r, 2.402264791363012e-1f);
    p = __builtin_fmaf(p, r, 6.931472028550421e-1f);
    p = __builtin_fmaf(p, r, 1.0f);
    int32_t tb;
    memcpy(&tb, &t, sizeof tb);
    int32_t eb = (tb - 0x4b400000 + 127) << 23; /* tb = bits(1.5 * 2^23) + round(x) */
    float scale;
    memcpy(&scale, &eb, sizeof scale);
    float y = p * scale;
    return x < lo ? 0.0f : y;
}

/* ---- linear: y = x @ W + b ------------------------------------------------------------ */
/* x [rows, d_in], W [d_in, d_out], b [d_out] or NULL, y [rows, d_out]. */
void ag_linear_forward(float *y, const float *x, const float *w, const float *b, size_t rows,
                       size_t d_in, size_t d_out);
/* dy [rows, d_out] -> dx [rows, d_in] +=, dw [d_in, d_out] +=, db [d_out] +=. Any of dx, dw,
 * db may be NULL. */
void ag_linear_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                        const float *w, size_t rows, size_t d_in, size_t d_out);

/* ---- layernorm (eps AG_LN_EPS): y = (x - mean) * rstd * gamma + beta ------------------ */
/* x, y [rows, d]; gamma, beta [d]; caches mean [rows], rstd [rows] for the backward. */
void ag_layernorm_forward(float *y, float *mean, float *rstd, const float *x,
                          const float *gamma, const float *beta, size_t rows, size_t d);
/* dy [rows, d] -> dx +=, dgamma +=, dbeta += (each may be NULL), using the forward's cache. */
void ag_layernorm_backward(float *dx, float *dgamma, float *dbeta, const float *dy,
                           const float *x, const float *mean, const float *rstd,
                           const float *gamma, size_t rows, size_t d);

/* ---- activations, elementwise over count values ---------------------------------------- */
/* GELU, tanh form (GPT-2): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). y may alias x. */
void ag_gelu_forward(float *y, const float *x, size_t count);
/* dx += dy * gelu'(x). */
void ag_gelu_backward(float *dx, const float *dy, const float *x, size_t count);
/* y = max(x, 0). y may alias x. */
void ag_relu_forward(float *y, const float *x, size_t count);
/* dx += dy * [x > 0]. */
void ag_relu_backward(float *dx, const float *dy, const float *x, size_t count);

/* ---- residual: y = a + b --------------------------------------------------------------- */
/* a, b, y [count]; y may alias a or b. The backward is dy added to both branches, which
 * callers do by accumulating into the same buffer; ag_residual_backward is that +=. */
void ag_residual_forward(float *y, const float *a, const float *b, size_t count);
/* da += dy. */
void ag_residual_backward(float *da, const float *dy, size_t count);

#endif
