/* Routing and the endpoint handlers of docs/api.md. Loop thread only. */
#include <cblas.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http.h"
#include "jobrun.h"

static const char JSON[] = "application/json";

/* ---- small JSON replies ---------------------------------------------------------------- */

static int reply_json(http_req *r, int status, json_t *obj)
{
    if (!obj) return http_reply_out_of_memory(r);
    char *s = json_dumps(obj, JSON_COMPACT | JSON_REAL_PRECISION(9));
    json_decref(obj);
    if (!s) return http_reply_out_of_memory(r);
    return http_reply(r, status, JSON, s, strlen(s), 1);
}

/* ---- capacity -------------------------------------------------------------------------- */

/* Refuses new work while draining or at capacity (the checks a compute request passes when
 * its headers arrive and again when its body is in): -1 with e filled, or 0. */
static int admit_work(http_req *r, ag_proto_error *e)
{
    server *srv = r->srv;
    if (srv->life.draining) {
        srv->metrics.rejected_draining++;
        http_add_header(r, "Retry-After", "5");
        return ag_proto_fail(e, 503, "draining", "", "the server is shutting down and takes no "
                             "new work");
    }
    if (srv_jobs_at_capacity(srv)) {
        srv->metrics.rejected_queue_full++;
        http_add_header(r, "Retry-After", "1");
        return ag_proto_fail(e, 429, "queue_full", "", "the server has %d jobs running or "
                             "queued, its limit (--workers %d + --queue %d); retry later",
                             (int)srv->pool.in_flight, srv->cfg.workers, srv->cfg.queue);
    }
    return 0;
}

/* ---- job views ------------------------------------------------------------------------- */

static json_t *job_view(const srv_job *j)
{
    srv_job_state st = (srv_job_state)atomic_load(&j->state);
    double progress = st == SRV_JOB_DONE ? 1.0 : atomic_load(&j->progress_ppm) / 1e6;
    char url[SRV_JOB_ID_MAX + 16];
    snprintf(url, sizeof url, "/v1/jobs/%s", j->id);
    json_t *o = json_pack("{s:s, s:s, s:f, s:s}", "id", j->id, "state", srv_job_state_name(st),
                          "progress", progress, "status_url", url);
    if (!o) return NULL;
    if (st == SRV_JOB_DONE) {
        char rurl[SRV_JOB_ID_MAX + 24];
        snprintf(rurl, sizeof rurl, "/v1/jobs/%s/result", j->id);
        json_object_set_new(o, "result_url", json_string(rurl));
    }
    if (st == SRV_JOB_FAILED) {
        json_t *e = json_pack("{s:s, s:s, s:s, s:i}", "code", j->error.code, "message",
                              j->error.message, "field", j->error.field, "status",
                              j->error.http_status);
        if (e) json_object_set_new(o, "error", e);
    }
    return o;
}

/* ---- handlers -------------------------------------------------------------------------- */

static void handle_info(http_req *r)
{
    server *srv = r->srv;
    const srv_config *c = &srv->cfg;
    const ag_proto_limits *l = &srv->limits;
    json_t *o = json_pack(
        "{s:s, s:s, s:i, s:{s:I, s:i, s:i, s:f, s:f, s:i, s:I, s:i, s:I, s:I, s:i, s:i, s:i, "
        "s:I, s:i}, s:{s:s, s:i, s:i}, s:[s,s,s], s:[s,s], s:[s,s], s:[s,s], s:i, s:i, "
        "s:{s:f, s:f}, s:b, s:b, s:s}",
        "name", "altgrad", "version", ALTGRAD_VERSION, "api_version", 1,
        "limits",
        "max_body_bytes", (json_int_t)c->max_body, "queue", c->queue, "max_jobs", c->max_jobs,
        "timeout_s", c->timeout_s, "job_ttl_s", c->job_ttl_s, "max_connections",
        c->max_connections, "memory_limit_bytes", (json_int_t)c->memory_limit,
        "connection_timeout_s", (int)c->connection_timeout_s,
        "max_elements", (json_int_t)l->max_elements, "max_tensor_elements",
        (json_int_t)l->max_tensor_elements, "max_layers", l->max_layers, "max_d_model",
        l->max_d_model, "max_d_ff", l->max_d_ff, "max_tokens", (json_int_t)l->max_tokens,
        "max_degree", AG_MAX_DEGREE,
        "blas", "config", openblas_get_config(), "threads", openblas_get_num_threads(),
        "parallel", openblas_get_parallel(),
        "methods", "exact", "approx", "auto",
        "routes", "features", "paper",
        "encodings", "json", "b64",
        "dtypes", "float32", "float64",
        "workers", c->workers, "cores", c->cores,
        "cost_model", "exact_s_per_flop", srv->cost.exact_s_per_flop, "approx_s_per_flop",
        srv->cost.approx_s_per_flop,
        "tls", srv->tls, "auth", srv->auth.count > 0, "node_id", c->node_id);
    reply_json(r, 200, o);
}

