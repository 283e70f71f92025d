/* Receiving a request body: the one place that checks its declared type and length, grows
 * its buffer as bytes arrive (each growth charged to the memory budget before it happens),
 * and refuses it. A refusal while it arrives is kept and answered once the body is in, so that
 * the answer reaches a client that is still sending. Loop thread only.
 *
 * A handler that takes a body calls, in order: srv_body_check_headers and srv_body_expect
 * when the headers are in (with its own checks between them), srv_body_complete when it is
 * in, then srv_body_take. The routes feed srv_body_receive and call srv_body_free at the
 * end of every request. */
#ifndef ALTGRAD_SERVER_BODY_H
#define ALTGRAD_SERVER_BODY_H

#include <stddef.h>

#include "../proto/proto.h"
#include "budget.h"

struct srv_request;

typedef struct {
    int wanted;               /* srv_body_expect accepted it: chunks are kept */
    char *data;               /* [cap + 1], malloc'd */
    size_t len, cap;
    srv_charge charge;        /* the budget cap holds */
    size_t content_length;    /* declared, or (size_t)-1 when chunked */
    ag_proto_error reject;    /* http_status set while it arrives: answered once it is in */
} srv_body;

/* The headers are in: Content-Type application/json (415), a valid Content-Length (400) of
 * at most --max-body (413). -1 with e filled, or 0. */
int srv_body_check_headers(struct srv_request *q, ag_proto_error *e);

/* Admits the body to the memory budget: a declared length within --memory-limit (413) that
 * fits now (429, Retry-After; only a check: the charge grows as bytes arrive, so a client
 * that declares a large body and sends nothing holds next to nothing). -1 with e filled, or 0
 * and the body will be kept. */
int srv_body_expect(struct srv_request *q, ag_proto_error *e);

/* A chunk (http_handlers.body): kept if wanted and not refused (at most --max-body, 413;
 * within --memory-limit, 413; fitting the budget now, 429), else discarded. -1 closes the
 * connection (an endless body discarded past --max-body + 64 MiB). */
int srv_body_receive(struct srv_request *q, const char *data, size_t len);

/* The body is in: -1 with e filled (the refusal recorded while it arrived, Retry-After for a
 * 429; 400 for an empty body), or 0. */
int srv_body_complete(struct srv_request *q, ag_proto_error *e);

/* Hands the body over: returns it (NUL-terminated, malloc'd; *len bytes) and moves its charge
 * to *charge. The request holds neither after. */
char *srv_body_take(struct srv_request *q, size_t *len, srv_charge *charge);

/* Frees whatever body the request still holds and releases its charge. */
void srv_body_free(struct srv_request *q);

#endif
