/* altgradd computing: answers equal to the core run in this process, JSON and base64 tensors
 * giving the same gradients, 32 concurrent requests, async jobs (progress, result, cancel,
 * TTL), backpressure (429 + Retry-After, ready 503), the per-job timeout (504) and the
 * memory limit (413). */
#include <check.h>
#include <curl/curl.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../core/altgrad.h"
#include "../../proto/proto.h"
#include "lib/server_harness.h"

static srvh_server S; /* the shared server of the "shared" case */

static void start_shared(void)
{
    const char *args[] = {"--workers", "2", "--queue", "64", NULL};
    ck_assert_msg(srvh_start(&S, args) == 0, "altgradd did not start");
}

static void stop_shared(void)
{
    ck_assert_int_eq(srvh_stop(&S, SIGTERM, 20), 0);
}

static json_t *parse(const srvh_resp *r)
{
    json_error_t je;
    json_t *j = json_loadb(r->body, r->len, 0, &je);
    ck_assert_msg(j != NULL, "not JSON (%s): %.200s", je.text, r->body);
    return j;
}

/* The core's own answer for a request body, computed here (1 thread). */
typedef struct {
    ag_request rq;
    ag_result res;
} reference;

static void reference_compute(const char *body, size_t len, reference *ref)
{
    ag_proto_limits lim = ag_proto_limits_default();
    ag_proto_error pe;
    ck_assert_msg(ag_request_decode(body, len, &lim, &ref->rq, &pe) == 0, "decode: %s",
                  pe.message);
    ag_run_opts opts = {.threads = 1, .want_output = 1};
    ag_error err;
    ck_assert_msg(ag_gradients(&ref->rq.cfg, ref->rq.layers, ref->rq.input, ref->rq.batch,
                               ref->rq.n, &ref->rq.loss, &ref->rq.method, &opts, &ref->res,
                               &err) == AG_OK,
                  "core: %s", err.message);
}

static void reference_free(reference *ref)
{
    ag_result_free(&ref->res);
    ag_request_free(&ref->rq);
}

/* Decodes a response body and checks every gradient against ref (relative error <= tol). */
static void assert_matches(const srvh_resp *r, const reference *ref, double tol)
{
    ck_assert_msg(r->status == 200, "status %ld: %.300s", r->status, r->body);
    ag_response resp;
    ag_proto_error pe;
    ck_assert_msg(ag_response_decode(r->body, r->len, &ref->rq.cfg, &resp, &pe) == 0,
                  "response decode: %s (%s)", pe.message, pe.field);
    const ag_result *res = &ref->res;
    ck_assert_int_eq(resp.has_loss, res->has_loss);
    if (res->has_loss)
        ck_assert_msg(fabs(resp.loss - res->loss) <= tol * fabs(res->loss) + 1e-12,
                      "loss %.9g vs %.9g", resp.loss, res->loss);
    size_t count = res->batch * res->n * res->d_model;
    ck_assert_ptr_nonnull(resp.grad_input);
    double e = ag_rel_error(resp.grad_input, res->grad_input, count);
    ck_assert_msg(e <= tol, "grad_input rel error %g", e);
    ck_assert_int_eq(resp.n_layers, ref->rq.cfg.n_layers);
    for (int l = 0; l < ref->rq.cfg.n_layers; l++) {
        for (int p = 0; p < AG_P_COUNT; p++) {
            size_t n = ag_param_numel(&ref->rq.cfg, p);
            if (!n) continue;
            ck_assert_ptr_nonnull(resp.grad_layers[l].p[p]);
            e = ag_rel_error(resp.grad_layers[l].p[p], res->grad_layers[l].p[p], n);
            ck_assert_msg(e <= tol, "layers[%d].%s rel error %g", l, ag_param_name(p), e);
        }
    }
    ag_response_free(&resp);
}

