/* The route table and what every request goes through before its handler: the path's
 * pattern (404), the method (405 with Allow), the bearer token (401). */
#include <stdio.h>
#include <string.h>

#include "body.h"
#include "handlers.h"
#include "routes.h"
#include "server.h"

enum { AUTH = 1, OPEN = 0 };

/* The endpoints of docs/api.md. Order is the metrics' order; the first matching pattern
 * wins. */
static const srv_route routes[] = {
    {"/v1/gradients", AUTH,
     {[HM_POST] = {.handle = handle_gradients_begin, .complete = handle_compute_complete}}},
    {"/v1/jobs", AUTH,
     {[HM_POST] = {.handle = handle_jobs_begin, .complete = handle_compute_complete}}},
    {"/v1/jobs/{id}", AUTH,
     {[HM_GET] = {.handle = handle_job_get}, [HM_DELETE] = {.handle = handle_job_delete}}},
    {"/v1/jobs/{id}/result", AUTH, {[HM_GET] = {.handle = handle_job_result}}},
    {"/v1/info", AUTH, {[HM_GET] = {.handle = handle_info}}},
    {"/health/live", OPEN, {[HM_GET] = {.handle = handle_live}}},
    {"/health/ready", OPEN, {[HM_GET] = {.handle = handle_ready}}},
    {"/metrics", OPEN, {[HM_GET] = {.handle = handle_metrics}}},
};
#define N_ROUTES ((int)(sizeof routes / sizeof routes[0]))
_Static_assert(N_ROUTES <= SRV_METRICS_ROUTES, "more routes than metrics labels");

/* ---- matching -------------------------------------------------------------------------- */

static int param_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '_';
}

/* Whether url matches pattern; fills param[] with its {name} segments. */
static int match_one(const char *pattern, const char *url, char param[][SRV_PARAM_MAX])
{
    int np = 0;
    const char *p = pattern, *u = url;
    while (*p) {
        if (*p != '{') {
            if (*p++ != *u++) return 0;
            continue;
        }
        const char *close = strchr(p, '}');
        if (!close || np == SRV_ROUTE_PARAMS) return 0;
        size_t n = 0;
        while (u[n] && u[n] != '/') {
            if (!param_char(u[n])) return 0;
            n++;
        }
        if (n == 0 || n >= SRV_PARAM_MAX) return 0;
        memcpy(param[np], u, n);
        param[np++][n] = 0;
        u += n;
        p = close + 1;
    }
    return *u == 0;
}

/* The row url matches, or -1. */
static int match(const char *url, char param[][SRV_PARAM_MAX])
{
    for (int i = 0; i < N_ROUTES; i++)
        if (match_one(routes[i].pattern, url, param)) return i;
    return -1;
}

/* The row's handler for method m (HEAD: GET's), or NULL. */
static const srv_method_handler *handler_of(const srv_route *rt, http_method m)
{
    if (m == HM_HEAD) m = HM_GET;
    if (m < 0 || m >= HTTP_METHODS || !rt->on[m].handle) return NULL;
    return &rt->on[m];
}

/* "GET, HEAD, DELETE": the methods the row answers, for Allow and the 405 message. */
static void allowed_methods(const srv_route *rt, char *out, size_t cap)
{
    size_t len = 0;
    out[0] = 0;
    for (int m = 0; m < HTTP_METHODS; m++) {
        if (!handler_of(rt, (http_method)m)) continue;
        int n = snprintf(out + len, cap - len, "%s%s", len ? ", " : "",
                         http_method_name((http_method)m));
        if (n < 0 || (size_t)n >= cap - len) return;
        len += (size_t)n;
    }
}

/* ---- dispatch -------------------------------------------------------------------------- */

/* 404, 405, 401, then the handler (a body method's: the checks before the body is read). */
static void dispatch(srv_request *q)
{
    server *srv = q->http.srv;
    ag_proto_error e;
    if (q->route < 0) {
        ag_proto_fail(&e, 404, "not_found", "", "no such endpoint");
        http_reply_error(&q->http, &e);
        return;
    }
    const srv_route *rt = &routes[q->route];
    if (!q->handler) {
        char allow[64];
        allowed_methods(rt, allow, sizeof allow);
        http_add_header(&q->http, MHD_HTTP_HEADER_ALLOW, allow);
        ag_proto_fail(&e, 405, "method_not_allowed", "", "%s is not allowed here; use %s",
                      q->http.method_s, allow);
        http_reply_error(&q->http, &e);
        return;
    }
    if (rt->auth && srv->auth.count > 0) {
        q->token = srv_auth_check(&srv->auth,
                                  http_header(&q->http, MHD_HTTP_HEADER_AUTHORIZATION));
        if (q->token < 0) {
            http_add_header(&q->http, MHD_HTTP_HEADER_WWW_AUTHENTICATE,
                            "Bearer realm=\"altgrad\"");
            ag_proto_fail(&e, 401, "unauthorized", "Authorization",
                          "a valid 'Authorization: Bearer <token>' header is required");
            http_reply_error(&q->http, &e);
            return;
        }
    }
    q->handler->handle(q);
}

/* ---- the http_handlers ----------------------------------------------------------------- */

static void on_begin(http_req *r, const char *url)
{
    srv_request *q = srv_request_of(r);
    q->token = -1;
    q->route = match(url, q->param);
    q->handler = q->route >= 0 ? handler_of(&routes[q->route], r->method) : NULL;
    const char *cl = http_header(r, MHD_HTTP_HEADER_CONTENT_LENGTH);
    int has_body = (cl && strcmp(cl, "0") != 0) ||
                   http_header(r, MHD_HTTP_HEADER_TRANSFER_ENCODING) != NULL;
    int takes_body = q->handler && q->handler->complete;
    /* A body method is checked now, before its body is read; so is anything else that
     * carries a body we do not want (answering now discards it and closes the connection).
     * The rest is answered once the request is complete, which keeps the connection alive. */
    if (takes_body || has_body) dispatch(q);
    else q->deferred = 1;
}

static int on_body(http_req *r, const char *data, size_t len)
{
    return srv_body_receive(srv_request_of(r), data, len);
}

static void on_complete(http_req *r)
{
    srv_request *q = srv_request_of(r);
    if (q->deferred) {
        q->deferred = 0;
        dispatch(q);
    } else if (q->body.wanted) {
        q->handler->complete(q);
    }
}

static void on_end(http_req *r, const http_outcome *o)
{
    srv_request *q = srv_request_of(r);
    server *srv = r->srv;
    srv_metrics_request(&srv->metrics, q->route, o->status, o->seconds, o->bytes_in,
                        o->bytes_out);
    if (q->job) q->job->req = NULL; /* the job finishes without anyone to answer */
    srv_body_free(q);
}

static const http_handlers handlers = {
    .request_size = sizeof(srv_request),
    .begin = on_begin,
    .body = on_body,
    .complete = on_complete,
    .end = on_end,
};

const http_handlers *srv_routes_init(server *srv)
{
    for (int i = 0; i < N_ROUTES; i++) srv_metrics_add_route(&srv->metrics, routes[i].pattern);
    return &handlers;
}
