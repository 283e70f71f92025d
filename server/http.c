/* libmicrohttpd in external-event mode, driven by the libuv loop:
 *   - MHD's epoll fd sits under a uv_poll; MHD_get_timeout arms a uv_timer after every run;
 *   - MHD_run is never re-entered: a resume from inside an MHD callback asks the outer run to
 *     go round again (http_pump);
 *   - a resumed connection only moves when MHD runs again (0.9.75 does not wake itself), so
 *     every resume is followed by http_pump.
 * Everything here runs on the loop thread. Requests reach their users only through the
 * http_handlers given to http_start. */
#include <arpa/inet.h>
#include <jansson.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include "http.h"
#include "log.h"
#include "server.h"

/* ---- the loop glue --------------------------------------------------------------------- */

static void on_mhd_timer(uv_timer_t *t);

void http_pump(server *srv)
{
    if (!srv->http.mhd || srv->http.stopped) return;
    if (srv->http.in_mhd_run) {
        srv->http.mhd_run_again = 1;
        return;
    }
    srv->http.in_mhd_run = 1;
    do {
        srv->http.mhd_run_again = 0;
        MHD_run(srv->http.mhd);
    } while (srv->http.mhd_run_again && !srv->http.stopped);
    srv->http.in_mhd_run = 0;
    if (srv->http.stopped) return;
    MHD_UNSIGNED_LONG_LONG to;
    if (MHD_get_timeout(srv->http.mhd, &to) == MHD_YES) {
        /* 0 means data is already pending (edge-triggered epoll inside MHD): run again soon. */
        uv_timer_start(&srv->http.mhd_timer, on_mhd_timer, (uint64_t)to, 0);
    } else {
        uv_timer_stop(&srv->http.mhd_timer);
    }
}

static void on_mhd_timer(uv_timer_t *t)
{
    http_pump(t->data);
}

static void on_mhd_io(uv_poll_t *p, int status, int events)
{
    (void)status;
    (void)events;
    http_pump(p->data);
}

/* ---- the header and body deadlines ----------------------------------------------------- */

/* One per open connection (libmicrohttpd's socket context). A connection is "waiting" from
 * its accept, and again from the end of each response, until the headers of its next request
 * are in; waiting longer than --connection-timeout gets it closed, however slowly it keeps
 * sending. Its body is then due within --connection-timeout plus its size at
 * --body-min-rate (Apache mod_reqtimeout's rule): trickled bytes reset libmicrohttpd's idle
 * timeout, so without this a body sent a byte at a time would hold the connection and its
 * budget reservation forever. Compute and the response are under the idle timeout only. */
struct http_conn {
    struct http_conn *prev, *next;
    MHD_socket fd;
    uint64_t since;   /* ns: accepted, or its last response ended; in a body: headers done */
    uint64_t body_bytes; /* of the request whose body is being received */
    int in_request;   /* headers complete, request not finished */
    int in_body;      /* headers complete, body not yet complete */
    int cut;          /* shut down by the sweep; libmicrohttpd closes it next */
};

static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode code)
{
    server *srv = cls;
    struct http_conn *hc = *socket_context;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        hc = ci ? calloc(1, sizeof *hc) : NULL;
        if (!hc) return; /* untracked: left to the idle timeout */
        hc->fd = ci->connect_fd;
        hc->since = uv_hrtime();
        hc->next = srv->http.conns;
        if (srv->http.conns) srv->http.conns->prev = hc;
        srv->http.conns = hc;
        *socket_context = hc;
    } else if (code == MHD_CONNECTION_NOTIFY_CLOSED) {
        /* A freed slot: at --max-connections libmicrohttpd 0.9.75 took its listening socket
         * out of its epoll set and puts it back only at the start of a later MHD_run, which
         * nothing would trigger once no connection is left. Run it again now. */
        srv->http.mhd_run_again = 1;
        if (!hc) return;
        if (hc->prev) hc->prev->next = hc->next;
        else srv->http.conns = hc->next;
        if (hc->next) hc->next->prev = hc->prev;
        free(hc);
        *socket_context = NULL;
    }
}

static struct http_conn *conn_of(struct MHD_Connection *c)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci ? ci->socket_context : NULL;
}

