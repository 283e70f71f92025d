#include "pool.h"

int srv_pool_init(srv_pool *p, uv_loop_t *loop, int cores)
{
    if (pthread_mutex_init(&p->mu, NULL) != 0) return -1;
    p->loop = loop;
    p->cores = cores;
    p->free_cores = cores;
    atomic_init(&p->waiting, 0);
    atomic_init(&p->running, 0);
    p->in_flight = 0;
    return 0;
}

void srv_pool_destroy(srv_pool *p)
{
    pthread_mutex_destroy(&p->mu);
}

int srv_pool_cores_take(srv_pool *p)
{
    pthread_mutex_lock(&p->mu);
    long take = p->free_cores > 1 ? p->free_cores : 1;
    p->free_cores -= take;
    pthread_mutex_unlock(&p->mu);
    return (int)take;
}

void srv_pool_cores_give(srv_pool *p, int n)
{
    pthread_mutex_lock(&p->mu);
    p->free_cores += n;
    pthread_mutex_unlock(&p->mu);
}

long srv_pool_free_cores(srv_pool *p)
{
    pthread_mutex_lock(&p->mu);
    long f = p->free_cores;
    pthread_mutex_unlock(&p->mu);
    return f;
}

static void on_work(uv_work_t *w)
{
    srv_pool_item *it = w->data;
    srv_pool *p = it->pool;
    atomic_fetch_sub(&p->waiting, 1);
    atomic_fetch_add(&p->running, 1);
    it->work(it);
    atomic_fetch_sub(&p->running, 1);
}

static void on_done(uv_work_t *w, int status)
{
    srv_pool_item *it = w->data;
    srv_pool *p = it->pool;
    int cancelled = status == UV_ECANCELED;
    if (cancelled) atomic_fetch_sub(&p->waiting, 1); /* on_work never ran */
    it->in_flight = 0;
    p->in_flight--;
    it->done(it, cancelled);
}

int srv_pool_submit(srv_pool *p, srv_pool_item *it, srv_work_fn *work, srv_done_fn *done)
{
    it->pool = p;
    it->work = work;
    it->done = done;
    it->req.data = it;
    atomic_fetch_add(&p->waiting, 1);
    int rc = uv_queue_work(p->loop, &it->req, on_work, on_done);
    if (rc != 0) {
        atomic_fetch_sub(&p->waiting, 1);
        return rc;
    }
    it->in_flight = 1;
    p->in_flight++;
    return 0;
}

int srv_pool_cancel(srv_pool_item *it)
{
    return uv_cancel((uv_req_t *)&it->req) == 0 ? 0 : -1;
}
