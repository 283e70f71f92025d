/* Polynomial approximation of e^x on [-R, R] in the monomial basis, with a rigorous a-priori
 * bound on the relative error max |p(x) - e^x| / e^x, plus the float32 rounding model of the
 * low-rank kernels that evaluate p through monomial features (docs/paper_notes.md, "The
 * float32 limit").
 *
 * Chebyshev (default): interpolation of e^x at the g+1 Chebyshev-Gauss nodes of [-R, R]; its
 * coefficients are computed from the Chebyshev series of e^{Rt} (2 I_j(R), modified Bessel)
 * folded by aliasing, so every coefficient has full relative accuracy even where the
 * interpolant's high coefficients are tiny. Bound: the relative error on a grid plus a
 * derivative term (Markov's inequality on the Chebyshev expansion of the error) that covers
 * the points between grid nodes.
 * Taylor: the degree-g Taylor polynomial at 0. Bound: the Hermite-Genocchi form of the
 * remainder with convexity of exp, R^{g+1} ((g+1) e^R + 1) / ((g+2) (g+1)!), exact at x = -R
 * up to a factor (g+1)/(g+2).
 */
#ifndef ALTGRAD_POLY_H
#define ALTGRAD_POLY_H

#include <stddef.h>

#include "altgrad.h"

/* Scores bounds above this have no useful float32 approximation at any degree (the rounding
 * term u e^{2R} alone exceeds 1); ag_poly_* refuse them instead of overflowing. */
#define AG_POLY_MAX_R 30.0

/* Unit roundoff of float32, 2^-24. */
#define AG_FLOAT_U 5.9604644775390625e-08

/* coef[0..degree] (monomial basis, p(x) = sum coef[k] x^k) of the approximation of e^x on
 * [-R, R]. degree 1..AG_MAX_DEGREE, 0 <= R <= AG_POLY_MAX_R (R below 1e-3 is fitted on
 * [-1e-3, 1e-3], which covers it). Returns 0, or -1 on a bad argument (coef untouched). */
int ag_poly_fit(ag_poly kind, int degree, double R, double *coef);

/* Rigorous bound on max_{|x| <= R} |p(x) - e^x| / e^x for the p of ag_poly_fit (exact
 * arithmetic, plus a margin for the double rounding of the check itself). Same argument
 * rules; returns +inf on a bad argument. */
double ag_poly_rel_bound(ag_poly kind, int degree, double R);

/* sum_k |coef[k]| R^k: the size of the terms that cancel when p is formed at x = -R. */
double ag_poly_abs_sum(const double *coef, int degree, double R);

/* Model of the float32 rounding error of the low-rank kernels, relative to e^x: an entry
 * phi(q) . psi(k) is a sum in graded order whose terms (total size ag_poly_abs_sum ~ e^|x|)
 * cancel down to e^x, and the states are summed over n keys. Random-rounding (statistical,
 * not worst-case) model, see poly.c; it grows like u e^{2R} times a modest factor, and the
 * measured errors stay under half of it (tests/unit/test_features.c and
 * test_attention_approx.c check it). +inf when R > AG_POLY_MAX_R or on a bad argument. */
double ag_poly_float_bound(const double *coef, int degree, double R, size_t d_head, size_t n);

/* C(d + g, g), the number of monomials of degree <= g in d variables; SIZE_MAX on overflow. */
size_t ag_poly_rank(size_t d, int g);

/* Horner evaluation of sum coef[k] x^k in double. */
double ag_poly_eval(const double *coef, int degree, double x);

#endif
