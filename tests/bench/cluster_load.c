/* cluster_load: steady mixed load through libaltgrad against a load-balanced cluster
 * (tests/scripts/cluster_test.sh starts 3 altgradd behind HAProxy and kills one meanwhile).
 *
 *   cluster_load --url http://127.0.0.1:PORT [--duration 30] [--threads 4] [--rate 40]
 *                [--async 0.3] [--hold 1] [--seed 1] [--min-success 0.999]
 *                [--lost-node NAME]
 *
 * Each thread owns one client handle and loops until the deadline, paced at --rate requests
 * per second: a synchronous POST /v1/gradients, or (with probability --async) the submission
 * of an async job, which the thread collects --hold seconds later (wait, fetch the result),
 * as a batch client would; so jobs are always waiting on every replica. A job whose status or
 * result cannot be had any more (404 from its restarted owner, or 5xx / connection errors
 * after the client's retries while the owner is down) is "lost": its error is recorded and
 * the driver submits it again (at most MAX_SUBMITS submissions in all). Every gradient that comes back is compared with a direct exact
 * computation through the core library, made once per problem before the load starts.
 *
 * Exit status: 0 when successes / requests >= --min-success, no gradient was wrong, at least
 * one request ran, and (with --lost-node) every lost job belonged to that node; 1 otherwise;
 * 2 on bad usage. The figures go to stdout.
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../../client/altgrad_client.h"
#include "../../core/altgrad.h"

#define N_PROBLEMS 6
#define MAX_THREADS 64
#define MAX_SUBMITS 4
#define MAX_PENDING 512      /* async jobs one thread holds at once */
#define MAX_SAMPLES (1u << 20) /* latency samples kept per thread */
#define GRAD_TOL 1e-4          /* relative Frobenius error, float32 with any summation order */
#define JOB_WAIT_MS 60000
#define MAX_LOST_KINDS 8

/* ---- a problem and its reference gradients --------------------------------------------- */

typedef struct {
    ag_model_config cfg;
    ag_layer_params *layers;
    size_t n;
    float *input, *target;
    ag_result ref; /* exact, in-process */
} problem;

static uint64_t rng_next(uint64_t *s)
{
    /* xorshift64*: reproducible problems from --seed, no shared state. */
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}

static float rng_uniform(uint64_t *s) /* in [-1, 1) */
{
    return (float)((double)(rng_next(s) >> 11) * (2.0 / 9007199254740992.0) - 1.0);
}

static int problem_make(problem *p, int idx, uint64_t seed)
{
    memset(p, 0, sizeof *p);
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + (uint64_t)idx + 1;
    if (s == 0) s = 1;
    /* Small, so that the test measures the cluster rather than the arithmetic; the shapes
     * vary so that a response for the wrong problem cannot pass the comparison. */
    p->cfg = (ag_model_config){.d_model = 16, .n_heads = 2, .n_layers = 1 + idx % 2,
                               .d_ff = idx % 3 == 0 ? 0 : 32, .causal = idx % 2,
                               .norm = idx % 2 ? AG_NORM_LAYERNORM : AG_NORM_NONE,
                               .activation = AG_ACT_GELU, .residual = 1};
    p->n = 16 + 4 * (size_t)idx;
    ag_error e;
    if (ag_model_config_check(&p->cfg, &e) != AG_OK) {
        fprintf(stderr, "cluster_load: problem %d: %s\n", idx, e.message);
        return -1;
    }
    p->layers = calloc((size_t)p->cfg.n_layers, sizeof *p->layers);
    size_t count = p->n * (size_t)p->cfg.d_model;
    p->input = malloc(count * sizeof(float));
    p->target = malloc(count * sizeof(float));
    if (!p->layers || !p->input || !p->target) return -1;
    float scale = 1.0f / sqrtf((float)p->cfg.d_model);
    for (int l = 0; l < p->cfg.n_layers; l++) {
        if (ag_layer_params_alloc(&p->cfg, &p->layers[l], &e) != AG_OK) return -1;
        for (int i = 0; i < AG_P_COUNT; i++) {
            size_t m = ag_param_numel(&p->cfg, i);
            float *w = p->layers[l].p[i];
            int gamma = i == AG_P_LN1_GAMMA || i == AG_P_LN2_GAMMA;
            for (size_t k = 0; k < m; k++)
                w[k] = gamma ? 1.0f + 0.1f * rng_uniform(&s) : scale * rng_uniform(&s);
        }
    }
    for (size_t k = 0; k < count; k++) {
        p->input[k] = rng_uniform(&s);
        p->target[k] = rng_uniform(&s);
    }
    ag_loss loss = {.kind = AG_LOSS_MSE, .tensor = p->target};
    ag_method exact = ag_method_default(AG_METHOD_EXACT);
    ag_run_opts opts = {.threads = 1};
    if (ag_gradients(&p->cfg, p->layers, p->input, 1, p->n, &loss, &exact, &opts, &p->ref, &e) !=
        AG_OK) {
        fprintf(stderr, "cluster_load: reference for problem %d: %s\n", idx, e.message);
        return -1;
    }
    return 0;
}

