/* Routes: one table of {path pattern, auth, a handler per method} (routes.c), the request
 * as the handlers see it, and the handlers' signature. A new endpoint is one row of the table
 * and its handlers. Loop thread only. */
#ifndef ALTGRAD_SERVER_ROUTES_H
#define ALTGRAD_SERVER_ROUTES_H

#include "body.h"
#include "http.h"
#include "jobs.h"

struct server;

#define SRV_ROUTE_PARAMS 2     /* {name} segments in one pattern, at most */
#define SRV_PARAM_MAX 72       /* bytes of one, NUL included */

typedef struct srv_request srv_request;

/* A handler answers (or suspends, or for a body method decides whether to take the body). */
typedef void srv_handler_fn(srv_request *q);

typedef struct {
    srv_handler_fn *handle;   /* when the request is complete; a body method: when its
                                 headers are in, before the body is read */
    srv_handler_fn *complete; /* a body method's: its body is in (srv_body_expect accepted
                                 it). NULL: the method takes no body */
} srv_method_handler;

typedef struct {
    /* Literal text and {name} segments: a {name} matches 1 to SRV_PARAM_MAX - 1 characters
     * of [A-Za-z0-9_-] (so "..", "%2e%2e" once libmicrohttpd has unescaped it and other path
     * tricks match nothing). Also the route's metrics label. */
    const char *pattern;
    int auth;                 /* needs 'Authorization: Bearer <token>' when tokens are set */
    /* By method; a method without a handler is 405. HEAD is served by the GET handler
     * (libmicrohttpd sends no body for it). */
    srv_method_handler on[HTTP_METHODS];
} srv_route;

/* One request: http.c's part first (it allocates http_handlers.request_size bytes), then
 * each owner's. */
struct srv_request {
    http_req http;
    /* routes.c */
    int route;                /* row of the table, -1 when no pattern matched */
    const srv_method_handler *handler; /* the row's handler for this method, or NULL */
    char param[SRV_ROUTE_PARAMS][SRV_PARAM_MAX]; /* the {name} segments of the path */
    int token;                /* index of the bearer token, -1 without auth */
    int deferred;             /* answered when complete (no body to wait for) */
    /* body.c */
    srv_body body;
    /* handle_compute.c */
    int async;                /* POST /v1/jobs */
    srv_job *job;             /* the sync job this request waits for (job->req is q) */
};

/* The request r is part of (every http_req of this server is an srv_request's first
 * member). */
static inline srv_request *srv_request_of(http_req *r)
{
    return (srv_request *)r;
}

/* Registers every route's metrics label with srv->metrics and returns the handlers that
 * route srv's requests (for http_start). */
const http_handlers *srv_routes_init(struct server *srv);

#endif