static void handle_ready(http_req *r)
{
    server *srv = r->srv;
    ag_proto_error e;
    if (srv->life.draining) {
        http_add_header(r, "Retry-After", "5");
        ag_proto_fail(&e, 503, "draining", "", "the server is shutting down");
        http_reply_error(r, &e);
    } else if (srv_jobs_at_capacity(srv)) {
        http_add_header(r, "Retry-After", "1");
        ag_proto_fail(&e, 503, "queue_full", "", "the job queue is full");
        http_reply_error(r, &e);
    } else {
        reply_json(r, 200, json_pack("{s:s}", "status", "ready"));
    }
}

static void handle_metrics(http_req *r)
{
    server *srv = r->srv;
    srv_gauges g;
    memset(&g, 0, sizeof g);
    g.queue_depth = atomic_load(&srv->pool.waiting);
    g.running = atomic_load(&srv->pool.running);
    g.in_flight = srv->pool.in_flight;
    g.connections = http_connections(srv);
    g.suspended = srv->suspended;
    for (srv_job *j = srv->jobs.all; j; j = j->all_next) {
        int st = atomic_load(&j->state);
        if (st >= 0 && st < SRV_JOB_OUTCOMES) g.jobs_by_state[st]++;
    }
    g.memory_used = srv_budget_used(&srv->budget);
    g.memory_limit = srv->budget.limit;
    g.free_cores = srv_pool_free_cores(&srv->pool);
    g.workers = srv->cfg.workers;
    g.cores = srv->cfg.cores;
    g.draining = srv->life.draining;
    g.uptime_s = (double)(uv_hrtime() - srv->started_ns) / 1e9;
    g.version = ALTGRAD_VERSION;
    size_t len = 0;
    char *text = srv_metrics_render(&srv->metrics, &g, &len);
    if (!text) {
        http_reply_out_of_memory(r);
        return;
    }
    http_reply(r, 200, "text/plain; version=0.0.4; charset=utf-8", text, len, 1);
}

/* The job named in the path, visible to this request's token; else answers 404. */
static srv_job *visible_job(http_req *r)
{
    srv_job *j = srv_job_find(&r->srv->jobs, r->job_id);
    /* Another token's job is indistinguishable from a missing one. */
    if (j && r->srv->auth.count > 0 && j->owner != r->token) j = NULL;
    if (!j) {
        ag_proto_error e;
        ag_proto_fail(&e, 404, "job_not_found", "id", "no job with this id");
        http_reply_error(r, &e);
    }
    return j;
}

static void handle_job_get(http_req *r)
{
    srv_job *j = visible_job(r);
    if (j) reply_json(r, 200, job_view(j));
}

static void handle_job_delete(http_req *r)
{
    srv_job *j = visible_job(r);
    if (!j) return;
    int st = atomic_load(&j->state);
    /* A finished job is left as it is; the cancel is a no-op (still 200, with its state). */
    while (!srv_job_state_terminal((srv_job_state)st)) {
        if (atomic_compare_exchange_weak(&j->state, &st, SRV_JOB_CANCELLED)) {
            srv_job_cancel(j, SRV_CANCEL_USER); /* its TTL starts when the worker lets go of it */
            break;
        }
    }
    reply_json(r, 200, job_view(j));
}

static void handle_job_result(http_req *r)
{
    srv_job *j = visible_job(r);
    if (!j) return;
    srv_job_state st = (srv_job_state)atomic_load(&j->state);
    ag_proto_error e;
    if (st == SRV_JOB_DONE || st == SRV_JOB_FAILED) {
        srv_job_threads_header(r, j);
        if (j->result) {
            http_reply_blob(r, j->http_status, JSON, j->result);
            return;
        }
        ag_proto_fail(&e, 500, "out_of_memory", "", "the job's result was lost");
    } else if (st == SRV_JOB_CANCELLED) {
        ag_proto_fail(&e, 409, "cancelled", "id", "the job was cancelled; it has no result");
    } else {
        http_add_header(r, "Retry-After", "1");
        ag_proto_fail(&e, 409, "not_ready", "id", "the job is %s; its result is not ready",
                      srv_job_state_name(st));
    }
    http_reply_error(r, &e);
}