START_TEST(test_gradients_match_core)
{
    srvh_model m = srvh_small_model();
    size_t len;
    char *body = srvh_make_request(&m, &len);
    srvh_resp r;
    ck_assert_int_eq(srvh_post_json(&S, "/v1/gradients", body, &r), 0);
    char ct[64];
    ck_assert_int_eq(srvh_resp_header(&r, "Content-Type", ct, sizeof ct), 0);
    ck_assert_str_eq(ct, "application/json");
    json_t *j = parse(&r);
    ck_assert(json_is_number(json_object_get(j, "loss")));
    json_t *shape = json_object_get(json_object_get(j, "grad_input"), "shape");
    ck_assert_int_eq(json_array_size(shape), 2);
    ck_assert_int_eq(json_array_size(json_object_get(j, "grad_weights")), 1);
    ck_assert_ptr_nonnull(
        json_object_get(json_array_get(json_object_get(j, "grad_weights"), 0), "wq"));
    ck_assert_ptr_nonnull(json_object_get(j, "method"));
    json_t *t = json_object_get(j, "timing_ms");
    ck_assert(json_number_value(json_object_get(t, "compute")) > 0);
    ck_assert(json_number_value(json_object_get(t, "encode")) > 0);
    ck_assert_ptr_null(json_object_get(j, "output"));
    ck_assert_ptr_null(json_object_get(j, "verification"));
    json_decref(j);
    reference ref;
    reference_compute(body, len, &ref);
    assert_matches(&r, &ref, 1e-5);
    reference_free(&ref);
    srvh_resp_free(&r);
    free(body);
}
END_TEST

START_TEST(test_b64_equals_json)
{
    srvh_model m = srvh_small_model();
    m.batch = 2;
    m.n = 12;
    m.seed = 7;
    size_t len;
    char *json_body = srvh_make_request(&m, &len);
    m.b64 = 1;
    m.extra = "\"encoding\":\"b64\"";
    char *b64_body = srvh_make_request(&m, &len);
    srvh_resp a, b;
    ck_assert_int_eq(srvh_post_json(&S, "/v1/gradients", json_body, &a), 0);
    ck_assert_int_eq(srvh_post_json(&S, "/v1/gradients", b64_body, &b), 0);
    ck_assert_int_eq(a.status, 200);
    ck_assert_int_eq(b.status, 200);
    ck_assert_ptr_null(strstr(a.body, "\"b64\""));
    ck_assert_ptr_nonnull(strstr(b.body, "\"b64\""));
    /* Same inputs bit for bit (%.9g round-trips float32), so the same gradients. */
    reference ref;
    reference_compute(json_body, strlen(json_body), &ref);
    assert_matches(&a, &ref, 1e-5);
    assert_matches(&b, &ref, 1e-5);
    reference_free(&ref);
    srvh_resp_free(&a);
    srvh_resp_free(&b);
    free(json_body);
    free(b64_body);
}
END_TEST

START_TEST(test_return_verify_and_loss_kinds)
{
    srvh_model m = srvh_small_model();
    m.method = "{\"name\":\"auto\"}";
    m.extra = "\"return\":[\"output\",\"loss\"],\"verify\":true";
    size_t len;
    char *body = srvh_make_request(&m, &len);
    srvh_resp r;
    ck_assert_int_eq(srvh_post_json(&S, "/v1/gradients", body, &r), 0);
    ck_assert_msg(r.status == 200, "%ld %.300s", r.status, r.body);
    json_t *j = parse(&r);
    ck_assert_ptr_nonnull(json_object_get(j, "output"));
    ck_assert_ptr_null(json_object_get(j, "grad_input"));
    ck_assert_ptr_null(json_object_get(j, "grad_weights"));
    json_t *v = json_object_get(j, "verification");
    ck_assert_ptr_nonnull(v);
    double gi = json_number_value(json_object_get(v, "grad_input"));
    ck_assert(isfinite(gi) && gi >= 0 && gi < 0.1);
    json_decref(j);
    srvh_resp_free(&r);
    free(body);

    /* A real approximation: the exact run happens too and the errors are small, not zero
     * by construction. */
    m = srvh_small_model();
    m.method = "{\"name\":\"approx\",\"degree\":4}";
    m.extra = "\"verify\":true";
    body = srvh_make_request(&m, &len);
    ck_assert_int_eq(srvh_post_json(&S, "/v1/gradients", body, &r), 0);
    ck_assert_msg(r.status == 200, "%ld %.300s", r.status, r.body);
    j = parse(&r);
    v = json_object_get(j, "verification");
    gi = json_number_value(json_object_get(v, "grad_input"));
    ck_assert_msg(isfinite(gi) && gi > 0 && gi < 0.01, "grad_input error %g", gi);
    double wq = json_number_value(
        json_object_get(json_array_get(json_object_get(v, "layers"), 0), "wq"));
    ck_assert_msg(isfinite(wq) && wq > 0 && wq < 0.01, "wq error %g", wq);
    json_decref(j);
    srvh_resp_free(&r);
    free(body);

    /* grad_output: loss is null. */
    m = srvh_small_model();
    m.loss = "grad_output";
    body = srvh_make_request(&m, &len);
    ck_assert_int_eq(srvh_post_json(&S, "/v1/gradients", body, &r), 0);
    ck_assert_int_eq(r.status, 200);
    j = parse(&r);
    ck_assert(json_is_null(json_object_get(j, "loss")));
    json_decref(j);
    reference ref;
    reference_compute(body, len, &ref);
    assert_matches(&r, &ref, 1e-5);
    reference_free(&ref);
    srvh_resp_free(&r);
    free(body);
}
END_TEST

