/* libaltgrad against a live altgradd (path in $ALTGRAD_SERVER): every library call, JSON and
 * base64 giving equal results, retries (server started late, 429 from a full queue), cancel,
 * and sharded == unsharded. The reference for gradients is the core linked into this test. */
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "../../client/altgrad_client.h"

/* ---- a server per fixture -------------------------------------------------------------- */

typedef struct {
    pid_t pid;
    int port;
    char url[64];
    char dir[64];
} server;

static const char *server_path(void)
{
    const char *p = getenv("ALTGRAD_SERVER");
    return p && *p ? p : "build/altgradd";
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) != 0) {
        if (fd >= 0) close(fd);
        return -1;
    }
    close(fd);
    return ntohs(a.sin_port);
}

/* Forks altgradd with --listen 127.0.0.1:<port or 0> and extra flags (NULL-terminated),
 * after delay_ms. With port 0 it waits for --port-file and fills s->port. */
static void server_spawn(server *s, int port, long delay_ms, const char *const *extra)
{
    memset(s, 0, sizeof *s);
    snprintf(s->dir, sizeof s->dir, "/tmp/agclient.XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(s->dir));
    char listen[64], portfile[128], logfile[128];
    snprintf(listen, sizeof listen, "127.0.0.1:%d", port);
    snprintf(portfile, sizeof portfile, "%s/port", s->dir);
    snprintf(logfile, sizeof logfile, "%s/log", s->dir);
    const char *argv[32];
    int argc = 0;
    argv[argc++] = server_path();
    argv[argc++] = "--listen";
    argv[argc++] = listen;
    argv[argc++] = "--port-file";
    argv[argc++] = portfile;
    argv[argc++] = "--calibrate";
    argv[argc++] = "0";
    for (int i = 0; extra && extra[i] && argc < 30; i++) argv[argc++] = extra[i];
    argv[argc] = NULL;
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        if (delay_ms) sleep_ms(delay_ms);
        FILE *log = fopen(logfile, "w");
        if (log) dup2(fileno(log), 2);
        setenv("OPENBLAS_NUM_THREADS", "1", 1);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    s->pid = pid;
    s->port = port;
    if (port == 0) {
        for (int i = 0; i < 600 && s->port == 0; i++) { /* up to 30 s (sanitizer builds) */
            FILE *f = fopen(portfile, "r");
            if (f) {
                if (fscanf(f, "%d", &s->port) != 1) s->port = 0;
                fclose(f);
            }
            if (s->port == 0) {
                int status;
                ck_assert_msg(waitpid(pid, &status, WNOHANG) == 0,
                              "altgradd (%s) exited at startup; see %s", argv[0], logfile);
                sleep_ms(50);
            }
        }
        ck_assert_msg(s->port > 0, "altgradd wrote no port file");
    }
    snprintf(s->url, sizeof s->url, "http://127.0.0.1:%d", s->port);
}

static void server_stop(server *s)
{
    if (s->pid > 0) {
        kill(s->pid, SIGTERM);
        int status;
        for (int i = 0; i < 200; i++) {
            if (waitpid(s->pid, &status, WNOHANG) == s->pid) {
                s->pid = 0;
                break;
            }
            sleep_ms(50);
        }
        if (s->pid > 0) {
            kill(s->pid, SIGKILL);
            waitpid(s->pid, &status, 0);
            s->pid = 0;
            status = 0;
        }
        /* the server is not under test here, but an unclean exit deserves a look */
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            fprintf(stderr, "note: altgradd exited with status %d; log:\n", status);
            char cmd[200];
            snprintf(cmd, sizeof cmd, "tail -n 20 '%s/log' >&2", s->dir);
            if (system(cmd) != 0) fprintf(stderr, "(no log)\n");
        }
    }
    char cmd[160];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", s->dir);
    if (s->dir[0] && system(cmd) != 0) fprintf(stderr, "could not remove %s\n", s->dir);
    s->pid = 0;
}

/* The shared server of most tests (started in the parent by an unchecked fixture). */
static server main_srv;

static void main_up(void)
{
    const char *extra[] = {"--workers", "2", "--cores", "2", NULL};
    server_spawn(&main_srv, 0, 0, extra);
}

static void main_down(void)
{
    server_stop(&main_srv);
}

static altgrad_client *client_for(const char *url, ag_encoding enc)
{
    altgrad_client_opts o = altgrad_client_opts_default();
    o.base_url = url;
    o.encoding = enc;
    o.backoff_initial_ms = 50;
    o.poll_interval_ms = 20;
    altgrad_error err;
    altgrad_client *c = altgrad_client_new(&o, &err);
    ck_assert_msg(c != NULL, "client: %s", err.message);
    return c;
}

/* ---- a random model -------------------------------------------------------------------- */

typedef struct {
    ag_model_config cfg;
    ag_layer_params layers[4];
    float *input, *target, *gout;
    size_t batch, n;
} model;

static unsigned long long rs;

static float gauss(void)
{
    double u = 0, v = 0;
    for (int i = 0; i < 2; i++) {
        rs = rs * 6364136223846793005ull + 1442695040888963407ull;
        double x = ((rs >> 11) + 0.5) / 9007199254740992.0;
        if (i == 0) u = x; else v = x;
    }
    return (float)(sqrt(-2 * log(u)) * cos(2 * M_PI * v));
}

