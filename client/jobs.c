/* Asynchronous jobs (POST /v1/jobs, GET/DELETE /v1/jobs/<id>), raw bodies, health, info. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "client_internal.h"

static const char *const state_names[] = {"queued", "running", "done", "failed", "cancelled"};

const char *altgrad_job_state_name(altgrad_job_state state)
{
    return state >= ALTGRAD_JOB_QUEUED && state <= ALTGRAD_JOB_CANCELLED ? state_names[state]
                                                                         : "unknown";
}

int altgrad_job_state_terminal(altgrad_job_state state)
{
    return state == ALTGRAD_JOB_DONE || state == ALTGRAD_JOB_FAILED ||
           state == ALTGRAD_JOB_CANCELLED;
}

/* One exchange on path; on OK the 2xx body is left in x (caller cleans up x either way). */
static altgrad_status exchange(altgrad_client *c, xfer *x, xfer_method method, const char *path,
                               const char *body, size_t len, int retry_io, int ignore_abort,
                               altgrad_error *err)
{
    client_error_clear(err);
    if (xfer_init(x, c, method, path) != ALTGRAD_OK)
        return client_fail(err, ALTGRAD_E_NOMEM, "out_of_memory", "", "out of memory");
    x->body = body;
    x->body_len = len;
    x->retry_io = retry_io;
    x->ignore_abort = ignore_abort;
    altgrad_status st = xfer_run(c, x, 1, 1, err, NULL);
    if (st == ALTGRAD_OK && err) err->attempts = x->attempts;
    return st;
}

