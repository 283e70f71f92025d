/* The client handle and the transfer engine: every HTTP exchange of libaltgrad goes through
 * xfer_run, which drives one or many easy handles on the client's multi handle, so single
 * calls and sharded calls share one retry policy and one connection cache. */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "client_internal.h"

/* ---- errors ---------------------------------------------------------------------------- */

const char *altgrad_status_name(altgrad_status status)
{
    switch (status) {
    case ALTGRAD_OK: return "ok";
    case ALTGRAD_E_ARG: return "argument";
    case ALTGRAD_E_CONNECT: return "connect";
    case ALTGRAD_E_TIMEOUT: return "timeout";
    case ALTGRAD_E_TLS: return "tls";
    case ALTGRAD_E_HTTP_4XX: return "http_4xx";
    case ALTGRAD_E_HTTP_5XX: return "http_5xx";
    case ALTGRAD_E_PROTOCOL: return "protocol";
    case ALTGRAD_E_JOB: return "job";
    case ALTGRAD_E_ABORTED: return "aborted";
    case ALTGRAD_E_NOMEM: return "out_of_memory";
    }
    return "unknown";
}

void client_error_clear(altgrad_error *err)
{
    if (err) memset(err, 0, sizeof *err);
}

altgrad_status client_fail(altgrad_error *err, altgrad_status status, const char *code,
                           const char *field, const char *fmt, ...)
{
    if (!err) return status;
    err->status = status;
    snprintf(err->code, sizeof err->code, "%s", code ? code : "");
    snprintf(err->field, sizeof err->field, "%s", field ? field : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    return status;
}

/* ---- time ------------------------------------------------------------------------------ */

long long client_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int aborted(const atomic_int *flag)
{
    return flag && atomic_load(flag) != 0;
}

int client_sleep_ms(const altgrad_client *client, long ms)
{
    long long end = client_now_ms() + ms;
    for (;;) {
        if (aborted(client->opts.abort)) return 1;
        long long left = end - client_now_ms();
        if (left <= 0) return 0;
        if (left > 50) left = 50; /* wake often enough to see the abort flag */
        struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)left * 1000000L};
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
        }
    }
}

/* ---- the handle ------------------------------------------------------------------------ */

altgrad_client_opts altgrad_client_opts_default(void)
{
    altgrad_client_opts o = {
        .base_url = "http://127.0.0.1:8080",
        .connect_timeout_ms = 10000,
        .low_speed_limit = 1,
        .low_speed_time_s = 330,
        .timeout_ms = 0,
        .max_retries = 4,
        .backoff_initial_ms = 200,
        .backoff_max_ms = 10000,
        .max_retry_after_ms = 60000,
        .poll_interval_ms = 200,
        .max_response_bytes = (size_t)4 << 30,
        .encoding = AG_ENCODING_B64,
    };
    return o;
}

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_result = CURLE_OK;

/* curl_global_init is only thread-safe on builds with CURL_VERSION_THREADSAFE; once it is. */
static void curl_init_once(void)
{
    curl_init_result = curl_global_init(CURL_GLOBAL_DEFAULT);
}

static char *dup_or_null(const char *s, int *failed)
{
    if (!s) return NULL;
    char *d = strdup(s);
    if (!d) *failed = 1;
    return d;
}

