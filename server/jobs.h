/* Jobs: one per compute request, sync or async, and the table of them.
 *
 * Threads: the loop thread owns the table and every job. While a job is in flight
 * (work.in_flight) a worker (compute.c) also uses it: it reads the input and the request
 * fields, fills the output fields, and changes the atomics, which the loop reads meanwhile
 * (state, progress) or writes (cancel, by DELETE, the deadline or the drain). The loop reads
 * the output only in the pool's done function, which libuv runs after the work function
 * returned. Everything under "loop thread" is never touched by a worker.
 *
 * Lifetime: created by handle_compute.c; freed by the loop thread when no worker holds it
 * (!work.in_flight) and, for an async job, once purged from the table (TTL, or shutdown); a
 * sync job is freed as soon as its response has been handed to its connection. Freeing it
 * releases the budget charges it still holds. */
#ifndef ALTGRAD_SERVER_JOBS_H
#define ALTGRAD_SERVER_JOBS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "../proto/proto.h"
#include "budget.h"
#include "pool.h"

typedef enum {
    SRV_JOB_QUEUED = 0,
    SRV_JOB_RUNNING,
    SRV_JOB_DONE,
    SRV_JOB_FAILED,
    SRV_JOB_CANCELLED
} srv_job_state;

/* Why the cancel flag was raised. */
typedef enum {
    SRV_CANCEL_NONE = 0,
    SRV_CANCEL_USER,
    SRV_CANCEL_TIMEOUT,
    SRV_CANCEL_SHUTDOWN
} srv_cancel_reason;

/* A response body shared by a stored job and the responses serving it (refcounted on the
 * loop thread: MHD frees responses there too). */
typedef struct {
    int refs;
    size_t len;
    char *data; /* malloc'd */
} srv_blob;

/* Takes ownership of data (malloc'd); NULL on allocation failure (data is then freed). */
srv_blob *srv_blob_new(char *data, size_t len);
/* Takes one more reference. */
void srv_blob_ref(srv_blob *b);
/* Drops one reference, freeing the blob and its data at zero; NULL-safe. */
void srv_blob_unref(srv_blob *b);

struct srv_request;

#define SRV_JOB_ID_MAX 72 /* node id (31) + '-' + 32 hex + NUL, rounded up */

typedef struct srv_job {
    /* Set before it is submitted; read-only after. */
    char id[SRV_JOB_ID_MAX]; /* "" for sync jobs */
    int async;
    int owner;               /* token index of the creator, -1 without auth */
    uint64_t deadline;       /* ns, 0 = none */
    struct server *srv;      /* for the pool's callbacks */

    /* Shared with the worker while in flight: atomics. */
    _Atomic int state;       /* srv_job_state: the worker moves QUEUED -> RUNNING, DELETE any
                                unfinished state -> CANCELLED, the loop sets the outcome */
    atomic_int cancel;       /* the core's cancel flag */
    _Atomic int cancel_why;  /* srv_cancel_reason; the first reason raised is kept */
    atomic_uint progress_ppm;/* progress in millionths, from the core's callback */
    srv_pool_item work;      /* the pool's; work.in_flight: submitted, done not yet run */

    /* Input: the worker frees it (and releases its charge) once decoded. */
    char *body;
    size_t body_len;
    srv_charge body_charge;

    /* Output: the worker's while in flight, the loop's after. */
    int http_status;         /* 200 or the error's status */
    char *out;               /* response body (success or error JSON) */
    size_t out_len;
    ag_proto_error error;    /* when http_status != 200 */
    int method_kind;         /* ag_method_kind of the request, -1 before decode */
    int threads;             /* cores the core was given (0 when it did not run) */
    double decode_s, compute_s, encode_s;

    uint64_t t_started;      /* uv_hrtime() ns, when the worker took it; 0 if it never did */

    /* Loop thread. */
    srv_blob *result;        /* stored body once finished (async) */
    srv_charge result_charge;
    uint64_t t_created, t_finished; /* uv_hrtime() ns */
    uint64_t expires;        /* ns, async: purge time once finished */
    struct srv_request *req; /* sync: the suspended request waiting for this job */
    struct srv_job *all_prev, *all_next; /* every live job */
    struct srv_job *hash_next;           /* async table chain */
} srv_job;

typedef struct {
    srv_job **buckets;
    size_t nbuckets;
    size_t count;            /* async jobs in the table */
    srv_job *all;            /* every live job, sync and async */
    size_t live;
    srv_budget *budget;      /* where the jobs' charges are released */
} srv_job_table;

/* An empty table with nbuckets id chains, whose jobs' charges belong to budget; -1 on
 * allocation failure. */
int srv_job_table_init(srv_job_table *t, size_t nbuckets, srv_budget *budget);
/* Frees every job still held (none may be in flight). */
void srv_job_table_free(srv_job_table *t);

#define SRV_JOB_URL_MAX (SRV_JOB_ID_MAX + 24)

/* "/v1/jobs/<id>" followed by tail ("" or "/result") into out (cap >= SRV_JOB_URL_MAX). */
void srv_job_url(const srv_job *j, const char *tail, char *out, size_t cap);

/* A new job, linked into the all-jobs list (not into the id table). NULL on allocation
 * failure. */
srv_job *srv_job_new(srv_job_table *t);
/* Gives the job a fresh id (128 random bits from getrandom, hex; "NODE-" prefix when
 * node_id is set) and inserts it into the id table. -1 when no randomness is available. */
int srv_job_register(srv_job_table *t, srv_job *j, const char *node_id);
/* The async job with this id, or NULL. */
srv_job *srv_job_find(const srv_job_table *t, const char *id);
/* Unlinks from both lists and frees (body, output, result ref), releasing what they are
 * charged. Must not be in flight. */
void srv_job_destroy(srv_job_table *t, srv_job *j);

const char *srv_job_state_name(srv_job_state s);
/* True for done, failed, cancelled. */
int srv_job_state_terminal(srv_job_state s);

#endif
