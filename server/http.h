/* One HTTP request as the handlers see it, and the ways to answer it. Loop thread only. */
#ifndef ALTGRAD_SERVER_HTTP_H
#define ALTGRAD_SERVER_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include "jobs.h"
#include "metrics.h"
#include "server.h"

typedef enum { HM_GET = 0, HM_HEAD, HM_POST, HM_DELETE, HM_OTHER } http_method;

#define HTTP_MAX_EXTRA_HEADERS 4

typedef struct http_req {
    server *srv;
    struct MHD_Connection *conn;
    http_method method;
    char method_s[16];
    char path[256];           /* for the log; truncated */
    char remote[64];
    char request_id[40];
    uint64_t t_start;         /* uv_hrtime() at the first callback */
    srv_route route;
    char job_id[SRV_JOB_ID_MAX]; /* the {id} of job routes */
    int token;                /* index of the bearer token, -1 without auth */

    int deferred;             /* answered when complete (no body to wait for) */
    int in_begin;             /* inside the first callback */
    int drain_body;           /* answered already; the body is read and dropped */

    /* Body of a compute POST: bounded by --max-body and by the memory budget. */
    int wants_body;
    int async;                /* POST /v1/jobs */
    char *body;
    size_t body_len, body_cap;
    srv_charge body_charge;   /* the memory budget body_cap holds */
    size_t content_length;    /* declared, or (size_t)-1 when chunked */
    size_t bytes_in;
    ag_proto_error reject;    /* http_status set while uploading: answered once the body is in */

    /* Answer. */
    int responded;            /* a response has been queued with MHD */
    int status;
    size_t bytes_out;
    struct MHD_Response *pending; /* made while suspended; queued on the next callback */
    int pending_status;
    int is_suspended;
    srv_job *job;             /* the sync job this request waits for */
    struct {
        const char *name;
        char value[96];
    } extra[HTTP_MAX_EXTRA_HEADERS];
    int n_extra;
} http_req;

/* Adds a header to the next reply (name must be a static string). */
void http_add_header(http_req *r, const char *name, const char *value);

/* Answers with body[0..len). own: the body is malloc'd and now belongs to the response;
 * else it is copied. Works whether or not the connection is suspended (a suspended one is
 * resumed). Returns 0, or -1 when no response could be made (the connection is then
 * closed). */
int http_reply(http_req *r, int status, const char *content_type, char *body, size_t len,
               int own);
/* Answers with a shared blob (one reference taken, dropped when MHD is done with it). */
int http_reply_blob(http_req *r, int status, const char *content_type, srv_blob *blob);
/* Answers e (made with ag_proto_fail) as {"error": {"code", "message", "field"}} with status
 * e->http_status. */
int http_reply_error(http_req *r, const ag_proto_error *e);
/* Answers 500 out_of_memory "out of memory" from a static body (allocates nothing). */
int http_reply_out_of_memory(http_req *r);

/* Suspends the connection until http_reply resumes it (compute requests). */
void http_suspend(http_req *r);

/* The value of a request header, or NULL. */
const char *http_header(http_req *r, const char *name);

/* routes.c: the first callback (headers in; may answer at once) and the last (body in). */
void routes_begin(http_req *r, const char *url);
void routes_complete(http_req *r);
/* A chunk of a compute POST's body; enforces the limits. -1: close the connection. */
int routes_body(http_req *r, const char *data, size_t len);
/* The request is over (sent or aborted): release what it holds. */
void routes_end(http_req *r);

#endif
