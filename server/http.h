/* HTTP: libmicrohttpd driven by the libuv loop, one request at a time as its users see it,
 * and the ways to answer it. http.c knows nothing of routes or jobs: its user gives it an
 * http_handlers at start, and it calls them for every request. Loop thread only. */
#ifndef ALTGRAD_SERVER_HTTP_H
#define ALTGRAD_SERVER_HTTP_H

#include <jansson.h>
#include <microhttpd.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "../proto/proto.h"
#include "jobs.h"

struct server;

/* Request methods; HM_OTHER is any other (never routed). */
typedef enum { HM_GET = 0, HM_HEAD, HM_POST, HM_PUT, HM_DELETE, HM_OTHER } http_method;
#define HTTP_METHODS HM_OTHER /* methods with a name above */

/* Name of a method ("GET"); NULL for HM_OTHER. */
const char *http_method_name(http_method m);

#define HTTP_MAX_EXTRA_HEADERS 4

/* One request. http.c allocates handlers.request_size bytes for it: the handlers' own request
 * type begins with an http_req, followed by their fields (routes.h). Every field here is
 * http.c's; the handlers read the request line, never write. */
typedef struct http_req {
    struct server *srv;
    struct MHD_Connection *conn;

    /* The request line and its sender: set before handlers.begin. */
    http_method method;
    char method_s[16];
    char path[256];           /* for the log; truncated */
    char remote[64];
    char request_id[40];
    uint64_t t_start;         /* uv_hrtime() at the first callback */
    size_t bytes_in;          /* body bytes received so far (kept or discarded) */

    /* The answer. */
    int in_begin;             /* inside handlers.begin */
    int drain_body;           /* answered already; the body is read and dropped */
    int responded;            /* a response has been queued with MHD */
    int status;
    size_t bytes_out;
    struct MHD_Response *pending; /* made while suspended; queued on the next callback */
    int pending_status;
    int is_suspended;
    struct {
        const char *name;
        char value[96];
    } extra[HTTP_MAX_EXTRA_HEADERS];
    int n_extra;
} http_req;

/* How a request ended, for handlers.end. */
typedef struct {
    int status;               /* 0 when no response was sent */
    double seconds;           /* from the first byte of the headers */
    size_t bytes_in;
    size_t bytes_out;         /* 0 unless the response was sent completely */
} http_outcome;

/* What http.c calls, in this order, for every request. */
typedef struct {
    size_t request_size;      /* >= sizeof(http_req); http.c zeroes it */
    /* The headers are in. May answer now (the body is then read and dropped, or the
     * connection closed) or leave it to complete. */
    void (*begin)(http_req *r, const char *url);
    /* A chunk of the body, unless the request was answered; -1 closes the connection. */
    int (*body)(http_req *r, const char *data, size_t len);
    /* The body is in and the request was neither answered nor suspended: must do one. */
    void (*complete)(http_req *r);
    /* The request is over (answered, or the connection went away): release what it holds.
     * The last call; r is freed after it. */
    void (*end)(http_req *r, const http_outcome *o);
} http_handlers;

struct http_conn;

/* http.c's state (in struct server). Loop thread only. */
typedef struct {
    const http_handlers *handlers;
    struct MHD_Daemon *mhd;
    uv_poll_t mhd_poll;
    uv_timer_t mhd_timer;
    struct http_conn *conns;  /* every open connection, for the header and body deadlines */
    int in_mhd_run;           /* guard: MHD_run is never re-entered */
    int mhd_run_again;        /* a resume or a closed connection inside an MHD callback */
    int stopped;              /* MHD stopped, handles closing */
    int quiesced;             /* no new connections; every response says Connection: close */
    unsigned short port;
    int tls;
    size_t active_requests;   /* between their first callback and their end */
    size_t suspended;         /* requests suspended until their answer is ready */
    uint64_t request_seq;     /* for generated request ids */
} srv_http;

/* Creates the daemon on srv->cfg.listen, hooks it into srv->loop, and calls h (which must
 * outlive it) for every request. tls_cert/key: PEM text or NULL. Returns 0, or -1
 * (logged). */
int http_start(struct server *srv, const http_handlers *h, const char *tls_cert_pem,
               const char *tls_key_pem);
/* Runs MHD now, or right after the current MHD_run when called from inside one. */
void http_pump(struct server *srv);
/* Stops accepting new connections (keeps the ones open; their responses close them). */
void http_quiesce(struct server *srv);
/* Closes the uv handles on MHD, then stops MHD (no connection may be suspended). */
void http_stop(struct server *srv);
/* Open client connections. */
size_t http_connections(struct server *srv);
/* Closes every connection that has not delivered a complete request header block within
 * --connection-timeout of opening or of its previous response, or whose body comes slower
 * than --body-min-rate (slowloris: trickled bytes keep libmicrohttpd's idle timeout from
 * firing). Called by the sweep timer. */
void http_sweep(struct server *srv, uint64_t now_ns);

/* Adds a header to the next reply (name must be a static string; at most
 * HTTP_MAX_EXTRA_HEADERS). */
void http_add_header(http_req *r, const char *name, const char *value);

/* Answers with body[0..len). own: the body is malloc'd and now belongs to the response;
 * else it is copied. Works whether or not the connection is suspended (a suspended one is
 * resumed). Returns 0, or -1 when no response could be made (the connection is then
 * closed). */
int http_reply(http_req *r, int status, const char *content_type, char *body, size_t len,
               int own);
/* Answers obj (its reference is taken over; NULL: out of memory) as compact JSON. */
int http_reply_json(http_req *r, int status, json_t *obj);
/* Answers with a shared blob (one reference taken, dropped when MHD is done with it). */
int http_reply_blob(http_req *r, int status, const char *content_type, srv_blob *blob);
/* Answers e (made with ag_proto_fail) as {"error": {"code", "message", "field"}} with status
 * e->http_status. */
int http_reply_error(http_req *r, const ag_proto_error *e);
/* Answers 500 out_of_memory "out of memory" from a static body (allocates nothing). */
int http_reply_out_of_memory(http_req *r);

/* Suspends the connection until http_reply resumes it (a request waiting for its job). */
void http_suspend(http_req *r);

/* The value of a request header, or NULL. */
const char *http_header(http_req *r, const char *name);

#endif