/* ns by which the connection's current phase must be over; UINT64_MAX when it has none. */
static uint64_t conn_deadline(const server *srv, const struct http_conn *hc)
{
    uint64_t limit = (uint64_t)srv->cfg.connection_timeout_s * 1000000000ull;
    if (!hc->in_request) return hc->since + limit;
    if (!hc->in_body || srv->cfg.body_min_rate == 0) return UINT64_MAX;
    double credit = (double)hc->body_bytes / (double)srv->cfg.body_min_rate * 1e9;
    if (credit >= 1e18) return UINT64_MAX;
    return hc->since + limit + (uint64_t)credit;
}

void http_sweep(server *srv, uint64_t now)
{
    if (!srv->http.mhd || srv->http.stopped) return;
    size_t n_head = 0, n_body = 0;
    for (struct http_conn *hc = srv->http.conns; hc; hc = hc->next) {
        if (hc->cut || now <= conn_deadline(srv, hc)) continue;
        /* libmicrohttpd has no call to close a connection; a shut-down socket reads as end of
         * input on its next event, and it closes the connection itself. */
        shutdown(hc->fd, SHUT_RDWR);
        hc->cut = 1;
        if (hc->in_request) n_body++;
        else n_head++;
    }
    if (n_head)
        srv_log("warn", "closed %zu connections that sent no complete request headers within "
                "%u s (--connection-timeout)", n_head, srv->cfg.connection_timeout_s);
    if (n_body)
        srv_log("warn", "closed %zu connections whose request body came slower than %zu "
                "bytes/s after the first %u s (--body-min-rate, --connection-timeout)", n_body,
                srv->cfg.body_min_rate, srv->cfg.connection_timeout_s);
    /* Every sweep runs MHD, cut or not: a backstop for any state in which libmicrohttpd
     * needs a run that no event of its epoll fd or timer would start (a listening socket
     * left out of its set after EMFILE, say). It costs one epoll_wait(0) per sweep. */
    http_pump(srv);
}

size_t http_connections(server *srv)
{
    if (!srv->http.mhd) return 0;
    const union MHD_DaemonInfo *i = MHD_get_daemon_info(srv->http.mhd,
                                                        MHD_DAEMON_INFO_CURRENT_CONNECTIONS);
    return i ? i->num_connections : 0;
}

/* ---- replies --------------------------------------------------------------------------- */

void http_add_header(http_req *r, const char *name, const char *value)
{
    if (r->n_extra == HTTP_MAX_EXTRA_HEADERS) return;
    r->extra[r->n_extra].name = name;
    snprintf(r->extra[r->n_extra].value, sizeof r->extra[0].value, "%s", value);
    r->n_extra++;
}

/* An answer given before the body is read makes MHD drop the body and close the connection.
 * A client that waits for "100 Continue" (curl, for large bodies) has sent nothing and reads
 * the answer at once; so does one whose small body already sits in the socket buffers. But a
 * client still pushing a large body (Python's http.client never waits) would get a reset
 * instead of the answer. Such a body, up to HTTP_DRAIN_MAX, is read and discarded first; a
 * larger declared one is refused at once. */
#define HTTP_DRAIN_MIN ((size_t)1 << 20)
#define HTTP_DRAIN_MAX ((size_t)64 << 20)

