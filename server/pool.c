#include <errno.h>
#include <time.h>
#include <uv.h>

#include "compute.h"
#include "pool.h"
#include "server.h"

int pool_init(srv_pool *p, int cores)
{
    if (pthread_mutex_init(&p->mu, NULL) != 0) return -1;
    p->cores = cores;
    p->free_cores = cores;
    atomic_init(&p->waiting, 0);
    atomic_init(&p->running, 0);
    return 0;
}

void pool_destroy(srv_pool *p)
{
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
