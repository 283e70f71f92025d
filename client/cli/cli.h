/* Shared pieces of the `altgrad` command-line tool. */
#ifndef ALTGRAD_CLI_H
#define ALTGRAD_CLI_H

#include <stdatomic.h>
#include <stdio.h>

#include "../altgrad_client.h"

/* Exit codes (documented in --help and docs/client.md). */
enum {
    EXIT_OK_ = 0,
    EXIT_INTERNAL = 1,   /* out of memory, unparsable response, anything else */
    EXIT_USAGE = 2,      /* bad flags or arguments, invalid local request */
    EXIT_CONNECT = 3,    /* server unreachable, timeout, TLS failure */
    EXIT_HTTP_4XX = 4,   /* the server rejected the request (400, 401, 404, 409, 413, 429...) */
    EXIT_HTTP_5XX = 5,   /* the server failed or stayed unavailable (500, 503, 504) */
    EXIT_JOB = 6,        /* the job ended failed or cancelled */
    EXIT_FILE = 7,       /* a local file could not be read or written */
    EXIT_INTERRUPTED = 130
};

/* Options of every command; which ones a command accepts is checked in main.c. */
typedef struct {
    altgrad_client_opts client;
    const char *output;        /* -o */
    int quiet;
    int ready;                 /* health --ready */
    double wait_timeout_s;     /* job wait / --async: 0 = none */
    /* random */
    long n, d_model, heads, layers, d_ff, batch;
    int causal, residual, verify, want_output, async, dry_run, shards;
    ag_norm norm;
    ag_activation activation;
    ag_method method;
    ag_loss_kind loss;
    unsigned long long seed;
    double scale;
    const char *save_request;
} cli_opts;

extern atomic_int cli_interrupted; /* set by SIGINT/SIGTERM; the client's abort flag */

/* Maps a library status to an exit code. */
int cli_exit_code(altgrad_status st);
/* Prints "altgrad: <what>: <error>" to stderr and returns the exit code for it. */
int cli_report(const char *what, const altgrad_error *err);

/* Reads a whole file ("-" = stdin) into a malloc'd NUL-terminated buffer; NULL on failure
 * (message printed). */
char *cli_read_file(const char *path, size_t *len);
/* Writes len bytes to path ("-" = stdout); 0 on success, -1 with a message printed. */
int cli_write_file(const char *path, const char *data, size_t len);

/* Prints a readable summary of a result for cfg (loss, method per layer and head, timings,
 * verification) to out. client_ms < 0 leaves the round-trip time out. */
void cli_print_summary(FILE *out, const ag_model_config *cfg, const altgrad_result *res,
                       double client_ms);

/* Progress callback for altgrad_job_wait: a bar on stderr when it is a terminal, plain lines
 * on changes otherwise. ctx is a cli_progress. */
typedef struct {
    int tty, quiet;
    int last_state;
    int last_decile;
    int drawn;
} cli_progress;
void cli_progress_init(cli_progress *p, int quiet);
int cli_progress_cb(void *ctx, const altgrad_job_info *info);
void cli_progress_end(cli_progress *p);

/* `altgrad random` (random.c). */
int cli_cmd_random(cli_opts *o, altgrad_client *client);

#endif