static int should_drain(http_req *r)
{
    const char *expect = http_header(r, MHD_HTTP_HEADER_EXPECT);
    if (expect && strncasecmp(expect, "100-continue", 12) == 0) return 0;
    const char *cl = http_header(r, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (!cl) return http_header(r, MHD_HTTP_HEADER_TRANSFER_ENCODING) != NULL;
    char *end;
    unsigned long long v = strtoull(cl, &end, 10);
    if (end == cl || *end) return 0;
    return v > HTTP_DRAIN_MIN && v <= HTTP_DRAIN_MAX;
}

static int deliver(http_req *r, int status, const char *content_type,
                   struct MHD_Response *resp, size_t len)
{
    if (!resp) {
        srv_log("error", "cannot create a response (out of memory); closing the connection");
        if (r->is_suspended) {
            /* Resume with nothing queued: MHD calls us again and we close it there. */
            r->pending = NULL;
            r->pending_status = -1;
            r->is_suspended = 0;
            r->srv->http.suspended--;
            MHD_resume_connection(r->conn);
            http_pump(r->srv);
        }
        return -1;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    MHD_add_response_header(resp, "X-Request-Id", r->request_id);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    for (int i = 0; i < r->n_extra; i++)
        MHD_add_response_header(resp, r->extra[i].name, r->extra[i].value);
    if (r->srv->http.quiesced) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
    r->status = status;
    r->bytes_out = len;
    r->responded = 1;
    if (r->in_begin && should_drain(r)) {
        /* Answered after the body has been read and dropped (see should_drain). */
        r->pending = resp;
        r->pending_status = status;
        r->drain_body = 1;
        return 0;
    }
    if (r->is_suspended) {
        r->pending = resp;
        r->pending_status = status;
        r->is_suspended = 0;
        r->srv->http.suspended--;
        MHD_resume_connection(r->conn);
        http_pump(r->srv);
        return 0;
    }
    enum MHD_Result ok = MHD_queue_response(r->conn, (unsigned)status, resp);
    MHD_destroy_response(resp);
    if (ok != MHD_YES) {
        srv_log("error", "MHD_queue_response failed for %s %s", r->method_s, r->path);
        r->pending_status = -1; /* the next callback closes the connection */
        return -1;
    }
    return 0;
}

int http_reply(http_req *r, int status, const char *content_type, char *body, size_t len,
               int own)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(
        len, body, own ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_MUST_COPY);
    if (!resp && own) free(body);
    return deliver(r, status, content_type, resp, len);
}

static void blob_release(void *cls)
{
    srv_blob_unref(cls);
}

int http_reply_blob(http_req *r, int status, const char *content_type, srv_blob *blob)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer_with_free_callback_cls(
        blob->len, blob->data, blob_release, blob);
    if (resp) srv_blob_ref(blob);
    return deliver(r, status, content_type, resp, blob->len);
}

int http_reply_out_of_memory(http_req *r)
{
    static const char oom[] =
        "{\"error\":{\"code\":\"out_of_memory\",\"message\":\"out of memory\",\"field\":\"\"}}";
    return http_reply(r, 500, "application/json", (char *)oom, sizeof oom - 1, 0);
}

int http_reply_json(http_req *r, int status, json_t *obj)
{
    if (!obj) return http_reply_out_of_memory(r);
    char *s = json_dumps(obj, JSON_COMPACT | JSON_REAL_PRECISION(9));
    json_decref(obj);
    if (!s) return http_reply_out_of_memory(r);
    return http_reply(r, status, "application/json", s, strlen(s), 1);
}

int http_reply_error(http_req *r, const ag_proto_error *e)
{
    size_t len = 0;
    char *body = ag_error_encode(e, &len);
    if (!body) return http_reply_out_of_memory(r);
    return http_reply(r, e->http_status, "application/json", body, len, 1);
}

void http_suspend(http_req *r)
{
    MHD_suspend_connection(r->conn);
    r->is_suspended = 1;
    r->srv->http.suspended++;
}

const char *http_header(http_req *r, const char *name)
{
    return MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, name);
}

/* ---- the request lifecycle ------------------------------------------------------------- */

static const char *const method_names[HTTP_METHODS] = {"GET", "HEAD", "POST", "PUT", "DELETE"};

const char *http_method_name(http_method m)
{
    return m >= 0 && m < HTTP_METHODS ? method_names[m] : NULL;
}

static http_method method_of(const char *m)
{
    for (int i = 0; i < HTTP_METHODS; i++)
        if (strcmp(m, method_names[i]) == 0) return (http_method)i;
    return HM_OTHER;
}

static int id_char_ok(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '_' || c == '.';
}

static void set_request_id(http_req *r)
{
    const char *given = http_header(r, "X-Request-Id");
    if (given) {
        size_t n = strlen(given), i = 0;
        while (i < n && id_char_ok(given[i])) i++;
        if (n >= 1 && n < sizeof r->request_id && i == n) {
            memcpy(r->request_id, given, n + 1);
            return;
        }
    }
    server *srv = r->srv;
    snprintf(r->request_id, sizeof r->request_id, "%08x%08llx",
             (unsigned)(srv->started_ns & 0xffffffffu),
             (unsigned long long)++srv->http.request_seq);
}

