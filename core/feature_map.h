/* Monomial feature maps of the polynomial low-rank attention (docs/paper_notes.md, "The
 * low-rank construction").
 *
 * For p(x) = sum_k a_k x^k and vectors q, k in R^d:
 *   p(q . k) = sum_{|alpha| <= g} phi(q)_alpha psi(k)_alpha,
 *   phi(q)_alpha = weight_alpha q^alpha,  weight_alpha = a_|alpha| |alpha|! / alpha!
 *   psi(k)_alpha = k^alpha                (pure monomials)
 * over all multi-indices |alpha| <= g: rank r = C(d+g, g).
 *
 * Order: graded, and within a degree colexicographic (by the largest coordinate, then the
 * rest). Every monomial of degree k >= 1 is its parent (the monomial without one copy of its
 * largest coordinate t) times x_t: a tree. Colex makes the children of x_t one CONTIGUOUS run:
 * the degree-k monomials whose largest coordinate is t are x_t times the prefix of the
 * degree-(k-1) list whose largest coordinate is <= t. So a row's monomials are g * d scaled
 * copies of contiguous runs ("pieces"), vectorised, and so is the VJP.
 *
 * Rows are processed in groups of AG_GROUP = 16, INTERLEAVED: m[a * 16 + b] is monomial a of
 * row b, so one 16-float vector holds one monomial of the whole group and every tree step is a
 * single vector multiply (no per-run loop tails, no horizontal reductions downstream).
 */
#ifndef ALTGRAD_FEATURE_MAP_H
#define ALTGRAD_FEATURE_MAP_H

#include <stddef.h>
#include <stdint.h>

#include "altgrad.h"

/* One run of the tree: m[dst + i] = x[var] * m[src + i], i < len. */
typedef struct {
    uint32_t dst, src, len, var;
} ag_mono_piece;

typedef struct {
    size_t d;        /* variables */
    int g;           /* degree */
    size_t r;        /* monomials, C(d+g, g) */
    int32_t *parent; /* [r]; parent[0] = -1 */
    int32_t *var;    /* [r]; the coordinate that multiplies the parent; var[0] = -1 */
    float *weight;   /* [r]; a_|alpha| |alpha|! / alpha! */
    ag_mono_piece *piece; /* [npiece] in generation order (parents before children) */
    size_t npiece;
    size_t top_piece; /* pieces [top_piece, npiece) make the top degree g: no children */
    size_t deg_start[AG_MAX_DEGREE + 2]; /* degree k is [deg_start[k], deg_start[k+1]) */
} ag_feature_map;

/* Builds the map for d variables and degree g (1..AG_MAX_DEGREE) with p's monomial
 * coefficients coef[0..g]. AG_ERR_INVALID on bad arguments or a rank above max_rank (checked
 * before allocating), AG_ERR_NOMEM on allocation failure; on failure map is left empty. Free
 * with ag_feature_map_free. */
ag_status ag_feature_map_init(ag_feature_map *map, size_t d, int g, const double *coef,
                              size_t max_rank, ag_error *err);

/* Frees what init allocated; NULL-safe; leaves map zeroed. */
void ag_feature_map_free(ag_feature_map *map);

#define AG_GROUP 16

/* m [r, 16] = the pure monomials x^alpha (psi) of the 16 rows of a group, interleaved; row b
 * of the group is column b of xt [d, ldx] (xt[t * ldx + b]). m must not alias xt. */
void ag_monomials_group(const ag_feature_map *map, const float *xt, size_t ldx, float *m);

/* Only pieces [0, npiece) of ag_monomials_group (npiece = map->top_piece: every degree below
 * g, for callers that form the top degree on the fly). */
void ag_monomials_group_partial(const ag_feature_map *map, const float *xt, size_t ldx,
                                float *m, size_t npiece);

/* The reverse sweep of ag_monomials_group_vjp over pieces [0, npiece) only: the caller has
 * already pushed the gradients of the later pieces' monomials into dm and dxt. */
void ag_monomials_group_vjp_partial(const ag_feature_map *map, const float *xt, size_t ldx,
                                    const float *m, float *dm, float *dxt, size_t lddx,
                                    size_t npiece);

/* VJP of ag_monomials_group: given dm [r, 16] = dL/dm (DESTROYED: the reverse sweep
 * accumulates into it) and m from ag_monomials_group(xt), accumulates dxt [d, ldx] +=
 * dL/dxt over the group's 16 columns. For phi, pass dm = weight o dL/dphi. */
void ag_monomials_group_vjp(const ag_feature_map *map, const float *xt, size_t ldx,
                            const float *m, float *dm, float *dxt, size_t lddx);

#endif
