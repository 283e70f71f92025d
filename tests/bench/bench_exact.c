/* Exact forward+backward benchmark: one process per configuration, one CSV row on stdout.
 *
 *   bench_exact N CAUSAL LAYERS THREADS [D_MODEL HEADS D_FF BATCH REPS]
 *   bench_exact --header          prints the CSV header
 *   bench_exact --corename        prints OpenBLAS's kernel family (for the run script)
 *
 * Columns: the configuration; time_s, the best of REPS ag_gradients calls (layernorm, GELU,
 * residual, mse loss); peak_rss_mib after those calls (getrusage, before anything else runs);
 * attn_gflops, the exact attention kernels alone on the same shapes and threads (forward +
 * backward of every head, 12 n^2 d_head flops per head, half when causal); attn_share_gflops,
 * the same flops of the whole model divided by the whole model's time (dense layers included);
 * sgemm_gflops, THREADS concurrent single-threaded 1024^3 sgemm calls measured in the same run;
 * workspace_mib, ag_gradients_workspace_bytes; corename, OpenBLAS's kernels.
 */
#include <cblas.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "../../core/altgrad.h"
#include "../../core/attention.h"

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static uint64_t rng = 0x243f6a8885a308d3ull;

static float uniform(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((double)(rng >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static float *filled(size_t count, float scale)
{
    float *a = malloc(count * sizeof *a);
    if (!a) {
        fprintf(stderr, "bench_exact: out of memory\n");
        exit(1);
    }
    for (size_t i = 0; i < count; i++) a[i] = scale * uniform();
    return a;
}

/* ---- sgemm peak ------------------------------------------------------------------------- */

typedef struct {
    float *a, *b, *c;
} gemm_job;

static void *gemm_thread(void *p)
{
    gemm_job *g = p;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, 1024, 1024, 1024, 1.0f, g->a, 1024,
                g->b, 1024, 0.0f, g->c, 1024);
    return NULL;
}

static double sgemm_peak(int threads)
{
    gemm_job *jobs = calloc((size_t)threads, sizeof *jobs);
    pthread_t *ids = calloc((size_t)threads, sizeof *ids);
    for (int t = 0; t < threads; t++)
        jobs[t] = (gemm_job){filled(1 << 20, 1), filled(1 << 20, 1), filled(1 << 20, 1)};
    double best = 1e30;
    for (int rep = 0; rep < 4; rep++) {
        double t0 = now();
        for (int t = 1; t < threads; t++) pthread_create(&ids[t], NULL, gemm_thread, &jobs[t]);
        gemm_thread(&jobs[0]);
        for (int t = 1; t < threads; t++) pthread_join(ids[t], NULL);
        double dt = now() - t0;
        if (dt < best) best = dt;
    }
    for (int t = 0; t < threads; t++) {
        free(jobs[t].a);
        free(jobs[t].b);
        free(jobs[t].c);
    }
    free(jobs);
    free(ids);
    return threads * 2.0 * 1024 * 1024 * 1024 / best / 1e9;
}

/* ---- attention kernels alone ------------------------------------------------------------- */

typedef struct {
    ag_attn_shape s;
    float *q, *k, *v, *o, *dout, *dq, *dk, *dv, *lse;
    size_t heads, dh;
    int tid, threads;
} attn_job;

static void *attn_thread(void *p)
{
    attn_job *a = p;
    ag_error err;
    for (size_t h = (size_t)a->tid; h < a->heads; h += (size_t)a->threads) {
        size_t off = h * a->dh;
        float *lse = a->lse + h * a->s.n;
        if (ag_attn_exact_forward(&a->s, a->q + off, a->k + off, a->v + off, a->o + off, lse,
                                  &err) != AG_OK ||
            ag_attn_exact_backward(&a->s, a->q + off, a->k + off, a->v + off, a->o + off, lse,
                                   a->dout + off, a->dq + off, a->dk + off, a->dv + off,
                                   &err) != AG_OK) {
            fprintf(stderr, "bench_exact: attention failed: %s\n", err.message);
            exit(1);
        }
    }
    return NULL;
}

static double attention_time(size_t n, size_t D, size_t H, int causal, int threads, int reps)
{
    size_t count = n * D;
    attn_job base = {.s = {.n = n, .d_head = D / H, .ld = D, .causal = causal,
                           .scale = 1.0f / sqrtf((float)(D / H))},
                     .q = filled(count, 1), .k = filled(count, 1), .v = filled(count, 1),
                     .o = filled(count, 1), .dout = filled(count, 1), .dq = filled(count, 1),
                     .dk = filled(count, 1), .dv = filled(count, 1), .lse = filled(n * H, 1),
                     .heads = H, .dh = D / H, .threads = threads};
    attn_job *jobs = calloc((size_t)threads, sizeof *jobs);
    pthread_t *ids = calloc((size_t)threads, sizeof *ids);
    double best = 1e30;
    for (int rep = 0; rep < reps; rep++) {
        double t0 = now();
        for (int t = 0; t < threads; t++) {
            jobs[t] = base;
            jobs[t].tid = t;
            if (t) pthread_create(&ids[t], NULL, attn_thread, &jobs[t]);
        }
        attn_thread(&jobs[0]);
        for (int t = 1; t < threads; t++) pthread_join(ids[t], NULL);
        double dt = now() - t0;
        if (dt < best) best = dt;
    }
    float *bufs[] = {base.q, base.k, base.v, base.o, base.dout, base.dq, base.dk, base.dv,
                     base.lse};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) free(bufs[i]);
    free(jobs);
    free(ids);
    return best;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--header") == 0) {
        printf("n,causal,layers,threads,d_model,heads,d_ff,batch,time_s,peak_rss_mib,"
               "attn_time_s,attn_gflops,attn_share_gflops,sgemm_gflops,workspace_mib,"
               "corename\n");
        return 0;
    }
    if (argc > 1 && strcmp(argv[1], "--corename") == 0) {
        printf("%s\n", openblas_get_corename());
        return 0;
    }
    if (argc < 5) {
        fprintf(stderr, "usage: %s N CAUSAL LAYERS THREADS [D_MODEL HEADS D_FF BATCH REPS]\n",
                argv[0]);
        return 2;
    }
    size_t n = strtoul(argv[1], NULL, 10);
    int causal = atoi(argv[2]), layers = atoi(argv[3]), threads = atoi(argv[4]);
    int D = argc > 5 ? atoi(argv[5]) : 64, H = argc > 6 ? atoi(argv[6]) : 8;
    int F = argc > 7 ? atoi(argv[7]) : 256;
    size_t batch = argc > 8 ? strtoul(argv[8], NULL, 10) : 1;
    int reps = argc > 9 ? atoi(argv[9]) : 3;

    ag_model_config cfg = {.d_model = D, .n_heads = H, .n_layers = layers, .d_ff = F,
                           .causal = causal, .norm = AG_NORM_LAYERNORM,
                           .activation = AG_ACT_GELU, .residual = 1};
    ag_error err;
    if (ag_model_config_check(&cfg, &err) != AG_OK || n == 0 || batch == 0 || reps < 1) {
        fprintf(stderr, "bench_exact: bad configuration: %s\n", err.message);
        return 2;
    }
    ag_layer_params *params = calloc((size_t)layers, sizeof *params);
    for (int l = 0; l < layers; l++) {
        if (ag_layer_params_alloc(&cfg, &params[l], &err) != AG_OK) return 1;
        for (int i = 0; i < AG_P_COUNT; i++) {
            size_t c = ag_param_numel(&cfg, i);
            float scale = i == AG_P_W2 ? 1.0f / sqrtf((float)F) : 1.0f / sqrtf((float)D);
            for (size_t e = 0; e < c; e++) params[l].p[i][e] = scale * uniform();
            if (i == AG_P_LN1_GAMMA || i == AG_P_LN2_GAMMA)
                for (size_t e = 0; e < c; e++) params[l].p[i][e] += 1.0f;
        }
    }
    size_t count = batch * n * (size_t)D;
    float *x = filled(count, 1), *target = filled(count, 1);
    ag_loss loss = {.kind = AG_LOSS_MSE, .tensor = target};
    ag_method method = ag_method_default(AG_METHOD_EXACT);
    ag_run_opts opts = {.threads = threads};

    double best = 1e30;
    for (int rep = 0; rep < reps; rep++) {
        ag_result res;
        double t0 = now();
        if (ag_gradients(&cfg, params, x, batch, n, &loss, &method, &opts, &res, &err) != AG_OK) {
            fprintf(stderr, "bench_exact: %s\n", err.message);
            return 1;
        }
        double dt = now() - t0;
        if (dt < best) best = dt;
        ag_result_free(&res);
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double rss_mib = (double)ru.ru_maxrss / 1024.0;

    /* attention flops of one sequence, all heads, one layer */
    const double dh = (double)(D / H), frac = causal ? 0.5 : 1.0;
    const double attn_flops = 12.0 * (double)n * (double)n * dh * frac * H;
    double at = attention_time(n, (size_t)D, (size_t)H, causal, threads, reps);
    double peak = sgemm_peak(threads);
    size_t ws = ag_gradients_workspace_bytes(&cfg, batch, n, &method);
    printf("%zu,%d,%d,%d,%d,%d,%d,%zu,%.4f,%.1f,%.4f,%.1f,%.1f,%.1f,%.1f,%s\n", n, causal,
           layers, threads, D, H, F, batch, best, rss_mib, at * layers * (double)batch,
           attn_flops / at / 1e9, attn_flops * layers * (double)batch / best / 1e9, peak,
           (double)ws / 1048576.0, openblas_get_corename());

    for (int l = 0; l < layers; l++) ag_layer_params_free(&params[l]);
    free(params);
    free(x);
    free(target);
    return 0;
}