/* ---- compute requests ------------------------------------------------------------------ */

/* "application/json" with optional parameters ("; charset=utf-8"). */
static int is_json_type(const char *ct)
{
    if (!ct) return 0;
    while (*ct == ' ' || *ct == '\t') ct++;
    if (strncasecmp(ct, "application/json", 16) != 0) return 0;
    const char *rest = ct + 16;
    while (*rest == ' ' || *rest == '\t') rest++;
    return *rest == '\0' || *rest == ';';
}

/* The checks of a compute POST before its body is read, in this order: -1 with e filled, or
 * 0. */
static int admit_compute(http_req *r, ag_proto_error *e)
{
    server *srv = r->srv;
    const char *ct = http_header(r, MHD_HTTP_HEADER_CONTENT_TYPE);
    if (!is_json_type(ct))
        return ag_proto_fail(e, 415, "unsupported_media_type", "Content-Type",
                             "the body must be application/json, got %s",
                             ct ? "another type" : "no Content-Type");
    const char *cl = http_header(r, MHD_HTTP_HEADER_CONTENT_LENGTH);
    r->content_length = (size_t)-1;
    if (cl) {
        char *end;
        unsigned long long v = strtoull(cl, &end, 10);
        if (end == cl || *end || cl[0] == '-')
            return ag_proto_fail(e, 400, "invalid_request", "Content-Length",
                                 "invalid Content-Length");
        if (v > srv->cfg.max_body) {
            srv->metrics.rejected_too_large++;
            return ag_proto_fail(e, 413, "too_large", "", "the body has %llu bytes; this "
                                 "server takes at most %zu (--max-body)", v, srv->cfg.max_body);
        }
        r->content_length = (size_t)v;
    }
    if (admit_work(r, e) != 0) return -1;
    if (r->async && srv->jobs.count >= (size_t)srv->cfg.max_jobs) {
        srv->metrics.rejected_queue_full++;
        http_add_header(r, "Retry-After", "5");
        return ag_proto_fail(e, 429, "too_many_jobs", "", "the server holds %d async jobs, its "
                             "limit (--max-jobs); retry later or fetch finished results",
                             srv->cfg.max_jobs);
    }
    if (r->content_length != (size_t)-1 && r->content_length > srv->budget.limit) {
        srv->metrics.rejected_too_large++;
        return ag_proto_fail(e, 413, "too_large", "", "the body has %zu bytes; this server's "
                             "memory budget is %zu (--memory-limit)", r->content_length,
                             srv->budget.limit);
    }
    /* Only a check: the buffer (and its reservation) grows as bytes arrive, so a client that
     * declares a large body and sends nothing holds next to nothing. */
    if (r->content_length != (size_t)-1 && !srv_budget_fits(&srv->budget, r->content_length)) {
        srv->metrics.rejected_memory++;
        http_add_header(r, "Retry-After", "1");
        return ag_proto_fail(e, 429, "server_busy", "", "the server's memory budget is in use "
                             "(--memory-limit); retry later");
    }
    return 0;
}

static void begin_compute(http_req *r)
{
    ag_proto_error e;
    if (admit_compute(r, &e) != 0) {
        http_reply_error(r, &e);
        return;
    }
    r->wants_body = 1;
}

/* The body is refused while it arrives (r->reject is set): drop what was kept; the rest is
 * read and discarded, and the refusal answered once it is in. */
static void reject_body(http_req *r)
{
    free(r->body);
    r->body = NULL;
    r->body_len = r->body_cap = 0;
    srv_budget_release(&r->srv->budget, &r->body_charge);
}

