/* Compute dispatch: jobs run on libuv's thread pool (UV_THREADPOOL_SIZE = --workers, set in
 * main before the pool starts), with two shared budgets that workers take and give back:
 *   cores  - the threads each job's core may use: a job takes every free core, at least one,
 *            when it starts, so a lone job uses the machine and concurrent jobs share it;
 *   memory - bytes of request bodies, job workspaces (ag_gradients_workspace_bytes) and stored
 *            results; a job waits for its workspace, bounded by its cancel flag and deadline.
 * The budgets are mutex-protected (workers and the loop thread both use them). */
#ifndef ALTGRAD_SERVER_POOL_H
#define ALTGRAD_SERVER_POOL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int cores;
    long free_cores;         /* may go negative: a job always gets at least one */
    size_t mem_limit, mem_used;
    atomic_size_t waiting;   /* submitted, not yet started by a worker */
    atomic_size_t running;   /* on a worker now */
} srv_pool;

/* Budgets of cores and mem_limit bytes, nothing taken; -1 when the mutex cannot be made. */
int pool_init(srv_pool *p, int cores, size_t mem_limit);
/* Releases the mutex and condition (no thread may still use p). */
void pool_destroy(srv_pool *p);

/* Threads for a job starting now: max(1, free cores); give them back with pool_cores_give. */
int pool_cores_take(srv_pool *p);
void pool_cores_give(srv_pool *p, int n);

/* Whether bytes would fit now (nothing reserved). */
int pool_mem_fits(srv_pool *p, size_t bytes);
/* Reserves bytes if they fit now: 0, or -1 without reserving. */
int pool_mem_try(srv_pool *p, size_t bytes);
/* Waits until bytes fit. 0 reserved; -1 cancelled (flag raised) or past deadline_ns
 * (uv_hrtime clock; 0 = none); -2 bytes exceed the whole limit (never fits). */
int pool_mem_wait(srv_pool *p, size_t bytes, const atomic_int *cancel, uint64_t deadline_ns);
/* Adds bytes already allocated (a stored result) whether or not they fit: later
 * reservations wait for them. */
void pool_mem_add(srv_pool *p, size_t bytes);
/* Returns a reservation (from either call); wakes waiters. */
void pool_mem_release(srv_pool *p, size_t bytes);
/* Bytes of the memory budget held now. */
size_t pool_mem_used(srv_pool *p);
/* Cores not taken now (negative when jobs share cores). */
long pool_free_cores(srv_pool *p);

struct server;
struct srv_job;
/* Queues j on the thread pool (loop thread only). The worker runs compute_job; then, on the
 * loop thread, srv_job_finished(srv, j). Returns 0 or a libuv error. */
int pool_submit(struct server *srv, struct srv_job *j);
/* Tries to take a queued job off the pool (loop thread): 0 when it will not run (its
 * after-callback still comes, with the job cancelled), else it is already running. */
int pool_cancel_queued(struct srv_job *j);

#endif
