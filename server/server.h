/* altgradd: the state of one server process and the calls between its files.
 *
 *   main.c     flags, process setup, signals          config.c  flags + env table, --help
 *   http.c     libmicrohttpd <-> libuv glue, request lifecycle, responses, suspend/resume
 *   routes.c   URL routing and the endpoint handlers  jobs.c    job table, ids, states
 *   pool.c     worker dispatch, core budget          budget.c  the memory budget
 *   compute.c  decode -> core -> verify -> encode on a worker
 *   auth.c     bearer tokens                          metrics.c Prometheus text
 *   log.c      access and error logs                  tls.c     certificate files
 *
 * Threads: one loop thread runs libuv, libmicrohttpd and every handler; the libuv pool
 * threads run compute_job only. Fields are loop-thread-only unless marked otherwise. */
#ifndef ALTGRAD_SERVER_H
#define ALTGRAD_SERVER_H

#include <microhttpd.h>
#include <stdatomic.h>
#include <stdint.h>
#include <uv.h>

#include "../core/altgrad.h"
#include "../proto/proto.h"
#include "auth.h"
#include "budget.h"
#include "config.h"
#include "jobs.h"
#include "lifecycle.h"
#include "metrics.h"
#include "pool.h"

#define ALTGRAD_VERSION "1.0.0"

typedef struct server {
    srv_config cfg;
    uv_loop_t *loop;

    /* libmicrohttpd, driven by the loop (http.c). */
    struct MHD_Daemon *mhd;
    uv_poll_t mhd_poll;
    uv_timer_t mhd_timer;
    struct http_conn *conns; /* every open connection, for the header deadline (http.c) */
    int in_mhd_run;          /* guard: MHD_run is never re-entered */
    int mhd_run_again;       /* a resume or a closed connection inside an MHD callback */
    unsigned short port;
    int tls;

    int stopped;             /* MHD stopped, handles closing */

    srv_lifecycle life;      /* sweep timer, signals, drain (lifecycle.c) */

    srv_auth auth;
    srv_metrics metrics;
    srv_job_table jobs;
    srv_pool pool;
    srv_budget budget;
    ag_proto_limits limits;
    ag_cost_model cost;      /* read-only after startup: shared by workers */

    /* Test hook (ALTGRAD_FAULT_ALLOC_FAIL=N, read once at startup): every N-th job to reach
     * the core fails as if its workspace could not be allocated. 0 = off. */
    unsigned fault_alloc_every;
    atomic_uint fault_alloc_seq; /* jobs that reached the core (workers) */

    size_t active_requests;  /* requests between their first callback and completion */
    size_t suspended;        /* connections suspended on a job */
    uint64_t started_ns;
    uint64_t request_seq;
} server;

/* http.c */
/* Creates the daemon on cfg.listen and hooks it into srv->loop. tls_cert/key: PEM text or
 * NULL. Returns 0, or -1 (logged). */
int http_start(server *srv, const char *tls_cert_pem, const char *tls_key_pem);
/* Runs MHD now, or right after the current MHD_run when called from inside one. */
void http_pump(server *srv);
/* Stops accepting new connections (keeps the ones open). */
void http_quiesce(server *srv);
/* Closes the uv handles on MHD, then stops MHD (no connection may be suspended). */
void http_stop(server *srv);
/* Open client connections. */
size_t http_connections(server *srv);
/* Closes every connection that has not delivered a complete request header block within
 * --connection-timeout of opening or of its previous response (slowloris: trickled bytes
 * keep libmicrohttpd's idle timeout from firing). Called by the sweep timer. */
void http_sweep(server *srv, uint64_t now_ns);

/* Seconds (a flag's value) as uv_hrtime nanoseconds; 0 for 0 or less. */
static inline uint64_t srv_ns(double seconds)
{
    return seconds <= 0 ? 0 : (uint64_t)(seconds * 1e9);
}

#endif
