/* Logs on stderr, one line per event, as text (key=value) or JSON objects. Each line is
 * written with a single write(2) so lines from different threads never interleave. Never
 * pass a token or a request body to these functions. */
#ifndef ALTGRAD_SERVER_LOG_H
#define ALTGRAD_SERVER_LOG_H

#include <stddef.h>

#include "config.h"

/* Chooses the format for every later line (call once, before threads start). */
void srv_log_set_format(srv_log_format format);
/* Where log lines go (default 2, stderr); set once at startup (the in-process fuzz harness
 * points it at /dev/null). */
void srv_log_set_fd(int fd);

/* level "info" | "warn" | "error"; printf-style message. Thread-safe. */
void srv_log(const char *level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

typedef struct {
    const char *method;
    const char *path;    /* as requested, without the query; sanitised when written */
    int status;          /* 0 when no response was sent */
    size_t bytes_in, bytes_out;
    double ms;
    const char *request_id;
    const char *remote;  /* client address, or "" */
    const char *note;    /* "" or why the connection ended abnormally */
} srv_access_entry;

/* One access-log line. Thread-safe. */
void srv_log_access(const srv_access_entry *e);

#endif