static void set_remote(http_req *r)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    r->remote[0] = 0;
    if (!ci || !ci->client_addr) return;
    const struct sockaddr *sa = ci->client_addr;
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, r->remote,
                  sizeof r->remote);
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, r->remote,
                  sizeof r->remote);
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *c, const char *url,
                                 const char *method, const char *version,
                                 const char *upload_data, size_t *upload_size, void **con_cls)
{
    (void)version;
    server *srv = cls;
    http_req *r = *con_cls;
    if (!r) {
        r = calloc(1, srv->http.handlers->request_size);
        if (!r) return MHD_NO; /* out of memory: drop this connection, keep the others */
        *con_cls = r;
        struct http_conn *hc = conn_of(c);
        if (hc) {
            hc->in_request = 1;
            hc->in_body = 1;
            hc->body_bytes = 0;
            hc->since = uv_hrtime();
        }
        r->srv = srv;
        r->conn = c;
        r->t_start = uv_hrtime();
        r->method = method_of(method);
        snprintf(r->method_s, sizeof r->method_s, "%s", method);
        snprintf(r->path, sizeof r->path, "%s", url);
        srv->http.active_requests++;
        set_request_id(r);
        set_remote(r);
        r->in_begin = 1;
        srv->http.handlers->begin(r, url);
        r->in_begin = 0;
        return MHD_YES;
    }
    if (*upload_size) {
        struct http_conn *hc = conn_of(c);
        if (hc) hc->body_bytes += *upload_size;
        if (r->drain_body) {
            r->bytes_in += *upload_size;
            if (r->bytes_in > HTTP_DRAIN_MAX) return MHD_NO; /* endless chunked body */
        } else if (!r->responded) {
            r->bytes_in += *upload_size;
            if (srv->http.handlers->body(r, upload_data, *upload_size) != 0) return MHD_NO;
        }
        *upload_size = 0;
        return MHD_YES;
    }
    struct http_conn *hc = conn_of(c);
    if (hc) hc->in_body = 0; /* the body is complete: compute and response are not timed */
    if (r->pending) {
        struct MHD_Response *resp = r->pending;
        r->pending = NULL;
        enum MHD_Result ok = MHD_queue_response(c, (unsigned)r->pending_status, resp);
        MHD_destroy_response(resp);
        return ok;
    }
    if (r->pending_status == -1) return MHD_NO; /* resumed without a response: close */
    if (r->responded || r->is_suspended) return MHD_YES;
    srv->http.handlers->complete(r);
    if (!r->responded && !r->is_suspended) {
        /* Every path answers or suspends; anything else would spin MHD on this request. */
        ag_proto_error e;
        ag_proto_fail(&e, 500, "internal", "", "request was neither answered nor queued");
        http_reply_error(r, &e);
    }
    return (r->responded || r->is_suspended) && r->pending_status != -1 ? MHD_YES : MHD_NO;
}