static void model_make(model *m, int d, int heads, int layers, int d_ff, int causal, size_t batch,
                       size_t n, unsigned long long seed, double scale)
{
    memset(m, 0, sizeof *m);
    rs = seed;
    m->cfg = (ag_model_config){.d_model = d, .n_heads = heads, .n_layers = layers, .d_ff = d_ff,
                               .causal = causal, .norm = AG_NORM_LAYERNORM,
                               .activation = AG_ACT_GELU, .residual = 1};
    ck_assert_int_le(layers, 4);
    for (int l = 0; l < layers; l++) {
        ck_assert_int_eq(ag_layer_params_alloc(&m->cfg, &m->layers[l], NULL), AG_OK);
        for (int p = 0; p < AG_P_COUNT; p++) {
            size_t numel = ag_param_numel(&m->cfg, p), shape[2];
            int nd = ag_param_shape(&m->cfg, p, shape);
            for (size_t i = 0; i < numel; i++)
                m->layers[l].p[p][i] = p == AG_P_LN1_GAMMA || p == AG_P_LN2_GAMMA
                                           ? 1.0f + 0.1f * gauss()
                                           : (float)(scale * gauss() / sqrt((double)shape[0])) *
                                                 (nd == 2 ? 1.0f : 0.1f);
        }
    }
    size_t count = batch * n * (size_t)d;
    m->batch = batch;
    m->n = n;
    m->input = malloc(count * sizeof(float));
    m->target = malloc(count * sizeof(float));
    m->gout = malloc(count * sizeof(float));
    ck_assert(m->input && m->target && m->gout);
    for (size_t i = 0; i < count; i++) {
        m->input[i] = gauss();
        m->target[i] = gauss();
        m->gout[i] = gauss();
    }
}

static void model_free(model *m)
{
    for (int l = 0; l < m->cfg.n_layers; l++) ag_layer_params_free(&m->layers[l]);
    free(m->input);
    free(m->target);
    free(m->gout);
}

static altgrad_request model_request(const model *m, ag_loss_kind loss, ag_method_kind method)
{
    altgrad_request r = altgrad_request_init(&m->cfg);
    r.layers = m->layers;
    r.input = m->input;
    r.batch = m->batch;
    r.n = m->n;
    r.batched = m->batch > 1;
    r.loss = loss;
    r.loss_tensor = loss == AG_LOSS_MSE ? m->target : loss == AG_LOSS_GRAD_OUTPUT ? m->gout : NULL;
    r.method = ag_method_default(method);
    return r;
}

/* Relative error of two arrays, NaN-safe: 1.0 when one is NULL and the other is not. */
static double rel(const float *a, const float *b, size_t count)
{
    if (!a || !b) return a == b ? 0.0 : 1.0;
    return ag_rel_error(a, b, count);
}

/* Largest relative error between two results over loss, grad_input and every weight. */
static double result_diff(const ag_model_config *cfg, const altgrad_result *a,
                          const altgrad_result *b)
{
    ck_assert_int_eq(a->has_loss, b->has_loss);
    double worst = 0;
    if (a->has_loss) worst = fabs(a->loss - b->loss) / fmax(fabs(b->loss), 1e-30);
    ck_assert_uint_eq(a->batch, b->batch);
    ck_assert_uint_eq(a->n, b->n);
    worst = fmax(worst, rel(a->grad_input, b->grad_input, a->batch * a->n * a->d_model));
    ck_assert(!!a->grad_layers == !!b->grad_layers);
    for (int l = 0; a->grad_layers && l < cfg->n_layers; l++)
        for (int p = 0; p < AG_P_COUNT; p++) {
            size_t numel = ag_param_numel(cfg, p);
            if (numel)
                worst = fmax(worst, rel(a->grad_layers[l].p[p], b->grad_layers[l].p[p], numel));
        }
    return worst;
}

/* The core's own answer for the same request, as an altgrad_result-shaped view. */
static double diff_against_core(const model *m, ag_loss_kind loss, const altgrad_result *got)
{
    ag_loss l = {.kind = loss,
                 .tensor = loss == AG_LOSS_MSE ? m->target
                           : loss == AG_LOSS_GRAD_OUTPUT ? m->gout : NULL};
    ag_method meth = ag_method_default(AG_METHOD_EXACT);
    ag_run_opts opts = {.threads = 1};
    ag_result ref;
    ag_error err;
    ck_assert_msg(ag_gradients(&m->cfg, m->layers, m->input, m->batch, m->n, &l, &meth, &opts,
                               &ref, &err) == AG_OK, "core: %s", err.message);
    altgrad_result view;
    memset(&view, 0, sizeof view);
    view.has_loss = ref.has_loss;
    view.loss = ref.loss;
    view.batch = ref.batch;
    view.n = ref.n;
    view.d_model = ref.d_model;
    view.grad_input = ref.grad_input;
    view.grad_layers = ref.grad_layers;
    double d = result_diff(&m->cfg, got, &view);
    ag_result_free(&ref);
    return d;
}

/* ---- tests ----------------------------------------------------------------------------- */