static void problem_free(problem *p)
{
    for (int l = 0; p->layers && l < p->cfg.n_layers; l++) ag_layer_params_free(&p->layers[l]);
    free(p->layers);
    free(p->input);
    free(p->target);
    ag_result_free(&p->ref);
    memset(p, 0, sizeof *p);
}

static altgrad_request problem_request(const problem *p)
{
    altgrad_request r = altgrad_request_init(&p->cfg);
    r.layers = p->layers;
    r.input = p->input;
    r.batch = 1;
    r.n = p->n;
    r.batched = 0;
    r.loss = AG_LOSS_MSE;
    r.loss_tensor = p->target;
    r.method = ag_method_default(AG_METHOD_EXACT);
    return r;
}

/* 1 when res matches the reference: loss, grad_input and every weight gradient. */
static int result_correct(const problem *p, const altgrad_result *res, char *why, size_t cap)
{
    size_t count = p->n * (size_t)p->cfg.d_model;
    if (!res->has_loss || fabs(res->loss - p->ref.loss) > GRAD_TOL * fmax(1.0, fabs(p->ref.loss))) {
        snprintf(why, cap, "loss %.9g, expected %.9g", res->loss, p->ref.loss);
        return 0;
    }
    if (res->n != p->n || res->d_model != (size_t)p->cfg.d_model || !res->grad_input) {
        snprintf(why, cap, "grad_input missing or of the wrong shape");
        return 0;
    }
    double e = ag_rel_error(res->grad_input, p->ref.grad_input, count);
    if (!(e <= GRAD_TOL)) {
        snprintf(why, cap, "grad_input relative error %.3g", e);
        return 0;
    }
    if (res->n_layers != p->cfg.n_layers || !res->grad_layers) {
        snprintf(why, cap, "grad_weights missing");
        return 0;
    }
    for (int l = 0; l < p->cfg.n_layers; l++)
        for (int i = 0; i < AG_P_COUNT; i++) {
            size_t m = ag_param_numel(&p->cfg, i);
            if (m == 0) continue;
            const float *got = res->grad_layers[l].p[i];
            e = got ? ag_rel_error(got, p->ref.grad_layers[l].p[i], m) : INFINITY;
            if (!(e <= GRAD_TOL)) {
                snprintf(why, cap, "layers[%d].%s relative error %.3g", l, ag_param_name(i), e);
                return 0;
            }
        }
    return 1;
}

/* ---- load ------------------------------------------------------------------------------ */

typedef struct {
    const char *url;
    double duration_s, rate, async_fraction, hold_s;
    int threads;
    uint64_t seed;
    const problem *problems;
} load_cfg;

typedef struct {
    char kind[160]; /* "404 not_found: ..." */
    long count;
} lost_kind;

