/* Polynomial approximation of e^x on [-R, R] and its error bounds (see poly.h).
 *
 * Chebyshev interpolation, with t = x / R in [-1, 1]:
 *   e^{Rt} = sum_j b_j T_j(t),   b_0 = I_0(R),  b_j = 2 I_j(R)
 *   at the zeros x_k of T_N (N = g+1), T_{2mN +- l}(x_k) = (-1)^m T_l(x_k), so the interpolant
 *   p = sum_{l<N} beta_l T_l has  beta_l = b_l + sum_{m>=1} (-1)^m (b_{2mN-l} + b_{2mN+l})
 *   (for l = 0 the pair collapses to the single b_{2mN}). Every beta_l is a sum of terms of
 *   one magnitude, so it keeps full relative accuracy; a DCT of samples would not (its
 *   absolute error 1e-16 swamps beta_g ~ (R/2)^g / g! for small R).
 * Error E(t) = p(t) - e^{Rt} = sum_j e_j T_j(t) with e_j = beta_j - b_j (j <= g), -b_j (j > g).
 *   r(x) = E(x/R) e^{-x};  |dr/dx| <= (sum j^2 |e_j| / R + sum |e_j|) e^R =: L  (Markov:
 *   |T_j'| <= j^2 on [-1, 1]). Grid of spacing h: sup |r| <= max_grid |r| + L h / 2.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>

#include "poly.h"

enum { BESSEL_J = 200 }; /* b_j for j <= BESSEL_J; the rest is bounded analytically */

static const double R_MIN_FIT = 1e-3;

static double fit_radius(double R)
{
    return R < R_MIN_FIT ? R_MIN_FIT : R;
}

static int bad_args(int degree, double R)
{
    return degree < 1 || degree > AG_MAX_DEGREE || !(R >= 0) || R > AG_POLY_MAX_R;
}

/* b[j] = Chebyshev coefficients of e^{Rt}, j = 0..BESSEL_J. Series
 * I_j(R) = sum_m (R/2)^{2m+j} / (m! (m+j)!), summed until the terms stop mattering. */
static void cheb_series(double R, double b[BESSEL_J + 1])
{
    double h = R / 2, h2 = h * h, lead = 1; /* lead = h^j / j! */
    for (int j = 0; j <= BESSEL_J; j++) {
        if (j > 0) lead *= h / j;
        double term = lead, sum = 0;
        for (int m = 0; m < 400 && term > 0; m++) {
            sum += term;
            if (term < sum * 1e-18) break;
            term *= h2 / ((double)(m + 1) * (double)(m + 1 + j));
        }
        b[j] = j == 0 ? sum : 2 * sum;
    }
}

/* Bound on sum_{j > BESSEL_J} (1 + j^2) |b_j|, from I_j(R) <= (R/2)^j / j! e^{R^2/(4(j+1))}
 * and a ratio test (consecutive terms shrink by at least half once j > R). */
static double cheb_tail(double R)
{
    int j = BESSEL_J + 1;
    double logt = j * log(R / 2 + 1e-300) - lgamma(j + 1.0) + R * R / (4.0 * (j + 1));
    return 2 * 2 * (1 + (double)j * j) * exp(logt) * 2; /* 2 I_j, geometric factor 2, j^2 growth */
}

/* Coefficients of T_0..T_g in the monomial basis, exact in double for g <= 20. */
static void cheb_monomials(int g, double T[AG_MAX_DEGREE + 1][AG_MAX_DEGREE + 1])
{
    for (int l = 0; l <= g; l++)
        for (int k = 0; k <= g; k++) T[l][k] = 0;
    T[0][0] = 1;
    if (g >= 1) T[1][1] = 1;
    for (int l = 2; l <= g; l++) /* T_l = 2t T_{l-1} - T_{l-2} */
        for (int k = 0; k <= l; k++)
            T[l][k] = (k > 0 ? 2 * T[l - 1][k - 1] : 0) - T[l - 2][k];
}

