#include <time.h>
#include <uv.h>

#include "budget.h"

int srv_budget_init(srv_budget *b, size_t limit)
{
    if (pthread_mutex_init(&b->mu, NULL) != 0) return -1;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    int rc = pthread_cond_init(&b->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (rc != 0) {
        pthread_mutex_destroy(&b->mu);
        return -1;
    }
    b->limit = limit;
    b->used = 0;
    for (int k = 0; k < SRV_MEM_KINDS; k++) b->used_by[k] = 0;
    return 0;
}

void srv_budget_destroy(srv_budget *b)
{
    pthread_cond_destroy(&b->cv);
    pthread_mutex_destroy(&b->mu);
}

/* With mu held. */
static int fits(const srv_budget *b, size_t bytes)
{
    return bytes <= b->limit && b->used <= b->limit - bytes;
}

static size_t sat_add(size_t a, size_t b)
{
    return a > SIZE_MAX - b ? SIZE_MAX : a + b;
}

/* With mu held. */
static void charge(srv_budget *b, srv_charge *c, srv_mem_kind kind, size_t bytes)
{
    b->used = sat_add(b->used, bytes);
    b->used_by[kind] = sat_add(b->used_by[kind], bytes);
    c->kind = kind;
    c->bytes = sat_add(c->bytes, bytes);
}

int srv_budget_fits(srv_budget *b, size_t bytes)
{
    pthread_mutex_lock(&b->mu);
    int ok = fits(b, bytes);
    pthread_mutex_unlock(&b->mu);
    return ok;
}

int srv_budget_try(srv_budget *b, srv_charge *c, srv_mem_kind kind, size_t bytes)
{
    pthread_mutex_lock(&b->mu);
    int ok = fits(b, bytes);
    if (ok) charge(b, c, kind, bytes);
    pthread_mutex_unlock(&b->mu);
    return ok ? 0 : -1;
}

int srv_budget_wait(srv_budget *b, srv_charge *c, srv_mem_kind kind, size_t bytes,
                    const atomic_int *cancel, uint64_t deadline_ns)
{
    if (bytes > b->limit) return -2;
    pthread_mutex_lock(&b->mu);
    int rc = 0;
    while (!fits(b, bytes)) {
        if (cancel && atomic_load(cancel)) {
            rc = -1;
            break;
        }
        if (deadline_ns && uv_hrtime() >= deadline_ns) {
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
        pthread_cond_timedwait(&b->cv, &b->mu, &ts);
    }
    if (rc == 0) charge(b, c, kind, bytes);
    pthread_mutex_unlock(&b->mu);
    return rc;
}

void srv_budget_add(srv_budget *b, srv_charge *c, srv_mem_kind kind, size_t bytes)
{
    pthread_mutex_lock(&b->mu);
    charge(b, c, kind, bytes);
    pthread_mutex_unlock(&b->mu);
}

void srv_budget_release(srv_budget *b, srv_charge *c)
{
    if (!c->bytes) return;
    pthread_mutex_lock(&b->mu);
    size_t n = c->bytes;
    b->used = n > b->used ? 0 : b->used - n;
    size_t *k = &b->used_by[c->kind];
    *k = n > *k ? 0 : *k - n;
    pthread_cond_broadcast(&b->cv);
    pthread_mutex_unlock(&b->mu);
    c->bytes = 0;
}

size_t srv_budget_used(srv_budget *b)
{
    pthread_mutex_lock(&b->mu);
    size_t u = b->used;
    pthread_mutex_unlock(&b->mu);
    return u;
}

size_t srv_budget_used_by(srv_budget *b, srv_mem_kind kind)
{
    pthread_mutex_lock(&b->mu);
    size_t u = b->used_by[kind];
    pthread_mutex_unlock(&b->mu);
    return u;
}
