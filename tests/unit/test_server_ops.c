/* altgradd as an operator sees it: graceful shutdown with work in flight (SIGTERM/SIGINT),
 * 503 while draining, the drain deadline, bearer-token auth and job ownership, flags and
 * environment variables, JSON logs, node ids. Each test starts its own server. */
#include <check.h>
#include <curl/curl.h>
#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lib/server_harness.h"

typedef struct {
    const srvh_server *s;
    const char *body;
    srvh_resp resp;
} call;

static void *do_call(void *arg)
{
    call *c = arg;
    srvh_post_json(c->s, "/v1/gradients", c->body, &c->resp);
    return NULL;
}

/* Polls /metrics until altgrad_jobs_in_flight reaches n (or 10 s pass). */
static int wait_in_flight(const srvh_server *s, int n)
{
    double t0 = srvh_now();
    while (srvh_now() - t0 < 10) {
        srvh_resp r;
        if (srvh_request(s, "GET", "/metrics", NULL, NULL, 0, &r) == 0) {
            const char *p = strstr(r.body, "\naltgrad_jobs_in_flight ");
            int v = p ? atoi(p + 24) : -1;
            srvh_resp_free(&r);
            if (v >= n) return 0;
        }
        srvh_sleep_ms(20);
    }
    return -1;
}

static json_t *parse(const srvh_resp *r)
{
    json_error_t je;
    json_t *j = json_loadb(r->body, r->len, 0, &je);
    ck_assert_msg(j != NULL, "not JSON: %.200s", r->body);
    return j;
}

START_TEST(test_graceful_shutdown)
{
    srvh_server s;
    const char *args[] = {"--workers", "2", "--drain-timeout", "60", NULL};
    ck_assert_int_eq(srvh_start(&s, args), 0);
    srvh_model m = srvh_slow_model();
    m.batch = 1;
    size_t len;
    char *body = srvh_make_request(&m, &len);
    ck_assert_ptr_nonnull(body);
    enum { N = 3 };
    call calls[N];
    pthread_t th[N];
    for (int i = 0; i < N; i++) {
        calls[i] = (call){&s, body, {0}};
        pthread_create(&th[i], NULL, do_call, &calls[i]);
    }
    ck_assert_int_eq(wait_in_flight(&s, N), 0);
    kill(s.pid, SIGTERM);
    srvh_sleep_ms(100);
    /* No new connections once draining. */
    int fd = srvh_connect(s.port);
    ck_assert_msg(fd < 0, "a new connection was accepted while draining");
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        ck_assert_msg(calls[i].resp.status == 200, "in-flight request %d: %ld %.200s", i,
                      calls[i].resp.status, calls[i].resp.body);
        ck_assert_ptr_nonnull(strstr(calls[i].resp.body, "\"grad_input\""));
        srvh_resp_free(&calls[i].resp);
    }
    ck_assert_int_eq(srvh_stop(&s, 0, 20), 0);
    free(body);
}
END_TEST

