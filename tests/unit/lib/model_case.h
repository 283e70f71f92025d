/* Random whole-model cases for the approximation tests (test_approx_model, test_paper_model):
 * a model with the headline weight scaling, its input and a random upstream gradient, run
 * through ag_gradients, and the error measures both suites compare with. */
#ifndef ALTGRAD_TEST_MODEL_CASE_H
#define ALTGRAD_TEST_MODEL_CASE_H

#include <stddef.h>
#include <stdint.h>

#include "../../../core/altgrad.h"

typedef struct {
    ag_model_config cfg;
    ag_layer_params *layers;
    float *input, *grad_out;
    size_t batch, n;
    ag_loss loss;
} mcase;

/* Non-zero when AG_TEST_VERBOSE is set (the suites then print their measured ratios). */
int mcase_verbose(void);

/* Random model (attention weights scaled by wscale / sqrt(d_model), so that the score bound R
 * after centring is about 1 for wscale 1), input [batch, n, d_model] and grad_output loss.
 * Aborts the test (ck_assert) on allocation failure. Free with mcase_free. */
void mcase_make(mcase *m, ag_model_config cfg, size_t batch, size_t n, double wscale,
                uint64_t seed);
void mcase_free(mcase *m);

/* ag_gradients on the case with 2 threads and the output; res as ag_gradients fills it. */
ag_status mcase_run(const mcase *m, const ag_method *method, ag_result *res, ag_error *err);

/* Largest relative error over grad_input and every weight gradient of a against b; *which
 * names where it is. */
double worst_grad_error(const mcase *m, const ag_result *a, const ag_result *b,
                        const char **which);

/* Largest per-head error_bound of a result. */
double max_bound(const ag_result *r);

#endif