START_TEST(test_invalid_requests)
{
    srvh_model m = srvh_small_model();
    size_t len;
    char *body = srvh_make_request(&m, &len);
    /* Break the shape of layers[0].wq: [8,8] -> [8,4] with 32 numbers. */
    char *p = strstr(body, "\"wq\":{\"shape\":[8,8]");
    ck_assert_ptr_nonnull(p);
    p[17] = '4';
    srvh_resp r;
    ck_assert_int_eq(srvh_post_json(&S, "/v1/gradients", body, &r), 0);
    char code[64], field[128];
    ck_assert_int_eq(r.status, 400);
    ck_assert_int_eq(srvh_error_of(&r, code, sizeof code, field, sizeof field), 0);
    ck_assert_str_eq(field, "layers[0].wq");
    srvh_resp_free(&r);
    /* The same failure through an async job: failed, with the error in the status. */
    ck_assert_int_eq(srvh_post_json(&S, "/v1/jobs", body, &r), 0);
    ck_assert_int_eq(r.status, 202);
    json_t *j = parse(&r);
    char path[160], rpath[180];
    snprintf(path, sizeof path, "/v1/jobs/%s", json_string_value(json_object_get(j, "id")));
    snprintf(rpath, sizeof rpath, "%s/result", path);
    json_decref(j);
    srvh_resp_free(&r);
    const char *state = NULL;
    for (int i = 0; i < 500; i++) {
        ck_assert_int_eq(srvh_request(&S, "GET", path, NULL, NULL, 0, &r), 0);
        j = parse(&r);
        state = json_string_value(json_object_get(j, "state"));
        int over = strcmp(state, "failed") == 0 || strcmp(state, "done") == 0;
        if (over) {
            ck_assert_str_eq(state, "failed");
            json_t *e = json_object_get(j, "error");
            ck_assert_str_eq(json_string_value(json_object_get(e, "field")), "layers[0].wq");
        }
        json_decref(j);
        srvh_resp_free(&r);
        if (over) break;
        srvh_sleep_ms(10);
    }
    ck_assert_int_eq(srvh_request(&S, "GET", rpath, NULL, NULL, 0, &r), 0);
    ck_assert_int_eq(r.status, 400);
    ck_assert_int_eq(srvh_error_of(&r, code, sizeof code, field, sizeof field), 0);
    ck_assert_str_eq(field, "layers[0].wq");
    srvh_resp_free(&r);
    free(body);
}
END_TEST

typedef struct {
    const char *body;
    srvh_resp resp;
} call;

static void *do_call(void *arg)
{
    call *c = arg;
    srvh_post_json(&S, "/v1/gradients", c->body, &c->resp);
    return NULL;
}

START_TEST(test_concurrent_requests)
{
    enum { N = 32, DISTINCT = 4 };
    char *bodies[DISTINCT];
    reference refs[DISTINCT];
    for (int k = 0; k < DISTINCT; k++) {
        srvh_model m = srvh_small_model();
        m.seed = 100u + (unsigned)k;
        m.n = 16;
        m.b64 = k % 2;
        size_t len;
        bodies[k] = srvh_make_request(&m, &len);
        reference_compute(bodies[k], len, &refs[k]);
    }
    call calls[N];
    pthread_t th[N];
    double t0 = srvh_now();
    for (int i = 0; i < N; i++) {
        calls[i].body = bodies[i % DISTINCT];
        memset(&calls[i].resp, 0, sizeof calls[i].resp);
        ck_assert_int_eq(pthread_create(&th[i], NULL, do_call, &calls[i]), 0);
    }
    for (int i = 0; i < N; i++) pthread_join(th[i], NULL);
    double secs = srvh_now() - t0;
    for (int i = 0; i < N; i++) {
        assert_matches(&calls[i].resp, &refs[i % DISTINCT], 1e-5);
        srvh_resp_free(&calls[i].resp);
    }
    fprintf(stderr, "test_concurrent_requests: %d requests in %.3f s\n", N, secs);
    for (int k = 0; k < DISTINCT; k++) {
        reference_free(&refs[k]);
        free(bodies[k]);
    }
}
END_TEST

