/* Monomial feature maps: the colex tree, one row's monomials and their VJP (feature_map.h).
 *
 * Shapes (a group of 16 rows, interleaved; each entry below is a 16-float vector, one lane a
 * row): xt [d] (rows of a strided [d, ldx] block), m, dm [r], dxt [d].
 * Forward:  m[0] = 1; for each piece (degree k = 1..g, largest coordinate t = 0..d-1):
 *           m[dst + i] = x_t m[src + i], src = start of degree k-1, len = #degree-(k-1)
 *           monomials with largest coordinate <= t = C(t + k - 1, k - 1).
 * Backward: pieces in reverse (children before parents):
 *           dm[src + i] += x_t dm[dst + i];   dx_t += sum_i dm[dst + i] m[src + i]
 */
/* -std=c11 turns GCC's floating-point contraction off; the kernels here want a * b + c as one
 * FMA (faster, and one rounding fewer). Clang contracts within expressions by default. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=fast")
#endif
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "feature_map.h"
#include "poly.h"

enum { LANES = 16 };

ag_status ag_feature_map_init(ag_feature_map *map, size_t d, int g, const double *coef,
                              size_t max_rank, ag_error *err)
{
    memset(map, 0, sizeof *map);
    if (d < 1 || g < 1 || g > AG_MAX_DEGREE || !coef)
        return ag_error_set(err, AG_ERR_INVALID, "method", "feature map: bad d=%zu or g=%d", d, g);
    size_t r = ag_poly_rank(d, g);
    if (r > max_rank || r > (size_t)INT32_MAX / LANES || d > (size_t)INT32_MAX)
        return ag_error_set(err, AG_ERR_INVALID, "method",
                            "feature map: rank %zu over the limit %zu", r, max_rank);
    map->parent = malloc(r * sizeof *map->parent);
    map->var = malloc(r * sizeof *map->var);
    map->weight = malloc(r * sizeof *map->weight);
    map->piece = malloc((size_t)g * d * sizeof *map->piece);
    int32_t *run = malloc(r * sizeof *run);    /* multiplicity of var[a] in monomial a */
    double *multi = malloc(r * sizeof *multi); /* |alpha|! / alpha! */
    if (!map->parent || !map->var || !map->weight || !map->piece || !run || !multi) {
        free(run);
        free(multi);
        ag_feature_map_free(map);
        return ag_error_set(err, AG_ERR_NOMEM, "", "out of memory for a feature map of rank %zu", r);
    }
    map->d = d;
    map->g = g;
    map->r = r;
    map->parent[0] = -1;
    map->var[0] = -1;
    run[0] = 0;
    multi[0] = 1;
    map->deg_start[0] = 0;
    map->deg_start[1] = 1;
    size_t next = 1;
    for (int k = 1; k <= g; k++) {
        size_t prev = map->deg_start[k - 1], prev_end = map->deg_start[k];
        size_t len = 0; /* degree-(k-1) monomials with largest coordinate <= t */
        for (size_t t = 0; t < d; t++) {
            while (prev + len < prev_end && (map->var[prev + len] <= (int32_t)t)) len++;
            map->piece[map->npiece++] = (ag_mono_piece){(uint32_t)next, (uint32_t)prev,
                                                        (uint32_t)len, (uint32_t)t};
            for (size_t i = 0; i < len; i++) {
                size_t p = prev + i, a = next + i;
                int32_t cnt = map->var[p] == (int32_t)t ? run[p] + 1 : 1;
                map->parent[a] = (int32_t)p;
                map->var[a] = (int32_t)t;
                run[a] = cnt;
                multi[a] = multi[p] * k / cnt; /* k!/alpha! from (k-1)!/alpha_parent! */
            }
            next += len;
        }
        map->deg_start[k + 1] = next;
    }
    map->top_piece = map->npiece - d;
    for (int k = 0; k <= g; k++)
        for (size_t a = map->deg_start[k]; a < map->deg_start[k + 1]; a++)
            map->weight[a] = (float)(coef[k] * multi[a]);
    free(run);
    free(multi);
    return AG_OK;
}

void ag_feature_map_free(ag_feature_map *map)
{
    if (!map) return;
    free(map->parent);
    free(map->var);
    free(map->weight);
    free(map->piece);
    memset(map, 0, sizeof *map);
}

typedef float v16 __attribute__((vector_size(64)));
#define VLOAD(v, p) memcpy(&(v), (p), sizeof(v16))
#define VSTORE(p, v) memcpy((p), &(v), sizeof(v16))

void ag_monomials_group_partial(const ag_feature_map *map, const float *xt, size_t ldx,
                                float *m, size_t npiece)
{
    v16 one = (v16){0} + 1.0f;
    VSTORE(m, one);
    for (size_t p = 0; p < npiece; p++) {
        const ag_mono_piece pc = map->piece[p];
        v16 x;
        VLOAD(x, xt + (size_t)pc.var * ldx);
        float *dst = m + (size_t)pc.dst * LANES;
        const float *src = m + (size_t)pc.src * LANES;
        for (size_t i = 0; i < pc.len; i++) {
            v16 v;
            VLOAD(v, src + i * LANES);
            v *= x;
            VSTORE(dst + i * LANES, v);
        }
    }
}

void ag_monomials_group(const ag_feature_map *map, const float *xt, size_t ldx, float *m)
{
    ag_monomials_group_partial(map, xt, ldx, m, map->npiece);
}

void ag_monomials_group_vjp_partial(const ag_feature_map *map, const float *xt, size_t ldx,
                                    const float *m, float *dm, float *dxt, size_t lddx,
                                    size_t npiece)
{
    for (size_t p = npiece; p-- > 0;) {
        const ag_mono_piece pc = map->piece[p];
        v16 x, acc = {0}, dx;
        VLOAD(x, xt + (size_t)pc.var * ldx);
        const float *dchild = dm + (size_t)pc.dst * LANES, *mpar = m + (size_t)pc.src * LANES;
        float *dpar = dm + (size_t)pc.src * LANES;
        for (size_t i = 0; i < pc.len; i++) {
            v16 dc, mp, dp;
            VLOAD(dc, dchild + i * LANES);
            VLOAD(mp, mpar + i * LANES);
            VLOAD(dp, dpar + i * LANES);
            acc += dc * mp;
            dp += x * dc;
            VSTORE(dpar + i * LANES, dp);
        }
        VLOAD(dx, dxt + (size_t)pc.var * lddx);
        dx += acc;
        VSTORE(dxt + (size_t)pc.var * lddx, dx);
    }
}

void ag_monomials_group_vjp(const ag_feature_map *map, const float *xt, size_t ldx,
                            const float *m, float *dm, float *dxt, size_t lddx)
{
    ag_monomials_group_vjp_partial(map, xt, ldx, m, dm, dxt, lddx, map->npiece);
}
