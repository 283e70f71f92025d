/* GET / DELETE /v1/jobs/{id}, GET /v1/jobs/{id}/result. */
#include <jansson.h>
#include <stdio.h>

#include "handlers.h"
#include "jobrun.h"
#include "server.h"

static json_t *job_view(const srv_job *j)
{
    srv_job_state st = (srv_job_state)atomic_load(&j->state);
    double progress = st == SRV_JOB_DONE ? 1.0 : atomic_load(&j->progress_ppm) / 1e6;
    char url[SRV_JOB_URL_MAX];
    srv_job_url(j, "", url, sizeof url);
    json_t *o = json_pack("{s:s, s:s, s:f, s:s}", "id", j->id, "state", srv_job_state_name(st),
                          "progress", progress, "status_url", url);
    if (!o) return NULL;
    if (st == SRV_JOB_DONE) {
        srv_job_url(j, "/result", url, sizeof url);
        json_object_set_new(o, "result_url", json_string(url));
    }
    if (st == SRV_JOB_FAILED) {
        json_t *e = json_pack("{s:s, s:s, s:s, s:i}", "code", j->error.code, "message",
                              j->error.message, "field", j->error.field, "status",
                              j->error.http_status);
        if (e) json_object_set_new(o, "error", e);
    }
    return o;
}

/* The job named in the path, visible to this request's token; else answers 404. */
static srv_job *visible_job(srv_request *q)
{
    server *srv = q->http.srv;
    srv_job *j = srv_job_find(&srv->jobs, q->param[0]);
    /* Another token's job is indistinguishable from a missing one. */
    if (j && srv->auth.count > 0 && j->owner != q->token) j = NULL;
    if (!j) {
        ag_proto_error e;
        ag_proto_fail(&e, 404, "job_not_found", "id", "no job with this id");
        http_reply_error(&q->http, &e);
    }
    return j;
}

void handle_job_get(srv_request *q)
{
    srv_job *j = visible_job(q);
    if (j) http_reply_json(&q->http, 200, job_view(j));
}

void handle_job_delete(srv_request *q)
{
    srv_job *j = visible_job(q);
    if (!j) return;
    int st = atomic_load(&j->state);
    /* A finished job is left as it is; the cancel is a no-op (still 200, with its state). */
    while (!srv_job_state_terminal((srv_job_state)st)) {
        if (atomic_compare_exchange_weak(&j->state, &st, SRV_JOB_CANCELLED)) {
            srv_job_cancel(j, SRV_CANCEL_USER); /* its TTL starts when the worker lets go of it */
            break;
        }
    }
    http_reply_json(&q->http, 200, job_view(j));
}

void handle_job_result(srv_request *q)
{
    srv_job *j = visible_job(q);
    if (!j) return;
    srv_job_state st = (srv_job_state)atomic_load(&j->state);
    ag_proto_error e;
    if (st == SRV_JOB_DONE || st == SRV_JOB_FAILED) {
        srv_job_threads_header(&q->http, j);
        if (j->result) {
            http_reply_blob(&q->http, j->http_status, "application/json", j->result);
            return;
        }
        ag_proto_fail(&e, 500, "out_of_memory", "", "the job's result was lost");
    } else if (st == SRV_JOB_CANCELLED) {
        ag_proto_fail(&e, 409, "cancelled", "id", "the job was cancelled; it has no result");
    } else {
        http_add_header(&q->http, "Retry-After", "1");
        ag_proto_fail(&e, 409, "not_ready", "id", "the job is %s; its result is not ready",
                      srv_job_state_name(st));
    }
    http_reply_error(&q->http, &e);
}
