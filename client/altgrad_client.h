/* libaltgrad: the C client of the altgrad service (wire contract: docs/api.md).
 *
 * A caller fills an altgrad_request with plain C arrays (row-major float32, borrowed, never
 * copied or freed by the library) and gets back an altgrad_result whose arrays the library
 * allocates and altgrad_result_free releases.
 *
 *   altgrad_client_opts o = altgrad_client_opts_default();
 *   o.base_url = "http://127.0.0.1:8080";
 *   altgrad_error e;
 *   altgrad_client *c = altgrad_client_new(&o, &e);
 *   altgrad_result r;
 *   if (altgrad_gradients(c, &req, &r, &e) == ALTGRAD_OK) { ... r.grad_layers[0].p[AG_P_WQ] ...}
 *   altgrad_result_free(&r);
 *   altgrad_client_free(c);
 *
 * Threads: a client handle is not thread-safe; use one handle per thread (handles share
 * nothing, so any number of threads may each drive their own). libcurl is initialised once
 * per process on the first altgrad_client_new. Transfers set CURLOPT_NOSIGNAL, which also
 * stops libcurl from ignoring SIGPIPE: a program that talks HTTPS should ignore SIGPIPE.
 *
 * Retries: connection failures (nothing sent), HTTP 429 and 503 are retried with exponential
 * backoff and full jitter, waiting at least the server's Retry-After. Other 4xx are never
 * retried. POST /v1/gradients (side-effect free) is also retried after a send/receive error on
 * a connection; POST /v1/jobs is not (it could create a duplicate job).
 */
#ifndef ALTGRAD_CLIENT_H
#define ALTGRAD_CLIENT_H

#include <stdatomic.h>
#include <stddef.h>

#include "../core/altgrad.h"
#include "../proto/wire.h"

/* ---- errors ---------------------------------------------------------------------------- */

typedef enum {
    ALTGRAD_OK = 0,
    ALTGRAD_E_ARG,      /* bad argument to the library (request shapes, options, job id) */
    ALTGRAD_E_CONNECT,  /* could not reach the server (DNS, refused, reset), after retries */
    ALTGRAD_E_TIMEOUT,  /* connect, low-speed or overall timeout */
    ALTGRAD_E_TLS,      /* certificate or handshake failure */
    ALTGRAD_E_HTTP_4XX, /* the server rejected the request; code/message/field are its own */
    ALTGRAD_E_HTTP_5XX, /* the server failed or stayed unavailable after retries */
    ALTGRAD_E_PROTOCOL, /* the response was not what docs/api.md promises */
    ALTGRAD_E_JOB,      /* a job ended failed or cancelled (altgrad_job_wait) */
    ALTGRAD_E_ABORTED,  /* the caller's abort flag or progress callback stopped the call */
    ALTGRAD_E_NOMEM     /* an allocation failed or a response exceeded max_response_bytes */
} altgrad_status;

typedef struct {
    altgrad_status status;
    long http_status;  /* last HTTP status seen, 0 when none */
    int curl_code;     /* last CURLcode, 0 when none */
    int attempts;      /* transfers made for this call (1 + retries) */
    long retry_after_s;/* the last answer's Retry-After (429, 503), 0 when absent */
    char code[40];     /* the server's error code ("invalid_shape"), or a local one */
    char field[128];   /* the server's field path ("layers[0].wq"), "" when none */
    char message[512];
} altgrad_error;

/* Name of a status ("ok", "connect", ...); never NULL. */
const char *altgrad_status_name(altgrad_status status);

/* ---- the client ------------------------------------------------------------------------ */

typedef struct {
    const char *base_url;     /* "http://127.0.0.1:8080" (no trailing path); copied */
    const char *token;        /* Bearer token or NULL; copied, never logged */
    const char *ca_file;      /* PEM bundle to verify the server with; NULL = system store */
    int insecure;             /* 1 turns TLS peer and host verification off (default 0) */
    long connect_timeout_ms;  /* default 10000 */
    long low_speed_limit;     /* bytes/s; a transfer slower than this for low_speed_time_s */
    long low_speed_time_s;    /* fails. Defaults 1 B/s for 330 s: the server may compute for
                               * up to its --timeout (300 s) before it sends a byte */
    long timeout_ms;          /* whole transfer, 0 = none (default) */
    int max_retries;          /* retries after the first attempt, default 4 */
    long backoff_initial_ms;  /* first backoff, default 200; doubles per retry */
    long backoff_max_ms;      /* backoff cap, default 10000 */
    long max_retry_after_ms;  /* give up when Retry-After asks for longer, default 60000 */
    long poll_interval_ms;    /* altgrad_job_wait polling period, default 200 */
    size_t max_response_bytes;/* larger responses fail with ALTGRAD_E_NOMEM; default 4 GiB */
    ag_encoding encoding;     /* tensors both ways; default AG_ENCODING_B64 */
    const atomic_int *abort;  /* optional: non-zero stops the call (checked >= 10 times/s) */
    unsigned long seed;       /* jitter seed; 0 = from time and address */
} altgrad_client_opts;

