/* The two backward routes of the approximate attention against exact, per head (make bench,
 * tests/bench/bench_routes.sh, docs/paper_route.md).
 *
 *   bench_routes --header        the CSV header
 *   bench_routes --corename      OpenBLAS's kernel family
 *   bench_routes N CAUSAL ROUTE DEGREE REF_DIR [REPS]
 *       ROUTE exact:    exact forward + backward; writes the gradients to
 *                       REF_DIR/ref_n{N}_c{CAUSAL}.f32 (dq, dk, dv) for the other rows;
 *       ROUTE features, paper: the approximate forward + that route's backward at the fixed
 *                       DEGREE (Chebyshev); after timing, the gradients' error against the
 *                       exact ones in REF_DIR (empty when that file is absent).
 *
 * One head, d_head 8, one thread (OPENBLAS_NUM_THREADS=1), one sequence. Inputs uniform(-1, 1)
 * with q, k rescaled so that the score bound after centring is R = 1 (the headline regime);
 * the same seed for every row, so every route sees the same head.
 * One CSV row: n,d_head,causal,route,degree,rank,R,error_bound,time_s,backward_s,cpu_s,
 * backward_cpu_s,peak_rss_mib,grad_err,err_dq,err_dk,err_dv,model_gflop,corename
 * time_s: best wall time of REPS forward + backward calls; backward_s: best of the backward
 * alone; cpu_s, backward_cpu_s: the same in process CPU time (one thread: what other jobs on a
 * shared machine inflate least). peak_rss_mib: the process's
 * high-water mark after the timed runs and before the reference is read (getrusage), so it
 * is what the route itself needed plus the inputs. grad_err: the largest of the three
 * relative Frobenius errors. model_gflop: the cost model's flop count (core/cost.c).
 */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "../../core/altgrad.h"
#include "../../core/approx_internal.h"
#include "../../core/attention.h"

enum { D_HEAD = 8 };

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static double cpu_now(void)
{
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return (double)u.ru_utime.tv_sec + 1e-6 * (double)u.ru_utime.tv_usec +
           (double)u.ru_stime.tv_sec + 1e-6 * (double)u.ru_stime.tv_usec;
}

static double peak_rss_mib(void)
{
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return (double)u.ru_maxrss / 1024.0;
}

