/* Approximate vs exact gradients of the whole model (make bench, tests/bench/bench_approx.sh).
 *
 *   bench_approx --header                 prints the CSV header
 *   bench_approx --corename               prints OpenBLAS's kernel family
 *   bench_approx N D_HEAD CAUSAL MODE [EPS THREADS REPS DEGREE]
 *       MODE approx: the approximate run alone (time, peak RSS);
 *       MODE both:   approx first, then exact, and every gradient's relative error;
 *       MODE exact:  exact alone.
 *   bench_approx --sweep N D_HEAD CAUSAL G0 G1 [THREADS]
 *       one exact run, then approx at fixed degrees G0..G1: error against the degree.
 *
 * Model: d_model 64, 64 / D_HEAD heads, one layer, layernorm, GELU MLP (d_ff 256), residual,
 * grad_output loss, batch 1. Inputs uniform(-1, 1); wq and wk rescaled so that the largest
 * per-head score bound R after centring is 1.0 (the headline regime; reported as R_max).
 * One CSV row per run: n,d_head,heads,causal,method,epsilon,degree,rank,R_max,error_bound,
 * time_s,cpu_s,peak_rss_mib,grad_err_max,grad_err_input,worst_param,threads,corename
 * time_s is the best wall time of REPS calls; cpu_s the best process CPU time (all threads),
 * which other processes on a shared machine do not inflate as much.
 * peak_rss_mib is the process's high-water mark after that run (getrusage): in MODE both the
 * exact row's figure includes the approximate run before it (which is far smaller).
 */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "../../core/altgrad.h"
#include "../../core/attention.h"

enum { D_MODEL = 64, D_FF = 256 };

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Process CPU time (all threads, user + system): robust to other processes on the machine. */
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
        fprintf(stderr, "bench_approx: out of memory\n");
        exit(1);
    }
    return p;
}

typedef struct {
    ag_model_config cfg;
    ag_layer_params layer;
    float *x, *gy;
    size_t n;
    double R;
} bench_model;

/* The largest per-head score bound of layer 0: layernorm(x) (gamma 1, beta 0 here) @ wq, wk. */
static double layer0_bound(const bench_model *m)
{
    size_t n = m->n, D = D_MODEL, dh = D / (size_t)m->cfg.n_heads;
    float *h = xmalloc(n * D * sizeof *h), *q = xmalloc(n * D * sizeof *q);
    float *k = xmalloc(n * D * sizeof *k);
    for (size_t i = 0; i < n; i++) {
        double mean = 0, var = 0;
        for (size_t t = 0; t < D; t++) mean += m->x[i * D + t];
        mean /= (double)D;
        for (size_t t = 0; t < D; t++) var += (m->x[i * D + t] - mean) * (m->x[i * D + t] - mean);
        double rstd = 1 / sqrt(var / (double)D + 1e-5);
        for (size_t t = 0; t < D; t++) h[i * D + t] = (float)((m->x[i * D + t] - mean) * rstd);
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, (int)D, (int)D, 1.0f, h,
                (int)D, m->layer.p[AG_P_WQ], (int)D, 0.0f, q, (int)D);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, (int)D, (int)D, 1.0f, h,
                (int)D, m->layer.p[AG_P_WK], (int)D, 0.0f, k, (int)D);
    double R = 0;
    for (int hd = 0; hd < m->cfg.n_heads; hd++) {
        ag_attn_shape s = {.n = n, .d_head = dh, .ld = D, .causal = m->cfg.causal,
                           .scale = (float)(1 / sqrt((double)dh))};
        double r = ag_attn_score_bound(&s, q + (size_t)hd * dh, k + (size_t)hd * dh);
        if (r > R) R = r;
    }
    free(h);
    free(q);
    free(k);
    return R;
}

