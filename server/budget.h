/* The memory budget (--memory-limit): the one account of the bytes that requests hold. Every
 * holder keeps an srv_charge, charged here before it allocates and released here when it frees;
 * a charge knows what it pays for, so the budget knows how much each kind holds. Today's
 * holders: a request body while it arrives and until its job has decoded it (body.c,
 * compute.c), a job's core workspace while it runs (compute.c) and an async job's stored
 * result until it is purged (jobrun.c, jobs.c).
 *
 * Locking: mu guards used and used_by and is held only inside these calls; workers (which
 * wait for workspace) and the loop thread (bodies, results) charge concurrently. limit is
 * read-only after srv_budget_init. */
#ifndef ALTGRAD_SERVER_BUDGET_H
#define ALTGRAD_SERVER_BUDGET_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/* What a charge pays for. */
typedef enum {
    SRV_MEM_BODY = 0,  /* a request body, as it arrives and until decoded */
    SRV_MEM_WORKSPACE, /* ag_gradients_workspace_bytes of a running job */
    SRV_MEM_RESULT,    /* a stored async result */
    SRV_MEM_KINDS
} srv_mem_kind;

/* Bytes one holder has charged. Zero-initialised: holds nothing. Not shared: one thread at a
 * time uses a given charge (its holder's). */
typedef struct {
    srv_mem_kind kind;
    size_t bytes;
} srv_charge;

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;       /* broadcast on every release, for srv_budget_wait */
    size_t limit;            /* --memory-limit; read-only after init */
    size_t used;             /* sum of used_by */
    size_t used_by[SRV_MEM_KINDS];
} srv_budget;

/* A budget of limit bytes, nothing charged; -1 when the mutex cannot be made. */
int srv_budget_init(srv_budget *b, size_t limit);
/* Releases the mutex and condition (nothing may use b any more). */
void srv_budget_destroy(srv_budget *b);

/* Whether bytes more would fit now (nothing charged). */
int srv_budget_fits(srv_budget *b, size_t bytes);
/* Adds bytes to c, for kind, if they fit now: 0, or -1 and c unchanged. */
int srv_budget_try(srv_budget *b, srv_charge *c, srv_mem_kind kind, size_t bytes);
/* Adds bytes to c, for kind, once they fit: 0; -1 when *cancel is raised or deadline_ns
 * (uv_hrtime clock; 0 = none) passes first; -2 when bytes exceed the whole limit (they never
 * fit). c is unchanged unless 0. Sleeps on the condition (waking every 50 ms for the cancel
 * flag): worker threads only. */
int srv_budget_wait(srv_budget *b, srv_charge *c, srv_mem_kind kind, size_t bytes,
                    const atomic_int *cancel, uint64_t deadline_ns);
/* Adds bytes already allocated to c, for kind, whether or not they fit (a stored result):
 * later charges wait for them. */
void srv_budget_add(srv_budget *b, srv_charge *c, srv_mem_kind kind, size_t bytes);
/* Gives back all of c (c holds nothing after; a no-op when it held nothing) and wakes the
 * waiters. */
void srv_budget_release(srv_budget *b, srv_charge *c);

/* Bytes charged now, in all and of one kind. */
size_t srv_budget_used(srv_budget *b);
size_t srv_budget_used_by(srv_budget *b, srv_mem_kind kind);

#endif
