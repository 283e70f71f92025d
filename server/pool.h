/* Worker dispatch, as libuv's uv_queue_work: an item's work function runs on a thread of
 * libuv's pool (UV_THREADPOOL_SIZE = --workers, set in main before the pool's first use), then
 * its done function on the loop thread. The pool knows no caller; it also keeps the budget of
 * cores that running items share: an item takes every free core, at least one, when it starts,
 * so a lone job uses the machine and concurrent jobs share it.
 *
 * Locking: mu guards free_cores and is held only inside the cores calls. waiting and running
 * are atomics (workers and the loop both change them). in_flight, here and in every item, is
 * loop-thread only. Memory is budget.h's. */
#ifndef ALTGRAD_SERVER_POOL_H
#define ALTGRAD_SERVER_POOL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <uv.h>

typedef struct srv_pool srv_pool;
typedef struct srv_pool_item srv_pool_item;

/* Runs on a worker thread. */
typedef void srv_work_fn(srv_pool_item *it);
/* Runs on the loop thread once the work is over; cancelled: it never ran (srv_pool_cancel). */
typedef void srv_done_fn(srv_pool_item *it, int cancelled);

/* One unit of work; the caller embeds it and sets data. The rest is the pool's. */
struct srv_pool_item {
    void *data;
    int in_flight;           /* submitted, and its done function has not run yet */
    srv_pool *pool;
    srv_work_fn *work;
    srv_done_fn *done;
    uv_work_t req;
};

struct srv_pool {
    uv_loop_t *loop;
    pthread_mutex_t mu;
    int cores;
    long free_cores;         /* may go negative: an item always gets at least one */
    atomic_size_t waiting;   /* submitted, not yet started by a worker */
    atomic_size_t running;   /* on a worker now */
    size_t in_flight;        /* submitted, done function not yet run */
};

/* A pool on loop with a budget of cores, nothing taken; -1 when the mutex cannot be made. */
int srv_pool_init(srv_pool *p, uv_loop_t *loop, int cores);
/* Releases the mutex (no item may be in flight). */
void srv_pool_destroy(srv_pool *p);

/* Queues it (loop thread): work(it) on a worker, then done(it, 0) on the loop; or done(it, 1)
 * alone when it is cancelled first. Returns 0 or a libuv error (nothing queued). */
int srv_pool_submit(srv_pool *p, srv_pool_item *it, srv_work_fn *work, srv_done_fn *done);
/* Takes a queued item off the pool (loop thread): 0 when its work will not run (its done
 * function still comes, cancelled), -1 when it has started already. */
int srv_pool_cancel(srv_pool_item *it);

/* Threads for work starting now: max(1, free cores); give them back with srv_pool_cores_give. */
int srv_pool_cores_take(srv_pool *p);
void srv_pool_cores_give(srv_pool *p, int n);
/* Cores not taken now (negative when items share cores). */
long srv_pool_free_cores(srv_pool *p);

#endif