static void model_make(bench_model *m, size_t n, size_t d_head, int causal)
{
    m->n = n;
    m->cfg = (ag_model_config){.d_model = D_MODEL, .n_heads = (int)(D_MODEL / d_head),
                               .n_layers = 1, .d_ff = D_FF, .causal = causal,
                               .norm = AG_NORM_LAYERNORM, .activation = AG_ACT_GELU,
                               .residual = 1};
    ag_error err;
    if (ag_layer_params_alloc(&m->cfg, &m->layer, &err) != AG_OK) {
        fprintf(stderr, "bench_approx: %s\n", err.message);
        exit(1);
    }
    unsigned long long s = 0x243f6a8885a308d3ull;
    for (int i = 0; i < AG_P_COUNT; i++) {
        float *p = m->layer.p[i];
        size_t count = ag_param_numel(&m->cfg, i);
        if (!p) continue;
        double sc = i == AG_P_W2 ? 1 / sqrt((double)D_FF) : 1 / sqrt((double)D_MODEL);
        for (size_t j = 0; j < count; j++) p[j] = (float)sc * uniform(&s);
        if (i == AG_P_LN1_GAMMA || i == AG_P_LN2_GAMMA)
            for (size_t j = 0; j < count; j++) p[j] = 1;
        if (i == AG_P_LN1_BETA || i == AG_P_LN2_BETA || i == AG_P_B1 || i == AG_P_B2)
            for (size_t j = 0; j < count; j++) p[j] = 0;
    }
    m->x = xmalloc(n * D_MODEL * sizeof *m->x);
    m->gy = xmalloc(n * D_MODEL * sizeof *m->gy);
    for (size_t i = 0; i < n * D_MODEL; i++) m->x[i] = uniform(&s);
    for (size_t i = 0; i < n * D_MODEL; i++) m->gy[i] = uniform(&s);
    /* R scales with |wq| |wk|: one rescale puts it at 1 */
    double R = layer0_bound(m);
    float f = (float)sqrt(1.0 / R);
    for (size_t j = 0; j < (size_t)D_MODEL * D_MODEL; j++) {
        m->layer.p[AG_P_WQ][j] *= f;
        m->layer.p[AG_P_WK][j] *= f;
    }
    m->R = layer0_bound(m);
}

static void model_free(bench_model *m)
{
    ag_layer_params_free(&m->layer);
    free(m->x);
    free(m->gy);
}

typedef struct {
    ag_status st;
    char msg[256];
    double time, cpu, rss;
    ag_result res;
} run_result;

static run_result run(const bench_model *m, const ag_method *method, int threads, int reps)
{
    run_result r = {0};
    ag_loss loss = {.kind = AG_LOSS_GRAD_OUTPUT, .tensor = m->gy};
    ag_run_opts opts = {.threads = threads};
    r.time = r.cpu = INFINITY;
    for (int i = 0; i < reps; i++) {
        ag_error err = {0};
        ag_result res = {0};
        double t0 = now(), c0 = cpu_now();
        r.st = ag_gradients(&m->cfg, &m->layer, m->x, 1, m->n, &loss, method, &opts, &res, &err);
        double t = now() - t0, c = cpu_now() - c0;
        if (c < r.cpu) r.cpu = c;
        if (r.st != AG_OK) {
            snprintf(r.msg, sizeof r.msg, "%s", err.message);
            return r;
        }
        if (t < r.time) r.time = t;
        if (i + 1 < reps) ag_result_free(&res);
        else r.res = res;
    }
    r.rss = peak_rss_mib();
    return r;
}

/* Largest relative error over grad_input and every weight gradient; the input's own. */
static double grad_errors(const bench_model *m, const ag_result *a, const ag_result *b,
                          double *input_err, const char **worst)
{
    *input_err = ag_rel_error(a->grad_input, b->grad_input, m->n * D_MODEL);
    double e = *input_err;
    *worst = "grad_input";
    for (int i = 0; i < AG_P_COUNT; i++) {
        size_t c = ag_param_numel(&m->cfg, i);
        if (!c) continue;
        double ei = ag_rel_error(a->grad_layers[0].p[i], b->grad_layers[0].p[i], c);
        if (ei > e) {
            e = ei;
            *worst = ag_param_name(i);
        }
    }
    return e;
}

static const char *corename(void)
{
    const char *c = openblas_get_corename();
    return c ? c : "?";
}

static void row(const bench_model *m, const char *method, double eps, const run_result *r,
                double gerr, double ierr, const char *worst, int threads)
{
    int degree = 0;
    size_t rank = 0;
    double bound = 0, R = 0;
    if (r->st == AG_OK)
        for (int h = 0; h < r->res.n_heads; h++) {
            const ag_head_report *hr = &r->res.heads[h];
            if (hr->degree > degree) degree = hr->degree;
            if (hr->rank > rank) rank = hr->rank;
            if (hr->error_bound > bound) bound = hr->error_bound;
            if (hr->bound > R) R = hr->bound;
        }
    else
        R = m->R;
    printf("%zu,%d,%d,%d,%s,%g,%d,%zu,%.4f,%.3e,", m->n, D_MODEL / m->cfg.n_heads, m->cfg.n_heads,
           m->cfg.causal, method, eps, degree, rank, R, bound);
    if (r->st == AG_OK)
        printf("%.4f,%.4f,%.1f,", r->time, r->cpu, r->rss);
    else
        printf(",,,");
    if (gerr >= 0)
        printf("%.3e,%.3e,%s,", gerr, ierr, worst);
    else
        printf(",,%s,", r->st == AG_OK ? "" : ag_status_name(r->st));
    printf("%d,%s\n", threads, corename());
    if (r->st != AG_OK) fprintf(stderr, "bench_approx: %s: %s\n", method, r->msg);
    fflush(stdout);
}

