#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "body.h"
#include "routes.h"
#include "server.h"

/* "application/json" with optional parameters ("; charset=utf-8"). */
static int is_json_type(const char *ct)
{
    if (!ct) return 0;
    while (*ct == ' ' || *ct == '\t') ct++;
    if (strncasecmp(ct, "application/json", 16) != 0) return 0;
    const char *rest = ct + 16;
    while (*rest == ' ' || *rest == '\t') rest++;
    return *rest == '\0' || *rest == ';';
}

int srv_body_check_headers(srv_request *q, ag_proto_error *e)
{
    server *srv = q->http.srv;
    srv_body *b = &q->body;
    const char *ct = http_header(&q->http, MHD_HTTP_HEADER_CONTENT_TYPE);
    if (!is_json_type(ct))
        return ag_proto_fail(e, 415, "unsupported_media_type", "Content-Type",
                             "the body must be application/json, got %s",
                             ct ? "another type" : "no Content-Type");
    const char *cl = http_header(&q->http, MHD_HTTP_HEADER_CONTENT_LENGTH);
    b->content_length = (size_t)-1;
    if (cl) {
        char *end;
        unsigned long long v = strtoull(cl, &end, 10);
        if (end == cl || *end || cl[0] == '-')
            return ag_proto_fail(e, 400, "invalid_request", "Content-Length",
                                 "invalid Content-Length");
        if (v > srv->cfg.max_body) {
            srv->metrics.rejected_too_large++;
            return ag_proto_fail(e, 413, "too_large", "", "the body has %llu bytes; this "
                                 "server takes at most %zu (--max-body)", v, srv->cfg.max_body);
        }
        b->content_length = (size_t)v;
    }
    return 0;
}

int srv_body_expect(srv_request *q, ag_proto_error *e)
{
    server *srv = q->http.srv;
    size_t cl = q->body.content_length;
    if (cl != (size_t)-1 && cl > srv->budget.limit) {
        srv->metrics.rejected_too_large++;
        return ag_proto_fail(e, 413, "too_large", "", "the body has %zu bytes; this server's "
                             "memory budget is %zu (--memory-limit)", cl, srv->budget.limit);
    }
    if (cl != (size_t)-1 && !srv_budget_fits(&srv->budget, cl)) {
        srv->metrics.rejected_memory++;
        http_add_header(&q->http, "Retry-After", "1");
        return ag_proto_fail(e, 429, "server_busy", "", "the server's memory budget is in use "
                             "(--memory-limit); retry later");
    }
    q->body.wanted = 1;
    return 0;
}

/* Drops what was kept; the rest is read and discarded (b->reject is set by the caller). */
static void drop(server *srv, srv_body *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
    srv_budget_release(&srv->budget, &b->charge);
}

/* Makes room for need bytes (and a NUL): geometric growth up to the declared length (or
 * --max-body when chunked), charged before it is allocated. 0, or -1 with b->reject set. */
static int grow(server *srv, srv_body *b, size_t need)
{
    size_t top = b->content_length != (size_t)-1 && b->content_length >= need
                     ? b->content_length : srv->cfg.max_body;
    size_t cap = b->cap ? b->cap : 64 * 1024;
    while (cap < need) cap = cap > top / 2 ? top : cap * 2;
    if (cap > top) cap = top;
    size_t more = cap - b->cap;
    if (b->charge.bytes + more > srv->budget.limit) {
        srv->metrics.rejected_too_large++;
        return ag_proto_fail(&b->reject, 413, "too_large", "", "the body is larger than this "
                             "server's memory budget (--memory-limit)");
    }
    if (srv_budget_try(&srv->budget, &b->charge, SRV_MEM_BODY, more) != 0) {
        srv->metrics.rejected_memory++;
        return ag_proto_fail(&b->reject, 429, "server_busy", "", "the server's memory budget is "
                             "in use (--memory-limit); retry later");
    }
    char *nb = realloc(b->data, cap + 1);
    if (!nb)
        return ag_proto_fail(&b->reject, 500, "out_of_memory", "", "out of memory for the body");
    b->data = nb;
    b->cap = cap;
    return 0;
}

int srv_body_receive(srv_request *q, const char *data, size_t len)
{
    server *srv = q->http.srv;
    srv_body *b = &q->body;
    if (!b->wanted || b->reject.http_status) {
        /* Discarding, so that the answer reaches the client; an endless body is cut. */
        size_t cut = (size_t)64 << 20;
        cut = srv->cfg.max_body > SIZE_MAX - cut ? SIZE_MAX : srv->cfg.max_body + cut;
        return q->http.bytes_in > cut ? -1 : 0;
    }
    if (len > srv->cfg.max_body - b->len) {
        srv->metrics.rejected_too_large++;
        ag_proto_fail(&b->reject, 413, "too_large", "", "the body is over %zu bytes (--max-body)",
                      srv->cfg.max_body);
        drop(srv, b);
        return 0;
    }
    size_t need = b->len + len;
    if (need > b->cap && grow(srv, b, need) != 0) {
        drop(srv, b);
        return 0;
    }
    memcpy(b->data + b->len, data, len);
    b->len += len;
    return 0;
}

int srv_body_complete(srv_request *q, ag_proto_error *e)
{
    srv_body *b = &q->body;
    if (b->reject.http_status) {
        if (b->reject.http_status == 429) http_add_header(&q->http, "Retry-After", "1");
        *e = b->reject;
        return -1;
    }
    if (b->len == 0) return ag_proto_fail(e, 400, "invalid_json", "", "the request body is empty");
    return 0;
}

char *srv_body_take(srv_request *q, size_t *len, srv_charge *charge)
{
    srv_body *b = &q->body;
    char *data = b->data;
    data[b->len] = 0;
    *len = b->len;
    *charge = b->charge;
    b->data = NULL;
    b->len = b->cap = 0;
    b->charge.bytes = 0;
    return data;
}

void srv_body_free(srv_request *q)
{
    drop(q->http.srv, &q->body);
}