altgrad_client *altgrad_client_new(const altgrad_client_opts *opts, altgrad_error *err)
{
    client_error_clear(err);
    altgrad_client_opts o = opts ? *opts : altgrad_client_opts_default();
    if (!o.base_url || (strncmp(o.base_url, "http://", 7) != 0 &&
                        strncmp(o.base_url, "https://", 8) != 0)) {
        client_fail(err, ALTGRAD_E_ARG, "bad_argument", "base_url",
                    "base_url must start with http:// or https://");
        return NULL;
    }
    if (o.max_retries < 0 || o.connect_timeout_ms < 0 || o.timeout_ms < 0 ||
        o.backoff_initial_ms < 0 || o.backoff_max_ms < 0 || o.poll_interval_ms < 0 ||
        o.low_speed_limit < 0 || o.low_speed_time_s < 0 || o.max_retry_after_ms < 0 ||
        (o.encoding != AG_ENCODING_JSON && o.encoding != AG_ENCODING_B64)) {
        client_fail(err, ALTGRAD_E_ARG, "bad_argument", "", "negative or unknown option");
        return NULL;
    }
    if (o.token && strpbrk(o.token, "\r\n")) {
        client_fail(err, ALTGRAD_E_ARG, "bad_argument", "token", "token contains a newline");
        return NULL;
    }
    pthread_once(&curl_once, curl_init_once);
    if (curl_init_result != CURLE_OK) {
        client_fail(err, ALTGRAD_E_NOMEM, "curl_init", "", "curl_global_init: %s",
                    curl_easy_strerror(curl_init_result));
        return NULL;
    }
    altgrad_client *c = calloc(1, sizeof *c);
    if (!c) {
        client_fail(err, ALTGRAD_E_NOMEM, "out_of_memory", "", "out of memory");
        return NULL;
    }
    int failed = 0;
    c->base_url = dup_or_null(o.base_url, &failed);
    c->token = dup_or_null(o.token, &failed);
    c->ca_file = dup_or_null(o.ca_file, &failed);
    if (c->base_url) {
        size_t len = strlen(c->base_url);
        while (len > 0 && c->base_url[len - 1] == '/') c->base_url[--len] = '\0';
    }
    o.base_url = c->base_url;
    o.token = c->token;
    o.ca_file = c->ca_file;
    c->opts = o;

    struct curl_slist *h = NULL, *t;
    const char *fixed[] = {"Content-Type: application/json", "Accept: application/json"};
    for (size_t i = 0; i < 2 && !failed; i++) {
        t = curl_slist_append(h, fixed[i]);
        if (!t) failed = 1; else h = t;
    }
    if (!failed && c->token) {
        size_t len = strlen(c->token) + 32;
        char *line = malloc(len);
        if (!line) {
            failed = 1;
        } else {
            snprintf(line, len, "Authorization: Bearer %s", c->token);
            t = curl_slist_append(h, line);
            /* the header copy in the list is the only other place the token lives */
            memset(line, 0, len);
            free(line);
            if (!t) failed = 1; else h = t;
        }
    }
    c->headers = h;
    if (!failed) c->multi = curl_multi_init();
    if (failed || !c->multi) {
        altgrad_client_free(c);
        client_fail(err, ALTGRAD_E_NOMEM, "out_of_memory", "", "out of memory");
        return NULL;
    }
    unsigned long long seed = o.seed;
    if (seed == 0) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        seed = (unsigned long long)ts.tv_nsec ^ ((unsigned long long)ts.tv_sec << 20) ^
               (unsigned long long)(uintptr_t)c;
    }
    c->rng = seed ? seed : 0x9E3779B97F4A7C15ull;
    return c;
}

void altgrad_client_free(altgrad_client *c)
{
    if (!c) return;
    if (c->multi) curl_multi_cleanup(c->multi);
    curl_slist_free_all(c->headers);
    free(c->base_url);
    if (c->token) {
        memset(c->token, 0, strlen(c->token));
        free(c->token);
    }
    free(c->ca_file);
    free(c);
}

static unsigned long long rng_next(altgrad_client *c)
{
    unsigned long long x = c->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    c->rng = x;
    return x * 0x2545F4914F6CDD1Dull;
}

/* ---- transfers ------------------------------------------------------------------------- */

altgrad_status xfer_init(xfer *x, altgrad_client *c, xfer_method method, const char *path)
{
    memset(x, 0, sizeof *x);
    size_t len = strlen(c->base_url) + strlen(path) + 1;
    x->url = malloc(len);
    if (!x->url) return ALTGRAD_E_NOMEM;
    snprintf(x->url, len, "%s%s", c->base_url, path);
    x->method = method;
    x->resp_max = c->opts.max_response_bytes;
    x->abort = c->opts.abort;
    return ALTGRAD_OK;
}

void xfer_cleanup(xfer *x)
{
    if (!x) return;
    if (x->easy) curl_easy_cleanup(x->easy);
    free(x->url);
    free(x->resp);
    memset(x, 0, sizeof *x);
}