START_TEST(test_health_and_info)
{
    altgrad_client *c = client_for(main_srv.url, AG_ENCODING_B64);
    altgrad_error err;
    ck_assert_int_eq(altgrad_health(c, 0, &err), ALTGRAD_OK);
    ck_assert_int_eq(altgrad_health(c, 1, &err), ALTGRAD_OK);
    char *info = NULL;
    ck_assert_int_eq(altgrad_info(c, &info, &err), ALTGRAD_OK);
    json_error_t jerr;
    json_t *root = json_loads(info, 0, &jerr);
    ck_assert_msg(json_is_object(root), "info is not a JSON object: %.200s", info);
    json_decref(root);
    free(info);
    /* raw GET of an unknown path: 404, not retried, the server's JSON error kept */
    char *body = (char *)1;
    ck_assert_int_eq(altgrad_get_raw(c, "/v1/nothing-here", &body, NULL, &err),
                     ALTGRAD_E_HTTP_4XX);
    ck_assert_ptr_null(body);
    ck_assert_int_eq(err.http_status, 404);
    ck_assert_int_eq(err.attempts, 1);
    ck_assert_str_ne(err.code, "");
    altgrad_client_free(c);
}
END_TEST

START_TEST(test_gradients_match_core)
{
    model m;
    model_make(&m, 16, 2, 2, 32, 1, 1, 24, 11, 1.0);
    altgrad_client *c = client_for(main_srv.url, AG_ENCODING_B64);
    ag_loss_kind losses[] = {AG_LOSS_SUM, AG_LOSS_MSE, AG_LOSS_GRAD_OUTPUT};
    for (int i = 0; i < 3; i++) {
        altgrad_request req = model_request(&m, losses[i], AG_METHOD_EXACT);
        req.return_mask = AG_RETURN_DEFAULT | AG_RETURN_OUTPUT;
        altgrad_result res;
        altgrad_error err;
        ck_assert_msg(altgrad_gradients(c, &req, &res, &err) == ALTGRAD_OK, "loss %d: %s", i,
                      err.message);
        ck_assert_int_eq(res.has_loss, losses[i] != AG_LOSS_GRAD_OUTPUT);
        ck_assert_ptr_nonnull(res.output);
        ck_assert_ptr_nonnull(res.grad_input);
        ck_assert_ptr_nonnull(res.grad_layers);
        ck_assert_ptr_nonnull(res.heads);
        ck_assert_int_eq(res.n_layers, 2);
        ck_assert_int_eq(res.n_heads, 2);
        for (int h = 0; h < 4; h++) ck_assert_int_eq(res.heads[h].method, AG_METHOD_EXACT);
        ck_assert_uint_eq(res.batch, 1);
        ck_assert_uint_eq(res.n, 24);
        ck_assert_uint_eq(res.d_model, 16);
        double d = diff_against_core(&m, losses[i], &res);
        ck_assert_msg(d < 1e-5, "loss %d: service vs core relative difference %g", i, d);
        altgrad_result_free(&res);
        ck_assert_ptr_null(res.grad_input);
    }
    /* only the loss asked for: no gradients come back */
    altgrad_request req = model_request(&m, AG_LOSS_SUM, AG_METHOD_EXACT);
    req.return_mask = AG_RETURN_LOSS;
    altgrad_result res;
    altgrad_error err;
    ck_assert_int_eq(altgrad_gradients(c, &req, &res, &err), ALTGRAD_OK);
    ck_assert_int_eq(res.has_loss, 1);
    ck_assert_ptr_null(res.grad_input);
    ck_assert_ptr_null(res.grad_layers);
    altgrad_result_free(&res);
    altgrad_client_free(c);
    model_free(&m);
}
END_TEST

START_TEST(test_json_equals_b64)
{
    model m;
    model_make(&m, 16, 4, 1, 0, 0, 2, 20, 5, 1.0);
    altgrad_client *cj = client_for(main_srv.url, AG_ENCODING_JSON);
    altgrad_client *cb = client_for(main_srv.url, AG_ENCODING_B64);
    altgrad_request req = model_request(&m, AG_LOSS_MSE, AG_METHOD_EXACT);
    /* the two encodings must also be what travels: check the request bodies */
    size_t lj = 0, lb = 0;
    altgrad_error err;
    char *bj = altgrad_request_encode(&req, AG_ENCODING_JSON, &lj, &err);
    char *bb = altgrad_request_encode(&req, AG_ENCODING_B64, &lb, &err);
    ck_assert(bj && bb);
    ck_assert_ptr_nonnull(strstr(bb, "\"b64\""));
    ck_assert_ptr_null(strstr(bj, "\"b64\""));
    ck_assert_ptr_nonnull(strstr(bj, "\"data\""));
    free(bj);
    free(bb);
    altgrad_result rj, rb;
    ck_assert_msg(altgrad_gradients(cj, &req, &rj, &err) == ALTGRAD_OK, "json: %s", err.message);
    ck_assert_msg(altgrad_gradients(cb, &req, &rb, &err) == ALTGRAD_OK, "b64: %s", err.message);
    /* %.9g round-trips float32 exactly, so the two runs see identical inputs */
    double d = result_diff(&m.cfg, &rj, &rb);
    ck_assert_msg(d < 1e-6, "json vs b64 relative difference %g", d);
    altgrad_result_free(&rj);
    altgrad_result_free(&rb);
    altgrad_client_free(cj);
    altgrad_client_free(cb);
    model_free(&m);
}
END_TEST

