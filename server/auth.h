/* Bearer tokens: loaded once from a file, compared in constant time, never logged. */
#ifndef ALTGRAD_SERVER_AUTH_H
#define ALTGRAD_SERVER_AUTH_H

#include <stddef.h>

#define AUTH_MAX_TOKENS 4096
#define AUTH_MAX_TOKEN_LEN 512

typedef struct {
    int count;     /* 0 = authentication disabled */
    char **tokens; /* [count], owned */
    size_t *lens;  /* [count] */
} srv_auth;

/* Reads one token per line (blank lines and lines starting with '#' skipped; surrounding
 * whitespace trimmed). Returns 0, or -1 with a reason in msg (the file's content is never
 * quoted). An empty list is an error: a tokens file that lets no one in is a mistake. */
int srv_auth_load(srv_auth *auth, const char *path, char *msg, size_t msg_cap);

/* Frees the tokens (wiped first); NULL-safe. */
void srv_auth_free(srv_auth *auth);

/* Checks an Authorization header value ("Bearer <token>"; header may be NULL). Returns the
 * matching token's index (>= 0), or -1. Takes the same time whichever token matches, and
 * compares every byte of every token regardless of where they differ. */
int srv_auth_check(const srv_auth *auth, const char *header);

#endif
