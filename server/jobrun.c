#include <stdio.h>
#include <stdlib.h>

#include "compute.h"
#include "http.h"
#include "jobrun.h"
#include "routes.h"

static const char JSON[] = "application/json";

int srv_jobs_at_capacity(server *srv)
{
    return srv->pool.in_flight >= (size_t)srv->cfg.workers + (size_t)srv->cfg.queue;
}

void srv_job_cancel(srv_job *j, srv_cancel_reason why)
{
    int none = SRV_CANCEL_NONE;
    atomic_compare_exchange_strong(&j->cancel_why, &none, (int)why);
    atomic_store(&j->cancel, 1);
    if (j->work.in_flight && atomic_load(&j->state) != SRV_JOB_RUNNING)
        srv_pool_cancel(&j->work);
}

size_t srv_jobs_cancel_in_flight(server *srv, srv_cancel_reason why)
{
    size_t n = 0;
    for (srv_job *j = srv->jobs.all; j; j = j->all_next) {
        if (j->work.in_flight) {
            srv_job_cancel(j, why);
            n++;
        }
    }
    return n;
}

void srv_job_threads_header(http_req *r, const srv_job *j)
{
    if (j->threads <= 0) return;
    char v[16];
    snprintf(v, sizeof v, "%d", j->threads);
    http_add_header(r, "X-Altgrad-Threads", v);
}

static int method_label(int kind)
{
    return kind >= 0 && kind < METHOD_LABELS ? kind : -1;
}

/* The pool's work function: the worker side (compute.c). */
static void job_work(srv_pool_item *it)
{
    srv_job *j = it->data;
    compute_job(j->srv, j);
}

/* The pool's done function: the job's worker part is over, or it was cancelled before it
 * started. */
static void job_done(srv_pool_item *it, int cancelled)
{
    srv_job *j = it->data;
    server *srv = j->srv;
    if (cancelled) compute_job_skipped(srv, j);
    uint64_t now = uv_hrtime();
    j->t_finished = now;
    int st = atomic_load(&j->state);
    if (st != SRV_JOB_CANCELLED) {
        if (j->http_status == 200) st = SRV_JOB_DONE;
        else if (atomic_load(&j->cancel_why) == SRV_CANCEL_USER) st = SRV_JOB_CANCELLED;
        else st = SRV_JOB_FAILED;
        atomic_store(&j->state, st);
    }
    if (!j->out) { /* the error body itself could not be allocated */
        j->http_status = 500;
        ag_proto_fail(&j->error, 500, "out_of_memory", "", "out of memory");
    }

    srv_metrics *m = &srv->metrics;
    if (j->t_started) {
        srv_histogram_observe(&m->queue_wait, (double)(j->t_started - j->t_created) / 1e9);
        int ml = method_label(j->method_kind);
        if (ml >= 0) {
            double busy = j->decode_s + j->compute_s + j->encode_s;
            srv_histogram_observe(&m->compute[ml], busy);
            m->compute_seconds[ml] += j->compute_s;
        }
    }
    m->jobs_finished[st]++;

    if (j->req) {
        srv_request *q = j->req;
        q->job = NULL;
        j->req = NULL;
        srv_job_threads_header(&q->http, j);
        if (j->out) {
            http_reply(&q->http, j->http_status, JSON, j->out, j->out_len, 1);
            j->out = NULL;
        } else {
            http_reply_out_of_memory(&q->http);
        }
        srv_job_destroy(&srv->jobs, j);
        return;
    }
    if (!j->async) { /* its request is gone (only at shutdown) */
        srv_job_destroy(&srv->jobs, j);
        return;
    }
    if (st != SRV_JOB_CANCELLED && j->out) {
        size_t len = j->out_len;
        j->result = srv_blob_new(j->out, len);
        j->out = NULL;
        if (j->result) srv_budget_add(&srv->budget, &j->result_charge, SRV_MEM_RESULT, len);
    } else {
        free(j->out);
        j->out = NULL;
    }
    j->expires = now + srv_ns(srv->cfg.job_ttl_s);
}

int srv_job_submit(server *srv, srv_job *j)
{
    j->srv = srv;
    j->work.data = j;
    return srv_pool_submit(&srv->pool, &j->work, job_work, job_done);
}

void srv_jobs_sweep(server *srv, uint64_t now)
{
    srv_job *next;
    for (srv_job *j = srv->jobs.all; j; j = next) {
        next = j->all_next;
        if (j->work.in_flight) {
            if (j->deadline && now >= j->deadline && !atomic_load(&j->cancel))
                srv_job_cancel(j, SRV_CANCEL_TIMEOUT);
        } else if (j->async && j->expires && now >= j->expires) {
            srv_job_destroy(&srv->jobs, j); /* and its stored result's charge */
        }
    }
}