START_TEST(test_approx_verify)
{
    model m;
    model_make(&m, 16, 2, 1, 0, 0, 1, 256, 15, 0.3);
    altgrad_client *c = client_for(main_srv.url, AG_ENCODING_B64);
    altgrad_request req = model_request(&m, AG_LOSS_SUM, AG_METHOD_APPROX);
    req.method.epsilon = 1e-3;
    req.verify = 1;
    altgrad_result res;
    altgrad_error err;
    ck_assert_msg(altgrad_gradients(c, &req, &res, &err) == ALTGRAD_OK, "%s", err.message);
    ck_assert_str_eq(res.method_name, "approx");
    ck_assert_ptr_nonnull(res.heads);
    for (int h = 0; h < 2; h++) {
        ck_assert_int_eq(res.heads[h].method, AG_METHOD_APPROX);
        ck_assert_int_ge(res.heads[h].degree, 1);
        ck_assert_uint_gt(res.heads[h].rank, 0);
        ck_assert(res.heads[h].error_bound > 0 && res.heads[h].error_bound <= 1e-3);
    }
    ck_assert(res.has_verification);
    ck_assert_msg(res.verification.grad_input >= 0 && res.verification.grad_input < 0.05, "%g",
                  res.verification.grad_input);
    ck_assert_ptr_nonnull(res.verification.layers);
    ck_assert(!isnan(res.verification.layers[AG_P_WQ]) &&
              res.verification.layers[AG_P_WQ] < 0.05);
    ck_assert(isnan(res.verification.layers[AG_P_W1])); /* no MLP in this model */
    /* the service's approximate gradient is close to the exact one computed here */
    double d = diff_against_core(&m, AG_LOSS_SUM, &res);
    ck_assert_msg(d < 0.05, "approx vs exact core: %g", d);
    altgrad_result_free(&res);
    altgrad_client_free(c);
    model_free(&m);
}
END_TEST

START_TEST(test_sharded_equals_unsharded)
{
    model m;
    model_make(&m, 16, 2, 2, 32, 1, 5, 12, 21, 1.0);
    altgrad_client *c = client_for(main_srv.url, AG_ENCODING_B64);
    ag_loss_kind losses[] = {AG_LOSS_SUM, AG_LOSS_MSE, AG_LOSS_GRAD_OUTPUT};
    for (int i = 0; i < 3; i++) {
        altgrad_request req = model_request(&m, losses[i], AG_METHOD_EXACT);
        req.return_mask = AG_RETURN_DEFAULT | AG_RETURN_OUTPUT;
        altgrad_result whole;
        altgrad_error err;
        ck_assert_msg(altgrad_gradients(c, &req, &whole, &err) == ALTGRAD_OK, "%s", err.message);
        int ks[] = {2, 3, 5, 9};
        for (int j = 0; j < 4; j++) {
            altgrad_result part;
            ck_assert_msg(altgrad_gradients_sharded(c, &req, ks[j], &part, &err) == ALTGRAD_OK,
                          "k=%d: %s", ks[j], err.message);
            double d = result_diff(&m.cfg, &part, &whole);
            ck_assert_msg(d < 2e-6, "loss %d, k=%d: sharded vs unsharded differ by %g", i, ks[j],
                          d);
            ck_assert_msg(rel(part.output, whole.output, 5 * 12 * 16) == 0.0,
                          "outputs are not the concatenation");
            ck_assert_ptr_nonnull(part.heads);
            ck_assert_int_eq(part.n_layers, 2);
            /* the merged result describes itself like a decoded one */
            ck_assert_int_eq(part.batched, whole.batched);
            ck_assert_str_eq(part.method_name, whole.method_name);
            ck_assert_int_eq(part.n_heads, whole.n_heads);
            altgrad_result_free(&part);
        }
        altgrad_result_free(&whole);
    }
    altgrad_client_free(c);
    model_free(&m);
}
END_TEST

typedef struct {
    int calls;
    double last;
    int monotone;
    int stop_after;
} progress_log;

static int on_progress(void *ctx, const altgrad_job_info *info)
{
    progress_log *p = ctx;
    if (info->progress + 1e-12 < p->last) p->monotone = 0;
    p->last = info->progress;
    p->calls++;
    return p->stop_after && p->calls >= p->stop_after;
}