static int usage(void)
{
    fprintf(stderr, "usage: bench_approx --header | --corename | N D_HEAD CAUSAL "
            "approx|exact|both [EPS THREADS REPS DEGREE] | --sweep N D_HEAD CAUSAL G0 G1 "
            "[THREADS]\n");
    return 2;
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "--header") == 0) {
        puts("n,d_head,heads,causal,method,epsilon,degree,rank,R_max,error_bound,time_s,cpu_s,"
             "peak_rss_mib,grad_err_max,grad_err_input,worst_param,threads,corename");
        return 0;
    }
    if (argc == 2 && strcmp(argv[1], "--corename") == 0) {
        puts(corename());
        return 0;
    }
    if (argc >= 7 && strcmp(argv[1], "--sweep") == 0) {
        size_t n = strtoul(argv[2], NULL, 10), dh = strtoul(argv[3], NULL, 10);
        int causal = atoi(argv[4]), g0 = atoi(argv[5]), g1 = atoi(argv[6]);
        int threads = argc > 7 ? atoi(argv[7]) : 2;
        if (!n || !dh || D_MODEL % dh || g0 < 1 || g1 < g0) return usage();
        bench_model m;
        model_make(&m, n, dh, causal);
        ag_method exact = ag_method_default(AG_METHOD_EXACT);
        run_result ex = run(&m, &exact, threads, 1);
        if (ex.st != AG_OK) return 1;
        for (int g = g0; g <= g1 && g <= AG_MAX_DEGREE; g++) {
            ag_method ap = ag_method_default(AG_METHOD_APPROX);
            ap.degree = g;
            run_result r = run(&m, &ap, threads, 1);
            double ierr = -1, gerr = -1;
            const char *worst = "";
            if (r.st == AG_OK) gerr = grad_errors(&m, &r.res, &ex.res, &ierr, &worst);
            row(&m, "approx", 0, &r, gerr, ierr, worst, threads);
            ag_result_free(&r.res);
        }
        ag_result_free(&ex.res);
        model_free(&m);
        return 0;
    }
    if (argc < 5) return usage();
    size_t n = strtoul(argv[1], NULL, 10), dh = strtoul(argv[2], NULL, 10);
    int causal = atoi(argv[3]);
    const char *mode = argv[4];
    double eps = argc > 5 ? atof(argv[5]) : 2e-4;
    int threads = argc > 6 ? atoi(argv[6]) : 2, reps = argc > 7 ? atoi(argv[7]) : 1;
    int degree = argc > 8 ? atoi(argv[8]) : 0;
    if (!n || !dh || D_MODEL % dh || reps < 1 || threads < 1) return usage();
    int do_approx = strcmp(mode, "approx") == 0 || strcmp(mode, "both") == 0;
    int do_exact = strcmp(mode, "exact") == 0 || strcmp(mode, "both") == 0;
    if (!do_approx && !do_exact) return usage();

    bench_model m;
    model_make(&m, n, dh, causal);
    run_result ap = {0}, ex = {0};
    if (do_approx) {
        ag_method method = ag_method_default(AG_METHOD_APPROX);
        if (degree) method.degree = degree;
        else method.epsilon = eps;
        ap = run(&m, &method, threads, reps);
        if (!do_exact || ap.st != AG_OK) row(&m, "approx", eps, &ap, -1, -1, "", threads);
    }
    if (do_exact) {
        ag_method method = ag_method_default(AG_METHOD_EXACT);
        ex = run(&m, &method, threads, reps);
        double ierr = -1, gerr = -1;
        const char *worst = "";
        if (do_approx && ap.st == AG_OK && ex.st == AG_OK) {
            gerr = grad_errors(&m, &ap.res, &ex.res, &ierr, &worst);
            row(&m, "approx", eps, &ap, gerr, ierr, worst, threads);
        }
        row(&m, "exact", 0, &ex, -1, -1, "", threads);
    }
    ag_result_free(&ap.res);
    ag_result_free(&ex.res);
    model_free(&m);
    return (do_approx && ap.st != AG_OK) || (do_exact && ex.st != AG_OK) ? 1 : 0;
}