static size_t on_write(char *data, size_t size, size_t nmemb, void *userdata)
{
    xfer *x = userdata;
    size_t n = size * nmemb;
    if (n > x->resp_max || x->resp_len > x->resp_max - n) {
        x->write_failed = 1;
        return 0; /* CURLE_WRITE_ERROR: the response is over the caller's bound */
    }
    if (x->resp_len + n + 1 > x->resp_cap) {
        size_t cap = x->resp_cap ? x->resp_cap : 4096;
        while (cap < x->resp_len + n + 1) cap *= 2;
        char *p = realloc(x->resp, cap);
        if (!p) {
            x->write_failed = 1;
            return 0;
        }
        x->resp = p;
        x->resp_cap = cap;
    }
    memcpy(x->resp + x->resp_len, data, n);
    x->resp_len += n;
    x->resp[x->resp_len] = '\0';
    return n;
}

static int on_progress(void *clientp, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow)
{
    (void)dltotal; (void)dlnow; (void)ultotal; (void)ulnow;
    xfer *x = clientp;
    return !x->ignore_abort && aborted(x->abort);
}

static CURLcode setup_easy(altgrad_client *c, xfer *x)
{
    if (!x->easy) {
        x->easy = curl_easy_init();
        if (!x->easy) return CURLE_OUT_OF_MEMORY;
    }
    CURL *e = x->easy;
    CURLcode rc = CURLE_OK;
#define SET(opt, val) do { if (rc == CURLE_OK) rc = curl_easy_setopt(e, opt, val); } while (0)
    SET(CURLOPT_URL, x->url);
    SET(CURLOPT_PRIVATE, (void *)x);
    SET(CURLOPT_NOSIGNAL, 1L);
    SET(CURLOPT_PROTOCOLS_STR, "http,https");
    SET(CURLOPT_HTTPHEADER, c->headers);
    SET(CURLOPT_WRITEFUNCTION, on_write);
    SET(CURLOPT_WRITEDATA, (void *)x);
    SET(CURLOPT_NOPROGRESS, 0L);
    SET(CURLOPT_XFERINFOFUNCTION, on_progress);
    SET(CURLOPT_XFERINFODATA, (void *)x);
    SET(CURLOPT_ERRORBUFFER, x->errbuf);
    SET(CURLOPT_CONNECTTIMEOUT_MS, c->opts.connect_timeout_ms);
    SET(CURLOPT_LOW_SPEED_LIMIT, c->opts.low_speed_limit);
    SET(CURLOPT_LOW_SPEED_TIME, c->opts.low_speed_time_s);
    SET(CURLOPT_TIMEOUT_MS, c->opts.timeout_ms);
    SET(CURLOPT_TCP_KEEPALIVE, 1L);
    if (c->opts.max_response_bytes < (size_t)INT64_MAX)
        SET(CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)c->opts.max_response_bytes);
    SET(CURLOPT_SSL_VERIFYPEER, c->opts.insecure ? 0L : 1L);
    SET(CURLOPT_SSL_VERIFYHOST, c->opts.insecure ? 0L : 2L);
    if (c->ca_file) SET(CURLOPT_CAINFO, c->ca_file);
    switch (x->method) {
    case XFER_GET:
        SET(CURLOPT_HTTPGET, 1L);
        break;
    case XFER_POST:
        SET(CURLOPT_POST, 1L);
        SET(CURLOPT_POSTFIELDS, x->body ? x->body : "");
        SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(x->body ? x->body_len : 0));
        break;
    case XFER_DELETE:
        SET(CURLOPT_CUSTOMREQUEST, "DELETE");
        break;
    }
#undef SET
    return rc;
}

static int curl_code_retryable(CURLcode cc, int retry_io)
{
    switch (cc) {
    case CURLE_COULDNT_CONNECT: /* nothing was sent: safe for every method */
        return 1;
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
    case CURLE_OPERATION_TIMEDOUT:
        return retry_io;
    default:
        return 0;
    }
}

static altgrad_status curl_code_status(CURLcode cc)
{
    switch (cc) {
    case CURLE_OPERATION_TIMEDOUT:
        return ALTGRAD_E_TIMEOUT;
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_ENGINE_NOTFOUND:
    case CURLE_SSL_ENGINE_SETFAILED:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_SHUTDOWN_FAILED:
        return ALTGRAD_E_TLS;
    case CURLE_OUT_OF_MEMORY:
    case CURLE_FILESIZE_EXCEEDED:
    case CURLE_WRITE_ERROR:
        return ALTGRAD_E_NOMEM;
    case CURLE_ABORTED_BY_CALLBACK:
        return ALTGRAD_E_ABORTED;
    case CURLE_URL_MALFORMAT:
    case CURLE_UNSUPPORTED_PROTOCOL:
        return ALTGRAD_E_ARG;
    default:
        return ALTGRAD_E_CONNECT;
    }
}

