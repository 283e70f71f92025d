/* A naive, obviously-correct DOUBLE precision reference of the altgrad model (docs/api.md),
 * for tests only: straight loops, full n x n score matrices, no blocking, no BLAS. Gradients
 * come from central finite differences of ref_model_loss (or, for one attention head, from
 * ref_attention_backward, the textbook formulas on full matrices).
 *
 * Every function here allocates what it needs with malloc and aborts on allocation failure
 * (tests use tiny sizes). Arrays are row-major.
 */
#ifndef ALTGRAD_TEST_REF_MODEL_H
#define ALTGRAD_TEST_REF_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "../../../core/altgrad.h"

/* One layer's parameters in double; p[i] is NULL when the config does not use parameter i. */
typedef struct {
    double *p[AG_P_COUNT];
} ref_params;

/* Allocates dst with a double copy of every parameter cfg uses in src. */
void ref_params_from_float(const ag_model_config *cfg, const ag_layer_params *src,
                           ref_params *dst);
/* Frees what ref_params_from_float allocated; NULL-safe. */
void ref_params_free(ref_params *p);

/* Deterministic uniform numbers in [-1, 1) (splitmix64); *state is the seed and advances. */
double ref_uniform(uint64_t *state);
/* a[i] = scale * ref_uniform(state) for count floats. */
void ref_fill(float *a, size_t count, double scale, uint64_t *state);
/* Widens count floats into a new malloc'd double array. */
double *ref_widen(const float *a, size_t count);

/* The dense layers, exactly as docs/api.md defines them. */
/* y [rows, dout] = x [rows, din] @ w [din, dout] (+ b [dout] when b != NULL) */
void ref_linear(double *y, const double *x, const double *w, const double *b, size_t rows,
                size_t din, size_t dout);
/* y = (x - mean) / sqrt(var + 1e-5) * gamma + beta per row of [rows, d]. */
void ref_layernorm(double *y, const double *x, const double *gamma, const double *beta,
                   size_t rows, size_t d);
/* GELU (tanh form) or ReLU of one value. */
double ref_activation(ag_activation act, double x);

/* One attention head on [n, ld] views (d columns used): out = softmax(scale q k^T [+ causal
 * mask]) v, written into the out view. */
void ref_attention_forward(size_t n, size_t d, size_t ld, int causal, double scale,
                           const double *q, const double *k, const double *v, double *out);
/* Gradients of <dout, out> with respect to q, k, v (views as above), OVERWRITTEN. */
void ref_attention_backward(size_t n, size_t d, size_t ld, int causal, double scale,
                            const double *q, const double *k, const double *v,
                            const double *dout, double *dq, double *dk, double *dv);

/* The whole model on x [batch, n, d_model]. Returns the scalar whose gradient ag_gradients
 * computes: the mse or sum loss, or for AG_LOSS_GRAD_OUTPUT sum(loss_tensor o y) (its gradient
 * is the vector-Jacobian product). y (may be NULL) receives the output [batch, n, d_model]. */
double ref_model_loss(const ag_model_config *cfg, const ref_params *layers, const double *x,
                      size_t batch, size_t n, ag_loss_kind kind, const double *loss_tensor,
                      double *y);

/* Central differences of ref_model_loss with respect to each of the count doubles at target
 * (a parameter array inside layers, or x itself): grad[i] = (L(t_i + h) - L(t_i - h)) / 2h.
 * target is restored. */
void ref_model_fd(const ag_model_config *cfg, const ref_params *layers, const double *x,
                  size_t batch, size_t n, ag_loss_kind kind, const double *loss_tensor,
                  double *target, size_t count, double h, double *grad);

/* Relative Frobenius error |a - b| / max(|b|, tiny) of a float array against a double one. */
double ref_rel_error(const float *a, const double *b, size_t count);

#endif