/* Polls a job until its state is terminal; checks progress is in [0,1] and never drops.
 * Returns the final state (static storage). */
static const char *wait_job(const srvh_server *s, const char *path, double timeout_s,
                            int *saw_running)
{
    static char state[32];
    double last = 0, t0 = srvh_now();
    *saw_running = 0;
    while (srvh_now() - t0 < timeout_s) {
        srvh_resp r;
        ck_assert_int_eq(srvh_request(s, "GET", path, NULL, NULL, 0, &r), 0);
        ck_assert_int_eq(r.status, 200);
        json_t *j = parse(&r);
        snprintf(state, sizeof state, "%s", json_string_value(json_object_get(j, "state")));
        double p = json_number_value(json_object_get(j, "progress"));
        ck_assert_msg(p >= 0 && p <= 1 && p >= last, "progress %g after %g", p, last);
        last = p;
        if (strcmp(state, "running") == 0) *saw_running = 1;
        json_decref(j);
        srvh_resp_free(&r);
        if (strcmp(state, "queued") && strcmp(state, "running")) {
            if (strcmp(state, "done") == 0) ck_assert(last == 1.0);
            return state;
        }
        srvh_sleep_ms(25);
    }
    return "timeout";
}

START_TEST(test_async_job)
{
    srvh_model m = srvh_slow_model();
    m.batch = 1;
    size_t len;
    char *body = srvh_make_request(&m, &len);
    srvh_resp r;
    ck_assert_int_eq(srvh_post_json(&S, "/v1/jobs", body, &r), 0);
    ck_assert_int_eq(r.status, 202);
    json_t *j = parse(&r);
    const char *id = json_string_value(json_object_get(j, "id"));
    ck_assert_uint_eq(strlen(id), 32);
    char path[160], rpath[180], loc[160];
    snprintf(path, sizeof path, "/v1/jobs/%s", id);
    snprintf(rpath, sizeof rpath, "%s/result", path);
    ck_assert_str_eq(json_string_value(json_object_get(j, "status_url")), path);
    ck_assert_int_eq(srvh_resp_header(&r, "Location", loc, sizeof loc), 0);
    ck_assert_str_eq(loc, path);
    json_decref(j);
    srvh_resp_free(&r);
    /* Not ready yet. */
    ck_assert_int_eq(srvh_request(&S, "GET", rpath, NULL, NULL, 0, &r), 0);
    char code[64], field[64];
    if (r.status == 409) {
        ck_assert_int_eq(srvh_error_of(&r, code, sizeof code, field, sizeof field), 0);
        ck_assert_str_eq(code, "not_ready");
    } else {
        ck_assert_msg(0, "result before the job could finish: %ld", r.status);
    }
    srvh_resp_free(&r);
    int saw_running;
    ck_assert_str_eq(wait_job(&S, path, 60, &saw_running), "done");
    ck_assert(saw_running);
    /* The result, twice (it is kept), the same bytes both times. */
    srvh_resp a, b;
    ck_assert_int_eq(srvh_request(&S, "GET", rpath, NULL, NULL, 0, &a), 0);
    ck_assert_int_eq(srvh_request(&S, "GET", rpath, NULL, NULL, 0, &b), 0);
    ck_assert_int_eq(a.status, 200);
    ck_assert_int_eq(b.status, 200);
    ck_assert_uint_eq(a.len, b.len);
    ck_assert(memcmp(a.body, b.body, a.len) == 0);
    json_t *res = parse(&a);
    json_t *shape = json_object_get(json_object_get(res, "grad_input"), "shape");
    ck_assert_int_eq(json_array_size(shape), 3); /* [b, n, d] mirrors the input */
    json_decref(res);
    srvh_resp_free(&a);
    srvh_resp_free(&b);
    free(body);
}
END_TEST

