#include <math.h>
#include <stdlib.h>

#include "head_case.h"

double urand(unsigned long long *s)
{
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return (double)(*s >> 11) / 9007199254740992.0 * 2 - 1;
}

float *view_alloc(size_t n, size_t ld)
{
    float *x = malloc(n * ld * sizeof *x);
    for (size_t i = 0; i < n * ld; i++) x[i] = SENTINEL;
    return x;
}

void head_make(head *h, size_t n, size_t d, int causal, double R, unsigned long long seed)
{
    h->n = n;
    h->d = d;
    h->ld = d + 3;
    h->causal = causal;
    h->q = view_alloc(n, h->ld);
    h->k = view_alloc(n, h->ld);
    h->v = view_alloc(n, h->ld);
    h->dout = view_alloc(n, h->ld);
    unsigned long long s = seed;
    for (size_t i = 0; i < n; i++)
        for (size_t t = 0; t < d; t++) {
            h->q[i * h->ld + t] = (float)urand(&s);
            h->k[i * h->ld + t] = (float)(urand(&s) + 0.6 + 0.1 * t);
            h->v[i * h->ld + t] = (float)urand(&s);
            h->dout[i * h->ld + t] = (float)urand(&s);
        }
    h->s = (ag_attn_shape){.n = n, .d_head = d, .ld = h->ld, .causal = causal,
                           .scale = (float)(1 / sqrt((double)d)), .cancel = NULL};
    double R0 = ag_attn_score_bound(&h->s, h->q, h->k);
    float f = R0 > 0 ? (float)sqrt(R / R0) : 1.0f; /* one token: R0 = 0 */
    for (size_t i = 0; i < n; i++)
        for (size_t t = 0; t < d; t++) {
            h->q[i * h->ld + t] *= f;
            h->k[i * h->ld + t] *= f;
        }
}

void head_free(head *h)
{
    free(h->q);
    free(h->k);
    free(h->v);
    free(h->dout);
}

double *to_double(const float *x, size_t n, size_t d, size_t ld)
{
    double *y = malloc(n * d * sizeof *y);
    for (size_t i = 0; i < n; i++)
        for (size_t t = 0; t < d; t++) y[i * d + t] = x[i * ld + t];
    return y;
}