int routes_body(http_req *r, const char *data, size_t len)
{
    server *srv = r->srv;
    r->bytes_in += len;
    if (!r->wants_body || r->reject.http_status) {
        /* Discarding, so that the answer reaches the client; an endless body is cut. */
        size_t cut = (size_t)64 << 20;
        cut = srv->cfg.max_body > SIZE_MAX - cut ? SIZE_MAX : srv->cfg.max_body + cut;
        return r->bytes_in > cut ? -1 : 0;
    }
    if (len > srv->cfg.max_body - r->body_len) {
        srv->metrics.rejected_too_large++;
        ag_proto_fail(&r->reject, 413, "too_large", "", "the body is over %zu bytes (--max-body)",
                      srv->cfg.max_body);
        reject_body(r);
        return 0;
    }
    size_t need = r->body_len + len;
    if (need > r->body_cap) {
        /* Geometric growth up to the declared length (or --max-body when chunked). */
        size_t top = r->content_length != (size_t)-1 && r->content_length >= need
                         ? r->content_length : srv->cfg.max_body;
        size_t cap = r->body_cap ? r->body_cap : 64 * 1024;
        while (cap < need) cap = cap > top / 2 ? top : cap * 2;
        if (cap > top) cap = top;
        size_t more = cap - r->body_cap;
        if (r->body_charge.bytes + more > srv->budget.limit) {
            srv->metrics.rejected_too_large++;
            ag_proto_fail(&r->reject, 413, "too_large", "", "the body is larger than this "
                          "server's memory budget (--memory-limit)");
            reject_body(r);
            return 0;
        }
        if (srv_budget_try(&srv->budget, &r->body_charge, SRV_MEM_BODY, more) != 0) {
            srv->metrics.rejected_memory++;
            ag_proto_fail(&r->reject, 429, "server_busy", "", "the server's memory budget is in "
                          "use (--memory-limit); retry later");
            reject_body(r);
            return 0;
        }
        char *nb = realloc(r->body, cap + 1);
        if (!nb) {
            ag_proto_fail(&r->reject, 500, "out_of_memory", "", "out of memory for the body");
            reject_body(r);
            return 0;
        }
        r->body = nb;
        r->body_cap = cap;
    }
    memcpy(r->body + r->body_len, data, len);
    r->body_len += len;
    return 0;
}

static void complete_compute(http_req *r)
{
    server *srv = r->srv;
    ag_proto_error e;
    if (r->reject.http_status) {
        if (r->reject.http_status == 429) http_add_header(r, "Retry-After", "1");
        http_reply_error(r, &r->reject);
        return;
    }
    if (r->body_len == 0) {
        ag_proto_fail(&e, 400, "invalid_json", "", "the request body is empty");
        http_reply_error(r, &e);
        return;
    }
    /* The state may have changed while the body was arriving. */
    if (admit_work(r, &e) != 0) {
        http_reply_error(r, &e);
        return;
    }
    srv_job *j = srv_job_new(&srv->jobs);
    if (!j) {
        ag_proto_fail(&e, 500, "out_of_memory", "", "out of memory for the job");
        http_reply_error(r, &e);
        return;
    }
    r->body[r->body_len] = 0;
    j->body = r->body;
    j->body_len = r->body_len;
    j->body_charge = r->body_charge;
    r->body = NULL;
    r->body_len = r->body_cap = 0;
    r->body_charge.bytes = 0;
    j->owner = r->token;
    j->t_created = uv_hrtime();
    j->deadline = srv->cfg.timeout_s > 0 ? j->t_created + srv_ns(srv->cfg.timeout_s) : 0;
    if (r->async && srv_job_register(&srv->jobs, j, srv->cfg.node_id) != 0) {
        srv_job_destroy(&srv->jobs, j);
        ag_proto_fail(&e, 500, "internal", "", "no randomness for a job id");
        http_reply_error(r, &e);
        return;
    }
    if (!r->async) {
        j->req = r;
        r->job = j;
    }
    int rc = srv_job_submit(srv, j);
    if (rc != 0) {
        r->job = NULL;
        srv_job_destroy(&srv->jobs, j);
        ag_proto_fail(&e, 500, "internal", "", "cannot queue the job: %s", uv_strerror(rc));
        http_reply_error(r, &e);
        return;
    }
    srv->metrics.jobs_accepted++;
    if (r->async) {
        char url[SRV_JOB_ID_MAX + 16];
        snprintf(url, sizeof url, "/v1/jobs/%s", j->id);
        http_add_header(r, MHD_HTTP_HEADER_LOCATION, url);
        reply_json(r, 202, json_pack("{s:s, s:s, s:s}", "id", j->id, "status_url", url,
                                     "state", "queued"));
    } else {
        http_suspend(r);
    }
}

/* ---- routing --------------------------------------------------------------------------- */

static const char *allowed_methods(srv_route route)
{
    switch (route) {
    case ROUTE_GRADIENTS: case ROUTE_JOBS: return "POST";
    case ROUTE_JOB: return "GET, HEAD, DELETE";
    default: return "GET, HEAD";
    }
}

static int method_allowed(srv_route route, http_method m)
{
    switch (route) {
    case ROUTE_GRADIENTS: case ROUTE_JOBS: return m == HM_POST;
    case ROUTE_JOB: return m == HM_GET || m == HM_HEAD || m == HM_DELETE;
    default: return m == HM_GET || m == HM_HEAD;
    }
}

