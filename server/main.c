/* altgradd: process setup, then the loop. See server.h for the map of files. */
#include <cblas.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "blas.h"
#include "log.h"
#include "routes.h"
#include "server.h"
#include "tls.h"

static int write_port_file(const char *path, unsigned port)
{
    char tmp[1100];
    snprintf(tmp, sizeof tmp, "%s.tmp%ld", path, (long)getpid());
    FILE *f = fopen(tmp, "w");
    if (!f) return -1;
    int ok = fprintf(f, "%u\n", port) > 0;
    ok = (fclose(f) == 0) && ok;
    /* rename: a reader never sees a half-written file. */
    if (!ok || rename(tmp, path) != 0) {
        unlink(tmp);
        return -1;
    }
    return 0;
}

static int setup(server *srv, char **cert, char **key)
{
    char msg[512];
    if (srv->cfg.tokens_file[0]) {
        if (srv_auth_load(&srv->auth, srv->cfg.tokens_file, msg, sizeof msg) != 0) {
            srv_log("error", "%s", msg);
            return -1;
        }
    }
    if (srv->cfg.tls_cert[0]) {
        *cert = srv_tls_read_pem(srv->cfg.tls_cert, msg, sizeof msg);
        if (!*cert) {
            srv_log("error", "--tls-cert: %s", msg);
            return -1;
        }
        *key = srv_tls_read_pem(srv->cfg.tls_key, msg, sizeof msg);
        if (!*key) {
            srv_log("error", "--tls-key: %s", msg);
            return -1;
        }
    }
    const char *fault = getenv("ALTGRAD_FAULT_ALLOC_FAIL");
    if (fault && *fault) {
        char *end;
        unsigned long every = strtoul(fault, &end, 10);
        if (*end || every == 0 || every > 1000000000ul) {
            srv_log("error", "ALTGRAD_FAULT_ALLOC_FAIL: expected a job count N >= 1, got '%s'",
                    fault);
            return -1;
        }
        srv->fault_alloc_every = (unsigned)every;
        srv_log("warn", "fault injection: every %lu-th job fails as out of memory "
                "(ALTGRAD_FAULT_ALLOC_FAIL; a test hook, never for production)", every);
    }
    srv->limits = ag_proto_limits_default();
    srv->cost = ag_cost_model_default();
    if (srv->cfg.calibrate) {
        ag_error err;
        memset(&err, 0, sizeof err);
        if (ag_cost_model_calibrate(&srv->cost, &err) != AG_OK)
            srv_log("warn", "cost model calibration failed (%s); using defaults", err.message);
    }
    srv_log("info", "cost model: exact %.3g s/flop, approx %.3g s/flop (%s)",
            srv->cost.exact_s_per_flop, srv->cost.approx_s_per_flop,
            srv->cfg.calibrate ? "calibrated" : "built-in");
    if (srv_budget_init(&srv->budget, srv->cfg.memory_limit) != 0) return -1;
    if (srv_job_table_init(&srv->jobs, 4096, &srv->budget) != 0) return -1;
    return 0;
}

int main(int argc, char **argv)
{
    /* Before anything can call BLAS: every caller thread runs single-threaded GEMMs and the
     * core parallelises itself (OPENBLAS_NUM_THREADS=1 in the environment, as `make run`
     * sets, also stops OpenBLAS from creating its idle threads at load). */
    srv_blas_setup(argv);
    openblas_set_num_threads(1);
    json_object_seed(0);
    signal(SIGPIPE, SIG_IGN);

    server *srv = calloc(1, sizeof *srv);
    if (!srv) return 1;
    srv_config_defaults(&srv->cfg);
    int rc = srv_config_load(&srv->cfg, argc, argv);
    if (rc != 0) {
        free(srv);
        return rc > 0 ? 0 : 2;
    }
    srv_log_set_format(srv->cfg.log_format);

    /* Read once, at the pool's first use: set before any uv_queue_work. */
    char n[16];
    snprintf(n, sizeof n, "%d", srv->cfg.workers);
    setenv("UV_THREADPOOL_SIZE", n, 1);

    char *cert = NULL, *key = NULL;
    uv_loop_t loop;
    int exit_code = 1;
    srv_metrics_init(&srv->metrics);
    if (setup(srv, &cert, &key) != 0) goto out_early;
    if (uv_loop_init(&loop) != 0) goto out_early;
    srv->loop = &loop;
    if (srv_pool_init(&srv->pool, &loop, srv->cfg.cores) != 0) goto out_loop;
    srv->started_ns = uv_hrtime();
    if (http_start(srv, srv_routes_init(srv), cert, key) != 0) goto out_loop;
    srv_tls_free_pem(cert);
    srv_tls_free_pem(key);
    cert = key = NULL;
    if (srv->cfg.port_file[0] && write_port_file(srv->cfg.port_file, srv->http.port) != 0) {
        srv_log("error", "cannot write --port-file %s", srv->cfg.port_file);
        http_stop(srv);
        uv_run(&loop, UV_RUN_DEFAULT);
        goto out_loop;
    }
    if (srv_lifecycle_start(srv) != 0) {
        srv_log("error", "cannot start timers and signal handlers");
        goto out_loop;
    }
    srv_log("info", "altgradd %s listening on %s://%s (port %u): workers %d, cores %d, "
            "queue %d, max body %zu, timeout %g s, job ttl %g s, memory limit %zu, auth %s",
            ALTGRAD_VERSION, srv->http.tls ? "https" : "http", srv->cfg.listen, srv->http.port,
            srv->cfg.workers, srv->cfg.cores, srv->cfg.queue, srv->cfg.max_body,
            srv->cfg.timeout_s, srv->cfg.job_ttl_s, srv->cfg.memory_limit,
            srv->auth.count ? "on" : "off");

    uv_run(&loop, UV_RUN_DEFAULT);
    exit_code = 0;
    srv_log("info", "stopped");

out_loop:
    if (srv->http.mhd) {
        http_stop(srv);
        uv_run(&loop, UV_RUN_DEFAULT);
    }
    if (uv_loop_close(&loop) != 0) srv_log("warn", "loop closed with handles open");
out_early:
    srv_tls_free_pem(cert);
    srv_tls_free_pem(key);
    srv_job_table_free(&srv->jobs);
    if (srv->pool.cores) srv_pool_destroy(&srv->pool);
    if (srv->budget.limit) srv_budget_destroy(&srv->budget);
    srv_auth_free(&srv->auth);
    free(srv);
    return exit_code;
}