typedef struct {
    const load_cfg *cfg;
    int index;
    pthread_t thread;
    /* figures, written by this thread only */
    long sync_requests, sync_ok, async_jobs, async_ok;
    long retries, resubmits, lost, lost_other_node, wrong, failures;
    char lost_node_mismatch[ALTGRAD_JOB_ID_MAX];
    lost_kind lost_kinds[MAX_LOST_KINDS];
    char first_failure[640];
    double *lat_ms;     /* sync request latencies */
    size_t n_lat;
    double *job_lat_ms; /* async: first submission to checked result, --hold included */
    size_t n_job_lat;
    /* jobs per owner node, from the id prefix */
    char nodes[8][32];
    long node_jobs[8];
} worker;

static const char *lost_node_expected; /* --lost-node; read-only once threads run */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void sleep_s(double s)
{
    if (s <= 0) return;
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    nanosleep(&ts, NULL);
}

static void note_failure(worker *w, const char *what, const altgrad_error *e)
{
    w->failures++;
    if (!w->first_failure[0])
        snprintf(w->first_failure, sizeof w->first_failure, "%s: %s (http %ld, %s) %s", what,
                 altgrad_status_name(e->status), e->http_status, e->code, e->message);
}

static void note_latency(worker *w, double ms)
{
    if (w->n_lat < MAX_SAMPLES) w->lat_ms[w->n_lat++] = ms;
}

static void note_job_latency(worker *w, double ms)
{
    if (w->n_job_lat < MAX_SAMPLES) w->job_lat_ms[w->n_job_lat++] = ms;
}

static void node_of(const char *id, char out[32])
{
    /* The id is NODE-<32 hex>: everything before the last '-'. */
    const char *dash = strrchr(id, '-');
    size_t len = dash ? (size_t)(dash - id) : 0;
    if (len >= 32) len = 31;
    memcpy(out, id, len);
    out[len] = 0;
}

static void count_node(worker *w, const char *node)
{
    for (int i = 0; i < 8; i++) {
        if (!w->nodes[i][0]) snprintf(w->nodes[i], sizeof w->nodes[i], "%s", node);
        if (strcmp(w->nodes[i], node) == 0) {
            w->node_jobs[i]++;
            return;
        }
    }
}

static void note_lost(worker *w, const char *id, const altgrad_error *e)
{
    char node[32];
    node_of(id, node);
    w->lost++;
    if (lost_node_expected && strcmp(node, lost_node_expected) != 0) {
        w->lost_other_node++;
        snprintf(w->lost_node_mismatch, sizeof w->lost_node_mismatch, "%s", id);
    }
    char kind[160];
    snprintf(kind, sizeof kind, "%s %ld %s: %.100s", altgrad_status_name(e->status),
             e->http_status, e->code, e->message);
    for (int i = 0; i < MAX_LOST_KINDS; i++) {
        if (!w->lost_kinds[i].kind[0]) snprintf(w->lost_kinds[i].kind, 160, "%s", kind);
        if (strcmp(w->lost_kinds[i].kind, kind) == 0) {
            w->lost_kinds[i].count++;
            return;
        }
    }
}

/* The owner of a job is gone when its status or result can no longer be had: 404 (restarted
 * owner, empty job table), 5xx or no connection after the client's own retries. */
static int job_lost(const altgrad_error *e)
{
    return (e->status == ALTGRAD_E_HTTP_4XX && e->http_status == 404) ||
           e->status == ALTGRAD_E_HTTP_5XX || e->status == ALTGRAD_E_CONNECT ||
           e->status == ALTGRAD_E_TIMEOUT;
}