START_TEST(test_draining_answers_503)
{
    srvh_server s;
    const char *args[] = {"--workers", "1", "--drain-timeout", "60", NULL};
    ck_assert_int_eq(srvh_start(&s, args), 0);
    /* Two keep-alive connections opened before the signal. */
    int a = srvh_connect(s.port), b = srvh_connect(s.port);
    ck_assert(a >= 0 && b >= 0);
    char buf[16384];
    const char *live = "GET /health/live HTTP/1.1\r\nHost: t\r\n\r\n";
    ck_assert_int_eq(srvh_send_all(a, live, strlen(live)), 0);
    ck_assert_int_eq(srvh_read_response(a, buf, sizeof buf, 5), 200);
    ck_assert_int_eq(srvh_send_all(b, live, strlen(live)), 0);
    ck_assert_int_eq(srvh_read_response(b, buf, sizeof buf, 5), 200);

    srvh_model m = srvh_slow_model();
    m.batch = 1;
    size_t len;
    char *slow = srvh_make_request(&m, &len);
    srvh_resp r;
    ck_assert_int_eq(srvh_post_json(&s, "/v1/jobs", slow, &r), 0);
    ck_assert_int_eq(r.status, 202);
    srvh_resp_free(&r);
    ck_assert_int_eq(wait_in_flight(&s, 1), 0);
    kill(s.pid, SIGTERM);
    srvh_sleep_ms(150);

    srvh_model small = srvh_small_model();
    char *req = srvh_make_request(&small, &len);
    char head[256];
    snprintf(head, sizeof head, "POST /v1/gradients HTTP/1.1\r\nHost: t\r\nContent-Type: "
             "application/json\r\nContent-Length: %zu\r\n\r\n", len);
    ck_assert_int_eq(srvh_send_all(a, head, strlen(head)), 0);
    ck_assert_int_eq(srvh_send_all(a, req, len), 0);
    ck_assert_int_eq(srvh_read_response(a, buf, sizeof buf, 5), 503);
    ck_assert_ptr_nonnull(strstr(buf, "\"draining\""));
    const char *ready = "GET /health/ready HTTP/1.1\r\nHost: t\r\n\r\n";
    ck_assert_int_eq(srvh_send_all(b, ready, strlen(ready)), 0);
    ck_assert_int_eq(srvh_read_response(b, buf, sizeof buf, 5), 503);
    close(a);
    close(b);
    /* The queued async job still finishes, then the server exits 0. */
    ck_assert_int_eq(srvh_stop(&s, 0, 30), 0);
    free(req);
    free(slow);
}
END_TEST

START_TEST(test_drain_deadline_cancels)
{
    srvh_server s;
    const char *args[] = {"--workers", "1", "--drain-timeout", "0.5", NULL};
    ck_assert_int_eq(srvh_start(&s, args), 0);
    srvh_model m = srvh_slow_model();
    m.batch = 8; /* several seconds */
    size_t len;
    char *body = srvh_make_request(&m, &len);
    call c = {&s, body, {0}};
    pthread_t th;
    pthread_create(&th, NULL, do_call, &c);
    ck_assert_int_eq(wait_in_flight(&s, 1), 0);
    srvh_sleep_ms(200);
    double t0 = srvh_now();
    kill(s.pid, SIGTERM);
    pthread_join(th, NULL);
    double waited = srvh_now() - t0;
    ck_assert_msg(c.resp.status == 503, "status %ld: %.200s", c.resp.status, c.resp.body);
    ck_assert_ptr_nonnull(strstr(c.resp.body, "\"shutting_down\""));
    ck_assert_msg(waited < 4, "the cancelled job took %.2f s to answer", waited);
    srvh_resp_free(&c.resp);
    ck_assert_int_eq(srvh_stop(&s, 0, 10), 0);
    free(body);
}
END_TEST

START_TEST(test_sigint_exits_zero)
{
    srvh_server s;
    ck_assert_int_eq(srvh_start(&s, NULL), 0);
    srvh_resp r;
    ck_assert_int_eq(srvh_request(&s, "GET", "/health/live", NULL, NULL, 0, &r), 0);
    srvh_resp_free(&r);
    ck_assert_int_eq(srvh_stop(&s, SIGINT, 10), 0);
}
END_TEST