static const char *status_code_name(altgrad_status st)
{
    switch (st) {
    case ALTGRAD_E_TIMEOUT: return "timeout";
    case ALTGRAD_E_TLS: return "tls_error";
    case ALTGRAD_E_NOMEM: return "response_too_large";
    case ALTGRAD_E_ABORTED: return "aborted";
    case ALTGRAD_E_ARG: return "bad_url";
    default: return "connect_failed";
    }
}

/* Fills err (status st) from an HTTP error body: the server's code, field and message when it
 * is an error body (ag_proto_error_decode), else "http_<status>" and the body's start. */
static void http_error(const xfer *x, altgrad_status st, altgrad_error *err)
{
    ag_proto_error pe;
    if (x->resp && ag_proto_error_decode(x->resp, x->resp_len, &pe) == 0) {
        client_fail(err, st, pe.code, pe.field, "HTTP %ld: %s", x->http_status, pe.message);
        return;
    }
    char code[24];
    snprintf(code, sizeof code, "http_%ld", x->http_status);
    /* not our JSON (a proxy's page, say): keep its start, minus line breaks */
    int shown = x->resp ? (int)(x->resp_len < 200 ? x->resp_len : 200) : 0;
    client_fail(err, st, code, "", "HTTP %ld: %.*s", x->http_status, shown,
                x->resp ? x->resp : "");
    for (char *p = err->message; *p; p++)
        if (*p == '\n' || *p == '\r') *p = ' ';
}

/* Fills err from a finished, failed transfer and returns its status. */
static altgrad_status xfer_error(const xfer *x, altgrad_error *err)
{
    altgrad_status st;
    if (x->cc != CURLE_OK) {
        st = curl_code_status(x->cc);
        client_fail(err, st, status_code_name(st), "", "%s: %s", x->url,
                    x->errbuf[0] ? x->errbuf : curl_easy_strerror(x->cc));
    } else {
        st = x->http_status >= 500   ? ALTGRAD_E_HTTP_5XX
             : x->http_status >= 400 ? ALTGRAD_E_HTTP_4XX
                                     : ALTGRAD_E_PROTOCOL;
        if (err) http_error(x, st, err);
    }
    if (err) {
        err->http_status = x->http_status;
        err->curl_code = (int)x->cc;
        err->attempts = x->attempts;
        err->retry_after_s = x->retry_after_s;
    }
    return st;
}

static int xfer_ok(const xfer *x)
{
    return x->cc == CURLE_OK && x->http_status >= 200 && x->http_status < 300;
}

/* Backoff before retry number `attempt` (1-based): equal jitter in [base/2, base] of an
 * exponential base, raised to the server's Retry-After. -1 when Retry-After is too long. */
static long retry_delay_ms(altgrad_client *c, const xfer *x, int attempt)
{
    long base = c->opts.backoff_initial_ms;
    for (int i = 1; i < attempt && base < c->opts.backoff_max_ms; i++) base *= 2;
    if (base > c->opts.backoff_max_ms) base = c->opts.backoff_max_ms;
    long delay = base / 2 + (base > 1 ? (long)(rng_next(c) % (unsigned long long)(base / 2 + 1)) : 0);
    if (x->retry_after_s > 0) {
        if (x->retry_after_s > c->opts.max_retry_after_ms / 1000) return -1;
        long ra = x->retry_after_s * 1000;
        if (delay < ra) delay = ra;
    }
    return delay;
}

/* Classifies a finished attempt: schedules a retry (returns 1) or marks x done. */
static int finish_attempt(altgrad_client *c, xfer *x, CURLcode cc)
{
    x->cc = cc;
    x->http_status = 0;
    x->retry_after_s = 0;
    curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &x->http_status);
    curl_off_t ra = 0;
    if (curl_easy_getinfo(x->easy, CURLINFO_RETRY_AFTER, &ra) == CURLE_OK && ra > 0)
        x->retry_after_s = ra > 86400 ? 86400 : (long)ra;
    int retryable = cc != CURLE_OK
                        ? curl_code_retryable(cc, x->retry_io)
                        : (x->http_status == 429 || x->http_status == 503);
    if (x->write_failed) retryable = 0;
    if (retryable && x->attempts <= c->opts.max_retries &&
        !(aborted(x->abort) && !x->ignore_abort)) {
        long delay = retry_delay_ms(c, x, x->attempts);
        if (delay >= 0) {
            x->next_start_ms = client_now_ms() + delay;
            return 1;
        }
    }
    x->done = 1;
    return 0;
}

