/* Certificate and key files for HTTPS (libmicrohttpd takes them as PEM text). */
#ifndef ALTGRAD_SERVER_TLS_H
#define ALTGRAD_SERVER_TLS_H

#include <stddef.h>

/* Reads a PEM file (at most 1 MiB) into a malloc'd NUL-terminated string; NULL with a reason
 * in msg when unreadable, too large or not PEM. */
char *srv_tls_read_pem(const char *path, char *msg, size_t msg_cap);

/* Wipes and frees a PEM string (the key is secret); NULL-safe. */
void srv_tls_free_pem(char *pem);

#endif
