/* The worker side of a job: decode -> memory and cores -> ag_gradients (-> exact again for
 * verify) -> encode. Runs on a pool thread (jobrun.c's work function); touches only its job
 * (as jobs.h allows), the pool's cores and the budget (each locks itself) and the server's
 * read-only fields (limits, cost model, config). */
#ifndef ALTGRAD_SERVER_COMPUTE_H
#define ALTGRAD_SERVER_COMPUTE_H

struct server;
struct srv_job;

/* Worker thread. Fills j->http_status and j->out (the response body, or an error body with
 * j->error set); frees j->body and releases its charge; charges the core's workspace while
 * it runs. Never fails silently: every path leaves a status and, memory permitting, a
 * body. */
void compute_job(struct server *srv, struct srv_job *j);

/* Loop thread: the job was taken off the queue before it ran. Frees its body and sets the
 * error that matches why it was cancelled. */
void compute_job_skipped(struct server *srv, struct srv_job *j);

#endif