/* Fills r->route (and r->job_id); ROUTE_OTHER when nothing matches. */
static void match(http_req *r, const char *url)
{
    static const struct {
        const char *path;
        srv_route route;
    } fixed[] = {
        {"/v1/gradients", ROUTE_GRADIENTS}, {"/v1/jobs", ROUTE_JOBS},
        {"/v1/info", ROUTE_INFO},           {"/health/live", ROUTE_LIVE},
        {"/health/ready", ROUTE_READY},     {"/metrics", ROUTE_METRICS},
    };
    r->route = ROUTE_OTHER;
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) {
        if (strcmp(url, fixed[i].path) == 0) {
            r->route = fixed[i].route;
            return;
        }
    }
    if (strncmp(url, "/v1/jobs/", 9) != 0) return;
    const char *id = url + 9;
    size_t n = 0;
    while (id[n] && id[n] != '/') n++;
    if (n == 0 || n >= SRV_JOB_ID_MAX) return;
    /* Job ids are [NODE-]<32 hex>, NODE of [A-Za-z0-9_-] (--node-id): "..", "%2e%2e" (which
     * libmicrohttpd has unescaped by now) and other path tricks are no id. */
    for (size_t i = 0; i < n; i++) {
        char c = id[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_'))
            return;
    }
    if (id[n] == 0) r->route = ROUTE_JOB;
    else if (strcmp(id + n, "/result") == 0) r->route = ROUTE_JOB_RESULT;
    else return;
    memcpy(r->job_id, id, n);
    r->job_id[n] = 0;
}

/* 404, 405, 401, then the handler (compute routes: the checks before reading the body). */
static void dispatch(http_req *r)
{
    server *srv = r->srv;
    ag_proto_error e;
    if (r->route == ROUTE_OTHER) {
        ag_proto_fail(&e, 404, "not_found", "", "no such endpoint");
        http_reply_error(r, &e);
        return;
    }
    if (!method_allowed(r->route, r->method)) {
        http_add_header(r, MHD_HTTP_HEADER_ALLOW, allowed_methods(r->route));
        ag_proto_fail(&e, 405, "method_not_allowed", "", "%s is not allowed here; use %s",
                      r->method_s, allowed_methods(r->route));
        http_reply_error(r, &e);
        return;
    }
    int is_v1 = r->route <= ROUTE_INFO;
    if (is_v1 && srv->auth.count > 0) {
        r->token = srv_auth_check(&srv->auth, http_header(r, MHD_HTTP_HEADER_AUTHORIZATION));
        if (r->token < 0) {
            http_add_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer realm=\"altgrad\"");
            ag_proto_fail(&e, 401, "unauthorized", "Authorization",
                          "a valid 'Authorization: Bearer <token>' header is required");
            http_reply_error(r, &e);
            return;
        }
    }
    switch (r->route) {
    case ROUTE_GRADIENTS: case ROUTE_JOBS:
        r->async = r->route == ROUTE_JOBS;
        begin_compute(r);
        return;
    case ROUTE_JOB:
        if (r->method == HM_DELETE) handle_job_delete(r);
        else handle_job_get(r);
        return;
    case ROUTE_JOB_RESULT: handle_job_result(r); return;
    case ROUTE_INFO: handle_info(r); return;
    case ROUTE_LIVE: reply_json(r, 200, json_pack("{s:s}", "status", "live")); return;
    case ROUTE_READY: handle_ready(r); return;
    case ROUTE_METRICS: handle_metrics(r); return;
    default: return;
    }
}

void routes_begin(http_req *r, const char *url)
{
    match(r, url);
    const char *cl = http_header(r, MHD_HTTP_HEADER_CONTENT_LENGTH);
    int has_body = (cl && strcmp(cl, "0") != 0) ||
                   http_header(r, MHD_HTTP_HEADER_TRANSFER_ENCODING) != NULL;
    int compute = (r->route == ROUTE_GRADIENTS || r->route == ROUTE_JOBS) &&
                  r->method == HM_POST;
    /* A compute POST is checked now, before its body is read; so is anything else that
     * carries a body we do not want (answering now discards it and closes the connection).
     * The rest is answered once the request is complete, which keeps the connection alive. */
    if (compute || has_body) dispatch(r);
    else r->deferred = 1;
}

void routes_complete(http_req *r)
{
    if (r->deferred) {
        r->deferred = 0;
        dispatch(r);
    } else if (r->wants_body) {
        complete_compute(r);
    }
}

void routes_end(http_req *r)
{
    if (r->job) r->job->req = NULL; /* the job finishes without anyone to answer */
    free(r->body);
    srv_budget_release(&r->srv->budget, &r->body_charge);
}