/* Interpolant in the Chebyshev basis: beta[0..g] from b (see the top of the file). */
static void cheb_interp(int g, const double b[BESSEL_J + 1], double beta[AG_MAX_DEGREE + 1])
{
    int N = g + 1;
    for (int l = 0; l <= g; l++) {
        double s = b[l];
        for (int m = 1; 2 * m * N - l <= BESSEL_J; m++) {
            double sign = (m & 1) ? -1 : 1;
            double pair = b[2 * m * N - l];
            if (l > 0 && 2 * m * N + l <= BESSEL_J) pair += b[2 * m * N + l];
            s += sign * pair;
        }
        beta[l] = s;
    }
}

static int fit_chebyshev(int g, double R, double *coef)
{
    double b[BESSEL_J + 1], beta[AG_MAX_DEGREE + 1], T[AG_MAX_DEGREE + 1][AG_MAX_DEGREE + 1];
    cheb_series(R, b);
    cheb_interp(g, b, beta);
    cheb_monomials(g, T);
    double scale = 1; /* 1 / R^k */
    for (int k = 0; k <= g; k++) {
        double s = 0;
        for (int l = k; l <= g; l++) s += beta[l] * T[l][k];
        coef[k] = s * scale;
        scale /= R;
    }
    return 0;
}

static int fit_taylor(int g, double *coef)
{
    double f = 1;
    for (int k = 0; k <= g; k++) {
        if (k > 0) f /= k;
        coef[k] = f;
    }
    return 0;
}

int ag_poly_fit(ag_poly kind, int degree, double R, double *coef)
{
    if (bad_args(degree, R) || !coef) return -1;
    for (int k = degree + 1; k <= AG_MAX_DEGREE; k++) coef[k] = 0;
    if (kind == AG_POLY_TAYLOR) return fit_taylor(degree, coef);
    if (kind != AG_POLY_CHEBYSHEV) return -1;
    return fit_chebyshev(degree, fit_radius(R), coef);
}

double ag_poly_eval(const double *coef, int degree, double x)
{
    double p = coef[degree];
    for (int k = degree - 1; k >= 0; k--) p = p * x + coef[k];
    return p;
}

double ag_poly_abs_sum(const double *coef, int degree, double R)
{
    double s = 0, xk = 1;
    for (int k = 0; k <= degree; k++) {
        s += fabs(coef[k]) * xk;
        xk *= R;
    }
    return s;
}

/* What the double evaluation of r(x) = p(x) e^{-x} - 1 may be off by: Horner's gamma_{2g}
 * on terms of size abs_sum, times e^{-x} <= e^R, plus exp's own ulp; generous factor 4. */
static double rounding_margin(const double *coef, int g, double R)
{
    return 4 * (2.0 * g + 4) * DBL_EPSILON * (ag_poly_abs_sum(coef, g, R) * exp(R) + 1);
}

static double bound_taylor(int g, double R)
{
    double coef[AG_MAX_DEGREE + 1];
    fit_taylor(g, coef);
    /* |e^x - T_g(x)| = |x|^{g+1} e[0,..,0,x] and e[0,..,0,x] = E e^{tx}, t ~ Beta(1, g+1),
     * <= ((g+1) + e^x) / ((g+2) (g+1)!) by convexity; relative, worst at x = -R. */
    double lg = (g + 1) * log(R) - lgamma(g + 2.0);
    double b = R > 0 ? exp(lg) * ((g + 1) * exp(R) + 1) / (g + 2) : 0;
    return b + rounding_margin(coef, g, R);
}

