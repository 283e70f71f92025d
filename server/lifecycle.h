/* The loop's lifecycle: a sweep timer every SWEEP_MS (job deadlines and TTLs, connection
 * deadlines, drain progress), SIGTERM/SIGINT, and the graceful drain that ends the loop.
 * Loop thread only. */
#ifndef ALTGRAD_SERVER_LIFECYCLE_H
#define ALTGRAD_SERVER_LIFECYCLE_H

#include <stdint.h>
#include <uv.h>

struct server;

typedef struct {
    uv_timer_t sweep_timer;
    uv_signal_t sig_term, sig_int;
    int draining;            /* SIGTERM/SIGINT seen: no new work */
    int drain_cancelled;     /* the drain deadline passed and in-flight jobs were cancelled */
    uint64_t drain_deadline; /* ns */
} srv_lifecycle;

/* Starts the sweep timer and the signal watchers; 0, or -1. */
int srv_lifecycle_start(struct server *srv);

/* Begins draining (SIGTERM/SIGINT): no new work; in-flight jobs get --drain-timeout, then
 * are cancelled; the loop ends once nothing is left. A second call cancels them now. */
void srv_begin_drain(struct server *srv);

#endif
