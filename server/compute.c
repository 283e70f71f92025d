#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "compute.h"
#include "jobs.h"
#include "server.h"

/* Sets j's error and renders its body (none when even that cannot be allocated). */
static void set_error(srv_job *j, const ag_proto_error *e)
{
    j->error = *e;
    j->http_status = e->http_status;
    free(j->out);
    j->out = ag_error_encode(e, &j->out_len);
    if (!j->out) j->out_len = 0;
}

/* The error matching j's cancel reason (timeout 504, shutdown 503, user 409); returns -1. */
static int cancelled_error(server *srv, const srv_job *j, ag_proto_error *e)
{
    switch ((srv_cancel_reason)atomic_load(&j->cancel_why)) {
    case SRV_CANCEL_TIMEOUT:
        return ag_proto_fail(e, 504, "timeout", "", "the job did not finish within the server's "
                             "timeout of %g s (--timeout)", srv->cfg.timeout_s);
    case SRV_CANCEL_SHUTDOWN:
        return ag_proto_fail(e, 503, "shutting_down", "", "the server is shutting down; retry on "
                             "another instance");
    default:
        return ag_proto_fail(e, 409, "cancelled", "", "the job was cancelled");
    }
}

static void release_body(server *srv, srv_job *j)
{
    free(j->body);
    j->body = NULL;
    j->body_len = 0;
    srv_budget_release(&srv->budget, &j->body_charge);
}

void compute_job_skipped(server *srv, srv_job *j)
{
    release_body(srv, j);
    ag_proto_error e;
    cancelled_error(srv, j, &e);
    set_error(j, &e);
}

/* Progress of a job whose core may run twice (verify): each run covers [base, base+span]. */
typedef struct {
    srv_job *j;
    double base, span;
} progress_ctx;

static void on_progress(void *ctx, double fraction)
{
    progress_ctx *p = ctx;
    if (!(fraction >= 0)) fraction = 0; /* also NaN */
    if (fraction > 1) fraction = 1;
    double v = p->base + p->span * fraction;
    unsigned ppm = (unsigned)(v * 1e6);
    /* Monotone: never let a late callback move the bar backwards. */
    unsigned cur = atomic_load(&p->j->progress_ppm);
    while (ppm > cur && !atomic_compare_exchange_weak(&p->j->progress_ppm, &cur, ppm)) {
    }
}

static double seconds_since(uint64_t t0)
{
    return (double)(uv_hrtime() - t0) / 1e9;
}

static size_t sat_add(size_t a, size_t b)
{
    return a > SIZE_MAX - b ? SIZE_MAX : a + b;
}

/* The API error for a failed core run; returns -1. */
static int core_error(server *srv, const srv_job *j, const ag_error *err, ag_proto_error *e)
{
    if (err->status == AG_ERR_CANCELLED) return cancelled_error(srv, j, e);
    ag_proto_from_core(err, e);
    return -1;
}

/* Relative errors of every gradient of res against the exact ref. */
static int verification_fill(const ag_request *rq, const ag_result *res, const ag_result *ref,
                             ag_verification *v)
{
    size_t count = res->batch * res->n * res->d_model;
    v->grad_input = ag_rel_error(res->grad_input, ref->grad_input, count);
    v->layers = malloc((size_t)rq->cfg.n_layers * AG_P_COUNT * sizeof *v->layers);
    if (!v->layers) return -1;
    for (int l = 0; l < rq->cfg.n_layers; l++) {
        for (int p = 0; p < AG_P_COUNT; p++) {
            size_t n = ag_param_numel(&rq->cfg, p);
            const float *a = res->grad_layers[l].p[p], *b = ref->grad_layers[l].p[p];
            v->layers[(size_t)l * AG_P_COUNT + p] = n && a && b ? ag_rel_error(a, b, n) : NAN;
        }
    }
    return 0;
}

static int all_heads_exact(const ag_result *res)
{
    if (!res->heads) return 0;
    for (int i = 0; i < res->n_layers * res->n_heads; i++)
        if (res->heads[i].method != AG_METHOD_EXACT) return 0;
    return 1;
}

static int verification_zero(const ag_request *rq, ag_verification *v)
{
    v->grad_input = 0;
    v->layers = malloc((size_t)rq->cfg.n_layers * AG_P_COUNT * sizeof *v->layers);
    if (!v->layers) return -1;
    for (int l = 0; l < rq->cfg.n_layers; l++)
        for (int p = 0; p < AG_P_COUNT; p++)
            v->layers[(size_t)l * AG_P_COUNT + p] = ag_param_numel(&rq->cfg, p) ? 0.0 : NAN;
    return 0;
}

/* The fault-injection hook: whether this job's core run must fail as out of memory. */
static int fault_alloc_now(server *srv)
{
    if (!srv->fault_alloc_every) return 0;
    unsigned k = atomic_fetch_add(&srv->fault_alloc_seq, 1) + 1;
    return k % srv->fault_alloc_every == 0;
}

/* The exact run that measures the errors of res (verify): fills ver. 0, or -1 with e. */
static int verify(server *srv, const srv_job *j, const ag_request *rq, ag_run_opts *opts,
                  progress_ctx *pc, const ag_result *res, ag_verification *ver,
                  ag_proto_error *e)
{
    if (all_heads_exact(res)) {
        /* Nothing was approximated: the exact run would repeat this one bit for bit (the core
         * is deterministic whatever its thread count), so its errors are zero. */
        if (verification_zero(rq, ver) != 0)
            return ag_proto_fail(e, 500, "out_of_memory", "", "out of memory for the "
                                 "verification");
        return 0;
    }
    ag_method exact = ag_method_default(AG_METHOD_EXACT);
    pc->base = 0.5;
    opts->want_output = 0;
    ag_result ref;
    memset(&ref, 0, sizeof ref);
    ag_error err;
    memset(&err, 0, sizeof err);
    int rc = 0;
    if (ag_gradients(&rq->cfg, rq->layers, rq->input, rq->batch, rq->n, &rq->loss, &exact, opts,
                     &ref, &err) != AG_OK)
        rc = core_error(srv, j, &err, e);
    else if (verification_fill(rq, res, &ref, ver) != 0)
        rc = ag_proto_fail(e, 500, "out_of_memory", "", "out of memory for the verification");
    ag_result_free(&ref);
    return rc;
}

