#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "auth.h"

static void wipe(void *p, size_t n)
{
    volatile unsigned char *v = p;
    while (n--) *v++ = 0;
}

void srv_auth_free(srv_auth *auth)
{
    if (!auth) return;
    for (int i = 0; i < auth->count; i++) {
        wipe(auth->tokens[i], auth->lens[i]);
        free(auth->tokens[i]);
    }
    free(auth->tokens);
    free(auth->lens);
    memset(auth, 0, sizeof *auth);
}

int srv_auth_load(srv_auth *auth, const char *path, char *msg, size_t msg_cap)
{
    memset(auth, 0, sizeof *auth);
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(msg, msg_cap, "cannot open tokens file %s: %s", path, strerror(errno));
        return -1;
    }
    char buf[AUTH_MAX_TOKEN_LEN + 4];
    int lineno = 0, rc = 0;
    auth->tokens = calloc(AUTH_MAX_TOKENS, sizeof *auth->tokens);
    auth->lens = calloc(AUTH_MAX_TOKENS, sizeof *auth->lens);
    if (!auth->tokens || !auth->lens) {
        snprintf(msg, msg_cap, "out of memory");
        rc = -1;
    }
    while (rc == 0 && fgets(buf, sizeof buf, f)) {
        lineno++;
        size_t n = strlen(buf);
        if (n == sizeof buf - 1 && buf[n - 1] != '\n') {
            snprintf(msg, msg_cap, "%s:%d: token longer than %d bytes", path, lineno,
                     AUTH_MAX_TOKEN_LEN);
            rc = -1;
            break;
        }
        char *s = buf, *e = buf + n;
        while (s < e && isspace((unsigned char)*s)) s++;
        while (e > s && isspace((unsigned char)e[-1])) e--;
        if (s == e || *s == '#') continue;
        for (char *p = s; p < e; p++) {
            if (isspace((unsigned char)*p) || !isprint((unsigned char)*p)) {
                snprintf(msg, msg_cap, "%s:%d: a token must be printable, without spaces", path,
                         lineno);
                rc = -1;
                break;
            }
        }
        if (rc) break;
        if (auth->count == AUTH_MAX_TOKENS) {
            snprintf(msg, msg_cap, "%s: more than %d tokens", path, AUTH_MAX_TOKENS);
            rc = -1;
            break;
        }
        size_t len = (size_t)(e - s);
        char *t = malloc(len + 1);
        if (!t) {
            snprintf(msg, msg_cap, "out of memory");
            rc = -1;
            break;
        }
        memcpy(t, s, len);
        t[len] = 0;
        auth->tokens[auth->count] = t;
        auth->lens[auth->count] = len;
        auth->count++;
    }
    wipe(buf, sizeof buf);
    fclose(f);
    if (rc == 0 && auth->count == 0) {
        snprintf(msg, msg_cap, "tokens file %s holds no token", path);
        rc = -1;
    }
    if (rc) srv_auth_free(auth);
    return rc;
}

/* 0 when equal. Runs over AUTH_MAX_TOKEN_LEN bytes whatever the inputs, so the time says
 * nothing about the length of the common prefix or of either string. */
static unsigned ct_compare(const char *a, size_t alen, const char *b, size_t blen)
{
    unsigned diff = (unsigned)(alen ^ blen) | (alen > AUTH_MAX_TOKEN_LEN);
    for (size_t i = 0; i < AUTH_MAX_TOKEN_LEN; i++) {
        unsigned char x = i < alen ? (unsigned char)a[i] : 0;
        unsigned char y = i < blen ? (unsigned char)b[i] : 0;
        diff |= (unsigned)(x ^ y);
    }
    return diff;
}

int srv_auth_check(const srv_auth *auth, const char *header)
{
    if (!header) return -1;
    while (*header == ' ' || *header == '\t') header++;
    if (strncasecmp(header, "Bearer", 6) != 0 || (header[6] != ' ' && header[6] != '\t'))
        return -1;
    const char *tok = header + 7;
    while (*tok == ' ' || *tok == '\t') tok++;
    size_t len = strlen(tok);
    while (len && (tok[len - 1] == ' ' || tok[len - 1] == '\t')) len--;
    if (len == 0 || len > AUTH_MAX_TOKEN_LEN) return -1;
    int found = -1;
    for (int i = 0; i < auth->count; i++) {
        unsigned d = ct_compare(tok, len, auth->tokens[i], auth->lens[i]);
        /* Branch-free select of the first match. */
        int hit = (d == 0) & (found < 0);
        found = hit ? i : found;
    }
    return found;
}