static double bound_chebyshev(int g, double R)
{
    double b[BESSEL_J + 1], beta[AG_MAX_DEGREE + 1], coef[AG_MAX_DEGREE + 1];
    cheb_series(R, b);
    cheb_interp(g, b, beta);
    fit_chebyshev(g, R, coef);

    double E0 = cheb_tail(R), E1 = cheb_tail(R); /* sum |e_j|, sum j^2 |e_j| */
    for (int j = 0; j <= BESSEL_J; j++) {
        double e = j <= g ? beta[j] - b[j] : -b[j];
        E0 += fabs(e);
        E1 += (double)j * j * fabs(e);
    }
    double eR = exp(R);
    double L = (E1 / R + E0) * eR;
    /* Spacing so that L h / 2 is ~2% of |r(-R)| (a lower bound of the max), the grid capped at
     * 200001 points; whatever h comes out, the bound below stays rigorous. */
    double r_left = fabs(ag_poly_eval(coef, g, -R) * eR - 1);
    double want_h = r_left > 0 ? 0.04 * r_left / L : 2 * R;
    double m = ceil(2 * R / want_h);
    size_t M = m < 64 ? 64 : m > 200000 ? 200000 : (size_t)m;
    double h = 2 * R / (double)M, worst = 0;
    for (size_t i = 0; i <= M; i++) {
        double x = -R + h * (double)i;
        double r = fabs(ag_poly_eval(coef, g, x) * exp(-x) - 1);
        if (r > worst) worst = r;
    }
    return worst + L * h / 2 + rounding_margin(coef, g, R);
}

double ag_poly_rel_bound(ag_poly kind, int degree, double R)
{
    if (bad_args(degree, R)) return INFINITY;
    if (kind == AG_POLY_TAYLOR) return bound_taylor(degree, R);
    if (kind != AG_POLY_CHEBYSHEV) return INFINITY;
    return bound_chebyshev(degree, fit_radius(R));
}

double ag_poly_float_bound(const double *coef, int degree, double R, size_t d_head, size_t n)
{
    if (bad_args(degree, R) || !coef || d_head < 1) return INFINITY;
    /* Random-rounding model of fl(phi(q) . psi(k)) = p(x) relative to e^x, x = q . k:
     *  - each term phi_a psi_a carries <= degree + 2 roundings: (degree + 2) * abs_sum(|x|);
     *  - the dot product adds the N_k = C(d+k-1, k) terms of degree k while its partial sum
     *    is about P_k(x) = sum_{j<=k} coef[j] x^j (sgemm runs along the graded order), a
     *    random walk of standard deviation sqrt(sum_k N_k P_k(x)^2) u / sqrt(3); the factor
     *    3 below covers ~5 standard deviations (the worst of many entries);
     *  - the states are sums over n keys in blocks: sqrt(n / 64) * abs_sum(|x|).
     * Worst over x in [-R, 0] (for x > 0 the value e^x only grows). Measured errors stay under
     * half of it (tests/unit/test_features.c, test_attention_approx.c). */
    double worst = 0;
    for (int i = 0; i <= 16; i++) {
        double x = -R * i / 16.0, ax = fabs(x);
        double walk = 0, partial = 0, xk = 1, Nk = 1;
        for (int k = 0; k <= degree; k++) {
            if (k > 0) Nk = Nk * (double)(d_head + (size_t)k - 1) / k;
            partial += coef[k] * xk;
            walk += Nk * partial * partial;
            xk *= x;
        }
        double A = ag_poly_abs_sum(coef, degree, ax);
        double e = ((degree + 2) * A + 3 * sqrt(walk) + sqrt((double)n / 64.0) * A) * exp(-x);
        if (e > worst) worst = e;
    }
    return AG_FLOAT_U * worst;
}

size_t ag_poly_rank(size_t d, int g)
{
    if (g < 0) return 0;
    /* C(d+g, g) = prod_{k=1..g} (d+k)/k, exact at every step (a binomial each time) */
    size_t r = 1;
    for (int k = 1; k <= g; k++) {
        size_t num = d + (size_t)k;
        if (num < d) return SIZE_MAX;
        /* r * num / k without overflow: r * num is divisible by k */
        size_t q = r / (size_t)k, rem = r % (size_t)k;
        /* r*num/k = q*num + rem*num/k */
        if (q != 0 && num > SIZE_MAX / q) return SIZE_MAX;
        size_t a = q * num;
        if (rem != 0 && num > SIZE_MAX / rem) return SIZE_MAX;
        size_t bq = rem * num / (size_t)k;
        if (a > SIZE_MAX - bq) return SIZE_MAX;
        r = a + bq;
    }
    return r;
}