static void one_sync(worker *w, altgrad_client *c, const problem *p)
{
    altgrad_request req = problem_request(p);
    altgrad_result res;
    altgrad_error e;
    memset(&res, 0, sizeof res);
    memset(&e, 0, sizeof e);
    double t0 = now_s();
    w->sync_requests++;
    altgrad_status st = altgrad_gradients(c, &req, &res, &e);
    if (e.attempts > 1) w->retries += e.attempts - 1;
    if (st != ALTGRAD_OK) {
        note_failure(w, "sync", &e);
        return;
    }
    note_latency(w, (now_s() - t0) * 1e3);
    char why[200];
    if (!result_correct(p, &res, why, sizeof why)) {
        w->wrong++;
        if (!w->first_failure[0]) snprintf(w->first_failure, sizeof w->first_failure,
                                           "sync: wrong gradient: %s", why);
    } else {
        w->sync_ok++;
    }
    altgrad_result_free(&res);
}

/* An async job the driver has submitted and will collect after --hold seconds, as a batch
 * client would: so that at any moment jobs are waiting on every replica, and killing one
 * really loses some. */
typedef struct {
    char id[ALTGRAD_JOB_ID_MAX];
    int problem;
    int submits;      /* 1 + resubmissions */
    double t_first;   /* first submission */
    double t_submit;  /* this submission */
} pending_job;

typedef struct {
    pending_job q[MAX_PENDING];
    size_t head, count;
} pending_queue;

/* Submits job j (already filled but for the id); 0 when queued on the service. */
static int submit_job(worker *w, altgrad_client *c, pending_queue *pq, pending_job j)
{
    const problem *p = &w->cfg->problems[j.problem];
    altgrad_request req = problem_request(p);
    for (; j.submits < MAX_SUBMITS; j.submits++) {
        if (j.submits > 0) w->resubmits++;
        altgrad_error e;
        memset(&e, 0, sizeof e);
        j.t_submit = now_s();
        altgrad_status st = altgrad_job_submit(c, &req, j.id, &e);
        if (e.attempts > 1) w->retries += e.attempts - 1;
        if (st == ALTGRAD_OK) {
            char node[32];
            node_of(j.id, node);
            count_node(w, node);
            j.submits++;
            pq->q[(pq->head + pq->count++) % MAX_PENDING] = j;
            return 0;
        }
        /* POST /v1/jobs is not retried by the client after a broken connection (it could
         * duplicate the job): nothing was queued that could be polled, so submit again. */
        if (!job_lost(&e)) {
            note_failure(w, "job submit", &e);
            return -1;
        }
    }
    altgrad_error e = {.status = ALTGRAD_E_JOB};
    snprintf(e.message, sizeof e.message, "could not be submitted %d times in a row", MAX_SUBMITS);
    note_failure(w, "job submit", &e);
    return -1;
}

/* Waits for the oldest pending job, fetches and checks its result; a lost job is submitted
 * again (to the back of the queue). */