START_TEST(test_async_cancel)
{
    srvh_server s;
    const char *args[] = {"--workers", "1", NULL};
    ck_assert_int_eq(srvh_start(&s, args), 0);
    srvh_model m = srvh_slow_model();
    m.batch = 16; /* far longer than this test waits */
    size_t len;
    char *body = srvh_make_request(&m, &len);
    srvh_resp r;
    ck_assert_int_eq(srvh_post_json(&s, "/v1/jobs", body, &r), 0);
    ck_assert_int_eq(r.status, 202);
    json_t *j = parse(&r);
    char path[160], rpath[180];
    snprintf(path, sizeof path, "/v1/jobs/%s", json_string_value(json_object_get(j, "id")));
    snprintf(rpath, sizeof rpath, "%s/result", path);
    json_decref(j);
    srvh_resp_free(&r);
    /* Wait until it runs. */
    double t0 = srvh_now();
    for (;;) {
        ck_assert_int_eq(srvh_request(&s, "GET", path, NULL, NULL, 0, &r), 0);
        int running = strstr(r.body, "\"running\"") != NULL;
        srvh_resp_free(&r);
        if (running) break;
        ck_assert(srvh_now() - t0 < 20);
        srvh_sleep_ms(20);
    }
    ck_assert_int_eq(srvh_request(&s, "DELETE", path, NULL, NULL, 0, &r), 0);
    ck_assert_int_eq(r.status, 200);
    j = parse(&r);
    ck_assert_str_eq(json_string_value(json_object_get(j, "state")), "cancelled");
    json_decref(j);
    srvh_resp_free(&r);
    ck_assert_int_eq(srvh_request(&s, "GET", rpath, NULL, NULL, 0, &r), 0);
    ck_assert_int_eq(r.status, 409);
    srvh_resp_free(&r);
    /* The worker is freed at the core's next checkpoint: a small job gets through soon. */
    srvh_model small = srvh_small_model();
    char *sb = srvh_make_request(&small, &len);
    t0 = srvh_now();
    ck_assert_int_eq(srvh_post_json(&s, "/v1/gradients", sb, &r), 0);
    ck_assert_int_eq(r.status, 200);
    ck_assert_msg(srvh_now() - t0 < 5, "the cancelled job held the worker %.2f s",
                  srvh_now() - t0);
    srvh_resp_free(&r);
    /* Still cancelled, and a second DELETE changes nothing. */
    ck_assert_int_eq(srvh_request(&s, "DELETE", path, NULL, NULL, 0, &r), 0);
    ck_assert_int_eq(r.status, 200);
    ck_assert_ptr_nonnull(strstr(r.body, "\"cancelled\""));
    srvh_resp_free(&r);
    ck_assert_int_eq(srvh_request(&s, "GET", "/metrics", NULL, NULL, 0, &r), 0);
    ck_assert_ptr_nonnull(strstr(r.body, "altgrad_jobs_finished_total{state=\"cancelled\"} 1\n"));
    srvh_resp_free(&r);
    ck_assert_int_eq(srvh_stop(&s, SIGTERM, 20), 0);
    free(body);
    free(sb);
}
END_TEST

START_TEST(test_queue_full)
{
    srvh_server s;
    const char *args[] = {"--workers", "1", "--queue", "1", NULL};
    ck_assert_int_eq(srvh_start(&s, args), 0);
    srvh_model m = srvh_slow_model();
    m.batch = 16;
    size_t len;
    char *body = srvh_make_request(&m, &len);
    char ids[2][160];
    srvh_resp r;
    for (int i = 0; i < 2; i++) {
        ck_assert_int_eq(srvh_post_json(&s, "/v1/jobs", body, &r), 0);
        ck_assert_int_eq(r.status, 202);
        json_t *j = parse(&r);
        snprintf(ids[i], sizeof ids[i], "/v1/jobs/%s",
                 json_string_value(json_object_get(j, "id")));
        json_decref(j);
        srvh_resp_free(&r);
    }
    srvh_model small = srvh_small_model();
    char *sb = srvh_make_request(&small, &len);
    const char *paths[] = {"/v1/jobs", "/v1/gradients"};
    for (int i = 0; i < 2; i++) {
        ck_assert_int_eq(srvh_post_json(&s, paths[i], sb, &r), 0);
        ck_assert_int_eq(r.status, 429);
        char ra[16], code[64], field[64];
        ck_assert_int_eq(srvh_resp_header(&r, "Retry-After", ra, sizeof ra), 0);
        ck_assert_int_ge(atoi(ra), 1);
        ck_assert_int_eq(srvh_error_of(&r, code, sizeof code, field, sizeof field), 0);
        ck_assert_str_eq(code, "queue_full");
        srvh_resp_free(&r);
    }
    ck_assert_int_eq(srvh_request(&s, "GET", "/health/ready", NULL, NULL, 0, &r), 0);
    ck_assert_int_eq(r.status, 503);
    srvh_resp_free(&r);
    /* Cancelling frees the slots: ready again, work accepted again. */
    for (int i = 0; i < 2; i++) {
        ck_assert_int_eq(srvh_request(&s, "DELETE", ids[i], NULL, NULL, 0, &r), 0);
        ck_assert_int_eq(r.status, 200);
        srvh_resp_free(&r);
    }
    double t0 = srvh_now();
    long st = 0;
    while (srvh_now() - t0 < 10) {
        ck_assert_int_eq(srvh_request(&s, "GET", "/health/ready", NULL, NULL, 0, &r), 0);
        st = r.status;
        srvh_resp_free(&r);
        if (st == 200) break;
        srvh_sleep_ms(20);
    }
    ck_assert_int_eq(st, 200);
    ck_assert_int_eq(srvh_post_json(&s, "/v1/gradients", sb, &r), 0);
    ck_assert_int_eq(r.status, 200);
    srvh_resp_free(&r);
    ck_assert_int_eq(srvh_stop(&s, SIGTERM, 20), 0);
    free(body);
    free(sb);
}
END_TEST

