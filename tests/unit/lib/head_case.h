/* Random single-head attention cases for the approximation kernel suites
 * (test_attention_approx, test_attention_paper): strided views with sentinels beyond the
 * head's columns, scaled to a chosen score bound. */
#ifndef ALTGRAD_TEST_HEAD_CASE_H
#define ALTGRAD_TEST_HEAD_CASE_H

#include <stddef.h>

#include "../../../core/attention.h"

#define SENTINEL 12345.0f

typedef struct {
    size_t n, d, ld;
    int causal;
    float *q, *k, *v, *dout; /* [n, ld] with sentinels beyond column d */
    ag_attn_shape s;
} head;

/* Uniform in [-1, 1) from the LCG state *s. */
double urand(unsigned long long *s);
/* [n, ld] floats, every one SENTINEL. */
float *view_alloc(size_t n, size_t ld);
/* Random head (ld = d + 3) whose score bound after centring is R; the keys carry an offset so
 * that the centring has work to do. Free with head_free. */
void head_make(head *h, size_t n, size_t d, int causal, double R, unsigned long long seed);
void head_free(head *h);
/* The d columns of a view as a malloc'd contiguous double [n, d]. */
double *to_double(const float *x, size_t n, size_t d, size_t ld);

#endif