typedef struct altgrad_client altgrad_client;

/* Defaults as documented on each field. */
altgrad_client_opts altgrad_client_opts_default(void);

/* A new handle (strings copied). NULL with err filled on a bad option or out of memory. */
altgrad_client *altgrad_client_new(const altgrad_client_opts *opts, altgrad_error *err);

/* Closes connections and frees the handle; NULL-safe. */
void altgrad_client_free(altgrad_client *client);

/* ---- requests and results -------------------------------------------------------------- */

/* Everything is borrowed: the arrays must stay valid for the duration of the call. */
typedef struct {
    ag_model_config cfg;
    const ag_layer_params *layers; /* [cfg.n_layers]; p[i] set exactly where the config uses
                                    * parameter i (ag_param_shape), row-major */
    const float *input;            /* [batch, n, d_model] */
    size_t batch, n;               /* batch >= 1, n >= 1 */
    int batched;                   /* 1: send a 3-d input; 0: a 2-d one (batch must be 1) */
    ag_loss_kind loss;
    const float *loss_tensor;      /* mse: target, grad_output: dL/dy, [batch, n, d_model];
                                    * NULL for sum */
    ag_method method;              /* ag_method_default(AG_METHOD_AUTO) for the default */
    unsigned return_mask;          /* AG_RETURN_* of proto/wire.h; 0 = AG_RETURN_DEFAULT */
    int verify;                    /* also run exact on the server and report the errors */
} altgrad_request;

/* A request for cfg with the default method (auto) and default returns; the caller then
 * sets layers, input, batch, n, loss and loss_tensor. */
altgrad_request altgrad_request_init(const ag_model_config *cfg);

/* Checks req against docs/api.md (config, shapes present, loss tensor, the method contract
 * of ag_method_check) without sending. */
altgrad_status altgrad_request_check(const altgrad_request *req, altgrad_error *err);

/* The request body for req with tensors in `encoding` (malloc'd, *len set; free with
 * free()). NULL with err filled on a bad request or out of memory. */
char *altgrad_request_encode(const altgrad_request *req, ag_encoding encoding, size_t *len,
                             altgrad_error *err);

/* A decoded response: proto's ag_response (proto/wire.h has its fields: loss, grad_input,
 * grad_layers, heads, method_name, verification, timing). Arrays are library-owned; release
 * everything with altgrad_result_free. Absent things (not asked for, not in the config) are
 * NULL. */
typedef ag_response altgrad_result;

/* Frees everything a result owns; NULL-safe; leaves it zeroed. */
void altgrad_result_free(altgrad_result *res);

/* ---- synchronous gradients ------------------------------------------------------------- */

/* POST /v1/gradients: loss, gradients and method report for req, with retries. */
altgrad_status altgrad_gradients(altgrad_client *client, const altgrad_request *req,
                                 altgrad_result *res, altgrad_error *err);

/* Data-parallel: splits req's batch into k contiguous shards (k clamped to [1, batch]) sent
 * concurrently (libcurl multi; behind a load balancer they reach different replicas), then
 * sums the weight gradients and concatenates grad_input and output. mse is a mean over all
 * elements, so shard losses and gradients are re-weighted by shard size. Per head, the report
 * of the shard with the largest error_bound is kept; verification errors and timings are the
 * maximum over shards. On any shard's failure the call fails (err names the shard). */
altgrad_status altgrad_gradients_sharded(altgrad_client *client, const altgrad_request *req,
                                         int k, altgrad_result *res, altgrad_error *err);

/* Decodes a response body made for cfg into res (used by the CLI for saved bodies). */
altgrad_status altgrad_result_decode(const char *body, size_t len, const ag_model_config *cfg,
                                     altgrad_result *res, altgrad_error *err);

