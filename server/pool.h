/* Compute dispatch: jobs run on libuv's thread pool (UV_THREADPOOL_SIZE = --workers, set in
 * main before the pool starts), with a shared budget of cores that workers take and give back:
 * the threads each job's core may use. A job takes every free core, at least one, when it
 * starts, so a lone job uses the machine and concurrent jobs share it. The budget is
 * mutex-protected (workers and the loop thread both use it). Memory: budget.h. */
#ifndef ALTGRAD_SERVER_POOL_H
#define ALTGRAD_SERVER_POOL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    pthread_mutex_t mu;
    int cores;
    long free_cores;         /* may go negative: a job always gets at least one */
    atomic_size_t waiting;   /* submitted, not yet started by a worker */
    atomic_size_t running;   /* on a worker now */
} srv_pool;

/* A budget of cores, nothing taken; -1 when the mutex cannot be made. */
int pool_init(srv_pool *p, int cores);
/* Releases the mutex and condition (no thread may still use p). */
void pool_destroy(srv_pool *p);

/* Threads for a job starting now: max(1, free cores); give them back with pool_cores_give. */
int pool_cores_take(srv_pool *p);
void pool_cores_give(srv_pool *p, int n);

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