START_TEST(test_auth)
{
    char dir[] = "/tmp/altgrad-auth-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char tokens[128];
    snprintf(tokens, sizeof tokens, "%s/tokens", dir);
    FILE *f = fopen(tokens, "w");
    fprintf(f, "# comment\n  tokenAAAA-secret-1  \n\ntokenBBBB-secret-2\n");
    fclose(f);
    srvh_server s;
    const char *args[] = {"--tokens-file", tokens, NULL};
    ck_assert_int_eq(srvh_start(&s, args), 0);

    srvh_resp r;
    char code[64], field[64], hv[128];
    /* No token, wrong token, wrong scheme: 401 with a challenge. */
    const char *none[] = {NULL};
    const char *wrong[] = {"Authorization: Bearer tokenAAAA-secret-X", NULL};
    const char *prefix[] = {"Authorization: Bearer tokenAAAA-secret-", NULL};
    const char *longer[] = {"Authorization: Bearer tokenAAAA-secret-11", NULL};
    const char *basic[] = {"Authorization: Basic dG9rZW5BQUFBLXNlY3JldC0x", NULL};
    const char *const *bad[] = {none, wrong, prefix, longer, basic};
    for (int i = 0; i < 5; i++) {
        ck_assert_int_eq(srvh_request(&s, "GET", "/v1/info", bad[i], NULL, 0, &r), 0);
        ck_assert_int_eq(r.status, 401);
        ck_assert_int_eq(srvh_error_of(&r, code, sizeof code, field, sizeof field), 0);
        ck_assert_str_eq(code, "unauthorized");
        ck_assert_int_eq(srvh_resp_header(&r, "WWW-Authenticate", hv, sizeof hv), 0);
        ck_assert_ptr_nonnull(strstr(hv, "Bearer"));
        srvh_resp_free(&r);
    }
    /* Compute endpoints refuse before reading the body. */
    srvh_model m = srvh_small_model();
    size_t len;
    char *req = srvh_make_request(&m, &len);
    ck_assert_int_eq(srvh_post_json(&s, "/v1/gradients", req, &r), 0);
    ck_assert_int_eq(r.status, 401);
    srvh_resp_free(&r);
    /* Health and metrics stay open (load balancers, Prometheus). */
    const char *open_paths[] = {"/health/live", "/health/ready", "/metrics"};
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(srvh_request(&s, "GET", open_paths[i], NULL, NULL, 0, &r), 0);
        ck_assert_int_eq(r.status, 200);
        srvh_resp_free(&r);
    }
    const char *A[] = {"Authorization: Bearer tokenAAAA-secret-1",
                       "Content-Type: application/json", NULL};
    const char *B[] = {"Authorization: bearer   tokenBBBB-secret-2",
                       "Content-Type: application/json", NULL};
    ck_assert_int_eq(srvh_request(&s, "GET", "/v1/info", A, NULL, 0, &r), 0);
    ck_assert_int_eq(r.status, 200);
    srvh_resp_free(&r);
    ck_assert_int_eq(srvh_request(&s, "GET", "/v1/info", B, NULL, 0, &r), 0);
    ck_assert_int_eq(r.status, 200);
    srvh_resp_free(&r);

    /* A job belongs to the token that created it. */
    ck_assert_int_eq(srvh_request(&s, "POST", "/v1/jobs", A, req, len, &r), 0);
    ck_assert_int_eq(r.status, 202);
    json_t *j = parse(&r);
    char path[160], rpath[180];
    snprintf(path, sizeof path, "/v1/jobs/%s", json_string_value(json_object_get(j, "id")));
    snprintf(rpath, sizeof rpath, "%s/result", path);
    json_decref(j);
    srvh_resp_free(&r);
    ck_assert_int_eq(srvh_request(&s, "GET", path, A, NULL, 0, &r), 0);
    ck_assert_int_eq(r.status, 200);
    srvh_resp_free(&r);
    ck_assert_int_eq(srvh_request(&s, "GET", path, B, NULL, 0, &r), 0);
    ck_assert_int_eq(r.status, 404);
    srvh_resp_free(&r);
    ck_assert_int_eq(srvh_request(&s, "GET", rpath, B, NULL, 0, &r), 0);
    ck_assert_int_eq(r.status, 404);
    srvh_resp_free(&r);
    ck_assert_int_eq(srvh_request(&s, "DELETE", path, B, NULL, 0, &r), 0);
    ck_assert_int_eq(r.status, 404);
    srvh_resp_free(&r);
    ck_assert_int_eq(srvh_request(&s, "GET", path, none, NULL, 0, &r), 0);
    ck_assert_int_eq(r.status, 401);
    srvh_resp_free(&r);
    /* ... and A can still fetch it. */
    double t0 = srvh_now();
    long st = 0;
    while (srvh_now() - t0 < 20) {
        ck_assert_int_eq(srvh_request(&s, "GET", rpath, A, NULL, 0, &r), 0);
        st = r.status;
        srvh_resp_free(&r);
        if (st != 409) break;
        srvh_sleep_ms(20);
    }
    ck_assert_int_eq(st, 200);

    ck_assert_int_eq(srvh_stop(&s, SIGTERM, 10), 0);
    free(req);
    unlink(tokens);
    rmdir(dir);
}
END_TEST