static void start_attempt(altgrad_client *c, xfer *x)
{
    x->resp_len = 0;
    if (x->resp) x->resp[0] = '\0';
    x->errbuf[0] = '\0';
    x->write_failed = 0;
    x->attempts++;
    CURLcode rc = setup_easy(c, x);
    if (rc == CURLE_OK) {
        CURLMcode mc = curl_multi_add_handle(c->multi, x->easy);
        if (mc == CURLM_OK) {
            x->active = 1;
            return;
        }
        rc = mc == CURLM_OUT_OF_MEMORY ? CURLE_OUT_OF_MEMORY : CURLE_FAILED_INIT;
    }
    x->cc = rc;
    x->done = 1;
}

static void stop_attempt(altgrad_client *c, xfer *x)
{
    if (x->active) curl_multi_remove_handle(c->multi, x->easy);
    x->active = 0;
}

altgrad_status xfer_run(altgrad_client *c, xfer *xs, size_t count, int fail_fast,
                        altgrad_error *err, size_t *failed_index)
{
    client_error_clear(err);
    long long now = client_now_ms();
    for (size_t i = 0; i < count; i++) {
        xs[i].next_start_ms = now;
        xs[i].done = xs[i].active = 0;
        xs[i].attempts = 0;
    }
    int user_abort = 0;
    for (;;) {
        size_t pending = 0;
        int stop = 0;
        for (size_t i = 0; i < count; i++) {
            if (!xs[i].done) pending++;
            else if (fail_fast && !xfer_ok(&xs[i])) stop = 1;
        }
        int ignore = count > 0 && xs[0].ignore_abort;
        if (!ignore && aborted(c->opts.abort)) {
            stop = 1;
            user_abort = 1;
        }
        if (pending == 0 || stop) break;

        now = client_now_ms();
        long long wake = now + 100;
        for (size_t i = 0; i < count; i++) {
            xfer *x = &xs[i];
            if (x->done || x->active) continue;
            if (x->next_start_ms <= now) start_attempt(c, x);
            else if (x->next_start_ms < wake) wake = x->next_start_ms;
        }
        int running = 0;
        curl_multi_perform(c->multi, &running);
        CURLMsg *msg;
        int queued, finished = 0;
        while ((msg = curl_multi_info_read(c->multi, &queued))) {
            if (msg->msg != CURLMSG_DONE) continue;
            xfer *x = NULL;
            curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&x);
            CURLcode cc = msg->data.result;
            if (!x) continue;
            stop_attempt(c, x);
            finish_attempt(c, x, cc);
            finished = 1;
            if (!x->done && x->next_start_ms < wake) wake = x->next_start_ms;
        }
        if (finished) continue; /* re-evaluate at once: maybe nothing is left to wait for */
        now = client_now_ms();
        long timeout = wake > now ? (long)(wake - now) : 0;
        if (timeout > 100) timeout = 100;
        if (timeout > 0) curl_multi_poll(c->multi, NULL, 0, (int)timeout, NULL);
    }
    /* whatever is still in flight was stopped by fail_fast or the abort flag */
    for (size_t i = 0; i < count; i++) {
        xfer *x = &xs[i];
        if (x->done) continue;
        stop_attempt(c, x);
        x->done = 1;
        if (x->cc == CURLE_OK && x->http_status != 0) continue; /* keep its HTTP failure */
        x->cc = CURLE_ABORTED_BY_CALLBACK;
        snprintf(x->errbuf, sizeof x->errbuf, "%s",
                 user_abort ? "aborted by the caller" : "stopped: another shard failed");
    }
    /* Report the first real failure; transfers only stopped because of it come after it. */
    size_t first = count;
    for (size_t i = 0; i < count && first == count; i++)
        if (!xfer_ok(&xs[i]) && xs[i].cc != CURLE_ABORTED_BY_CALLBACK) first = i;
    for (size_t i = 0; i < count && first == count; i++)
        if (!xfer_ok(&xs[i])) first = i;
    if (first == count) return ALTGRAD_OK;
    if (failed_index) *failed_index = first;
    return xfer_error(&xs[first], err);
}
