/* altgradd over HTTP, without compute: every non-compute endpoint and every protocol-level
 * error of docs/api.md (404, 405 + Allow, 415, 413 from Content-Length and from a chunked body,
 * 400 for bodies the decoder refuses), request ids, keep-alive, access logs, and clients that
 * stall half-way through a request while others are served. */
#include <check.h>
#include <curl/curl.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/server_harness.h"

static srvh_server S;

static void start(void)
{
    const char *args[] = {"--workers", "2", "--queue", "4", "--max-body", "64K",
                          "--connection-timeout", "3", NULL};
    ck_assert_msg(srvh_start(&S, args) == 0, "altgradd did not start");
}

static void stop(void)
{
    ck_assert_int_eq(srvh_stop(&S, SIGTERM, 10), 0);
}

static json_t *body_json(const srvh_resp *r)
{
    json_error_t je;
    json_t *j = json_loadb(r->body, r->len, JSON_REJECT_DUPLICATES, &je);
    ck_assert_msg(j != NULL, "not JSON (%s): %.200s", je.text, r->body);
    return j;
}

static void assert_error(const srvh_resp *r, long status, const char *code, const char *field)
{
    char c[64], f[128];
    ck_assert_msg(r->status == status, "status %ld, expected %ld: %.300s", r->status, status,
                  r->body);
    ck_assert_msg(srvh_error_of(r, c, sizeof c, f, sizeof f) == 0, "not an error body: %.300s",
                  r->body);
    if (code) ck_assert_str_eq(c, code);
    if (field) ck_assert_str_eq(f, field);
    char ct[128];
    ck_assert_int_eq(srvh_resp_header(r, "Content-Type", ct, sizeof ct), 0);
    ck_assert_str_eq(ct, "application/json");
}

START_TEST(test_health)
{
    srvh_resp r;
    ck_assert_int_eq(srvh_request(&S, "GET", "/health/live", NULL, NULL, 0, &r), 0);
    ck_assert_int_eq(r.status, 200);
    json_t *j = body_json(&r);
    ck_assert_str_eq(json_string_value(json_object_get(j, "status")), "live");
    json_decref(j);
    srvh_resp_free(&r);

    ck_assert_int_eq(srvh_request(&S, "GET", "/health/ready", NULL, NULL, 0, &r), 0);
    ck_assert_int_eq(r.status, 200);
    srvh_resp_free(&r);

    ck_assert_int_eq(srvh_request(&S, "HEAD", "/health/live", NULL, NULL, 0, &r), 0);
    ck_assert_int_eq(r.status, 200);
    ck_assert_uint_eq(r.len, 0);
    srvh_resp_free(&r);
}
END_TEST

START_TEST(test_info)
{
    srvh_resp r;
    ck_assert_int_eq(srvh_request(&S, "GET", "/v1/info", NULL, NULL, 0, &r), 0);
    ck_assert_int_eq(r.status, 200);
    json_t *j = body_json(&r);
    ck_assert_ptr_nonnull(json_string_value(json_object_get(j, "version")));
    json_t *lim = json_object_get(j, "limits");
    ck_assert_int_eq(json_integer_value(json_object_get(lim, "max_body_bytes")), 64 * 1024);
    ck_assert_int_eq(json_integer_value(json_object_get(lim, "queue")), 4);
    ck_assert_int_eq(json_integer_value(json_object_get(j, "workers")), 2);
    const char *blas = json_string_value(json_object_get(json_object_get(j, "blas"), "config"));
    ck_assert_ptr_nonnull(blas);
    ck_assert_ptr_nonnull(strstr(blas, "OpenBLAS"));
    /* OpenBLAS must run single-threaded inside the server: the core parallelises itself. */
    ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(j, "blas"), "threads")),
                     1);
    json_t *methods = json_object_get(j, "methods");
    ck_assert_int_eq(json_array_size(methods), 3);
    json_t *cost = json_object_get(j, "cost_model");
    ck_assert(json_real_value(json_object_get(cost, "exact_s_per_flop")) > 0);
    json_decref(j);
    srvh_resp_free(&r);
}
END_TEST