START_TEST(test_tokens_never_logged)
{
    char dir[] = "/tmp/altgrad-auth-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char tokens[128];
    snprintf(tokens, sizeof tokens, "%s/tokens", dir);
    FILE *f = fopen(tokens, "w");
    fprintf(f, "sekrit-token-value-123\n");
    fclose(f);
    srvh_server s;
    const char *args[] = {"--tokens-file", tokens, "--log-format", "json", NULL};
    ck_assert_int_eq(srvh_start(&s, args), 0);
    const char *good[] = {"Authorization: Bearer sekrit-token-value-123", NULL};
    const char *bad[] = {"Authorization: Bearer sekrit-token-value-124", NULL};
    srvh_resp r;
    srvh_request(&s, "GET", "/v1/info", good, NULL, 0, &r);
    ck_assert_int_eq(r.status, 200);
    srvh_resp_free(&r);
    srvh_request(&s, "GET", "/v1/info", bad, NULL, 0, &r);
    ck_assert_int_eq(r.status, 401);
    srvh_resp_free(&r);
    srvh_sleep_ms(50);
    ck_assert_int_eq(srvh_log_count(&s, "sekrit-token"), 0);
    ck_assert_int_ge(srvh_log_count(&s, "\"kind\":\"access\""), 2);
    /* Every line of a JSON log is a JSON object. */
    FILE *lf = fopen(s.log, "r");
    ck_assert_ptr_nonnull(lf);
    char line[4096];
    int lines = 0;
    while (fgets(line, sizeof line, lf)) {
        json_error_t je;
        json_t *j = json_loads(line, 0, &je);
        ck_assert_msg(j && json_is_object(j), "not a JSON line: %s", line);
        json_decref(j);
        lines++;
    }
    fclose(lf);
    ck_assert_int_ge(lines, 3);
    ck_assert_int_eq(srvh_stop(&s, SIGTERM, 10), 0);
    unlink(tokens);
    rmdir(dir);
}
END_TEST

/* Runs the server binary with args and env; returns its exit status and its output. */
static int run_binary(const char *const *args, const char *env, char *out, size_t cap)
{
    int pfd[2];
    ck_assert_int_eq(pipe(pfd), 0);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(pfd[1], STDOUT_FILENO);
        dup2(pfd[1], STDERR_FILENO);
        close(pfd[0]);
        if (env) putenv((char *)env);
        const char *bin = getenv("ALTGRAD_SERVER");
        const char *argv[32];
        int n = 0;
        argv[n++] = bin;
        for (int i = 0; args[i]; i++) argv[n++] = args[i];
        argv[n] = NULL;
        execv(bin, (char *const *)argv);
        _exit(127);
    }
    close(pfd[1]);
    size_t got = 0;
    ssize_t k;
    while (got + 1 < cap && (k = read(pfd[0], out + got, cap - 1 - got)) > 0) got += (size_t)k;
    out[got] = 0;
    close(pfd[0]);
    int st;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