START_TEST(test_timeout_and_ttl)
{
    srvh_server s;
    const char *args[] = {"--workers", "1", "--timeout", "1", "--job-ttl", "1", NULL};
    ck_assert_int_eq(srvh_start(&s, args), 0);
    srvh_model m = srvh_slow_model();
    m.batch = 16;
    size_t len;
    char *body = srvh_make_request(&m, &len);
    srvh_resp r;
    double t0 = srvh_now();
    ck_assert_int_eq(srvh_post_json(&s, "/v1/gradients", body, &r), 0);
    double took = srvh_now() - t0;
    char code[64], field[64];
    ck_assert_msg(r.status == 504, "status %ld: %.200s", r.status, r.body);
    ck_assert_int_eq(srvh_error_of(&r, code, sizeof code, field, sizeof field), 0);
    ck_assert_str_eq(code, "timeout");
    ck_assert_msg(took < 5, "the timeout took %.2f s", took);
    srvh_resp_free(&r);

    /* A finished job is purged once its TTL passes. */
    srvh_model small = srvh_small_model();
    char *sb = srvh_make_request(&small, &len);
    ck_assert_int_eq(srvh_post_json(&s, "/v1/jobs", sb, &r), 0);
    json_t *j = parse(&r);
    char path[160];
    snprintf(path, sizeof path, "/v1/jobs/%s", json_string_value(json_object_get(j, "id")));
    json_decref(j);
    srvh_resp_free(&r);
    int saw;
    ck_assert_str_eq(wait_job(&s, path, 10, &saw), "done");
    srvh_sleep_ms(1600);
    ck_assert_int_eq(srvh_request(&s, "GET", path, NULL, NULL, 0, &r), 0);
    ck_assert_int_eq(r.status, 404);
    srvh_resp_free(&r);
    ck_assert_int_eq(srvh_stop(&s, SIGTERM, 20), 0);
    free(body);
    free(sb);
}
END_TEST

START_TEST(test_memory_limit)
{
    srvh_server s;
    const char *args[] = {"--workers", "1", "--memory-limit", "3M", NULL};
    ck_assert_int_eq(srvh_start(&s, args), 0);
    /* The body fits the budget, the job's workspace does not. */
    srvh_model m = srvh_slow_model();
    m.batch = 1;
    m.n = 1024;
    size_t len;
    char *body = srvh_make_request(&m, &len);
    ck_assert(len < 3u << 20);
    srvh_resp r;
    ck_assert_int_eq(srvh_post_json(&s, "/v1/gradients", body, &r), 0);
    char code[64], field[64];
    ck_assert_msg(r.status == 413, "status %ld: %.200s", r.status, r.body);
    ck_assert_int_eq(srvh_error_of(&r, code, sizeof code, field, sizeof field), 0);
    ck_assert_str_eq(code, "too_large");
    srvh_resp_free(&r);
    /* A small job still runs: the budget was given back. */
    srvh_model small = srvh_small_model();
    char *sb = srvh_make_request(&small, &len);
    ck_assert_int_eq(srvh_post_json(&s, "/v1/gradients", sb, &r), 0);
    ck_assert_int_eq(r.status, 200);
    srvh_resp_free(&r);
    ck_assert_int_eq(srvh_request(&s, "GET", "/metrics", NULL, NULL, 0, &r), 0);
    ck_assert_ptr_nonnull(strstr(r.body, "altgrad_memory_budget_used_bytes 0\n"));
    srvh_resp_free(&r);
    ck_assert_int_eq(srvh_stop(&s, SIGTERM, 20), 0);
    free(body);
    free(sb);
}
END_TEST

