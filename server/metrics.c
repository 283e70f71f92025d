#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "metrics.h"

/* Seconds: from sub-millisecond routing to ten-minute jobs. */
static const double bucket_le[HIST_BUCKETS] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                               0.05,   0.1,   0.25,   0.5,   1,    2.5,
                                               5,      10,    60,     300};

static const char *const method_labels[METHOD_LABELS] = {"exact", "approx", "auto"};
static const char *const state_labels[SRV_JOB_OUTCOMES] = {"queued", "running", "done", "failed",
                                                       "cancelled"};

void srv_metrics_init(srv_metrics *m)
{
    memset(m, 0, sizeof *m);
}

int srv_metrics_add_route(srv_metrics *m, const char *label)
{
    if (m->n_routes == SRV_METRICS_ROUTES) return -1;
    m->route_label[m->n_routes] = label;
    return m->n_routes++;
}

void srv_histogram_observe(srv_histogram *h, double seconds)
{
    if (!(seconds >= 0)) seconds = 0;
    int b = 0;
    while (b < HIST_BUCKETS && seconds > bucket_le[b]) b++;
    h->counts[b]++;
    h->sum += seconds;
    h->count++;
}

void srv_metrics_request(srv_metrics *m, int r, int status, double seconds,
                         size_t bytes_in, size_t bytes_out)
{
    if (r < 0 || r >= m->n_routes) r = SRV_METRICS_OTHER;
    if (status < 0 || status >= STATUS_MAX) status = 0;
    m->requests[r][status]++;
    srv_histogram_observe(&m->latency[r], seconds);
    m->bytes_in += bytes_in;
    m->bytes_out += bytes_out;
}

typedef struct {
    char *buf;
    size_t len, cap;
    int failed;
} sbuf;

static void add(sbuf *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void add(sbuf *s, const char *fmt, ...)
{
    if (s->failed) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(s->buf + s->len, s->cap - s->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            s->failed = 1;
            return;
        }
        if ((size_t)n < s->cap - s->len) {
            s->len += (size_t)n;
            return;
        }
        size_t cap = s->cap * 2 + (size_t)n;
        char *nb = realloc(s->buf, cap);
        if (!nb) {
            s->failed = 1;
            return;
        }
        s->buf = nb;
        s->cap = cap;
    }
}

static void head(sbuf *s, const char *name, const char *type, const char *help)
{
    add(s, "# HELP altgrad_%s %s\n# TYPE altgrad_%s %s\n", name, help, name, type);
}

/* labels: "" or `route="x"` (no braces). */
static void histogram(sbuf *s, const char *name, const char *labels, const srv_histogram *h)
{
    const char *sep = labels[0] ? "," : "";
    uint64_t cum = 0;
    for (int b = 0; b < HIST_BUCKETS; b++) {
        cum += h->counts[b];
        add(s, "altgrad_%s_bucket{%s%sle=\"%g\"} %llu\n", name, labels, sep, bucket_le[b],
            (unsigned long long)cum);
    }
    cum += h->counts[HIST_BUCKETS];
    add(s, "altgrad_%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, labels, sep,
        (unsigned long long)cum);
    if (labels[0]) {
        add(s, "altgrad_%s_sum{%s} %.9g\n", name, labels, h->sum);
        add(s, "altgrad_%s_count{%s} %llu\n", name, labels, (unsigned long long)h->count);
    } else {
        add(s, "altgrad_%s_sum %.9g\n", name, h->sum);
        add(s, "altgrad_%s_count %llu\n", name, (unsigned long long)h->count);
    }
}

static const char *label_of(const srv_metrics *m, int r)
{
    return r < m->n_routes ? m->route_label[r] : "other";
}

static long resident_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f) return -1;
    long size = 0, rss = 0;
    int ok = fscanf(f, "%ld %ld", &size, &rss) == 2;
    fclose(f);
    return ok ? rss * sysconf(_SC_PAGESIZE) : -1;
}

