/* Internals shared by the files of libaltgrad; not installed. */
#ifndef ALTGRAD_CLIENT_INTERNAL_H
#define ALTGRAD_CLIENT_INTERNAL_H

#include <curl/curl.h>

#include "../proto/proto.h"
#include "altgrad_client.h"

struct altgrad_client {
    altgrad_client_opts opts; /* strings point at the copies below */
    char *base_url, *token, *ca_file;
    struct curl_slist *headers; /* Content-Type, Accept, Authorization */
    CURLM *multi;               /* kept across calls: its connection cache is the keep-alive */
    unsigned long long rng;     /* jitter state (xorshift64*) */
};

typedef enum { XFER_GET = 0, XFER_POST, XFER_DELETE } xfer_method;

/* One HTTP exchange and its retries, driven by xfer_run. */
typedef struct {
    /* set by the caller */
    xfer_method method;
    char *url;              /* owned (xfer_init) */
    const char *body;       /* POST body, borrowed */
    size_t body_len;
    int retry_io;           /* idempotent: also retry send/receive failures and timeouts */
    int ignore_abort;       /* clean-up calls (cancel after an abort) must still go out */
    /* results */
    char *resp;             /* NUL-terminated body of the last attempt, owned */
    size_t resp_len, resp_cap, resp_max;
    long http_status;
    CURLcode cc;
    long retry_after_s;
    int attempts;
    char errbuf[CURL_ERROR_SIZE];
    /* engine state */
    CURL *easy;
    int active, done, write_failed;
    long long next_start_ms;
    const atomic_int *abort;
} xfer;

/* Prepares x for method on client->base_url + path. ALTGRAD_E_NOMEM on failure. */
altgrad_status xfer_init(xfer *x, altgrad_client *client, xfer_method method, const char *path);

/* Frees what x owns (url, response, easy handle); leaves x zeroed. */
void xfer_cleanup(xfer *x);

/* Runs count transfers concurrently until each succeeded (2xx) or failed for good, retrying
 * as the header promises. With fail_fast one final failure stops the others. Returns OK when
 * all succeeded; else the status of the first failed transfer (by index) with err filled and
 * *failed_index set (may be NULL). */
altgrad_status xfer_run(altgrad_client *client, xfer *xs, size_t count, int fail_fast,
                        altgrad_error *err, size_t *failed_index);

/* Fills err (may be NULL) and returns status. */
altgrad_status client_fail(altgrad_error *err, altgrad_status status, const char *code,
                           const char *field, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* Clears err to "ok". */
void client_error_clear(altgrad_error *err);

/* Monotonic milliseconds. */
long long client_now_ms(void);

/* Sleeps ms, waking early (returning 1) when the abort flag is raised. */
int client_sleep_ms(const altgrad_client *client, long ms);

/* Result internals (request.c): decodes body for cfg, checking shape against batch/n when
 * batch != 0. */
altgrad_status client_result_decode(const char *body, size_t len, const ag_model_config *cfg,
                                    size_t batch, size_t n, altgrad_result *res,
                                    altgrad_error *err);

#endif
