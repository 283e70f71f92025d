/* The loop side of a job's run: it goes to the pool (compute.c does the work on a worker),
 * comes back finished, and then either answers the request waiting for it (sync) or keeps its
 * result until its TTL (async). Also the capacity rule, cancelling, and the per-job part of
 * the sweep. Loop thread only. */
#ifndef ALTGRAD_SERVER_JOBRUN_H
#define ALTGRAD_SERVER_JOBRUN_H

#include <stddef.h>
#include <stdint.h>

#include "server.h"

struct http_req;

/* Whether --workers + --queue jobs are in flight already (new compute requests get 429). */
int srv_jobs_at_capacity(server *srv);

/* Queues j on the pool. When its run is over (or it was cancelled before it started), the
 * loop thread answers j->req with its output and frees j (sync), or stores its result for
 * --job-ttl (async). Returns 0 or a libuv error (j untouched, still the caller's). */
int srv_job_submit(server *srv, srv_job *j);

/* Raises j's cancel flag (the first reason given is kept); takes it off the queue when it
 * has not started. The worker stops at its next checkpoint. */
void srv_job_cancel(srv_job *j, srv_cancel_reason why);

/* Cancels every job in flight; returns how many. */
size_t srv_jobs_cancel_in_flight(server *srv, srv_cancel_reason why);

/* The sweep's part for jobs: cancels those past their --timeout deadline and frees finished
 * async jobs past their TTL. */
void srv_jobs_sweep(server *srv, uint64_t now_ns);

/* Adds X-Altgrad-Threads (the cores j's core ran on) to r's reply, when it ran. */
void srv_job_threads_header(struct http_req *r, const srv_job *j);

#endif
