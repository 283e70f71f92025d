/* libFuzzer target: the HTTP layer of altgradd, in process.
 *
 * The server's own code (every server/ file but main.c) runs here exactly as in altgradd: one libuv
 * loop drives libmicrohttpd in external-event mode, compute jobs go to libuv's pool. Each
 * input is one client connection's raw bytes: a socketpair is handed to libmicrohttpd with
 * MHD_add_connection (no TCP port per input, so no TIME_WAIT pile-up at thousands of inputs
 * a second), the bytes are written, the write side is shut, and the loop runs until the
 * server closes the connection and every job the input started has finished. Async jobs are
 * then purged so that inputs stay independent.
 *
 * Checks: the sanitizers (ASan, UBSan, LeakSanitizer per input), a server that is still
 * holding the connection or a job HANG_S seconds after the client went away (a hang: abort),
 * and the bookkeeping every request must leave balanced (active requests, suspended
 * connections, memory budget back to zero). Limits are small: the worst input costs
 * milliseconds. The server's log goes to /dev/null unless ALTGRAD_FUZZ_LOG=1. */
#include <arpa/inet.h>
#include <cblas.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../../server/http.h"
#include "../../server/log.h"
#include "../../server/routes.h"
#include "../../server/server.h"

#define HANG_S 20.0

static server *S;
static uv_loop_t loop;

#define CHECK(cond, ...)                                                                        \
    do {                                                                                         \
        if (!(cond)) {                                                                           \
            fprintf(stderr, "fuzz_http: %s: ", #cond);                                           \
            fprintf(stderr, __VA_ARGS__);                                                        \
            fputc('\n', stderr);                                                                 \
            abort();                                                                             \
        }                                                                                        \
    } while (0)

static double now_s(void)
{
    return (double)uv_hrtime() / 1e9;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    openblas_set_num_threads(1);
    json_object_seed(1);
    signal(SIGPIPE, SIG_IGN);
    if (!getenv("ALTGRAD_FUZZ_LOG")) {
        int devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
        if (devnull >= 0) srv_log_set_fd(devnull);
    }
    setenv("UV_THREADPOOL_SIZE", "2", 1);
    S = calloc(1, sizeof *S);
    CHECK(S != NULL, "calloc");
    srv_config_defaults(&S->cfg);
    srv_config *c = &S->cfg;
    snprintf(c->listen, sizeof c->listen, "127.0.0.1:0");
    c->workers = 2;
    c->cores = 2;
    c->queue = 2;
    c->max_body = 256 << 10;
    c->timeout_s = 10;
    c->job_ttl_s = 0;
    c->max_jobs = 8;
    c->memory_limit = 64 << 20;
    c->max_connections = 16;
    c->connection_timeout_s = 5;
    c->calibrate = 0;
    snprintf(c->node_id, sizeof c->node_id, "fuzz-0");
    srv_metrics_init(&S->metrics);
    S->limits = ag_proto_limits_default();
    S->limits.max_elements = 1 << 16;
    S->limits.max_tensor_elements = 1 << 15;
    S->limits.max_layers = 4;
    S->limits.max_d_model = 64;
    S->limits.max_d_ff = 128;
    S->limits.max_tokens = 256;
    S->cost = ag_cost_model_default();
    CHECK(srv_budget_init(&S->budget, c->memory_limit) == 0, "srv_budget_init");
    CHECK(srv_job_table_init(&S->jobs, 64, &S->budget) == 0, "srv_job_table_init");
    CHECK(uv_loop_init(&loop) == 0, "uv_loop_init");
    S->loop = &loop;
    CHECK(srv_pool_init(&S->pool, &loop, c->cores) == 0, "srv_pool_init");
    S->started_ns = uv_hrtime();
    CHECK(http_start(S, srv_routes_init(S), NULL, NULL) == 0, "http_start");
    return 0;
}

static void run_loop_once(void)
{
    http_pump(S);
    uv_run(&loop, UV_RUN_NOWAIT);
}

/* Reads and drops whatever the server sent; 1 once it closed its side. */
static int drain_client(int fd)
{
    char buf[65536];
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n > 0) continue;
        if (n == 0) return 1;
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
        return 1; /* ECONNRESET and the like: gone */
    }
}

/* Every async job is finished (the loop waited for in_flight == 0): drop them all. */
static void purge_jobs(void)
{
    srv_job *next;
    for (srv_job *j = S->jobs.all; j; j = next) {
        next = j->all_next;
        CHECK(!j->work.in_flight, "a job still in flight after its purge wait");
        srv_job_destroy(&S->jobs, j);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0) return 0;
    struct sockaddr_in peer;
    memset(&peer, 0, sizeof peer);
    peer.sin_family = AF_INET;
    peer.sin_port = htons(40000);
    peer.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (MHD_add_connection(S->http.mhd, sv[0], (struct sockaddr *)&peer, sizeof peer) != MHD_YES) {
        close(sv[0]);
        close(sv[1]);
        return 0;
    }
    run_loop_once();

    double t0 = now_s();
    size_t sent = 0;
    int closed = 0;
    while (sent < size && !closed) {
        ssize_t n = send(sv[1], data + sent, size - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) sent += (size_t)n;
        else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) break;
        run_loop_once();
        closed = drain_client(sv[1]);
        CHECK(now_s() - t0 < HANG_S, "the server stopped reading a %zu-byte request", size);
    }
    shutdown(sv[1], SHUT_WR);

    /* Until the server closes the connection (it sees the client's end of input). */
    while (!closed) {
        run_loop_once();
        closed = drain_client(sv[1]);
        if (closed) break;
        CHECK(now_s() - t0 < HANG_S, "the server held a half-closed connection for %g s",
              HANG_S);
        struct pollfd p = {sv[1], POLLIN, 0};
        poll(&p, 1, 1);
    }
    close(sv[1]);

    /* Until the connection is gone from MHD and every job this input started is done. */
    while (http_connections(S) > 0 || S->pool.in_flight > 0 || S->http.active_requests > 0) {
        run_loop_once();
        CHECK(now_s() - t0 < HANG_S,
              "%g s after the client left: %zu connections, %zu jobs in flight, %zu requests",
              HANG_S, http_connections(S), S->pool.in_flight, S->http.active_requests);
        if (S->pool.in_flight > 0) usleep(200);
    }
    CHECK(S->http.suspended == 0, "%zu connections still counted as suspended", S->http.suspended);
    purge_jobs();
    CHECK(srv_budget_used(&S->budget) == 0, "%zu bytes of the memory budget leaked (bodies %zu, "
          "workspaces %zu, results %zu)", srv_budget_used(&S->budget),
          srv_budget_used_by(&S->budget, SRV_MEM_BODY),
          srv_budget_used_by(&S->budget, SRV_MEM_WORKSPACE),
          srv_budget_used_by(&S->budget, SRV_MEM_RESULT));
    return 0;
}
