/* Test helpers for the altgradd integration suites (tests/unit/test_server_*.c): start the
 * real binary ($ALTGRAD_SERVER) on an ephemeral loopback port, talk to it with libcurl or raw
 * sockets, and build valid requests. Every name is prefixed srvh_. */
#ifndef ALTGRAD_TEST_SERVER_HARNESS_H
#define ALTGRAD_TEST_SERVER_HARNESS_H

#include <stddef.h>
#include <sys/types.h>

typedef struct {
    pid_t pid;
    int port;
    char dir[128];      /* private temporary directory (port file, log) */
    char log[192];      /* the server's stderr */
    char base[64];      /* http://127.0.0.1:PORT */
} srvh_server;

/* Starts $ALTGRAD_SERVER --listen 127.0.0.1:0 --port-file ... plus args (NULL-terminated,
 * may be NULL) and waits up to 20 s for it to listen. 0 on success. */
int srvh_start(srvh_server *s, const char *const *args);
/* Sends sig (SIGTERM; 0 sends nothing and only waits) and waits up to timeout_s. Returns
 * the exit status, or -1 when it died by a signal or had to be killed (SIGKILL after the
 * timeout). Removes the temporary directory. */
int srvh_stop(srvh_server *s, int sig, double timeout_s);
/* Prints the last lines of the server's log to stderr (for failing tests). */
void srvh_dump_log(const srvh_server *s);
/* Number of lines of the log containing needle. */
int srvh_log_count(const srvh_server *s, const char *needle);

typedef struct {
    long status;        /* 0 when the transfer failed */
    char *body;         /* NUL-terminated, malloc'd */
    size_t len;
    char *headers;      /* raw response headers, malloc'd */
    double seconds;
} srvh_resp;

/* One request with libcurl (fresh connection). headers: NULL-terminated "Name: value" list
 * or NULL. body may be NULL. scheme_base: NULL for s->base. Returns 0 when a response came. */
int srvh_request(const srvh_server *s, const char *method, const char *path,
                 const char *const *headers, const char *body, size_t len, srvh_resp *out);
/* Same, with an explicit base URL and CA file (TLS). */
int srvh_request_url(const char *url, const char *cafile, const char *method,
                     const char *const *headers, const char *body, size_t len, srvh_resp *out);
void srvh_resp_free(srvh_resp *r);
/* Copies the value of response header name (case-insensitive) into out; 0 if found. */
int srvh_resp_header(const srvh_resp *r, const char *name, char *out, size_t cap);

/* POST body as application/json to path. */
int srvh_post_json(const srvh_server *s, const char *path, const char *body, srvh_resp *out);
/* The "code" and "field" of an error body; 0 when the body is such an error. */
int srvh_error_of(const srvh_resp *r, char *code, size_t code_cap, char *field,
                  size_t field_cap);

/* Raw TCP: a connected socket to 127.0.0.1:port (blocking, 5 s timeouts), or -1. */
int srvh_connect(int port);
/* Writes all of buf; 0 on success. */
int srvh_send_all(int fd, const char *buf, size_t len);
/* Reads until the peer closes, cap bytes, or timeout_s; returns bytes read (buf
 * NUL-terminated). */
size_t srvh_read_all(int fd, char *buf, size_t cap, double timeout_s);
/* Reads one HTTP response with a Content-Length body; returns its status or -1. */
int srvh_read_response(int fd, char *buf, size_t cap, double timeout_s);

typedef struct {
    int d_model, n_heads, n_layers, d_ff;
    int causal, layernorm, gelu, residual;
    int batch;          /* 0 = a 2-d input [n, d_model] */
    int n;
    int b64;            /* tensors as base64 instead of JSON numbers */
    const char *loss;   /* "mse", "sum" or "grad_output" */
    const char *method; /* JSON of the method object, e.g. "{\"name\":\"exact\"}"; NULL = omit */
    const char *extra;  /* extra top-level members, e.g. "\"verify\":true", or NULL */
    unsigned seed;
} srvh_model;

/* A small valid model: d_model 8, 2 heads, 1 layer, d_ff 16, layernorm, gelu, residual,
 * causal, n 8, mse, method exact. */
srvh_model srvh_small_model(void);
/* A request that keeps a worker busy for roughly a second or more on a 2-core machine
 * (exact attention over long sequences; base64 tensors). */
srvh_model srvh_slow_model(void);
/* A complete valid request body for m (deterministic in m.seed); malloc'd, *len set. */
char *srvh_make_request(const srvh_model *m, size_t *len);

double srvh_now(void);
void srvh_sleep_ms(long ms);

#endif