/* A job id is 1..ALTGRAD_JOB_ID_MAX-1 characters of [0-9A-Za-z_-]. */
static int job_id_valid(const char *id)
{
    if (!id) return 0;
    size_t len = strlen(id);
    if (len == 0 || len >= ALTGRAD_JOB_ID_MAX) return 0;
    for (size_t i = 0; i < len; i++) {
        char ch = id[i];
        int ok = (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') ||
                 (ch >= 'A' && ch <= 'Z') || ch == '-' || ch == '_';
        if (!ok) return 0;
    }
    return 1;
}

static int job_path(char *out, size_t cap, const char *id, const char *suffix)
{
    return snprintf(out, cap, "/v1/jobs/%s%s", id, suffix) < (int)cap;
}

#define CHECK_ID(id)                                                                           \
    do {                                                                                       \
        if (!job_id_valid(id))                                                                 \
            return client_fail(err, ALTGRAD_E_ARG, "bad_argument", "id",                       \
                               "job id must be 1..%d characters of [0-9A-Za-z_-]",             \
                               ALTGRAD_JOB_ID_MAX - 1);                                        \
    } while (0)

/* Parses {"id", "state", "progress", "error"?} into info. */
static altgrad_status parse_job(const xfer *x, altgrad_job_info *info, altgrad_error *err)
{
    json_error_t jerr;
    json_t *root = json_loadb(x->resp ? x->resp : "", x->resp_len, 0, &jerr);
    altgrad_job_info out;
    memset(&out, 0, sizeof out);
    const char *id = json_string_value(json_object_get(root, "id"));
    const char *state = json_string_value(json_object_get(root, "state"));
    int known = 0;
    for (int i = 0; state && i <= ALTGRAD_JOB_CANCELLED; i++)
        if (strcmp(state, state_names[i]) == 0) {
            out.state = (altgrad_job_state)i;
            known = 1;
        }
    if (!root || !known) {
        json_decref(root);
        return client_fail(err, ALTGRAD_E_PROTOCOL, "bad_response", "state",
                           "job status without a known state: %.120s",
                           x->resp ? x->resp : "");
    }
    snprintf(out.id, sizeof out.id, "%s", id ? id : "");
    json_t *p = json_object_get(root, "progress");
    out.progress = json_is_number(p) ? json_number_value(p) : 0.0;
    if (out.progress < 0) out.progress = 0;
    if (out.progress > 1) out.progress = 1;
    json_t *e = json_object_get(root, "error");
    if (json_is_string(e)) {
        snprintf(out.error_message, sizeof out.error_message, "%s", json_string_value(e));
    } else if (json_is_object(e)) {
        const char *code = json_string_value(json_object_get(e, "code"));
        const char *msg = json_string_value(json_object_get(e, "message"));
        snprintf(out.error_code, sizeof out.error_code, "%s", code ? code : "");
        snprintf(out.error_message, sizeof out.error_message, "%s", msg ? msg : "");
    }
    json_decref(root);
    if (info) *info = out;
    return ALTGRAD_OK;
}

altgrad_status altgrad_job_submit(altgrad_client *c, const altgrad_request *req,
                                  char id[ALTGRAD_JOB_ID_MAX], altgrad_error *err)
{
    client_error_clear(err);
    if (!c || !id) return client_fail(err, ALTGRAD_E_ARG, "bad_argument", "", "NULL argument");
    id[0] = '\0';
    size_t len = 0;
    char *body = altgrad_request_encode(req, c->opts.encoding, &len, err);
    if (!body) return err ? err->status : ALTGRAD_E_ARG;
    xfer x;
    altgrad_status st = exchange(c, &x, XFER_POST, "/v1/jobs", body, len, 0, 0, err);
    free(body);
    if (st == ALTGRAD_OK) {
        json_error_t jerr;
        json_t *root = json_loadb(x.resp ? x.resp : "", x.resp_len, 0, &jerr);
        const char *got = json_string_value(json_object_get(root, "id"));
        if (!job_id_valid(got))
            st = client_fail(err, ALTGRAD_E_PROTOCOL, "bad_response", "id",
                             "job submission answered without a valid id");
        else
            snprintf(id, ALTGRAD_JOB_ID_MAX, "%s", got);
        json_decref(root);
    }
    xfer_cleanup(&x);
    return st;
}

altgrad_status altgrad_job_status(altgrad_client *c, const char *id, altgrad_job_info *info,
                                  altgrad_error *err)
{
    client_error_clear(err);
    if (!c) return client_fail(err, ALTGRAD_E_ARG, "bad_argument", "", "NULL client");
    CHECK_ID(id);
    char path[ALTGRAD_JOB_ID_MAX + 32];
    job_path(path, sizeof path, id, "");
    xfer x;
    altgrad_status st = exchange(c, &x, XFER_GET, path, NULL, 0, 1, 0, err);
    if (st == ALTGRAD_OK) st = parse_job(&x, info, err);
    xfer_cleanup(&x);
    return st;
}

altgrad_status altgrad_job_cancel(altgrad_client *c, const char *id, altgrad_job_info *info,
                                  altgrad_error *err)
{
    client_error_clear(err);
    if (!c) return client_fail(err, ALTGRAD_E_ARG, "bad_argument", "", "NULL client");
    CHECK_ID(id);
    char path[ALTGRAD_JOB_ID_MAX + 32];
    job_path(path, sizeof path, id, "");
    xfer x;
    /* cancelling is idempotent, and must go out even when the caller's abort flag is up */
    altgrad_status st = exchange(c, &x, XFER_DELETE, path, NULL, 0, 1, 1, err);
    if (st == ALTGRAD_OK && info) {
        altgrad_job_info parsed;
        if (parse_job(&x, &parsed, NULL) == ALTGRAD_OK) {
            *info = parsed;
        } else {
            memset(info, 0, sizeof *info);
            snprintf(info->id, sizeof info->id, "%s", id);
            info->state = ALTGRAD_JOB_CANCELLED;
        }
    }
    xfer_cleanup(&x);
    return st;
}

altgrad_status altgrad_job_wait(altgrad_client *c, const char *id, long timeout_ms,
                                altgrad_progress_fn progress, void *ctx,
                                altgrad_job_info *info, altgrad_error *err)
{
    client_error_clear(err);
    if (!c) return client_fail(err, ALTGRAD_E_ARG, "bad_argument", "", "NULL client");
    CHECK_ID(id);
    long long deadline = timeout_ms > 0 ? client_now_ms() + timeout_ms : 0;
    altgrad_job_info cur;
    memset(&cur, 0, sizeof cur);
    for (;;) {
        altgrad_status st = altgrad_job_status(c, id, &cur, err);
        if (info) *info = cur;
        if (st != ALTGRAD_OK) return st;
        if (progress && progress(ctx, &cur))
            return client_fail(err, ALTGRAD_E_ABORTED, "aborted", "",
                               "stopped by the progress callback");
        if (altgrad_job_state_terminal(cur.state)) break;
        long wait = c->opts.poll_interval_ms;
        if (deadline) {
            long long left = deadline - client_now_ms();
            if (left <= 0)
                return client_fail(err, ALTGRAD_E_TIMEOUT, "timeout", "",
                                   "job %s still %s after %ld ms", id,
                                   altgrad_job_state_name(cur.state), timeout_ms);
            if (wait > left) wait = (long)left;
        }
        if (client_sleep_ms(c, wait))
            return client_fail(err, ALTGRAD_E_ABORTED, "aborted", "", "aborted by the caller");
    }
    if (cur.state == ALTGRAD_JOB_DONE) return ALTGRAD_OK;
    altgrad_status st = client_fail(
        err, ALTGRAD_E_JOB, cur.error_code[0] ? cur.error_code : altgrad_job_state_name(cur.state),
        "", "job %s %s%s%s", id, altgrad_job_state_name(cur.state),
        cur.error_message[0] ? ": " : "", cur.error_message);
    return st;
}

altgrad_status altgrad_job_result(altgrad_client *c, const char *id, const ag_model_config *cfg,
                                  altgrad_result *res, altgrad_error *err)
{
    client_error_clear(err);
    if (res) memset(res, 0, sizeof *res);
    if (!c || !cfg || !res)
        return client_fail(err, ALTGRAD_E_ARG, "bad_argument", "", "NULL argument");
    CHECK_ID(id);
    char path[ALTGRAD_JOB_ID_MAX + 32];
    job_path(path, sizeof path, id, "/result");
    xfer x;
    altgrad_status st = exchange(c, &x, XFER_GET, path, NULL, 0, 1, 0, err);
    if (st == ALTGRAD_OK) st = client_result_decode(x.resp, x.resp_len, cfg, 0, 0, res, err);
    xfer_cleanup(&x);
    return st;
}

altgrad_status altgrad_job_run(altgrad_client *c, const altgrad_request *req, long timeout_ms,
                               altgrad_progress_fn progress, void *ctx, altgrad_result *res,
                               altgrad_error *err)
{
    if (res) memset(res, 0, sizeof *res);
    char id[ALTGRAD_JOB_ID_MAX];
    altgrad_status st = altgrad_job_submit(c, req, id, err);
    if (st != ALTGRAD_OK) return st;
    st = altgrad_job_wait(c, id, timeout_ms, progress, ctx, NULL, err);
    if (st == ALTGRAD_E_ABORTED || st == ALTGRAD_E_TIMEOUT) {
        /* do not leave the server computing for nobody; keep the wait's error */
        altgrad_error ignored;
        altgrad_job_cancel(c, id, NULL, &ignored);
        return st;
    }
    if (st != ALTGRAD_OK) return st;
    st = altgrad_job_result(c, id, &req->cfg, res, err);
    if (st == ALTGRAD_OK && res->grad_input &&
        (res->batch != req->batch || res->n != req->n)) {
        altgrad_result_free(res);
        return client_fail(err, ALTGRAD_E_PROTOCOL, "bad_response", "grad_input",
                           "job result has the wrong shape");
    }
    return st;
}

/* ---- raw bodies, health, info ---------------------------------------------------------- */

static altgrad_status take_body(xfer *x, char **out, size_t *out_len, altgrad_error *err)
{
    if (!x->resp) {
        x->resp = malloc(1);
        if (!x->resp)
            return client_fail(err, ALTGRAD_E_NOMEM, "out_of_memory", "", "out of memory");
        x->resp[0] = '\0';
        x->resp_len = 0;
    }
    *out = x->resp;
    if (out_len) *out_len = x->resp_len;
    x->resp = NULL;
    return ALTGRAD_OK;
}

static int path_valid(const char *path)
{
    if (!path || path[0] != '/') return 0;
    for (const char *p = path; *p; p++)
        if ((unsigned char)*p <= ' ' || *p == 0x7f) return 0;
    return 1;
}

altgrad_status altgrad_post_raw(altgrad_client *c, const char *path, const char *body,
                                size_t len, char **out, size_t *out_len, altgrad_error *err)
{
    client_error_clear(err);
    if (out) *out = NULL;
    if (!c || !out || (!body && len)) 
        return client_fail(err, ALTGRAD_E_ARG, "bad_argument", "", "NULL argument");
    if (!path_valid(path))
        return client_fail(err, ALTGRAD_E_ARG, "bad_argument", "path", "path must start with /");
    xfer x;
    int idempotent = strcmp(path, "/v1/gradients") == 0;
    altgrad_status st = exchange(c, &x, XFER_POST, path, body, len, idempotent, 0, err);
    if (st == ALTGRAD_OK) st = take_body(&x, out, out_len, err);
    xfer_cleanup(&x);
    return st;
}

altgrad_status altgrad_get_raw(altgrad_client *c, const char *path, char **out, size_t *out_len,
                               altgrad_error *err)
{
    client_error_clear(err);
    if (out) *out = NULL;
    if (!c || !out) return client_fail(err, ALTGRAD_E_ARG, "bad_argument", "", "NULL argument");
    if (!path_valid(path))
        return client_fail(err, ALTGRAD_E_ARG, "bad_argument", "path", "path must start with /");
    xfer x;
    altgrad_status st = exchange(c, &x, XFER_GET, path, NULL, 0, 1, 0, err);
    if (st == ALTGRAD_OK) st = take_body(&x, out, out_len, err);
    xfer_cleanup(&x);
    return st;
}

altgrad_status altgrad_health(altgrad_client *c, int ready, altgrad_error *err)
{
    client_error_clear(err);
    if (!c) return client_fail(err, ALTGRAD_E_ARG, "bad_argument", "", "NULL client");
    /* a health probe reports the present, so it is never retried */
    int saved = c->opts.max_retries;
    c->opts.max_retries = 0;
    xfer x;
    altgrad_status st =
        exchange(c, &x, XFER_GET, ready ? "/health/ready" : "/health/live", NULL, 0, 0, 0, err);
    c->opts.max_retries = saved;
    xfer_cleanup(&x);
    return st;
}

altgrad_status altgrad_info(altgrad_client *c, char **json, altgrad_error *err)
{
    return altgrad_get_raw(c, "/v1/info", json, NULL, err);
}