START_TEST(test_jobs)
{
    model m;
    model_make(&m, 16, 2, 2, 32, 0, 2, 40, 31, 1.0);
    altgrad_client *c = client_for(main_srv.url, AG_ENCODING_B64);
    altgrad_request req = model_request(&m, AG_LOSS_SUM, AG_METHOD_EXACT);
    altgrad_error err;
    char id[ALTGRAD_JOB_ID_MAX];
    ck_assert_msg(altgrad_job_submit(c, &req, id, &err) == ALTGRAD_OK, "%s", err.message);
    ck_assert(strlen(id) > 0);
    progress_log log = {.monotone = 1};
    altgrad_job_info info;
    ck_assert_msg(altgrad_job_wait(c, id, 30000, on_progress, &log, &info, &err) == ALTGRAD_OK,
                  "%s", err.message);
    ck_assert_int_eq(info.state, ALTGRAD_JOB_DONE);
    ck_assert_int_ge(log.calls, 1);
    ck_assert(log.monotone);
    ck_assert_double_eq_tol(info.progress, 1.0, 1e-9);
    ck_assert_int_eq(altgrad_job_status(c, id, &info, &err), ALTGRAD_OK);
    ck_assert_int_eq(info.state, ALTGRAD_JOB_DONE);
    ck_assert_str_eq(info.id, id);
    altgrad_result viajob, direct;
    ck_assert_int_eq(altgrad_job_result(c, id, &m.cfg, &viajob, &err), ALTGRAD_OK);
    ck_assert_int_eq(altgrad_gradients(c, &req, &direct, &err), ALTGRAD_OK);
    ck_assert(result_diff(&m.cfg, &viajob, &direct) < 1e-6);
    /* the same body fetched raw and decoded locally */
    char path[160], *raw = NULL;
    size_t raw_len = 0;
    snprintf(path, sizeof path, "/v1/jobs/%s/result", id);
    ck_assert_int_eq(altgrad_get_raw(c, path, &raw, &raw_len, &err), ALTGRAD_OK);
    altgrad_result decoded;
    ck_assert_int_eq(altgrad_result_decode(raw, raw_len, &m.cfg, &decoded, &err), ALTGRAD_OK);
    ck_assert(result_diff(&m.cfg, &decoded, &viajob) == 0.0);
    altgrad_result_free(&decoded);
    ck_assert_int_eq(altgrad_result_decode("{\"loss\": \"x\"}", 13, &m.cfg, &decoded, &err),
                     ALTGRAD_E_PROTOCOL);
    free(raw);
    altgrad_result_free(&viajob);
    /* submit + wait + result in one call */
    altgrad_result run;
    ck_assert_msg(altgrad_job_run(c, &req, 30000, NULL, NULL, &run, &err) == ALTGRAD_OK, "%s",
                  err.message);
    ck_assert(result_diff(&m.cfg, &run, &direct) < 1e-6);
    altgrad_result_free(&run);
    altgrad_result_free(&direct);
    /* unknown job: 404, never retried */
    ck_assert_int_eq(altgrad_job_status(c, "0123456789abcdef0123456789abcdef", &info, &err),
                     ALTGRAD_E_HTTP_4XX);
    ck_assert_int_eq(err.http_status, 404);
    ck_assert_int_eq(err.attempts, 1);
    /* ids that could leave /v1/jobs/ never reach the wire */
    ck_assert_int_eq(altgrad_job_status(c, "../health/live", &info, &err), ALTGRAD_E_ARG);
    ck_assert_int_eq(altgrad_job_cancel(c, "a b", &info, &err), ALTGRAD_E_ARG);
    ck_assert_int_eq(altgrad_job_status(c, "", &info, &err), ALTGRAD_E_ARG);
    altgrad_client_free(c);
    model_free(&m);
}
END_TEST

/* A job that takes seconds: long exact attention. */
static void slow_model(model *m)
{
    model_make(m, 64, 8, 2, 0, 0, 1, 3072, 41, 1.0);
}

START_TEST(test_cancel)
{
    model m;
    slow_model(&m);
    altgrad_client *c = client_for(main_srv.url, AG_ENCODING_B64);
    altgrad_request req = model_request(&m, AG_LOSS_SUM, AG_METHOD_EXACT);
    altgrad_error err;
    char id[ALTGRAD_JOB_ID_MAX];
    ck_assert_msg(altgrad_job_submit(c, &req, id, &err) == ALTGRAD_OK, "%s", err.message);
    /* not done yet: the result is 409 */
    altgrad_result res;
    ck_assert_int_eq(altgrad_job_result(c, id, &m.cfg, &res, &err), ALTGRAD_E_HTTP_4XX);
    ck_assert_int_eq(err.http_status, 409);
    altgrad_job_info info;
    ck_assert_msg(altgrad_job_cancel(c, id, &info, &err) == ALTGRAD_OK, "%s", err.message);
    double t0 = now_ms();
    ck_assert_int_eq(altgrad_job_wait(c, id, 30000, NULL, NULL, &info, &err), ALTGRAD_E_JOB);
    ck_assert_int_eq(info.state, ALTGRAD_JOB_CANCELLED);
    ck_assert_msg(now_ms() - t0 < 10000, "cancel took %.0f ms to stop the job", now_ms() - t0);
    /* a progress callback that stops the wait: ALTGRAD_E_ABORTED, and job_run cancels */
    progress_log log = {.monotone = 1, .stop_after = 1};
    t0 = now_ms();
    ck_assert_int_eq(altgrad_job_run(c, &req, 0, on_progress, &log, &res, &err),
                     ALTGRAD_E_ABORTED);
    ck_assert_int_eq(log.calls, 1);
    altgrad_client_free(c);
    model_free(&m);
}
END_TEST

/* A sharded call that fails on the server reports the server's error, its message naming
 * the shard: 65 layers are over the service's limit of 64 (413 at model.n_layers). */
START_TEST(test_sharded_error_names_the_shard)
{
    enum { L = 65 };
    ag_model_config cfg = {.d_model = 2, .n_heads = 1, .n_layers = L, .norm = AG_NORM_NONE};
    static float eye[4] = {1, 0, 0, 1}, x[4] = {0.5f, -0.25f, 1, 2};
    ag_layer_params layers[L];
    memset(layers, 0, sizeof layers);
    for (int l = 0; l < L; l++)
        for (int i = AG_P_WQ; i <= AG_P_WO; i++) layers[l].p[i] = eye;
    altgrad_request req = altgrad_request_init(&cfg);
    req.layers = layers;
    req.input = x;
    req.batch = 2;
    req.n = 1;
    req.batched = 1;
    req.method = ag_method_default(AG_METHOD_EXACT);
    altgrad_client *c = client_for(main_srv.url, AG_ENCODING_B64);
    altgrad_result res;
    altgrad_error err;
    ck_assert_int_eq(altgrad_gradients_sharded(c, &req, 2, &res, &err), ALTGRAD_E_HTTP_4XX);
    ck_assert_int_eq(err.http_status, 413);
    ck_assert_str_eq(err.code, "too_large");
    ck_assert_str_eq(err.field, "model.n_layers");
    ck_assert_msg(strncmp(err.message, "shard ", 6) == 0 &&
                      strncmp(err.message + 7, " of 2: HTTP 413: model.n_layers: ", 33) == 0,
                  "%s", err.message);
    altgrad_client_free(c);
}
END_TEST