static void collect_job(worker *w, altgrad_client *c, pending_queue *pq)
{
    pending_job j = pq->q[pq->head];
    pq->head = (pq->head + 1) % MAX_PENDING;
    pq->count--;
    const problem *p = &w->cfg->problems[j.problem];
    altgrad_error e;
    memset(&e, 0, sizeof e);
    altgrad_job_info info;
    altgrad_status st = altgrad_job_wait(c, j.id, JOB_WAIT_MS, NULL, NULL, &info, &e);
    altgrad_result res;
    memset(&res, 0, sizeof res);
    if (st == ALTGRAD_OK) {
        st = altgrad_job_result(c, j.id, &p->cfg, &res, &e);
        if (e.attempts > 1) w->retries += e.attempts - 1;
    }
    if (st != ALTGRAD_OK) {
        if (!job_lost(&e)) {
            note_failure(w, "job", &e);
            return;
        }
        note_lost(w, j.id, &e);
        if (j.submits >= MAX_SUBMITS) {
            note_failure(w, "job lost too often", &e);
            return;
        }
        submit_job(w, c, pq, j);
        return;
    }
    note_job_latency(w, (now_s() - j.t_first) * 1e3);
    char why[200];
    if (!result_correct(p, &res, why, sizeof why)) {
        w->wrong++;
        if (!w->first_failure[0]) snprintf(w->first_failure, sizeof w->first_failure,
                                           "job %s: wrong gradient: %s", j.id, why);
    } else {
        w->async_ok++;
    }
    altgrad_result_free(&res);
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    const load_cfg *cfg = w->cfg;
    altgrad_client_opts o = altgrad_client_opts_default();
    o.base_url = cfg->url;
    o.max_retries = 6;
    o.backoff_initial_ms = 100;
    o.backoff_max_ms = 2000;
    o.connect_timeout_ms = 2000;
    o.timeout_ms = 60000;
    o.poll_interval_ms = 20;
    o.seed = cfg->seed * 1000 + (unsigned long)w->index + 1;
    altgrad_error e;
    altgrad_client *c = altgrad_client_new(&o, &e);
    pending_queue *pq = calloc(1, sizeof *pq);
    if (!c || !pq) {
        if (!c) note_failure(w, "client", &e);
        altgrad_client_free(c);
        free(pq);
        return NULL;
    }
    uint64_t s = cfg->seed * 7919 + (uint64_t)w->index + 1;
    double start = now_s(), end = start + cfg->duration_s;
    double period = cfg->rate > 0 ? 1.0 / cfg->rate : 0;
    double next = start + period * (double)w->index / (double)cfg->threads;
    while (now_s() < end) {
        sleep_s(next - now_s());
        next += period;
        if (next < now_s() - 1.0) next = now_s(); /* no burst to catch up after a stall */
        while (pq->count > 0 && now_s() - pq->q[pq->head].t_submit >= cfg->hold_s)
            collect_job(w, c, pq);
        int idx = (int)(rng_next(&s) % N_PROBLEMS);
        double u = (rng_uniform(&s) + 1.0) * 0.5;
        if (u < cfg->async_fraction && pq->count < MAX_PENDING - 1) {
            w->async_jobs++;
            pending_job j = {.problem = idx, .submits = 0, .t_first = now_s()};
            submit_job(w, c, pq, j);
        } else {
            one_sync(w, c, &cfg->problems[idx]);
        }
    }
    while (pq->count > 0) collect_job(w, c, pq); /* the last ones, without waiting for hold */
    altgrad_client_free(c);
    free(pq);
    return NULL;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double percentile(const double *sorted, size_t n, double q)
{
    if (n == 0) return NAN;
    size_t k = (size_t)ceil(q * (double)n);
    if (k < 1) k = 1;
    return sorted[k - 1];
}

static void usage(void)
{
    fprintf(stderr,
            "usage: cluster_load --url URL [--duration S] [--threads T] [--rate R per thread]\n"
            "                    [--async FRACTION] [--seed N] [--min-success F]\n"
            "                    [--hold S] [--lost-node NAME]\n");
}

int main(int argc, char **argv)
{
    load_cfg cfg = {.url = NULL, .duration_s = 30, .rate = 25, .async_fraction = 0.3,
                    .hold_s = 1.0, .threads = 4, .seed = 1};
    double min_success = 0.999;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) {
            usage();
            return 2;
        }
        if (strcmp(a, "--url") == 0) cfg.url = v;
        else if (strcmp(a, "--duration") == 0) cfg.duration_s = atof(v);
        else if (strcmp(a, "--threads") == 0) cfg.threads = atoi(v);
        else if (strcmp(a, "--rate") == 0) cfg.rate = atof(v);
        else if (strcmp(a, "--async") == 0) cfg.async_fraction = atof(v);
        else if (strcmp(a, "--hold") == 0) cfg.hold_s = atof(v);
        else if (strcmp(a, "--seed") == 0) cfg.seed = strtoull(v, NULL, 10);
        else if (strcmp(a, "--min-success") == 0) min_success = atof(v);
        else if (strcmp(a, "--lost-node") == 0) lost_node_expected = v;
        else {
            usage();
            return 2;
        }
        i++;
    }
    if (!cfg.url || cfg.threads < 1 || cfg.threads > MAX_THREADS || !(cfg.duration_s > 0) ||
        cfg.duration_s > 3600 || cfg.rate < 0 || cfg.async_fraction < 0 ||
        cfg.async_fraction > 1 || !(cfg.hold_s >= 0) || cfg.hold_s > 600) {
        usage();
        return 2;
    }

    problem problems[N_PROBLEMS];
    memset(problems, 0, sizeof problems);
    int rc = 1;
    for (int i = 0; i < N_PROBLEMS; i++)
        if (problem_make(&problems[i], i, cfg.seed) != 0) goto out;
    cfg.problems = problems;

    worker *ws = calloc((size_t)cfg.threads, sizeof *ws);
    if (!ws) goto out;
    int started = 0;
    double t0 = now_s();
    for (int i = 0; i < cfg.threads; i++) {
        ws[i].cfg = &cfg;
        ws[i].index = i;
        ws[i].lat_ms = malloc(MAX_SAMPLES * sizeof(double));
        ws[i].job_lat_ms = malloc(MAX_SAMPLES * sizeof(double));
        if (!ws[i].lat_ms || !ws[i].job_lat_ms || pthread_create(&ws[i].thread, NULL, worker_main, &ws[i]) != 0) {
            fprintf(stderr, "cluster_load: cannot start thread %d\n", i);
            break;
        }
        started++;
    }
    for (int i = 0; i < started; i++) pthread_join(ws[i].thread, NULL);
    double elapsed = now_s() - t0;

    worker sum;
    memset(&sum, 0, sizeof sum);
    size_t n_lat = 0, n_job_lat = 0;
    for (int i = 0; i < started; i++) {
        n_lat += ws[i].n_lat;
        n_job_lat += ws[i].n_job_lat;
    }
    double *lat = malloc((n_lat ? n_lat : 1) * sizeof(double));
    double *job_lat = malloc((n_job_lat ? n_job_lat : 1) * sizeof(double));
    n_lat = n_job_lat = 0;
    for (int i = 0; i < started; i++) {
        worker *w = &ws[i];
        sum.sync_requests += w->sync_requests;
        sum.sync_ok += w->sync_ok;
        sum.async_jobs += w->async_jobs;
        sum.async_ok += w->async_ok;
        sum.retries += w->retries;
        sum.resubmits += w->resubmits;
        sum.lost += w->lost;
        sum.lost_other_node += w->lost_other_node;
        sum.wrong += w->wrong;
        sum.failures += w->failures;
        if (w->lost_node_mismatch[0])
            snprintf(sum.lost_node_mismatch, sizeof sum.lost_node_mismatch, "%s",
                     w->lost_node_mismatch);
        if (!sum.first_failure[0] && w->first_failure[0])
            snprintf(sum.first_failure, sizeof sum.first_failure, "%s", w->first_failure);
        for (int k = 0; k < MAX_LOST_KINDS && w->lost_kinds[k].kind[0]; k++)
            for (int j = 0; j < MAX_LOST_KINDS; j++) {
                if (!sum.lost_kinds[j].kind[0])
                    snprintf(sum.lost_kinds[j].kind, 160, "%s", w->lost_kinds[k].kind);
                if (strcmp(sum.lost_kinds[j].kind, w->lost_kinds[k].kind) == 0) {
                    sum.lost_kinds[j].count += w->lost_kinds[k].count;
                    break;
                }
            }
        for (int k = 0; k < 8 && w->nodes[k][0]; k++)
            for (int j = 0; j < 8; j++) {
                if (!sum.nodes[j][0]) snprintf(sum.nodes[j], 32, "%s", w->nodes[k]);
                if (strcmp(sum.nodes[j], w->nodes[k]) == 0) {
                    sum.node_jobs[j] += w->node_jobs[k];
                    break;
                }
            }
        if (lat) {
            memcpy(lat + n_lat, w->lat_ms, w->n_lat * sizeof(double));
            n_lat += w->n_lat;
        }
        if (job_lat) {
            memcpy(job_lat + n_job_lat, w->job_lat_ms, w->n_job_lat * sizeof(double));
            n_job_lat += w->n_job_lat;
        }
    }
    if (lat) qsort(lat, n_lat, sizeof(double), cmp_double);
    if (job_lat) qsort(job_lat, n_job_lat, sizeof(double), cmp_double);

    long requests = sum.sync_requests + sum.async_jobs;
    long successes = sum.sync_ok + sum.async_ok;
    double rate = requests ? (double)successes / (double)requests : 0;
    printf("cluster_load: %.1f s, %d threads, %.0f req/s per thread target, %.0f%% async "
           "(collected after %.1f s)\n", elapsed, started, cfg.rate, cfg.async_fraction * 100,
           cfg.hold_s);
    printf("  requests          %ld (sync %ld, async jobs %ld)\n", requests, sum.sync_requests,
           sum.async_jobs);
    printf("  successes         %ld (%.3f%%; sync %ld, async %ld)\n", successes, rate * 100,
           sum.sync_ok, sum.async_ok);
    printf("  failures          %ld\n", sum.failures);
    printf("  wrong gradients   %ld (every result compared with an in-process exact run, "
           "tolerance %.0e)\n", sum.wrong, GRAD_TOL);
    printf("  client retries    %ld\n", sum.retries);
    printf("  lost async jobs   %ld, resubmitted %ld\n", sum.lost, sum.resubmits);
    for (int k = 0; k < MAX_LOST_KINDS && sum.lost_kinds[k].kind[0]; k++)
        printf("    lost as: %-60s x%ld\n", sum.lost_kinds[k].kind, sum.lost_kinds[k].count);
    printf("  jobs by owner    ");
    for (int k = 0; k < 8 && sum.nodes[k][0]; k++)
        printf(" %s=%ld", sum.nodes[k], sum.node_jobs[k]);
    printf("\n");
    if (lat)
        printf("  sync latency ms   p50 %.2f  p90 %.2f  p99 %.2f  max %.2f  (%zu requests)\n",
               percentile(lat, n_lat, 0.50), percentile(lat, n_lat, 0.90),
               percentile(lat, n_lat, 0.99), n_lat ? lat[n_lat - 1] : NAN, n_lat);
    if (job_lat)
        printf("  job turnaround ms p50 %.2f  p90 %.2f  p99 %.2f  max %.2f  (%zu jobs, hold "
               "included)\n", percentile(job_lat, n_job_lat, 0.50),
               percentile(job_lat, n_job_lat, 0.90), percentile(job_lat, n_job_lat, 0.99),
               n_job_lat ? job_lat[n_job_lat - 1] : NAN, n_job_lat);
    printf("  throughput        %.1f successful requests/s\n",
           elapsed > 0 ? (double)successes / elapsed : 0);
    if (sum.first_failure[0]) printf("  first failure     %s\n", sum.first_failure);

    rc = 0;
    if (requests == 0 || started != cfg.threads) rc = 1;
    if (rate < min_success) {
        printf("FAIL: success rate %.4f%% below %.4f%%\n", rate * 100, min_success * 100);
        rc = 1;
    }
    if (sum.wrong) {
        printf("FAIL: %ld wrong gradients\n", sum.wrong);
        rc = 1;
    }
    if (sum.lost_other_node) {
        printf("FAIL: %ld jobs lost on a replica that was not killed (e.g. %s): misrouted\n",
               sum.lost_other_node, sum.lost_node_mismatch);
        rc = 1;
    }
    free(lat);
    free(job_lat);
    for (int i = 0; i < cfg.threads; i++) {
        free(ws[i].lat_ms);
        free(ws[i].job_lat_ms);
    }
    free(ws);
out:
    for (int i = 0; i < N_PROBLEMS; i++) problem_free(&problems[i]);
    return rc;
}
