#include <errno.h>
#include <time.h>
#include <uv.h>

#include "compute.h"
#include "pool.h"
#include "server.h"

int pool_init(srv_pool *p, int cores, size_t mem_limit)
{
    if (pthread_mutex_init(&p->mu, NULL) != 0) return -1;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    int rc = pthread_cond_init(&p->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (rc != 0) {
        pthread_mutex_destroy(&p->mu);
        return -1;
    }
    p->cores = cores;
    p->free_cores = cores;
    p->mem_limit = mem_limit;
    p->mem_used = 0;
    atomic_init(&p->waiting, 0);
    atomic_init(&p->running, 0);
    return 0;
}

void pool_destroy(srv_pool *p)
{
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
}

int pool_cores_take(srv_pool *p)
{
    pthread_mutex_lock(&p->mu);
    long take = p->free_cores > 1 ? p->free_cores : 1;
    p->free_cores -= take;
    pthread_mutex_unlock(&p->mu);
    return (int)take;
}

void pool_cores_give(srv_pool *p, int n)
{
    pthread_mutex_lock(&p->mu);
    p->free_cores += n;
    pthread_mutex_unlock(&p->mu);
}

long pool_free_cores(srv_pool *p)
{
    pthread_mutex_lock(&p->mu);
    long f = p->free_cores;
    pthread_mutex_unlock(&p->mu);
    return f;
}

int pool_mem_fits(srv_pool *p, size_t bytes)
{
    pthread_mutex_lock(&p->mu);
    int ok = bytes <= p->mem_limit && p->mem_used <= p->mem_limit - bytes;
    pthread_mutex_unlock(&p->mu);
    return ok;
}

int pool_mem_try(srv_pool *p, size_t bytes)
{
    pthread_mutex_lock(&p->mu);
    int ok = bytes <= p->mem_limit && p->mem_used <= p->mem_limit - bytes;
    if (ok) p->mem_used += bytes;
    pthread_mutex_unlock(&p->mu);
    return ok ? 0 : -1;
}

int pool_mem_wait(srv_pool *p, size_t bytes, const atomic_int *cancel, uint64_t deadline_ns)
{
    if (bytes > p->mem_limit) return -2;
    pthread_mutex_lock(&p->mu);
    int rc = 0;
    while (p->mem_used > p->mem_limit - bytes) {
        if (cancel && atomic_load(cancel)) {
            rc = -1;
            break;
        }
        uint64_t now = uv_hrtime();
        if (deadline_ns && now >= deadline_ns) {
            rc = -1;
            break;
        }
        /* Wake at least every 50 ms to see the cancel flag (raised without this mutex). */
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_nsec += 50 * 1000 * 1000;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&p->cv, &p->mu, &ts);
    }
    if (rc == 0) p->mem_used += bytes;
    pthread_mutex_unlock(&p->mu);
    return rc;
}

void pool_mem_add(srv_pool *p, size_t bytes)
{
    pthread_mutex_lock(&p->mu);
    p->mem_used = bytes > SIZE_MAX - p->mem_used ? SIZE_MAX : p->mem_used + bytes;
    pthread_mutex_unlock(&p->mu);
}

void pool_mem_release(srv_pool *p, size_t bytes)
{
    if (!bytes) return;
    pthread_mutex_lock(&p->mu);
    p->mem_used = bytes > p->mem_used ? 0 : p->mem_used - bytes;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

size_t pool_mem_used(srv_pool *p)
{
    pthread_mutex_lock(&p->mu);
    size_t u = p->mem_used;
    pthread_mutex_unlock(&p->mu);
    return u;
}

static void work_cb(uv_work_t *w)
{
    srv_job *j = w->data;
    server *srv = j->srv;
    atomic_fetch_sub(&srv->pool.waiting, 1);
    atomic_fetch_add(&srv->pool.running, 1);
    compute_job(srv, j);
    atomic_fetch_sub(&srv->pool.running, 1);
}

static void after_cb(uv_work_t *w, int status)
{
    srv_job *j = w->data;
    server *srv = j->srv;
    if (status == UV_ECANCELED) {
        /* Never started: its waiting count and its body are still ours to release. */
        atomic_fetch_sub(&srv->pool.waiting, 1);
        compute_job_skipped(srv, j);
    }
    j->in_flight = 0;
    srv->in_flight--;
    srv_job_finished(srv, j);
}

int pool_submit(server *srv, srv_job *j)
{
    j->work.data = j;
    j->srv = srv;
    atomic_fetch_add(&srv->pool.waiting, 1);
    int rc = uv_queue_work(srv->loop, &j->work, work_cb, after_cb);
    if (rc != 0) {
        atomic_fetch_sub(&srv->pool.waiting, 1);
        return rc;
    }
    j->in_flight = 1;
    srv->in_flight++;
    return 0;
}

int pool_cancel_queued(srv_job *j)
{
    return uv_cancel((uv_req_t *)&j->work) == 0 ? 0 : -1;
}