char *srv_metrics_render(const srv_metrics *m, const srv_gauges *g, size_t *len)
{
    sbuf s = {malloc(16384), 0, 16384, 0};
    if (!s.buf) return NULL;

    head(&s, "build_info", "gauge", "Version of this server (always 1).");
    add(&s, "altgrad_build_info{version=\"%s\"} 1\n", g->version);

    head(&s, "requests_total", "counter", "HTTP requests answered, by route and status.");
    for (int i = 0; i <= m->n_routes; i++) {
        int r = i < m->n_routes ? i : SRV_METRICS_OTHER;
        for (int c = 0; c < STATUS_MAX; c++)
            if (m->requests[r][c])
                add(&s, "altgrad_requests_total{route=\"%s\",status=\"%d\"} %llu\n",
                    label_of(m, r), c, (unsigned long long)m->requests[r][c]);
    }

    head(&s, "request_duration_seconds", "histogram",
         "Time from the request's headers to the end of its response, by route.");
    for (int i = 0; i <= m->n_routes; i++) {
        int r = i < m->n_routes ? i : SRV_METRICS_OTHER;
        if (!m->latency[r].count) continue;
        char l[160];
        snprintf(l, sizeof l, "route=\"%s\"", label_of(m, r));
        histogram(&s, "request_duration_seconds", l, &m->latency[r]);
    }

    head(&s, "queue_wait_seconds", "histogram", "Time a job waited for a worker.");
    histogram(&s, "queue_wait_seconds", "", &m->queue_wait);

    head(&s, "job_duration_seconds", "histogram",
         "Worker time of a job (decode, compute, encode), by requested method.");
    for (int i = 0; i < METHOD_LABELS; i++) {
        char l[48];
        snprintf(l, sizeof l, "method=\"%s\"", method_labels[i]);
        histogram(&s, "job_duration_seconds", l, &m->compute[i]);
    }

    head(&s, "compute_seconds_total", "counter",
         "Seconds spent in the core (ag_gradients, verify included), by requested method.");
    for (int i = 0; i < METHOD_LABELS; i++)
        add(&s, "altgrad_compute_seconds_total{method=\"%s\"} %.9g\n", method_labels[i],
            m->compute_seconds[i]);

    head(&s, "jobs_accepted_total", "counter", "Jobs (sync and async) queued for a worker; "
         "once idle, equal to the sum of jobs_finished_total.");
    add(&s, "altgrad_jobs_accepted_total %llu\n", (unsigned long long)m->jobs_accepted);

    head(&s, "jobs_finished_total", "counter", "Jobs (sync and async) by final state.");
    for (int i = 2; i < SRV_JOB_OUTCOMES; i++)
        add(&s, "altgrad_jobs_finished_total{state=\"%s\"} %llu\n", state_labels[i],
            (unsigned long long)m->jobs_finished[i]);

    head(&s, "jobs", "gauge", "Jobs held now (sync in flight and async kept), by state.");
    for (int i = 0; i < SRV_JOB_OUTCOMES; i++)
        add(&s, "altgrad_jobs{state=\"%s\"} %zu\n", state_labels[i], g->jobs_by_state[i]);

    head(&s, "rejected_total", "counter", "Compute requests refused before running, by reason.");
    add(&s, "altgrad_rejected_total{reason=\"queue_full\"} %llu\n",
        (unsigned long long)m->rejected_queue_full);
    add(&s, "altgrad_rejected_total{reason=\"memory\"} %llu\n",
        (unsigned long long)m->rejected_memory);
    add(&s, "altgrad_rejected_total{reason=\"too_large\"} %llu\n",
        (unsigned long long)m->rejected_too_large);
    add(&s, "altgrad_rejected_total{reason=\"draining\"} %llu\n",
        (unsigned long long)m->rejected_draining);

    head(&s, "request_bytes_total", "counter", "Request body bytes received.");
    add(&s, "altgrad_request_bytes_total %llu\n", (unsigned long long)m->bytes_in);
    head(&s, "response_bytes_total", "counter", "Response body bytes sent.");
    add(&s, "altgrad_response_bytes_total %llu\n", (unsigned long long)m->bytes_out);

    head(&s, "queue_depth", "gauge", "Jobs waiting for a worker.");
    add(&s, "altgrad_queue_depth %zu\n", g->queue_depth);
    head(&s, "jobs_running", "gauge", "Jobs on a worker now.");
    add(&s, "altgrad_jobs_running %zu\n", g->running);
    head(&s, "jobs_in_flight", "gauge", "Jobs queued or running (the --queue bound counts these "
         "minus --workers).");
    add(&s, "altgrad_jobs_in_flight %zu\n", g->in_flight);
    head(&s, "connections", "gauge", "Open client connections.");
    add(&s, "altgrad_connections %zu\n", g->connections);
    head(&s, "suspended_requests", "gauge", "Requests waiting for their job.");
    add(&s, "altgrad_suspended_requests %zu\n", g->suspended);
    head(&s, "memory_budget_used_bytes", "gauge",
         "Bytes of --memory-limit held by bodies, workspaces and stored results.");
    add(&s, "altgrad_memory_budget_used_bytes %zu\n", g->memory_used);
    head(&s, "memory_budget_bytes", "gauge", "--memory-limit.");
    add(&s, "altgrad_memory_budget_bytes %zu\n", g->memory_limit);
    head(&s, "free_cores", "gauge", "Cores not taken by a running job (negative: shared).");
    add(&s, "altgrad_free_cores %ld\n", g->free_cores);
    head(&s, "workers", "gauge", "--workers.");
    add(&s, "altgrad_workers %d\n", g->workers);
    head(&s, "cores", "gauge", "--cores.");
    add(&s, "altgrad_cores %d\n", g->cores);
    head(&s, "draining", "gauge", "1 after SIGTERM/SIGINT.");
    add(&s, "altgrad_draining %d\n", g->draining);
    head(&s, "uptime_seconds", "gauge", "Seconds since the server started.");
    add(&s, "altgrad_uptime_seconds %.3f\n", g->uptime_s);
    long rss = resident_bytes();
    if (rss >= 0) {
        head(&s, "resident_memory_bytes", "gauge", "Resident set size of the process.");
        add(&s, "altgrad_resident_memory_bytes %ld\n", rss);
    }
    if (s.failed) {
        free(s.buf);
        return NULL;
    }
    *len = s.len;
    return s.buf;
}
