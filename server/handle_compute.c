/* POST /v1/gradients (the answer waits for the job) and POST /v1/jobs (202 with an id). */
#include <jansson.h>

#include "handlers.h"
#include "jobrun.h"
#include "server.h"

/* Refuses new work while draining or at capacity (the checks a compute request passes when
 * its headers arrive and again when its body is in): -1 with e filled, or 0. */
static int admit_work(srv_request *q, ag_proto_error *e)
{
    server *srv = q->http.srv;
    if (srv->life.draining) {
        srv->metrics.rejected_draining++;
        http_add_header(&q->http, "Retry-After", "5");
        return ag_proto_fail(e, 503, "draining", "", "the server is shutting down and takes no "
                             "new work");
    }
    if (srv_jobs_at_capacity(srv)) {
        srv->metrics.rejected_queue_full++;
        http_add_header(&q->http, "Retry-After", "1");
        return ag_proto_fail(e, 429, "queue_full", "", "the server has %d jobs running or "
                             "queued, its limit (--workers %d + --queue %d); retry later",
                             (int)srv->pool.in_flight, srv->cfg.workers, srv->cfg.queue);
    }
    return 0;
}

/* The checks before the body is read, in this order: -1 with e filled, or 0. */
static int admit(srv_request *q, ag_proto_error *e)
{
    server *srv = q->http.srv;
    if (srv_body_check_headers(q, e) != 0 || admit_work(q, e) != 0) return -1;
    if (q->async && srv->jobs.count >= (size_t)srv->cfg.max_jobs) {
        srv->metrics.rejected_queue_full++;
        http_add_header(&q->http, "Retry-After", "5");
        return ag_proto_fail(e, 429, "too_many_jobs", "", "the server holds %d async jobs, its "
                             "limit (--max-jobs); retry later or fetch finished results",
                             srv->cfg.max_jobs);
    }
    return srv_body_expect(q, e);
}

static void begin(srv_request *q, int async)
{
    q->async = async;
    ag_proto_error e;
    if (admit(q, &e) != 0) http_reply_error(&q->http, &e);
}

void handle_gradients_begin(srv_request *q)
{
    begin(q, 0);
}

void handle_jobs_begin(srv_request *q)
{
    begin(q, 1);
}

/* A job for q's body, queued (the body moves to it); NULL with e filled when none could be
 * (the body stays the request's, freed at its end). */
static srv_job *start_job(srv_request *q, ag_proto_error *e)
{
    server *srv = q->http.srv;
    srv_job *j = srv_job_new(&srv->jobs);
    if (!j) {
        ag_proto_fail(e, 500, "out_of_memory", "", "out of memory for the job");
        return NULL;
    }
    j->body = srv_body_take(q, &j->body_len, &j->body_charge);
    j->owner = q->token;
    j->t_created = uv_hrtime();
    j->deadline = srv->cfg.timeout_s > 0 ? j->t_created + srv_ns(srv->cfg.timeout_s) : 0;
    if (q->async && srv_job_register(&srv->jobs, j, srv->cfg.node_id) != 0) {
        srv_job_destroy(&srv->jobs, j);
        ag_proto_fail(e, 500, "internal", "", "no randomness for a job id");
        return NULL;
    }
    if (!q->async) {
        j->req = q;
        q->job = j;
    }
    int rc = srv_job_submit(srv, j);
    if (rc != 0) {
        q->job = NULL;
        srv_job_destroy(&srv->jobs, j);
        ag_proto_fail(e, 500, "internal", "", "cannot queue the job: %s", uv_strerror(rc));
        return NULL;
    }
    srv->metrics.jobs_accepted++;
    return j;
}

void handle_compute_complete(srv_request *q)
{
    ag_proto_error e;
    srv_job *j = NULL;
    /* admit_work again: the state may have changed while the body was arriving. */
    if (srv_body_complete(q, &e) != 0 || admit_work(q, &e) != 0 || !(j = start_job(q, &e))) {
        http_reply_error(&q->http, &e);
        return;
    }
    if (!q->async) {
        http_suspend(&q->http); /* answered when the job is done (jobrun.c) */
        return;
    }
    char url[SRV_JOB_URL_MAX];
    srv_job_url(j, "", url, sizeof url);
    http_add_header(&q->http, MHD_HTTP_HEADER_LOCATION, url);
    http_reply_json(&q->http, 202, json_pack("{s:s, s:s, s:s}", "id", j->id, "status_url", url,
                                             "state", "queued"));
}
