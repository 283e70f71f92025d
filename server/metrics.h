/* Prometheus metrics (text format 0.0.4). Updated and rendered on the loop thread only, so
 * no locks; gauges owned by other parts are read at render time. */
#ifndef ALTGRAD_SERVER_METRICS_H
#define ALTGRAD_SERVER_METRICS_H

#include <stddef.h>
#include <stdint.h>

/* Requests are counted by route: the routes register their labels ("/v1/jobs/{id}": bounded
 * cardinality, ids never become labels) and count by the index they got; requests that
 * matched no route count as "other". */
#define SRV_METRICS_ROUTES 32
#define SRV_METRICS_OTHER SRV_METRICS_ROUTES /* the slot of "other" */

#define HIST_BUCKETS 16
typedef struct {
    uint64_t counts[HIST_BUCKETS + 1]; /* last = +Inf */
    double sum;
    uint64_t count;
} srv_histogram;

enum { METHOD_LABELS = 3 };   /* exact, approx, auto */
enum { SRV_JOB_OUTCOMES = 5 }; /* queued..cancelled: indexed by srv_job_state */
enum { STATUS_MAX = 600 };

typedef struct {
    const char *route_label[SRV_METRICS_ROUTES]; /* static strings, registered in order */
    int n_routes;
    uint64_t requests[SRV_METRICS_ROUTES + 1][STATUS_MAX]; /* by route and HTTP status */
    srv_histogram latency[SRV_METRICS_ROUTES + 1];  /* first byte of headers -> response done */
    srv_histogram queue_wait;                   /* accepted -> a worker starts the job */
    srv_histogram compute[METHOD_LABELS];       /* decode + compute + encode on a worker */
    double compute_seconds[METHOD_LABELS];
    uint64_t jobs_accepted;                     /* sync and async jobs queued */
    uint64_t jobs_finished[SRV_JOB_OUTCOMES];   /* terminal states, sync and async */
    uint64_t bytes_in, bytes_out;
    uint64_t rejected_queue_full, rejected_memory, rejected_too_large, rejected_draining;
} srv_metrics;

/* Gauges read at render time. */
typedef struct {
    size_t queue_depth, in_flight, running, connections, suspended;
    size_t jobs_by_state[SRV_JOB_OUTCOMES];
    size_t memory_used, memory_limit;
    long free_cores;
    int workers, cores, draining;
    double uptime_s;
    const char *version;
} srv_gauges;

/* Zeroes every counter; no route registered. */
void srv_metrics_init(srv_metrics *m);
/* Registers the next route's label (a static string); returns its index, or -1 when
 * SRV_METRICS_ROUTES are registered already. */
int srv_metrics_add_route(srv_metrics *m, const char *label);
/* Counts one finished request of route (an index from srv_metrics_add_route; any other value
 * counts as "other"), with its status (0: none was sent), latency and bytes. */
void srv_metrics_request(srv_metrics *m, int route, int status, double seconds,
                         size_t bytes_in, size_t bytes_out);
/* Adds one observation (seconds; negative or NaN counts as 0). */
void srv_histogram_observe(srv_histogram *h, double seconds);

/* Renders everything as Prometheus text; malloc'd, *len set; NULL on allocation failure. */
char *srv_metrics_render(const srv_metrics *m, const srv_gauges *g, size_t *len);

#endif
