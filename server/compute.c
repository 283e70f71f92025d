#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "compute.h"
#include "jobs.h"
#include "server.h"

static void set_error(srv_job *j, const ag_proto_error *e)
{
    j->error = *e;
    j->http_status = e->http_status;
    free(j->out);
    j->out = ag_error_encode(e, &j->out_len);
    if (!j->out) j->out_len = 0;
}

void compute_fail(srv_job *j, int status, const char *code, const char *fmt, ...)
{
    ag_proto_error e;
    memset(&e, 0, sizeof e);
    e.http_status = status;
    snprintf(e.code, sizeof e.code, "%s", code);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e.message, sizeof e.message, fmt, ap);
    va_end(ap);
    set_error(j, &e);
}

void compute_fail_cancelled(server *srv, srv_job *j)
{
    switch ((srv_cancel_reason)atomic_load(&j->cancel_why)) {
    case SRV_CANCEL_TIMEOUT:
        compute_fail(j, 504, "timeout", "the job did not finish within the server's timeout "
                     "of %g s (--timeout)", srv->cfg.timeout_s);
        break;
    case SRV_CANCEL_SHUTDOWN:
        compute_fail(j, 503, "shutting_down", "the server is shutting down; retry on another "
                     "instance");
        break;
    default:
        compute_fail(j, 409, "cancelled", "the job was cancelled");
        break;
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
    compute_fail_cancelled(srv, j);
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

static int fail_core(server *srv, srv_job *j, const ag_error *err)
{
    if (err->status == AG_ERR_CANCELLED) {
        compute_fail_cancelled(srv, j);
        return -1;
    }
    ag_proto_error pe;
    memset(&pe, 0, sizeof pe);
    ag_proto_from_core(err, &pe);
    set_error(j, &pe);
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

void compute_job(server *srv, srv_job *j)
{
    j->t_started = uv_hrtime();
    int expected = SRV_JOB_QUEUED;
    if (!atomic_compare_exchange_strong(&j->state, &expected, SRV_JOB_RUNNING) ||
        atomic_load(&j->cancel)) {
        release_body(srv, j);
        compute_fail_cancelled(srv, j);
        return;
    }

    /* Decode here, not on the loop: a large JSON body takes seconds. */
    uint64_t t0 = uv_hrtime();
    ag_request rq;
    ag_proto_error pe;
    memset(&pe, 0, sizeof pe);
    int drc = ag_request_decode(j->body, j->body_len, &srv->limits, &rq, &pe);
    release_body(srv, j);
    j->decode_s = seconds_since(t0);
    if (drc != 0) {
        if (pe.http_status < 400 || pe.http_status > 599) pe.http_status = 400;
        set_error(j, &pe);
        return;
    }
    j->method_kind = (int)rq.method.kind;

    ag_method exact = ag_method_default(AG_METHOD_EXACT);
    size_t ws = ag_gradients_workspace_bytes(&rq.cfg, rq.batch, rq.n, &rq.method);
    if (rq.verify) ws = sat_add(ws, ag_gradients_workspace_bytes(&rq.cfg, rq.batch, rq.n, &exact));
    srv_charge workspace = {SRV_MEM_WORKSPACE, 0};
    int mrc = ws == SIZE_MAX ? -2 : srv_budget_wait(&srv->budget, &workspace, SRV_MEM_WORKSPACE,
                                                    ws, &j->cancel, j->deadline);
    if (mrc == -2) {
        compute_fail(j, 413, "too_large", "the job needs %zu bytes of workspace; this server "
                     "allows %zu (--memory-limit)", ws, srv->budget.limit);
        ag_request_free(&rq);
        return;
    }
    if (mrc != 0) {
        if (atomic_load(&j->cancel_why) == SRV_CANCEL_NONE)
            atomic_store(&j->cancel_why, SRV_CANCEL_TIMEOUT); /* the deadline passed waiting */
        compute_fail_cancelled(srv, j);
        ag_request_free(&rq);
        return;
    }

    int threads = srv_pool_cores_take(&srv->pool);
    j->threads = threads;
    progress_ctx pc = {j, 0.0, rq.verify ? 0.5 : 1.0};
    ag_run_opts opts = {
        .threads = threads,
        .cancel = &j->cancel,
        .progress = on_progress,
        .progress_ctx = &pc,
        .cost = &srv->cost,
        .rank_ceiling = 0,
        .want_output = (rq.return_mask & AG_RETURN_OUTPUT) != 0,
    };
    uint64_t t1 = uv_hrtime();
    ag_result res, ref;
    memset(&res, 0, sizeof res);
    memset(&ref, 0, sizeof ref);
    ag_error err;
    memset(&err, 0, sizeof err);
    ag_verification ver = {0, NULL};
    int ok;
    if (fault_alloc_now(srv)) {
        ag_error_set(&err, AG_ERR_NOMEM, "", "out of memory for the job's workspace (injected "
                     "by ALTGRAD_FAULT_ALLOC_FAIL)");
        ok = 0;
    } else {
        ok = ag_gradients(&rq.cfg, rq.layers, rq.input, rq.batch, rq.n, &rq.loss, &rq.method,
                          &opts, &res, &err) == AG_OK;
    }
    if (!ok) fail_core(srv, j, &err);
    if (ok && rq.verify && all_heads_exact(&res)) {
        /* Nothing was approximated: the exact run would repeat this one bit for bit (the core
         * is deterministic whatever its thread count), so its errors are zero. */
        ok = verification_zero(&rq, &ver) == 0;
        if (!ok) compute_fail(j, 500, "out_of_memory", "out of memory for the verification");
    } else if (ok && rq.verify) {
        pc.base = 0.5;
        opts.want_output = 0;
        ok = ag_gradients(&rq.cfg, rq.layers, rq.input, rq.batch, rq.n, &rq.loss, &exact, &opts,
                          &ref, &err) == AG_OK;
        if (!ok) fail_core(srv, j, &err);
        if (ok && verification_fill(&rq, &res, &ref, &ver) != 0) {
            compute_fail(j, 500, "out_of_memory", "out of memory for the verification");
            ok = 0;
        }
        ag_result_free(&ref);
    }
    srv_pool_cores_give(&srv->pool, threads);
    j->compute_s = seconds_since(t1);

    if (ok) {
        ag_timing timing = {j->decode_s * 1e3, j->compute_s * 1e3, 0.0};
        size_t len = 0;
        char *body = ag_response_encode_timed(&rq, &res, rq.verify ? &ver : NULL, &timing, &len);
        j->encode_s = timing.encode_ms / 1e3;
        if (!body) {
            compute_fail(j, 500, "out_of_memory", "out of memory while encoding the response");
        } else {
            free(j->out);
            j->out = body;
            j->out_len = len;
            j->http_status = 200;
            atomic_store(&j->progress_ppm, 1000000u);
        }
    }
    free(ver.layers);
    ag_result_free(&res);
    ag_request_free(&rq);
    srv_budget_release(&srv->budget, &workspace);
}