/* X-Altgrad-Threads of a small sync request. */
static int threads_of_small(const srvh_server *s)
{
    srvh_model m = srvh_small_model();
    size_t len;
    char *body = srvh_make_request(&m, &len);
    srvh_resp r;
    ck_assert_int_eq(srvh_post_json(s, "/v1/gradients", body, &r), 0);
    ck_assert_int_eq(r.status, 200);
    char v[16] = "";
    ck_assert_int_eq(srvh_resp_header(&r, "X-Altgrad-Threads", v, sizeof v), 0);
    srvh_resp_free(&r);
    free(body);
    return atoi(v);
}

START_TEST(test_threads_policy)
{
    /* A lone job takes every core; one that starts while another holds them gets one; the
     * cores come back when a job ends. */
    srvh_server s;
    const char *args[] = {"--workers", "2", "--cores", "3", NULL};
    ck_assert_int_eq(srvh_start(&s, args), 0);
    ck_assert_int_eq(threads_of_small(&s), 3);
    srvh_model m = srvh_slow_model();
    m.batch = 16;
    size_t len;
    char *body = srvh_make_request(&m, &len);
    srvh_resp r;
    ck_assert_int_eq(srvh_post_json(&s, "/v1/jobs", body, &r), 0);
    ck_assert_int_eq(r.status, 202);
    json_t *j = parse(&r);
    char path[160];
    snprintf(path, sizeof path, "/v1/jobs/%s", json_string_value(json_object_get(j, "id")));
    json_decref(j);
    srvh_resp_free(&r);
    /* Progress moves once the core runs, i.e. after the job took its cores (decoding the
     * body comes first). */
    double t0 = srvh_now();
    for (;;) {
        ck_assert_int_eq(srvh_request(&s, "GET", path, NULL, NULL, 0, &r), 0);
        j = parse(&r);
        double p = json_number_value(json_object_get(j, "progress"));
        json_decref(j);
        srvh_resp_free(&r);
        if (p > 0) break;
        ck_assert(srvh_now() - t0 < 20);
        srvh_sleep_ms(10);
    }
    ck_assert_int_eq(threads_of_small(&s), 1);
    ck_assert_int_eq(srvh_request(&s, "DELETE", path, NULL, NULL, 0, &r), 0);
    srvh_resp_free(&r);
    t0 = srvh_now();
    for (;;) {
        ck_assert_int_eq(srvh_request(&s, "GET", "/metrics", NULL, NULL, 0, &r), 0);
        int back = strstr(r.body, "\naltgrad_free_cores 3\n") != NULL;
        srvh_resp_free(&r);
        if (back) break;
        ck_assert(srvh_now() - t0 < 10);
        srvh_sleep_ms(10);
    }
    ck_assert_int_eq(threads_of_small(&s), 3);
    ck_assert_int_eq(srvh_stop(&s, SIGTERM, 20), 0);
    free(body);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("server_compute");
    TCase *shared = tcase_create("shared");
    tcase_add_unchecked_fixture(shared, start_shared, stop_shared);
    tcase_set_timeout(shared, 120);
    tcase_add_test(shared, test_gradients_match_core);
    tcase_add_test(shared, test_b64_equals_json);
    tcase_add_test(shared, test_return_verify_and_loss_kinds);
    tcase_add_test(shared, test_invalid_requests);
    tcase_add_test(shared, test_concurrent_requests);
    tcase_add_test(shared, test_async_job);
    suite_add_tcase(s, shared);
    TCase *own = tcase_create("own_server");
    tcase_set_timeout(own, 120);
    tcase_add_test(own, test_async_cancel);
    tcase_add_test(own, test_queue_full);
    tcase_add_test(own, test_timeout_and_ttl);
    tcase_add_test(own, test_memory_limit);
    tcase_add_test(own, test_threads_policy);
    suite_add_tcase(s, own);
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