START_TEST(test_flags)
{
    static char out[65536];
    const char *help[] = {"--help", NULL};
    ck_assert_int_eq(run_binary(help, NULL, out, sizeof out), 0);
    const char *documented[] = {"--listen", "ALTGRAD_LISTEN", "--workers", "ALTGRAD_WORKERS",
                                "--queue", "--max-body", "--timeout", "--job-ttl",
                                "--tokens-file", "--tls-cert", "--tls-key", "--log-format",
                                "--drain-timeout", "--memory-limit", "--port-file",
                                "--max-connections", "--connection-timeout", "--body-min-rate",
                                "Threads"};
    for (size_t i = 0; i < sizeof documented / sizeof documented[0]; i++)
        ck_assert_msg(strstr(out, documented[i]), "--help lacks %s", documented[i]);
    /* Each would fail before listening; the listen address keeps a failure to fail from
     * colliding with anything. */
    const char *bad[][6] = {
        {"--workers", "0"}, {"--bogus", "1"}, {"--log-format", "xml"}, {"--max-body", "12Q"},
        {"--timeout", "-1"}, {"--queue", "1.5"}, {"--node-id", "a/b"},
        {"--body-min-rate", "fast"},
        {"--listen", "nonsense"},
        {"--tls-cert", "/nonexistent.pem"},
        {"--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.key"},
        {"--tokens-file", "/nonexistent-tokens"}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *a[10];
        int n = 0;
        for (int k = 0; k < 6 && bad[i][k]; k++) a[n++] = bad[i][k];
        if (strcmp(bad[i][0], "--listen") != 0) {
            a[n++] = "--listen";
            a[n++] = "127.0.0.1:0";
        }
        a[n++] = "--calibrate";
        a[n++] = "0";
        a[n] = NULL;
        int rc = run_binary(a, NULL, out, sizeof out);
        ck_assert_msg(rc != 0, "%s %s: exit %d", bad[i][0], bad[i][1], rc);
        ck_assert_msg(strlen(out) > 0, "%s: no message", bad[i][0]);
    }
    const char *version[] = {"--version", NULL};
    ck_assert_int_eq(run_binary(version, NULL, out, sizeof out), 0);
    ck_assert_int_ne(run_binary(version, "ALTGRAD_QUEUE=lots", out, sizeof out), 0);
}
END_TEST

START_TEST(test_env_and_node_id)
{
    /* Environment variables configure; flags win over them. */
    setenv("ALTGRAD_QUEUE", "7", 1);
    setenv("ALTGRAD_WORKERS", "3", 1);
    setenv("ALTGRAD_NODE_ID", "n1", 1);
    srvh_server s;
    const char *args[] = {"--workers", "1", NULL};
    int rc = srvh_start(&s, args);
    unsetenv("ALTGRAD_QUEUE");
    unsetenv("ALTGRAD_WORKERS");
    unsetenv("ALTGRAD_NODE_ID");
    ck_assert_int_eq(rc, 0);
    srvh_resp r;
    ck_assert_int_eq(srvh_request(&s, "GET", "/v1/info", NULL, NULL, 0, &r), 0);
    json_t *j = parse(&r);
    ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(j, "limits"), "queue")),
                     7);
    ck_assert_int_eq(json_integer_value(json_object_get(j, "workers")), 1);
    json_decref(j);
    srvh_resp_free(&r);
    srvh_model m = srvh_small_model();
    size_t len;
    char *req = srvh_make_request(&m, &len);
    ck_assert_int_eq(srvh_post_json(&s, "/v1/jobs", req, &r), 0);
    ck_assert_int_eq(r.status, 202);
    j = parse(&r);
    const char *id = json_string_value(json_object_get(j, "id"));
    ck_assert_int_eq(strncmp(id, "n1-", 3), 0);
    ck_assert_uint_eq(strlen(id), 3 + 32);
    for (int i = 3; i < 35; i++) ck_assert(strchr("0123456789abcdef", id[i]) != NULL);
    char loc[128], want[128];
    ck_assert_int_eq(srvh_resp_header(&r, "Location", loc, sizeof loc), 0);
    snprintf(want, sizeof want, "/v1/jobs/%s", id);
    ck_assert_str_eq(loc, want);
    ck_assert_str_eq(json_string_value(json_object_get(j, "status_url")), want);
    json_decref(j);
    srvh_resp_free(&r);
    free(req);
    ck_assert_int_eq(srvh_stop(&s, SIGTERM, 10), 0);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("server_ops");
    TCase *tc = tcase_create("ops");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_graceful_shutdown);
    tcase_add_test(tc, test_draining_answers_503);
    tcase_add_test(tc, test_drain_deadline_cancels);
    tcase_add_test(tc, test_sigint_exits_zero);
    tcase_add_test(tc, test_auth);
    tcase_add_test(tc, test_tokens_never_logged);
    tcase_add_test(tc, test_flags);
    tcase_add_test(tc, test_env_and_node_id);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_ALL);
    SRunner *sr = srunner_create(suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    curl_global_cleanup();
    return failed ? 1 : 0;
}