static const char *toe_note(enum MHD_RequestTerminationCode toe)
{
    switch (toe) {
    case MHD_REQUEST_TERMINATED_COMPLETED_OK: return "";
    case MHD_REQUEST_TERMINATED_WITH_ERROR: return "error";
    case MHD_REQUEST_TERMINATED_TIMEOUT_REACHED: return "timeout";
    case MHD_REQUEST_TERMINATED_DAEMON_SHUTDOWN: return "shutdown";
    case MHD_REQUEST_TERMINATED_READ_ERROR: return "read_error";
    case MHD_REQUEST_TERMINATED_CLIENT_ABORT: return "client_abort";
    }
    return "unknown";
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    server *srv = cls;
    struct http_conn *hc = conn_of(c);
    if (hc) {
        hc->in_request = 0;
        hc->in_body = 0;
        hc->since = uv_hrtime(); /* the next request's headers are due from now */
    }
    http_req *r = *con_cls;
    if (!r) return;
    *con_cls = NULL;
    double secs = (double)(uv_hrtime() - r->t_start) / 1e9;
    int status = r->responded ? r->status : 0;
    srv_access_entry e = {r->method_s, r->path, status, r->bytes_in, r->bytes_out, secs * 1e3,
                          r->request_id, r->remote, toe_note(toe)};
    srv_log_access(&e);
    if (r->pending) MHD_destroy_response(r->pending);
    if (r->is_suspended) srv->http.suspended--; /* only at MHD_stop_daemon, which we avoid */
    http_outcome o = {status, secs, r->bytes_in,
                      toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? r->bytes_out : 0};
    srv->http.handlers->end(r, &o);
    srv->http.active_requests--;
    free(r);
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Percent-decoding of the path (and query) before routing, as libmicrohttpd's own but for
 * %00 and %2F, which stay as they are: a decoded NUL would cut the path short for the router
 * (/v1/info%00.json would serve /v1/info), and a decoded '/' would let a path pick another
 * route than the one a proxy in front saw (/v1/jobs/ID%2Fresult). */
static size_t unescape_uri(void *cls, struct MHD_Connection *c, char *s)
{
    (void)cls;
    (void)c;
    char *w = s;
    const char *r = s;
    while (*r) {
        int hi, lo;
        if (r[0] == '%' && (hi = hex_value(r[1])) >= 0 && (lo = hex_value(r[2])) >= 0 &&
            (hi | lo) != 0 && !(hi == 2 && lo == 15)) {
            *w++ = (char)(hi * 16 + lo);
            r += 3;
            continue;
        }
        *w++ = *r++;
    }
    *w = 0;
    return (size_t)(w - s);
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r')) msg[--n] = 0;
    srv_log("warn", "libmicrohttpd: %s", msg);
}

/* ---- start and stop -------------------------------------------------------------------- */

/* "host:port", "[v6]:port", ":port" -> socket address (numeric or resolved once, here,
 * before any thread starts). */
static int resolve_listen(const char *spec, struct sockaddr_storage *ss, int *is_v6)
{
    char host[256];
    const char *port;
    if (spec[0] == '[') {
        const char *end = strchr(spec, ']');
        if (!end || end[1] != ':' || (size_t)(end - spec - 1) >= sizeof host) return -1;
        memcpy(host, spec + 1, (size_t)(end - spec - 1));
        host[end - spec - 1] = 0;
        port = end + 2;
    } else {
        const char *colon = strrchr(spec, ':');
        if (!colon || (size_t)(colon - spec) >= sizeof host) return -1;
        memcpy(host, spec, (size_t)(colon - spec));
        host[colon - spec] = 0;
        port = colon + 1;
    }
    if (!*port) return -1;
    for (const char *p = port; *p; p++)
        if (*p < '0' || *p > '9') return -1;
    if (atol(port) > 65535) return -1;
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV | AI_PASSIVE;
    if (getaddrinfo(host[0] ? host : NULL, port, &hints, &res) != 0 || !res) return -1;
    struct addrinfo *pick = res;
    if (!host[0]) /* ":port": every IPv4 interface, as a bare port means elsewhere */
        for (struct addrinfo *a = res; a; a = a->ai_next)
            if (a->ai_family == AF_INET) { pick = a; break; }
    memcpy(ss, pick->ai_addr, pick->ai_addrlen);
    *is_v6 = pick->ai_family == AF_INET6;
    freeaddrinfo(res);
    return 0;
}

int http_start(server *srv, const http_handlers *h, const char *tls_cert_pem,
               const char *tls_key_pem)
{
    srv->http.handlers = h;
    struct sockaddr_storage ss;
    int v6 = 0;
    if (resolve_listen(srv->cfg.listen, &ss, &v6) != 0) {
        srv_log("error", "--listen %s: expected HOST:PORT or [IPV6]:PORT that resolves",
                srv->cfg.listen);
        return -1;
    }
    unsigned flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    if (v6) flags |= MHD_USE_IPv6;
    if (tls_cert_pem) {
        if (MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES) {
            srv_log("error", "this libmicrohttpd was built without TLS");
            return -1;
        }
        flags |= MHD_USE_TLS;
    }
    /* The per-connection pool holds headers and one read chunk, not the body (we buffer
     * that ourselves, bounded by --max-body and --memory-limit). */
    const size_t conn_mem = 128 * 1024;
    const unsigned conn_timeout = srv->cfg.connection_timeout_s;
    const unsigned conn_limit = (unsigned)srv->cfg.max_connections;
    const unsigned per_ip = (unsigned)srv->cfg.max_connections_per_ip;
    if (tls_cert_pem) {
        srv->http.mhd = MHD_start_daemon(
            flags, 0, NULL, NULL, on_access, srv, MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, srv,
            MHD_OPTION_UNESCAPE_CALLBACK, unescape_uri, NULL,
            MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
            MHD_OPTION_CONNECTION_TIMEOUT, conn_timeout, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
            conn_mem, MHD_OPTION_CONNECTION_LIMIT, conn_limit,
            MHD_OPTION_PER_IP_CONNECTION_LIMIT, per_ip, MHD_OPTION_LISTEN_BACKLOG_SIZE,
            (unsigned)511, MHD_OPTION_NOTIFY_COMPLETED, on_completed, srv,
            MHD_OPTION_NOTIFY_CONNECTION, on_connection, srv,
            MHD_OPTION_HTTPS_MEM_CERT,
            tls_cert_pem, MHD_OPTION_HTTPS_MEM_KEY, tls_key_pem, MHD_OPTION_END);
    } else {
        srv->http.mhd = MHD_start_daemon(
            flags, 0, NULL, NULL, on_access, srv, MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, srv,
            MHD_OPTION_UNESCAPE_CALLBACK, unescape_uri, NULL,
            MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
            MHD_OPTION_CONNECTION_TIMEOUT, conn_timeout, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
            conn_mem, MHD_OPTION_CONNECTION_LIMIT, conn_limit,
            MHD_OPTION_PER_IP_CONNECTION_LIMIT, per_ip, MHD_OPTION_LISTEN_BACKLOG_SIZE,
            (unsigned)511, MHD_OPTION_NOTIFY_COMPLETED, on_completed, srv,
            MHD_OPTION_NOTIFY_CONNECTION, on_connection, srv, MHD_OPTION_END);
    }
    if (!srv->http.mhd) {
        srv_log("error", "cannot listen on %s (address in use, or not allowed?)",
                srv->cfg.listen);
        return -1;
    }
    srv->http.tls = tls_cert_pem != NULL;
    const union MHD_DaemonInfo *pi = MHD_get_daemon_info(srv->http.mhd, MHD_DAEMON_INFO_BIND_PORT);
    srv->http.port = pi ? pi->port : 0;
    const union MHD_DaemonInfo *ei = MHD_get_daemon_info(srv->http.mhd, MHD_DAEMON_INFO_EPOLL_FD);
    if (!ei || uv_poll_init(srv->loop, &srv->http.mhd_poll, ei->epoll_fd) != 0) {
        srv_log("error", "cannot watch libmicrohttpd's epoll fd");
        MHD_stop_daemon(srv->http.mhd);
        srv->http.mhd = NULL;
        return -1;
    }
    srv->http.mhd_poll.data = srv;
    uv_timer_init(srv->loop, &srv->http.mhd_timer);
    srv->http.mhd_timer.data = srv;
    uv_poll_start(&srv->http.mhd_poll, UV_READABLE, on_mhd_io);
    http_pump(srv);
    return 0;
}

void http_quiesce(server *srv)
{
    if (!srv->http.mhd) return;
    srv->http.quiesced = 1;
    MHD_socket fd = MHD_quiesce_daemon(srv->http.mhd);
    if (fd != MHD_INVALID_SOCKET) close(fd);
    http_pump(srv);
}

void http_stop(server *srv)
{
    if (!srv->http.mhd) return;
    /* uv stops polling the epoll fd here, before MHD closes it. */
    uv_close((uv_handle_t *)&srv->http.mhd_poll, NULL);
    uv_close((uv_handle_t *)&srv->http.mhd_timer, NULL);
    srv->http.stopped = 1;
    MHD_stop_daemon(srv->http.mhd);
    srv->http.mhd = NULL;
}
