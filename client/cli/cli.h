/* Shared pieces of the `altgrad` command-line tool: exit codes, options, and what main.c,
 * random.c, report.c and files.c offer each other (main.c uses the other three, random.c
 * report.c and files.c; none of them calls back into main.c or random.c). */
#ifndef ALTGRAD_CLI_H
#define ALTGRAD_CLI_H

#include <stdio.h>

#include "../altgrad_client.h"

/* Exit codes (documented in --help and docs/client.md). */
enum {
    CLI_EXIT_OK = 0,
    CLI_EXIT_INTERNAL = 1,    /* out of memory, unparsable response, anything else */
    CLI_EXIT_USAGE = 2,       /* bad flags or arguments, invalid local request */
    CLI_EXIT_CONNECT = 3,     /* server unreachable, timeout, TLS failure */
    CLI_EXIT_HTTP_4XX = 4,    /* the server rejected the request (400, 401, 404, 409, 413, 429) */
    CLI_EXIT_HTTP_5XX = 5,    /* the server failed or stayed unavailable (500, 503, 504) */
    CLI_EXIT_JOB = 6,         /* the job ended failed or cancelled */
    CLI_EXIT_FILE = 7,        /* a local file could not be read or written */
    CLI_EXIT_INTERRUPTED = 130
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

/* ---- report.c: what the user is told ---------------------------------------------------- */

/* Maps a library status to an exit code. */
int cli_exit_code(altgrad_status st);
/* Prints "altgrad: <what>: <error>" to stderr and returns the exit code for it. */
int cli_report(const char *what, const altgrad_error *err);

/* Prints a readable summary of a result for cfg (loss, method per layer and head, timings,
 * verification) to out. client_ms < 0 leaves the round-trip time out. */
void cli_print_summary(FILE *out, const ag_model_config *cfg, const altgrad_result *res,
                       double client_ms);
/* Monotonic milliseconds (the round trip a summary reports). */
double cli_now_ms(void);

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

/* ---- files.c ---------------------------------------------------------------------------- */

/* Reads a whole file ("-" = stdin) into a malloc'd NUL-terminated buffer; NULL on failure
 * (message printed). */
char *cli_read_file(const char *path, size_t *len);
/* Writes len bytes to path ("-" = stdout); 0 on success, -1 with a message printed. */
int cli_write_file(const char *path, const char *data, size_t len);

/* ---- random.c ---------------------------------------------------------------------------- */

/* `altgrad random`: returns the exit code. client may be NULL with --dry-run. */
int cli_cmd_random(cli_opts *o, altgrad_client *client);

#endif
