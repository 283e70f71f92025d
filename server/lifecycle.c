#include <signal.h>
#include <unistd.h>

#include "http.h"
#include "jobrun.h"
#include "lifecycle.h"
#include "log.h"

#define SWEEP_MS 100
#define DRAIN_GRACE_NS (2ull * 1000000000ull)   /* for requests still uploading past the drain */
#define DRAIN_HARD_NS (60ull * 1000000000ull)   /* for jobs that never reach a checkpoint */

static void shutdown_now(server *srv)
{
    srv_lifecycle *lc = &srv->life;
    srv_log("info", "drained: stopping (%zu async jobs dropped from memory)", srv->jobs.count);
    uv_timer_stop(&lc->sweep_timer);
    uv_close((uv_handle_t *)&lc->sweep_timer, NULL);
    uv_close((uv_handle_t *)&lc->sig_term, NULL);
    uv_close((uv_handle_t *)&lc->sig_int, NULL);
    http_stop(srv);
}

static void drain_step(server *srv, uint64_t now)
{
    srv_lifecycle *lc = &srv->life;
    if (!lc->drain_cancelled && now >= lc->drain_deadline) {
        lc->drain_cancelled = 1;
        size_t n = srv_jobs_cancel_in_flight(srv, SRV_CANCEL_SHUTDOWN);
        if (n) srv_log("warn", "drain timeout (%g s): cancelled %zu jobs", srv->cfg.drain_timeout_s,
                       n);
    }
    if (srv->pool.in_flight == 0 && srv->http.suspended == 0 &&
        (srv->http.active_requests == 0 ||
         (lc->drain_cancelled && now >= lc->drain_deadline + DRAIN_GRACE_NS))) {
        shutdown_now(srv);
        return;
    }
    if (now >= lc->drain_deadline + DRAIN_HARD_NS) {
        srv_log("error", "%zu jobs ignored cancellation for %llu s; exiting without cleanup",
                srv->pool.in_flight, DRAIN_HARD_NS / 1000000000ull);
        _exit(1);
    }
}

static void on_sweep(uv_timer_t *t)
{
    server *srv = t->data;
    uint64_t now = uv_hrtime();
    srv_jobs_sweep(srv, now);
    http_sweep(srv, now);
    if (srv->life.draining) drain_step(srv, now);
}

void srv_begin_drain(server *srv)
{
    srv_lifecycle *lc = &srv->life;
    uint64_t now = uv_hrtime();
    if (lc->draining) {
        srv_log("warn", "second signal: cancelling in-flight work now");
        lc->drain_deadline = now;
        return;
    }
    lc->draining = 1;
    lc->drain_deadline = now + srv_ns(srv->cfg.drain_timeout_s);
    srv_log("info", "draining: %zu jobs in flight, %zu requests open; up to %g s",
            srv->pool.in_flight, srv->http.active_requests, srv->cfg.drain_timeout_s);
    http_quiesce(srv);
    drain_step(srv, now);
}

static void on_signal(uv_signal_t *s, int signum)
{
    server *srv = s->data;
    srv_log("info", "signal %d", signum);
    srv_begin_drain(srv);
}

int srv_lifecycle_start(server *srv)
{
    srv_lifecycle *lc = &srv->life;
    uv_timer_init(srv->loop, &lc->sweep_timer);
    lc->sweep_timer.data = srv;
    uv_signal_init(srv->loop, &lc->sig_term);
    lc->sig_term.data = srv;
    uv_signal_init(srv->loop, &lc->sig_int);
    lc->sig_int.data = srv;
    if (uv_timer_start(&lc->sweep_timer, on_sweep, SWEEP_MS, SWEEP_MS) != 0 ||
        uv_signal_start(&lc->sig_term, on_signal, SIGTERM) != 0 ||
        uv_signal_start(&lc->sig_int, on_signal, SIGINT) != 0)
        return -1;
    return 0;
}