START_TEST(test_errors)
{
    model m;
    model_make(&m, 16, 2, 1, 0, 0, 1, 8, 51, 1.0);
    altgrad_client *c = client_for(main_srv.url, AG_ENCODING_B64);
    altgrad_error err;
    altgrad_result res;
    /* local checks: nothing is sent */
    altgrad_request req = model_request(&m, AG_LOSS_MSE, AG_METHOD_EXACT);
    req.loss_tensor = NULL;
    ck_assert_int_eq(altgrad_gradients(c, &req, &res, &err), ALTGRAD_E_ARG);
    ck_assert_str_eq(err.field, "loss.target");
    req = model_request(&m, AG_LOSS_SUM, AG_METHOD_EXACT);
    m.input[3] = NAN;
    ck_assert_int_eq(altgrad_gradients(c, &req, &res, &err), ALTGRAD_E_ARG);
    ck_assert_str_eq(err.field, "input");
    m.input[3] = 0.5f;
    float *saved = m.layers[0].p[AG_P_WK];
    m.layers[0].p[AG_P_WK] = NULL;
    ck_assert_int_eq(altgrad_gradients(c, &req, &res, &err), ALTGRAD_E_ARG);
    ck_assert_str_eq(err.field, "layers[0].wk");
    m.layers[0].p[AG_P_WK] = saved;
    req.cfg.n_heads = 3;
    ck_assert_int_eq(altgrad_gradients(c, &req, &res, &err), ALTGRAD_E_ARG);
    ck_assert_str_eq(err.field, "model.n_heads");
    req.cfg.n_heads = 2;
    req.batch = 2; /* 2-d input with batch 2 */
    ck_assert_int_eq(altgrad_request_check(&req, &err), ALTGRAD_E_ARG);
    req.batch = 1;
    ck_assert_int_eq(altgrad_request_check(&req, &err), ALTGRAD_OK);

    /* the server's own 400 comes back with its code, message and field path */
    size_t len = 0;
    char *body = altgrad_request_encode(&req, AG_ENCODING_JSON, &len, &err);
    ck_assert_ptr_nonnull(body);
    char *wq = strstr(body, "\"wq\"");
    char *shape = wq ? strstr(wq, "[16,16]") : NULL;
    if (!shape && wq) shape = strstr(wq, "[16, 16]");
    ck_assert_msg(shape != NULL, "cannot find wq's shape in %.300s", body);
    shape[1] = '8'; /* "[16,16]" -> "[86,16]": wrong shape, and the data no longer fits */
    char *out = NULL;
    ck_assert_int_eq(altgrad_post_raw(c, "/v1/gradients", body, len, &out, NULL, &err),
                     ALTGRAD_E_HTTP_4XX);
    ck_assert_int_eq(err.http_status, 400);
    ck_assert_int_eq(err.attempts, 1);
    ck_assert_msg(strstr(err.field, "layers[0].wq") != NULL, "field '%s' (%s)", err.field,
                  err.message);
    ck_assert_str_eq(err.code, "invalid_shape");
    ck_assert_msg(strncmp(err.message, "HTTP 400: layers[0].wq: ", 24) == 0, "%s", err.message);
    free(body);
    /* a raw body that is not JSON */
    ck_assert_int_eq(altgrad_post_raw(c, "/v1/gradients", "{", 1, &out, NULL, &err),
                     ALTGRAD_E_HTTP_4XX);
    ck_assert_int_eq(err.http_status, 400);

    /* a response larger than the caller's bound */
    altgrad_client_opts o = altgrad_client_opts_default();
    o.base_url = main_srv.url;
    o.max_response_bytes = 64;
    altgrad_client *small = altgrad_client_new(&o, &err);
    ck_assert_ptr_nonnull(small);
    ck_assert_int_eq(altgrad_gradients(small, &req, &res, &err), ALTGRAD_E_NOMEM);
    altgrad_client_free(small);

    /* the abort flag stops a call before it starts */
    atomic_int stop = 1;
    o.max_response_bytes = altgrad_client_opts_default().max_response_bytes;
    o.abort = &stop;
    altgrad_client *ab = altgrad_client_new(&o, &err);
    ck_assert_int_eq(altgrad_gradients(ab, &req, &res, &err), ALTGRAD_E_ABORTED);
    altgrad_client_free(ab);

    /* bad options */
    o = altgrad_client_opts_default();
    o.base_url = "ftp://127.0.0.1";
    ck_assert_ptr_null(altgrad_client_new(&o, &err));
    ck_assert_int_eq(err.status, ALTGRAD_E_ARG);
    o.base_url = "http://127.0.0.1";
    o.token = "a\r\nX-Evil: 1";
    ck_assert_ptr_null(altgrad_client_new(&o, &err));

    ck_assert_str_eq(altgrad_status_name(ALTGRAD_E_HTTP_4XX), "http_4xx");
    ck_assert_str_eq(altgrad_job_state_name(ALTGRAD_JOB_CANCELLED), "cancelled");
    ck_assert(altgrad_job_state_terminal(ALTGRAD_JOB_FAILED));
    ck_assert(!altgrad_job_state_terminal(ALTGRAD_JOB_RUNNING));
    altgrad_client_free(c);
    model_free(&m);
}
END_TEST