static float uniform(unsigned long long *s)
{
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((double)(*s >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static void *xmalloc(size_t bytes)
{
    void *p = malloc(bytes);
    if (!p) {
        fprintf(stderr, "bench_routes: out of memory\n");
        exit(1);
    }
    return p;
}

static void die(const char *what, const ag_error *err)
{
    fprintf(stderr, "bench_routes: %s: %s\n", what, err->message);
    exit(1);
}

static const char *corename(void)
{
    const char *c = openblas_get_corename();
    return c ? c : "?";
}

static void header(void)
{
    printf("n,d_head,causal,route,degree,rank,R,error_bound,time_s,backward_s,cpu_s,"
           "backward_cpu_s,peak_rss_mib,grad_err,err_dq,err_dk,err_dv,model_gflop,corename\n");
}

static double rel_err(const float *a, const float *b, size_t count)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < count; i++) {
        double e = (double)a[i] - b[i];
        num += e * e;
        den += (double)b[i] * b[i];
    }
    return den > 0 ? sqrt(num / den) : 0;
}

int main(int argc, char **argv)
{
    if (argc == 2 && !strcmp(argv[1], "--header")) {
        header();
        return 0;
    }
    if (argc == 2 && !strcmp(argv[1], "--corename")) {
        printf("%s\n", corename());
        return 0;
    }
    if (argc < 6 || argc > 7) {
        fprintf(stderr, "usage: bench_routes --header | --corename | "
                        "N CAUSAL exact|features|paper DEGREE REF_DIR [REPS]\n");
        return 2;
    }
    const size_t n = strtoul(argv[1], NULL, 10), d = D_HEAD;
    const int causal = atoi(argv[2]), degree = atoi(argv[4]);
    const char *route = argv[3], *ref_dir = argv[5];
    const int reps = argc == 7 ? atoi(argv[6]) : 3;
    const int is_exact = !strcmp(route, "exact"), is_paper = !strcmp(route, "paper");
    if (n < 1 || n > (1u << 22) || (causal != 0 && causal != 1) || reps < 1 || reps > 50 ||
        (!is_exact && !is_paper && strcmp(route, "features")) ||
        (!is_exact && (degree < 1 || degree > AG_MAX_DEGREE))) {
        fprintf(stderr, "bench_routes: bad arguments\n");
        return 2;
    }
    const size_t nd = n * d;
    float *buf = xmalloc((8 * nd + n) * sizeof *buf);
    float *q = buf, *k = q + nd, *v = k + nd, *dout = v + nd, *o = dout + nd;
    float *dq = o + nd, *dk = dq + nd, *dv = dk + nd, *stat = dv + nd;
    unsigned long long seed = 2024;
    for (size_t i = 0; i < nd; i++) {
        q[i] = uniform(&seed);
        k[i] = uniform(&seed) + 0.3f; /* an offset for the centring to remove */
        v[i] = uniform(&seed);
        dout[i] = uniform(&seed);
    }
    ag_attn_shape s = {.n = n, .d_head = d, .ld = d, .causal = causal,
                       .scale = (float)(1 / sqrt((double)d)), .cancel = NULL};
    double R0 = ag_attn_score_bound(&s, q, k);
    float f = (float)sqrt(1.0 / R0);
    for (size_t i = 0; i < nd; i++) {
        q[i] *= f;
        k[i] *= f;
    }
    const double R = ag_attn_score_bound(&s, q, k);

    ag_error err = {0};
    ag_head_plan plan;
    memset(&plan, 0, sizeof plan);
    if (!is_exact) {
        ag_method m = ag_method_default(AG_METHOD_APPROX);
        m.degree = degree;
        m.route = is_paper ? AG_ROUTE_PAPER : AG_ROUTE_FEATURES;
        if (ag_head_plan_choose(&m, d, n, causal, R, NULL, SIZE_MAX / 2, &plan, &err) != AG_OK)
            die("plan", &err);
    }
    /* the keys' state the forward keeps for the backward, as the model does */
    float *state = xmalloc((ag_attn_approx_state_floats(d, plan.report.rank, causal) + 1) *
                           sizeof *state);

    double best = INFINITY, best_bwd = INFINITY, best_cpu = INFINITY, best_bcpu = INFINITY;
    for (int rep = 0; rep <= reps; rep++) { /* rep 0 warms up: page faults, BLAS buffers */
        memset(dq, 0, 3 * nd * sizeof *dq);
        double t0 = now(), c0 = cpu_now(), t1, c1;
        ag_status st;
        if (is_exact) {
            st = ag_attn_exact_forward(&s, q, k, v, o, stat, &err);
            t1 = now();
            c1 = cpu_now();
            if (st == AG_OK) st = ag_attn_exact_backward(&s, q, k, v, o, stat, dout, dq, dk, dv, &err);
        } else {
            st = ag_attn_approx_forward(&s, &plan, q, k, v, o, stat, state, &err);
            t1 = now();
            c1 = cpu_now();
            if (st == AG_OK)
                st = ag_attn_approx_backward(&s, &plan, q, k, v, o, stat, state, dout, dq, dk,
                                             dv, &err);
        }
        double t2 = now(), c2 = cpu_now();
        if (st != AG_OK) die(route, &err);
        if (rep == 0) continue;
        if (t2 - t0 < best) best = t2 - t0;
        if (t2 - t1 < best_bwd) best_bwd = t2 - t1;
        if (c2 - c0 < best_cpu) best_cpu = c2 - c0;
        if (c2 - c1 < best_bcpu) best_bcpu = c2 - c1;
    }
    const double rss = peak_rss_mib();

    char path[4096];
    snprintf(path, sizeof path, "%s/ref_n%zu_c%d.f32", ref_dir, n, causal);
    double eq = 0, ek = 0, ev = 0;
    int have_ref = is_exact;
    if (is_exact) {
        FILE *fp = fopen(path, "wb");
        if (!fp || fwrite(dq, sizeof *dq, 3 * nd, fp) != 3 * nd || fclose(fp) != 0) {
            fprintf(stderr, "bench_routes: cannot write %s\n", path);
            return 1;
        }
    } else {
        FILE *fp = fopen(path, "rb");
        if (fp) {
            float *ref = xmalloc(3 * nd * sizeof *ref);
            if (fread(ref, sizeof *ref, 3 * nd, fp) == 3 * nd) {
                eq = rel_err(dq, ref, nd);
                ek = rel_err(dk, ref + nd, nd);
                ev = rel_err(dv, ref + 2 * nd, nd);
                have_ref = 1;
            }
            free(ref);
            fclose(fp);
        }
    }
    double gflop = is_exact ? ag_cost_exact_flops(n, d, causal)
                   : is_paper ? ag_cost_paper_flops(n, d, plan.report.rank, causal)
                              : ag_cost_approx_flops(n, d, plan.report.rank, causal);
    printf("%zu,%zu,%d,%s,%d,%zu,%.4f,%.3e,%.4f,%.4f,%.4f,%.4f,%.1f,", n, d, causal, route,
           plan.report.degree, plan.report.rank, R, plan.report.error_bound, best, best_bwd,
           best_cpu, best_bcpu, rss);
    if (have_ref)
        printf("%.3e,%.3e,%.3e,%.3e,", fmax(eq, fmax(ek, ev)), eq, ek, ev);
    else
        printf(",,,,");
    printf("%.3f,%s\n", gflop / 1e9, corename());
    free(state);
    free(buf);
    return 0;
}
