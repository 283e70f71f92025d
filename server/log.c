/* Text lines look like
 *   2024-05-01T12:00:00.123Z access method=POST path=/v1/gradients status=200 ...
 * JSON lines carry the same keys. Values that come from clients are escaped in both. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

/* Process-wide by nature (stderr is): set once at startup, read-only afterwards. */
static srv_log_format log_format = LOG_FORMAT_TEXT;
static int log_fd = STDERR_FILENO;

void srv_log_set_format(srv_log_format format)
{
    log_format = format;
}

void srv_log_set_fd(int fd)
{
    log_fd = fd;
}

typedef struct {
    char buf[4096];
    size_t len;
} line;

static void put(line *l, const char *s, size_t n)
{
    if (n > sizeof l->buf - 2 - l->len) n = sizeof l->buf - 2 - l->len; /* room for '\n' */
    memcpy(l->buf + l->len, s, n);
    l->len += n;
}

static void puts_(line *l, const char *s)
{
    put(l, s, strlen(s));
}

static void putf(line *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void putf(line *l, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n > 0) put(l, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* Client-controlled text: JSON-escaped for json, quoted-printable-ish for text (no spaces,
 * quotes or control bytes, so a line can always be split on spaces). Capped at 256 bytes. */
static void put_value(line *l, const char *s)
{
    if (!s) s = "";
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p && n < 256; p++, n++) {
        unsigned char c = *p;
        if (log_format == LOG_FORMAT_JSON) {
            if (c == '"' || c == '\\') {
                char e[2] = {'\\', (char)c};
                put(l, e, 2);
            } else if (c < 0x20 || c >= 0x7f) {
                putf(l, "\\u%04x", c);
            } else {
                put(l, (const char *)p, 1);
            }
        } else {
            if (c <= 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '%') putf(l, "%%%02X", c);
            else put(l, (const char *)p, 1);
        }
    }
}

static void begin(line *l, const char *kind)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    char ts[40];
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
    l->len = 0;
    if (log_format == LOG_FORMAT_JSON)
        putf(l, "{\"ts\":\"%s.%03dZ\",\"kind\":\"%s\"", ts, (int)(tv.tv_usec / 1000), kind);
    else
        putf(l, "%s.%03dZ %s", ts, (int)(tv.tv_usec / 1000), kind);
}

static void key(line *l, const char *k)
{
    if (log_format == LOG_FORMAT_JSON) putf(l, ",\"%s\":", k);
    else putf(l, " %s=", k);
}

static void kv_str(line *l, const char *k, const char *v)
{
    key(l, k);
    if (log_format == LOG_FORMAT_JSON) puts_(l, "\"");
    put_value(l, v);
    if (log_format == LOG_FORMAT_JSON) puts_(l, "\"");
}

static void finish(line *l)
{
    if (log_format == LOG_FORMAT_JSON) puts_(l, "}");
    l->buf[l->len++] = '\n';
    /* One write per line: atomic with respect to other threads' lines. */
    ssize_t w = write(log_fd, l->buf, l->len);
    (void)w;
}

void srv_log(const char *level, const char *fmt, ...)
{
    line l;
    begin(&l, "log");
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (log_format == LOG_FORMAT_JSON) {
        kv_str(&l, "level", level);
        key(&l, "msg");
        puts_(&l, "\"");
        /* Messages are ours, but may quote client input: escape fully. */
        for (const unsigned char *p = (const unsigned char *)msg; *p; p++) {
            if (*p == '"' || *p == '\\') {
                char e[2] = {'\\', (char)*p};
                put(&l, e, 2);
            } else if (*p < 0x20) {
                putf(&l, "\\u%04x", *p);
            } else {
                put(&l, (const char *)p, 1);
            }
        }
        puts_(&l, "\"");
    } else {
        putf(&l, " level=%s ", level);
        for (char *p = msg; *p; p++)
            if ((unsigned char)*p < 0x20) *p = ' ';
        puts_(&l, msg);
    }
    finish(&l);
}

void srv_log_access(const srv_access_entry *e)
{
    line l;
    begin(&l, "access");
    kv_str(&l, "method", e->method);
    kv_str(&l, "path", e->path);
    key(&l, "status");
    putf(&l, "%d", e->status);
    key(&l, "bytes_in");
    putf(&l, "%zu", e->bytes_in);
    key(&l, "bytes_out");
    putf(&l, "%zu", e->bytes_out);
    key(&l, "ms");
    putf(&l, "%.3f", e->ms);
    kv_str(&l, "request_id", e->request_id);
    if (e->remote && *e->remote) kv_str(&l, "remote", e->remote);
    if (e->note && *e->note) kv_str(&l, "note", e->note);
    finish(&l);
}