START_TEST(test_metrics)
{
    srvh_resp r;
    srvh_request(&S, "GET", "/no/such/path", NULL, NULL, 0, &r);
    srvh_resp_free(&r);
    ck_assert_int_eq(srvh_request(&S, "GET", "/metrics", NULL, NULL, 0, &r), 0);
    ck_assert_int_eq(r.status, 200);
    char ct[128];
    ck_assert_int_eq(srvh_resp_header(&r, "Content-Type", ct, sizeof ct), 0);
    ck_assert_ptr_nonnull(strstr(ct, "text/plain"));
    ck_assert_ptr_nonnull(strstr(ct, "version=0.0.4"));
    ck_assert(r.len > 0 && r.body[r.len - 1] == '\n');
    const char *want[] = {
        "# TYPE altgrad_requests_total counter",
        "altgrad_requests_total{route=\"other\",status=\"404\"} ",
        "# TYPE altgrad_request_duration_seconds histogram",
        "altgrad_request_duration_seconds_bucket{route=\"other\",le=\"+Inf\"} ",
        "# TYPE altgrad_queue_wait_seconds histogram",
        "# TYPE altgrad_job_duration_seconds histogram",
        "altgrad_compute_seconds_total{method=\"exact\"} ",
        "altgrad_queue_depth 0\n",
        "altgrad_jobs{state=\"running\"} 0\n",
        "altgrad_jobs_finished_total{state=\"done\"} ",
        "altgrad_request_bytes_total ",
        "altgrad_response_bytes_total ",
        "altgrad_build_info{version=",
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        ck_assert_msg(strstr(r.body, want[i]) != NULL, "metrics lack '%s'", want[i]);
    /* Every sample line is "name{labels} value" or "name value". */
    for (char *line = r.body; *line;) {
        char *nl = strchr(line, '\n');
        ck_assert_ptr_nonnull(nl);
        if (line[0] != '#') {
            ck_assert_msg(strncmp(line, "altgrad_", 8) == 0, "bad line: %.80s", line);
            char *sp = memchr(line, ' ', (size_t)(nl - line));
            ck_assert_ptr_nonnull(sp);
            char *end;
            strtod(sp + 1, &end);
            ck_assert_msg(end == nl, "bad value in: %.80s", line);
        }
        line = nl + 1;
    }
    srvh_resp_free(&r);
}
END_TEST

START_TEST(test_not_found)
{
    const char *paths[] = {"/", "/nope", "/v1", "/v1/gradients/", "/v1/jobs/", "/V1/info",
                           "/v1/jobs/abc/result/x", "/v1/jobs/a%2Fb", "/v1/jobs/../info",
                           "/health", "/metrics/x"};
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
        srvh_resp r;
        ck_assert_int_eq(srvh_request(&S, "GET", paths[i], NULL, NULL, 0, &r), 0);
        ck_assert_msg(r.status == 404, "%s: %ld", paths[i], r.status);
        assert_error(&r, 404, NULL, NULL);
        srvh_resp_free(&r);
    }
    srvh_resp r;
    srvh_request(&S, "GET", "/v1/jobs/0123456789abcdef0123456789abcdef", NULL, NULL, 0, &r);
    assert_error(&r, 404, "job_not_found", "id");
    srvh_resp_free(&r);
    srvh_request(&S, "GET", "/v1/jobs/0123456789abcdef0123456789abcdef/result", NULL, NULL, 0,
                 &r);
    assert_error(&r, 404, "job_not_found", "id");
    srvh_resp_free(&r);
    srvh_request(&S, "DELETE", "/v1/jobs/0123456789abcdef0123456789abcdef", NULL, NULL, 0, &r);
    assert_error(&r, 404, "job_not_found", "id");
    srvh_resp_free(&r);
}
END_TEST