START_TEST(test_connect_errors_and_late_start)
{
    int port = free_port();
    ck_assert_int_gt(port, 0);
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d", port);
    model m;
    model_make(&m, 8, 2, 1, 0, 0, 1, 8, 61, 1.0);
    altgrad_request req = model_request(&m, AG_LOSS_SUM, AG_METHOD_EXACT);
    altgrad_result res;
    altgrad_error err;

    /* nobody listens: connection refused, retried max_retries times, then E_CONNECT */
    altgrad_client_opts o = altgrad_client_opts_default();
    o.base_url = url;
    o.max_retries = 2;
    o.backoff_initial_ms = 10;
    altgrad_client *c = altgrad_client_new(&o, &err);
    ck_assert_int_eq(altgrad_gradients(c, &req, &res, &err), ALTGRAD_E_CONNECT);
    ck_assert_int_eq(err.attempts, 3);
    ck_assert_int_eq(altgrad_health(c, 0, &err), ALTGRAD_E_CONNECT);
    ck_assert_int_eq(err.attempts, 1); /* health is never retried */
    altgrad_client_free(c);

    /* the server comes up 700 ms after the first attempt: backoff rides it out */
    server late;
    server_spawn(&late, port, 700, NULL);
    o.max_retries = 12;
    o.backoff_initial_ms = 100;
    o.backoff_max_ms = 800;
    c = altgrad_client_new(&o, &err);
    double t0 = now_ms();
    altgrad_status st = altgrad_gradients(c, &req, &res, &err);
    ck_assert_msg(st == ALTGRAD_OK, "late server: %s (%d attempts)", err.message, err.attempts);
    ck_assert_int_ge(err.attempts, 2);
    ck_assert(now_ms() - t0 >= 600);
    ck_assert(res.has_loss);
    altgrad_result_free(&res);
    altgrad_client_free(c);
    server_stop(&late);
    model_free(&m);
}
END_TEST

typedef struct {
    const char *url;
    char ids[2][ALTGRAD_JOB_ID_MAX];
    long delay_ms;
} canceller;

static void *cancel_later(void *arg)
{
    canceller *k = arg;
    sleep_ms(k->delay_ms);
    altgrad_client *c = client_for(k->url, AG_ENCODING_B64); /* one handle per thread */
    altgrad_error err;
    for (int i = 0; i < 2; i++) altgrad_job_cancel(c, k->ids[i], NULL, &err);
    altgrad_client_free(c);
    return NULL;
}

START_TEST(test_queue_full_429_and_retry)
{
    server s;
    const char *extra[] = {"--workers", "1", "--cores", "1", "--queue", "1", NULL};
    server_spawn(&s, 0, 0, extra);
    model slow, small;
    slow_model(&slow);
    model_make(&small, 8, 2, 1, 0, 0, 1, 8, 71, 1.0);
    altgrad_client_opts o = altgrad_client_opts_default();
    o.base_url = s.url;
    o.max_retries = 0;
    altgrad_error err;
    altgrad_client *c = altgrad_client_new(&o, &err);
    altgrad_request sreq = model_request(&slow, AG_LOSS_SUM, AG_METHOD_EXACT);
    canceller k = {.url = s.url, .delay_ms = 400};
    ck_assert_msg(altgrad_job_submit(c, &sreq, k.ids[0], &err) == ALTGRAD_OK, "%s", err.message);
    altgrad_job_info info = {0};
    for (int i = 0; i < 200; i++) { /* wait until the first job holds the only worker */
        ck_assert_int_eq(altgrad_job_status(c, k.ids[0], &info, &err), ALTGRAD_OK);
        if (info.state != ALTGRAD_JOB_QUEUED) break;
        sleep_ms(20);
    }
    ck_assert_int_eq(info.state, ALTGRAD_JOB_RUNNING);
    ck_assert_msg(altgrad_job_submit(c, &sreq, k.ids[1], &err) == ALTGRAD_OK, "%s", err.message);

    /* the queue is full: 429 with Retry-After, and with no retries allowed it is final */
    altgrad_request req = model_request(&small, AG_LOSS_SUM, AG_METHOD_EXACT);
    altgrad_result res;
    ck_assert_int_eq(altgrad_gradients(c, &req, &res, &err), ALTGRAD_E_HTTP_4XX);
    ck_assert_int_eq(err.http_status, 429);
    ck_assert_int_eq(err.attempts, 1);
    ck_assert_int_ge(err.retry_after_s, 1);
    ck_assert_int_eq(altgrad_health(c, 1, &err), ALTGRAD_E_HTTP_5XX);
    ck_assert_int_eq(err.http_status, 503);
    altgrad_client_free(c);

    /* with retries: the call waits out Retry-After until another thread frees the queue */
    o.max_retries = 10;
    o.backoff_initial_ms = 50;
    c = altgrad_client_new(&o, &err);
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, cancel_later, &k), 0);
    double t0 = now_ms();
    altgrad_status st = altgrad_gradients(c, &req, &res, &err);
    pthread_join(th, NULL);
    ck_assert_msg(st == ALTGRAD_OK, "after retries: %s (%d attempts)", err.message, err.attempts);
    ck_assert_int_ge(err.attempts, 2);
    ck_assert(now_ms() - t0 >= 900); /* Retry-After (>= 1 s) was honoured */
    altgrad_result_free(&res);
    altgrad_client_free(c);
    server_stop(&s);
    model_free(&slow);
    model_free(&small);
}
END_TEST

