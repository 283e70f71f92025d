#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tls.h"

#define PEM_MAX (1 << 20)

char *srv_tls_read_pem(const char *path, char *msg, size_t msg_cap)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(msg, msg_cap, "cannot open %s: %s", path, strerror(errno));
        return NULL;
    }
    char *buf = malloc(PEM_MAX + 1);
    if (!buf) {
        fclose(f);
        snprintf(msg, msg_cap, "out of memory");
        return NULL;
    }
    size_t n = fread(buf, 1, PEM_MAX + 1, f);
    int err = ferror(f);
    fclose(f);
    if (err || n > PEM_MAX) {
        snprintf(msg, msg_cap, "%s: %s", path, err ? "read error" : "larger than 1 MiB");
        free(buf);
        return NULL;
    }
    buf[n] = 0;
    if (!strstr(buf, "-----BEGIN ")) {
        snprintf(msg, msg_cap, "%s: not a PEM file", path);
        srv_tls_free_pem(buf);
        return NULL;
    }
    return buf;
}

void srv_tls_free_pem(char *pem)
{
    if (!pem) return;
    volatile char *v = pem;
    while (*v) *v++ = 0;
    free(pem);
}