/* ---- asynchronous jobs ----------------------------------------------------------------- */

typedef enum {
    ALTGRAD_JOB_QUEUED = 0, ALTGRAD_JOB_RUNNING, ALTGRAD_JOB_DONE, ALTGRAD_JOB_FAILED,
    ALTGRAD_JOB_CANCELLED
} altgrad_job_state;

#define ALTGRAD_JOB_ID_MAX 80

typedef struct {
    char id[ALTGRAD_JOB_ID_MAX];
    altgrad_job_state state;
    double progress;       /* 0..1 */
    char error_code[40];   /* when failed: the job's error code, else "" */
    char error_message[320];
} altgrad_job_info;

/* Wire name of a state ("queued", ...); never NULL. */
const char *altgrad_job_state_name(altgrad_job_state state);
/* 1 for done, failed and cancelled. */
int altgrad_job_state_terminal(altgrad_job_state state);

/* POST /v1/jobs: queues req; writes the job id (NUL-terminated) into id. */
altgrad_status altgrad_job_submit(altgrad_client *client, const altgrad_request *req,
                                  char id[ALTGRAD_JOB_ID_MAX], altgrad_error *err);

/* GET /v1/jobs/<id>. */
altgrad_status altgrad_job_status(altgrad_client *client, const char *id,
                                  altgrad_job_info *info, altgrad_error *err);

/* Called after every poll; return non-zero to stop waiting (ALTGRAD_E_ABORTED). */
typedef int (*altgrad_progress_fn)(void *ctx, const altgrad_job_info *info);

/* Polls GET /v1/jobs/<id> every opts.poll_interval_ms until the job is done, failed or
 * cancelled, or until timeout_ms (0 = no limit; ALTGRAD_E_TIMEOUT). info (may be NULL) gets
 * the last state. Returns OK when done, ALTGRAD_E_JOB (err carries the job's error) when it
 * failed or was cancelled. */
altgrad_status altgrad_job_wait(altgrad_client *client, const char *id, long timeout_ms,
                                altgrad_progress_fn progress, void *ctx,
                                altgrad_job_info *info, altgrad_error *err);

/* GET /v1/jobs/<id>/result decoded for cfg (409 while not done -> ALTGRAD_E_HTTP_4XX). */
altgrad_status altgrad_job_result(altgrad_client *client, const char *id,
                                  const ag_model_config *cfg, altgrad_result *res,
                                  altgrad_error *err);

/* DELETE /v1/jobs/<id>; info (may be NULL) gets the state the server answers with. */
altgrad_status altgrad_job_cancel(altgrad_client *client, const char *id,
                                  altgrad_job_info *info, altgrad_error *err);

/* submit + wait (with progress) + result. The job is cancelled on the server when the wait is
 * aborted or times out. */
altgrad_status altgrad_job_run(altgrad_client *client, const altgrad_request *req,
                               long timeout_ms, altgrad_progress_fn progress, void *ctx,
                               altgrad_result *res, altgrad_error *err);

/* ---- raw bodies and service endpoints -------------------------------------------------- */

/* POST path with a JSON body (e.g. a request file), retried like altgrad_gradients for
 * "/v1/gradients" and without send/receive retries elsewhere. On OK *out (malloc'd,
 * NUL-terminated, free with free()) is the 2xx body; on an HTTP error, err carries the
 * server's error and *out is NULL. */
altgrad_status altgrad_post_raw(altgrad_client *client, const char *path, const char *body,
                                size_t len, char **out, size_t *out_len, altgrad_error *err);

/* GET path (e.g. "/v1/info", "/v1/jobs/<id>/result"); *out as for altgrad_post_raw. */
altgrad_status altgrad_get_raw(altgrad_client *client, const char *path, char **out,
                               size_t *out_len, altgrad_error *err);

/* GET /health/live (ready = 0) or /health/ready (ready = 1): OK on 200. Not retried, so a
 * draining or full server answers at once with ALTGRAD_E_HTTP_5XX (503). */
altgrad_status altgrad_health(altgrad_client *client, int ready, altgrad_error *err);

/* GET /v1/info as a malloc'd NUL-terminated JSON text (free with free()). */
altgrad_status altgrad_info(altgrad_client *client, char **json, altgrad_error *err);

#endif
