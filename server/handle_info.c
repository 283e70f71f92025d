/* GET /v1/info, /health/live, /health/ready, /metrics. */
#include <cblas.h>
#include <jansson.h>
#include <string.h>

#include "handlers.h"
#include "jobrun.h"
#include "server.h"

void handle_info(srv_request *q)
{
    server *srv = q->http.srv;
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
        "tls", srv->http.tls, "auth", srv->auth.count > 0, "node_id", c->node_id);
    http_reply_json(&q->http, 200, o);
}

void handle_live(srv_request *q)
{
    http_reply_json(&q->http, 200, json_pack("{s:s}", "status", "live"));
}

void handle_ready(srv_request *q)
{
    server *srv = q->http.srv;
    ag_proto_error e;
    if (srv->life.draining) {
        http_add_header(&q->http, "Retry-After", "5");
        ag_proto_fail(&e, 503, "draining", "", "the server is shutting down");
    } else if (srv_jobs_at_capacity(srv)) {
        http_add_header(&q->http, "Retry-After", "1");
        ag_proto_fail(&e, 503, "queue_full", "", "the job queue is full");
    } else {
        http_reply_json(&q->http, 200, json_pack("{s:s}", "status", "ready"));
        return;
    }
    http_reply_error(&q->http, &e);
}

void handle_metrics(srv_request *q)
{
    server *srv = q->http.srv;
    srv_gauges g;
    memset(&g, 0, sizeof g);
    g.queue_depth = atomic_load(&srv->pool.waiting);
    g.running = atomic_load(&srv->pool.running);
    g.in_flight = srv->pool.in_flight;
    g.connections = http_connections(srv);
    g.suspended = srv->http.suspended;
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
        http_reply_out_of_memory(&q->http);
        return;
    }
    http_reply(&q->http, 200, "text/plain; version=0.0.4; charset=utf-8", text, len, 1);
}