START_TEST(test_method_not_allowed)
{
    struct {
        const char *method, *path, *allow;
    } cases[] = {
        {"GET", "/v1/gradients", "POST"},
        {"PUT", "/v1/gradients", "POST"},
        {"GET", "/v1/jobs", "POST"},
        {"POST", "/v1/jobs/0123456789abcdef0123456789abcdef", "GET, HEAD, DELETE"},
        {"DELETE", "/v1/jobs/0123456789abcdef0123456789abcdef/result", "GET, HEAD"},
        {"POST", "/v1/info", "GET, HEAD"},
        {"DELETE", "/health/live", "GET, HEAD"},
        {"POST", "/health/ready", "GET, HEAD"},
        {"PATCH", "/metrics", "GET, HEAD"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        srvh_resp r;
        const char *h[] = {"Content-Type: application/json", NULL};
        ck_assert_int_eq(srvh_request(&S, cases[i].method, cases[i].path, h, NULL, 0, &r), 0);
        assert_error(&r, 405, "method_not_allowed", NULL);
        char allow[64];
        ck_assert_int_eq(srvh_resp_header(&r, "Allow", allow, sizeof allow), 0);
        ck_assert_str_eq(allow, cases[i].allow);
        srvh_resp_free(&r);
    }
}
END_TEST

START_TEST(test_unsupported_media_type)
{
    const char *body = "{}";
    const char *types[] = {"Content-Type: text/plain", "Content-Type: application/jsonx",
                           "Content-Type: application/x-www-form-urlencoded",
                           "Content-Type: multipart/form-data; boundary=x", NULL};
    for (int i = 0; types[i]; i++) {
        srvh_resp r;
        const char *h[] = {types[i], NULL};
        ck_assert_int_eq(srvh_request(&S, "POST", "/v1/gradients", h, body, 2, &r), 0);
        assert_error(&r, 415, "unsupported_media_type", "Content-Type");
        srvh_resp_free(&r);
    }
    /* No Content-Type at all (curl would add a form type: go raw). */
    int fd = srvh_connect(S.port);
    ck_assert_int_ge(fd, 0);
    const char *req = "POST /v1/jobs HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}";
    ck_assert_int_eq(srvh_send_all(fd, req, strlen(req)), 0);
    char buf[4096];
    ck_assert_int_eq(srvh_read_response(fd, buf, sizeof buf, 5), 415);
    close(fd);
    /* Parameters and case are allowed: the body then reaches the decoder (400, not 415). */
    srvh_resp r;
    const char *h[] = {"Content-Type: Application/JSON; charset=utf-8", NULL};
    ck_assert_int_eq(srvh_request(&S, "POST", "/v1/gradients", h, body, 2, &r), 0);
    ck_assert_int_eq(r.status, 400);
    srvh_resp_free(&r);
}
END_TEST

START_TEST(test_too_large_by_content_length)
{
    /* Declared 100 MB, nothing sent: the answer must come before any body byte. */
    int fd = srvh_connect(S.port);
    ck_assert_int_ge(fd, 0);
    const char *req = "POST /v1/gradients HTTP/1.1\r\nHost: t\r\nContent-Type: application/json"
                      "\r\nContent-Length: 100000000\r\n\r\n";
    ck_assert_int_eq(srvh_send_all(fd, req, strlen(req)), 0);
    char buf[4096];
    double t0 = srvh_now();
    ck_assert_int_eq(srvh_read_response(fd, buf, sizeof buf, 5), 413);
    ck_assert(srvh_now() - t0 < 2);
    ck_assert_ptr_nonnull(strstr(buf, "\"too_large\""));
    close(fd);

    /* With curl and a real body just over the limit. */
    size_t n = 64 * 1024 + 1;
    char *big = malloc(n);
    memset(big, ' ', n);
    big[0] = '{';
    big[n - 1] = '}';
    srvh_resp r;
    const char *h[] = {"Content-Type: application/json", NULL};
    ck_assert_int_eq(srvh_request(&S, "POST", "/v1/jobs", h, big, n, &r), 0);
    assert_error(&r, 413, "too_large", NULL);
    srvh_resp_free(&r);
    /* Exactly at the limit it is read and decoded (an empty object: 400, not 413). */
    ck_assert_int_eq(srvh_request(&S, "POST", "/v1/gradients", h, big, n - 1, &r), 0);
    ck_assert_int_eq(r.status, 400);
    srvh_resp_free(&r);
    free(big);
}
END_TEST

START_TEST(test_too_large_body_is_drained)
{
    /* A client that pushes a large body without waiting for "100 Continue" still reads the
     * 413, and its connection stays usable. */
    int fd = srvh_connect(S.port);
    ck_assert_int_ge(fd, 0);
    size_t n = 2u << 20;
    char head[256];
    snprintf(head, sizeof head, "POST /v1/gradients HTTP/1.1\r\nHost: t\r\nContent-Type: "
             "application/json\r\nContent-Length: %zu\r\n\r\n", n);
    ck_assert_int_eq(srvh_send_all(fd, head, strlen(head)), 0);
    char *body = malloc(n);
    memset(body, ' ', n);
    ck_assert_int_eq(srvh_send_all(fd, body, n), 0);
    free(body);
    char buf[4096];
    ck_assert_int_eq(srvh_read_response(fd, buf, sizeof buf, 5), 413);
    const char *req = "GET /health/live HTTP/1.1\r\nHost: t\r\n\r\n";
    ck_assert_int_eq(srvh_send_all(fd, req, strlen(req)), 0);
    ck_assert_int_eq(srvh_read_response(fd, buf, sizeof buf, 5), 200);
    close(fd);
}
END_TEST

START_TEST(test_too_large_chunked)
{
    int fd = srvh_connect(S.port);
    ck_assert_int_ge(fd, 0);
    const char *head = "POST /v1/gradients HTTP/1.1\r\nHost: t\r\nContent-Type: application/json"
                       "\r\nTransfer-Encoding: chunked\r\n\r\n";
    ck_assert_int_eq(srvh_send_all(fd, head, strlen(head)), 0);
    char chunk[16 * 1024 + 16];
    int hl = snprintf(chunk, sizeof chunk, "%x\r\n", 16 * 1024);
    memset(chunk + hl, ' ', 16 * 1024);
    memcpy(chunk + hl + 16 * 1024, "\r\n", 2);
    for (int i = 0; i < 6; i++) /* 96 KiB > 64 KiB */
        if (srvh_send_all(fd, chunk, (size_t)hl + 16 * 1024 + 2) != 0) break;
    srvh_send_all(fd, "0\r\n\r\n", 5);
    char buf[4096];
    ck_assert_int_eq(srvh_read_response(fd, buf, sizeof buf, 5), 413);
    close(fd);

    /* A small chunked body is accepted (and decoded: 400 for a non-request). */
    fd = srvh_connect(S.port);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(srvh_send_all(fd, head, strlen(head)), 0);
    const char *body = "2\r\n{}\r\n0\r\n\r\n";
    ck_assert_int_eq(srvh_send_all(fd, body, strlen(body)), 0);
    ck_assert_int_eq(srvh_read_response(fd, buf, sizeof buf, 5), 400);
    close(fd);
}
END_TEST

START_TEST(test_bad_bodies)
{
    struct {
        const char *body;
        const char *code; /* NULL: any */
    } cases[] = {
        {"{", NULL},
        {"not json", NULL},
        {"[]", NULL},
        {"null", NULL},
        {"{}", NULL},
        {"{\"model\":1}", NULL},
        {"{\"bogus\":1}", NULL},
        {"{\"model\":{},\"model\":{}}", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        srvh_resp r;
        ck_assert_int_eq(srvh_post_json(&S, "/v1/gradients", cases[i].body, &r), 0);
        assert_error(&r, 400, cases[i].code, NULL);
        srvh_resp_free(&r);
    }
    srvh_resp r;
    const char *h[] = {"Content-Type: application/json", NULL};
    ck_assert_int_eq(srvh_request(&S, "POST", "/v1/gradients", h, "", 0, &r), 0);
    assert_error(&r, 400, "invalid_json", "");
    srvh_resp_free(&r);
    /* An unknown top-level field is named. */
    size_t len;
    srvh_model m = srvh_small_model();
    m.extra = "\"bogus_field\":1";
    char *req = srvh_make_request(&m, &len);
    ck_assert_int_eq(srvh_post_json(&S, "/v1/gradients", req, &r), 0);
    assert_error(&r, 400, NULL, "bogus_field");
    srvh_resp_free(&r);
    free(req);
    /* The server is fine afterwards. */
    ck_assert_int_eq(srvh_request(&S, "GET", "/health/live", NULL, NULL, 0, &r), 0);
    ck_assert_int_eq(r.status, 200);
    srvh_resp_free(&r);
}
END_TEST

START_TEST(test_request_id_and_log)
{
    srvh_resp r;
    const char *h[] = {"X-Request-Id: test-rid-42", NULL};
    ck_assert_int_eq(srvh_request(&S, "GET", "/health/live", h, NULL, 0, &r), 0);
    char rid[64];
    ck_assert_int_eq(srvh_resp_header(&r, "X-Request-Id", rid, sizeof rid), 0);
    ck_assert_str_eq(rid, "test-rid-42");
    srvh_resp_free(&r);
    /* A hostile id is replaced, not echoed. */
    const char *h2[] = {"X-Request-Id: bad id\" with spaces", NULL};
    ck_assert_int_eq(srvh_request(&S, "GET", "/health/live", h2, NULL, 0, &r), 0);
    ck_assert_int_eq(srvh_resp_header(&r, "X-Request-Id", rid, sizeof rid), 0);
    ck_assert(strchr(rid, ' ') == NULL && strlen(rid) > 0);
    srvh_resp_free(&r);
    srvh_sleep_ms(50);
    ck_assert_int_ge(srvh_log_count(&S, "request_id=test-rid-42"), 1);
    ck_assert_int_ge(srvh_log_count(&S, "path=/health/live status=200"), 1);
}
END_TEST

START_TEST(test_keep_alive)
{
    int fd = srvh_connect(S.port);
    ck_assert_int_ge(fd, 0);
    char buf[8192];
    for (int i = 0; i < 3; i++) {
        const char *req = "GET /health/live HTTP/1.1\r\nHost: t\r\n\r\n";
        ck_assert_int_eq(srvh_send_all(fd, req, strlen(req)), 0);
        ck_assert_int_eq(srvh_read_response(fd, buf, sizeof buf, 5), 200);
    }
    /* An error on a request without a body keeps the connection too. */
    const char *req = "GET /nope HTTP/1.1\r\nHost: t\r\n\r\n";
    ck_assert_int_eq(srvh_send_all(fd, req, strlen(req)), 0);
    ck_assert_int_eq(srvh_read_response(fd, buf, sizeof buf, 5), 404);
    req = "GET /v1/info HTTP/1.1\r\nHost: t\r\n\r\n";
    ck_assert_int_eq(srvh_send_all(fd, req, strlen(req)), 0);
    ck_assert_int_eq(srvh_read_response(fd, buf, sizeof buf, 5), 200);
    close(fd);
}
END_TEST

START_TEST(test_slow_clients)
{
    /* Three clients stall: in the request line, in the headers, and half-way through a body.
     * Everyone else is still served at once. */
    int stalled[3];
    const char *parts[3] = {
        "GET /health/li",
        "POST /v1/gradients HTTP/1.1\r\nHost: t\r\nContent-Ty",
        ("POST /v1/gradients HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
         "Content-Length: 1000\r\n\r\n{\"model\":{\"d_model\":8,"),
    };
    for (int i = 0; i < 3; i++) {
        stalled[i] = srvh_connect(S.port);
        ck_assert_int_ge(stalled[i], 0);
        ck_assert_int_eq(srvh_send_all(stalled[i], parts[i], strlen(parts[i])), 0);
    }
    srvh_sleep_ms(100);
    double worst = 0;
    for (int i = 0; i < 20; i++) {
        srvh_resp r;
        ck_assert_int_eq(srvh_request(&S, "GET", i % 2 ? "/health/live" : "/v1/info", NULL, NULL,
                                      0, &r), 0);
        ck_assert_int_eq(r.status, 200);
        if (r.seconds > worst) worst = r.seconds;
        srvh_resp_free(&r);
    }
    ck_assert_msg(worst < 1.0, "a request took %.3f s while others stalled", worst);
    /* The stalled connections are closed by the server's connection timeout (3 s). */
    double t0 = srvh_now();
    for (int i = 0; i < 3; i++) {
        char buf[1024];
        srvh_read_all(stalled[i], buf, sizeof buf, 8);
        close(stalled[i]);
    }
    double waited = srvh_now() - t0;
    ck_assert_msg(waited < 7.5, "stalled connections were kept %.1f s", waited);
}
END_TEST

START_TEST(test_many_idle_connections)
{
    enum { N = 200 };
    int fds[N];
    for (int i = 0; i < N; i++) {
        fds[i] = srvh_connect(S.port);
        ck_assert_int_ge(fds[i], 0);
        if (i % 2) srvh_send_all(fds[i], "G", 1); /* half of them start a request line */
    }
    srvh_sleep_ms(50);
    for (int i = 0; i < 10; i++) {
        srvh_resp r;
        ck_assert_int_eq(srvh_request(&S, "GET", "/health/ready", NULL, NULL, 0, &r), 0);
        ck_assert_int_eq(r.status, 200);
        ck_assert_msg(r.seconds < 1.0, "%.3f s with %d idle connections", r.seconds, N);
        srvh_resp_free(&r);
    }
    for (int i = 0; i < N; i++) close(fds[i]);
}
END_TEST

START_TEST(test_garbage_http)
{
    const char *garbage[] = {
        "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage-tls-hello\r\n\r\n",
        "GET\r\n\r\n",
        "GET / HTTP/9.9\r\n\r\n",
        "POST /v1/gradients HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        "Content-Length: -5\r\n\r\n",
        "POST /v1/gradients HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        "Content-Length: 99999999999999999999999999\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof garbage / sizeof garbage[0]; i++) {
        int fd = srvh_connect(S.port);
        ck_assert_int_ge(fd, 0);
        srvh_send_all(fd, garbage[i], strlen(garbage[i]));
        char buf[4096];
        srvh_read_all(fd, buf, sizeof buf, 2);
        close(fd);
    }
    srvh_resp r;
    ck_assert_int_eq(srvh_request(&S, "GET", "/health/live", NULL, NULL, 0, &r), 0);
    ck_assert_int_eq(r.status, 200);
    srvh_resp_free(&r);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("server_http");
    TCase *tc = tcase_create("http");
    tcase_add_unchecked_fixture(tc, start, stop);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_health);
    tcase_add_test(tc, test_info);
    tcase_add_test(tc, test_metrics);
    tcase_add_test(tc, test_not_found);
    tcase_add_test(tc, test_method_not_allowed);
    tcase_add_test(tc, test_unsupported_media_type);
    tcase_add_test(tc, test_too_large_by_content_length);
    tcase_add_test(tc, test_too_large_body_is_drained);
    tcase_add_test(tc, test_too_large_chunked);
    tcase_add_test(tc, test_bad_bodies);
    tcase_add_test(tc, test_request_id_and_log);
    tcase_add_test(tc, test_keep_alive);
    tcase_add_test(tc, test_slow_clients);
    tcase_add_test(tc, test_many_idle_connections);
    tcase_add_test(tc, test_garbage_http);
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
