/* altgradd: the state of one server process. The files, from the request in to the job out:
 *
 *   main.c            flags, process setup, the loop         config.c  flags + env, --help
 *   http.c            libmicrohttpd <-> libuv; calls its http_handlers for every request
 *   routes.c          the route table: path, methods, auth -> handler; 404 / 405 / 401
 *   body.c            receiving a request body: limits, growth charged to the budget
 *   handle_compute.c  POST /v1/gradients, /v1/jobs: admission, the job, 202 or suspend
 *   handle_jobs.c     GET / DELETE /v1/jobs/{id}, GET /v1/jobs/{id}/result
 *   handle_info.c     /v1/info, /health/live, /health/ready, /metrics
 *   jobrun.c          a job's run, loop side: to the pool and back, answer or store
 *   compute.c         a job's run, worker side: decode -> core -> verify -> encode
 *   pool.c            worker dispatch (work and done functions), the cores
 *   budget.c          the memory budget: charges by what they pay for
 *   jobs.c            the job table, ids, states, shared result blobs
 *   lifecycle.c       sweep timer, signals, drain
 *   auth.c  bearer tokens   metrics.c  Prometheus text   log.c  logs   tls.c  PEM files
 *
 * Threads: one loop thread runs libuv, libmicrohttpd and every handler; libuv's pool threads
 * run compute.c only, which touches its job, the pool's cores, the budget, and the read-only
 * fields below. Every other field is loop-thread-only. */
#ifndef ALTGRAD_SERVER_H
#define ALTGRAD_SERVER_H

#include <stdatomic.h>
#include <stdint.h>
#include <uv.h>

#include "../core/altgrad.h"
#include "../proto/proto.h"
#include "auth.h"
#include "budget.h"
#include "config.h"
#include "http.h"
#include "jobs.h"
#include "lifecycle.h"
#include "metrics.h"
#include "pool.h"

#define ALTGRAD_VERSION "1.0.0"

typedef struct server {
    /* Read-only once the loop runs: workers read them too. */
    srv_config cfg;
    ag_proto_limits limits;
    ag_cost_model cost;
    srv_auth auth;
    uint64_t started_ns;
    /* Test hook (ALTGRAD_FAULT_ALLOC_FAIL=N, read once at startup): every N-th job to reach
     * the core fails as if its workspace could not be allocated. 0 = off. */
    unsigned fault_alloc_every;
    atomic_uint fault_alloc_seq; /* jobs that reached the core (workers) */

    /* Shared with the workers: each locks itself (pool.h, budget.h). */
    srv_pool pool;
    srv_budget budget;

    /* Loop thread only. */
    uv_loop_t *loop;
    srv_http http;           /* http.c */
    srv_lifecycle life;      /* lifecycle.c */
    srv_job_table jobs;      /* jobs.c, jobrun.c */
    srv_metrics metrics;     /* metrics.c; counted by every handler */
} server;

/* Seconds (a flag's value) as uv_hrtime nanoseconds; 0 for 0 or less. */
static inline uint64_t srv_ns(double seconds)
{
    return seconds <= 0 ? 0 : (uint64_t)(seconds * 1e9);
}

#endif