START_TEST(test_bearer_token)
{
    server s;
    char tokens[128];
    snprintf(tokens, sizeof tokens, "/tmp/agclient-tokens.%d", (int)getpid());
    FILE *f = fopen(tokens, "w");
    ck_assert_ptr_nonnull(f);
    fputs("s3cret-token\n", f);
    fclose(f);
    const char *extra[] = {"--tokens-file", tokens, NULL};
    server_spawn(&s, 0, 0, extra);
    model m;
    model_make(&m, 8, 2, 1, 0, 0, 1, 8, 81, 1.0);
    altgrad_request req = model_request(&m, AG_LOSS_SUM, AG_METHOD_EXACT);
    altgrad_client_opts o = altgrad_client_opts_default();
    o.base_url = s.url;
    altgrad_error err;
    altgrad_result res;
    altgrad_client *c = altgrad_client_new(&o, &err);
    ck_assert_int_eq(altgrad_gradients(c, &req, &res, &err), ALTGRAD_E_HTTP_4XX);
    ck_assert_int_eq(err.http_status, 401);
    ck_assert_int_eq(err.attempts, 1);
    altgrad_client_free(c);
    o.token = "wrong";
    c = altgrad_client_new(&o, &err);
    ck_assert_int_eq(altgrad_gradients(c, &req, &res, &err), ALTGRAD_E_HTTP_4XX);
    ck_assert_int_eq(err.http_status, 401);
    altgrad_client_free(c);
    o.token = "s3cret-token";
    c = altgrad_client_new(&o, &err);
    ck_assert_msg(altgrad_gradients(c, &req, &res, &err) == ALTGRAD_OK, "%s", err.message);
    altgrad_result_free(&res);
    altgrad_client_free(c);
    server_stop(&s);
    unlink(tokens);
    model_free(&m);
}
END_TEST

/* One handle per thread: four threads, each with its own client, all get the right answer. */
typedef struct {
    const model *m;
    const altgrad_result *want;
    double diff;
    altgrad_status st;
} worker_arg;

static void *worker(void *p)
{
    worker_arg *a = p;
    altgrad_client *c = client_for(main_srv.url, AG_ENCODING_B64);
    altgrad_request req = model_request(a->m, AG_LOSS_MSE, AG_METHOD_EXACT);
    for (int i = 0; i < 5 && a->st == ALTGRAD_OK; i++) {
        altgrad_result res;
        altgrad_error err;
        a->st = altgrad_gradients(c, &req, &res, &err);
        if (a->st == ALTGRAD_OK) {
            a->diff = fmax(a->diff, result_diff(&a->m->cfg, &res, a->want));
            altgrad_result_free(&res);
        }
    }
    altgrad_client_free(c);
    return NULL;
}

START_TEST(test_threads)
{
    model m;
    model_make(&m, 16, 2, 2, 32, 1, 2, 16, 91, 1.0);
    altgrad_client *c = client_for(main_srv.url, AG_ENCODING_B64);
    altgrad_request req = model_request(&m, AG_LOSS_MSE, AG_METHOD_EXACT);
    altgrad_result want;
    altgrad_error err;
    ck_assert_int_eq(altgrad_gradients(c, &req, &want, &err), ALTGRAD_OK);
    pthread_t th[4];
    worker_arg args[4];
    for (int i = 0; i < 4; i++) {
        args[i] = (worker_arg){.m = &m, .want = &want, .st = ALTGRAD_OK};
        ck_assert_int_eq(pthread_create(&th[i], NULL, worker, &args[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        ck_assert_int_eq(args[i].st, ALTGRAD_OK);
        ck_assert_msg(args[i].diff < 1e-6, "thread %d: difference %g", i, args[i].diff);
    }
    altgrad_result_free(&want);
    altgrad_client_free(c);
    model_free(&m);
}
END_TEST

static Suite *client_suite(void)
{
    Suite *s = suite_create("client");
    TCase *tc = tcase_create("live");
    tcase_add_unchecked_fixture(tc, main_up, main_down);
    tcase_set_timeout(tc, 180);
    tcase_add_test(tc, test_health_and_info);
    tcase_add_test(tc, test_gradients_match_core);
    tcase_add_test(tc, test_json_equals_b64);
    tcase_add_test(tc, test_approx_verify);
    tcase_add_test(tc, test_sharded_equals_unsharded);
    tcase_add_test(tc, test_sharded_error_names_the_shard);
    tcase_add_test(tc, test_jobs);
    tcase_add_test(tc, test_cancel);
    tcase_add_test(tc, test_errors);
    tcase_add_test(tc, test_threads);
    suite_add_tcase(s, tc);
    TCase *own = tcase_create("own servers");
    tcase_set_timeout(own, 180);
    tcase_add_test(own, test_connect_errors_and_late_start);
    tcase_add_test(own, test_queue_full_429_and_retry);
    tcase_add_test(own, test_bearer_token);
    suite_add_tcase(s, own);
    return s;
}

int main(void)
{
    json_object_seed(0);
    signal(SIGPIPE, SIG_IGN);
    SRunner *sr = srunner_create(client_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