/* The response body of a successful run, with its timings, as j's output: 0, or -1 with e. */
static int encode(srv_job *j, const ag_request *rq, const ag_result *res,
                  const ag_verification *ver, ag_proto_error *e)
{
    ag_timing timing = {j->decode_s * 1e3, j->compute_s * 1e3, 0.0};
    size_t len = 0;
    char *body = ag_response_encode_timed(rq, res, ver, &timing, &len);
    j->encode_s = timing.encode_ms / 1e3;
    if (!body)
        return ag_proto_fail(e, 500, "out_of_memory", "", "out of memory while encoding the "
                             "response");
    free(j->out);
    j->out = body;
    j->out_len = len;
    j->http_status = 200;
    atomic_store(&j->progress_ppm, 1000000u);
    return 0;
}

/* The core on the free cores (twice for verify), then the encoding: 0, or -1 with e. */
static int compute(server *srv, srv_job *j, const ag_request *rq, ag_proto_error *e)
{
    int threads = srv_pool_cores_take(&srv->pool);
    j->threads = threads;
    progress_ctx pc = {j, 0.0, rq->verify ? 0.5 : 1.0};
    ag_run_opts opts = {
        .threads = threads,
        .cancel = &j->cancel,
        .progress = on_progress,
        .progress_ctx = &pc,
        .cost = &srv->cost,
        .rank_ceiling = 0,
        .want_output = (rq->return_mask & AG_RETURN_OUTPUT) != 0,
    };
    uint64_t t1 = uv_hrtime();
    ag_result res;
    memset(&res, 0, sizeof res);
    ag_error err;
    memset(&err, 0, sizeof err);
    ag_verification ver = {0, NULL};
    int rc = 0;
    if (fault_alloc_now(srv)) {
        ag_error_set(&err, AG_ERR_NOMEM, "", "out of memory for the job's workspace (injected "
                     "by ALTGRAD_FAULT_ALLOC_FAIL)");
        rc = core_error(srv, j, &err, e);
    } else if (ag_gradients(&rq->cfg, rq->layers, rq->input, rq->batch, rq->n, &rq->loss,
                            &rq->method, &opts, &res, &err) != AG_OK) {
        rc = core_error(srv, j, &err, e);
    }
    if (rc == 0 && rq->verify) rc = verify(srv, j, rq, &opts, &pc, &res, &ver, e);
    srv_pool_cores_give(&srv->pool, threads);
    j->compute_s = seconds_since(t1);
    if (rc == 0) rc = encode(j, rq, &res, rq->verify ? &ver : NULL, e);
    free(ver.layers);
    ag_result_free(&res);
    return rc;
}

/* The whole worker side: 0 with j's response body in j->out, or -1 with e. */
static int run(server *srv, srv_job *j, ag_proto_error *e)
{
    j->t_started = uv_hrtime();
    int expected = SRV_JOB_QUEUED;
    if (!atomic_compare_exchange_strong(&j->state, &expected, SRV_JOB_RUNNING) ||
        atomic_load(&j->cancel)) {
        release_body(srv, j);
        return cancelled_error(srv, j, e);
    }

    /* Decode here, not on the loop: a large JSON body takes seconds. */
    uint64_t t0 = uv_hrtime();
    ag_request rq;
    int drc = ag_request_decode(j->body, j->body_len, &srv->limits, &rq, e);
    release_body(srv, j);
    j->decode_s = seconds_since(t0);
    if (drc != 0) {
        if (e->http_status < 400 || e->http_status > 599) e->http_status = 400;
        return -1;
    }
    j->method_kind = (int)rq.method.kind;

    ag_method exact = ag_method_default(AG_METHOD_EXACT);
    size_t ws = ag_gradients_workspace_bytes(&rq.cfg, rq.batch, rq.n, &rq.method);
    if (rq.verify) ws = sat_add(ws, ag_gradients_workspace_bytes(&rq.cfg, rq.batch, rq.n, &exact));
    srv_charge workspace = {SRV_MEM_WORKSPACE, 0};
    int mrc = ws == SIZE_MAX ? -2 : srv_budget_wait(&srv->budget, &workspace, SRV_MEM_WORKSPACE,
                                                    ws, &j->cancel, j->deadline);
    int rc;
    if (mrc == -2) {
        rc = ag_proto_fail(e, 413, "too_large", "", "the job needs %zu bytes of workspace; this "
                           "server allows %zu (--memory-limit)", ws, srv->budget.limit);
    } else if (mrc != 0) {
        int none = SRV_CANCEL_NONE; /* unless cancelled, the deadline passed while waiting */
        atomic_compare_exchange_strong(&j->cancel_why, &none, SRV_CANCEL_TIMEOUT);
        rc = cancelled_error(srv, j, e);
    } else {
        rc = compute(srv, j, &rq, e);
    }
    ag_request_free(&rq);
    srv_budget_release(&srv->budget, &workspace);
    return rc;
}

void compute_job(server *srv, srv_job *j)
{
    ag_proto_error e;
    memset(&e, 0, sizeof e);
    if (run(srv, j, &e) != 0) set_error(j, &e);
}
