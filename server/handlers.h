/* The endpoint handlers the route table (routes.c) points at, one file per group:
 * handle_compute.c, handle_jobs.c, handle_info.c. Each answers its request (or suspends it,
 * or takes its body); the checks before them (404, 405, 401) are the table's. Loop thread
 * only. */
#ifndef ALTGRAD_SERVER_HANDLERS_H
#define ALTGRAD_SERVER_HANDLERS_H

#include "routes.h"

/* POST /v1/gradients (sync) and POST /v1/jobs (async): the checks when the headers are in,
 * in order 415, 400, 413 (--max-body), 503 (draining), 429 (capacity, --max-jobs), 413 / 429
 * (memory); then, with the body in, the job: queued and suspended on (sync), or 202 with its
 * id (async). */
void handle_gradients_begin(srv_request *q);
void handle_jobs_begin(srv_request *q);
void handle_compute_complete(srv_request *q);

/* GET /v1/jobs/{id}: the job's state and progress. DELETE: cancels it (a finished job is left
 * as it is), then its state. GET /v1/jobs/{id}/result: its body once finished (409 before;
 * 409 when cancelled). Another token's job is answered exactly as a missing one (404). */
void handle_job_get(srv_request *q);
void handle_job_delete(srv_request *q);
void handle_job_result(srv_request *q);

/* GET /v1/info (limits, build, cost model), /health/live, /health/ready (503 while draining
 * or at capacity), /metrics (Prometheus text). */
void handle_info(srv_request *q);
void handle_live(srv_request *q);
void handle_ready(srv_request *q);
void handle_metrics(srv_request *q);

#endif
