/* Flags and environment variables of altgradd. One table drives parsing, the environment and
 * --help, so a flag cannot exist without its environment twin and its documentation. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "config.h"
#include "server.h"

typedef enum { OPT_STR, OPT_INT, OPT_UINT, OPT_SIZE, OPT_SECONDS, OPT_LOGFMT, OPT_BOOL } opt_kind;

typedef struct {
    const char *flag; /* long option name */
    const char *env;
    opt_kind kind;
    size_t offset;    /* into srv_config */
    size_t cap;       /* OPT_STR: buffer size */
    double min, max;  /* numeric bounds */
    const char *help;
} opt_def;

#define OFF(f) offsetof(srv_config, f)
#define CAP(f) sizeof(((srv_config *)0)->f)

static const opt_def opts[] = {
    {"listen", "ALTGRAD_LISTEN", OPT_STR, OFF(listen), CAP(listen), 0, 0,
     "HOST:PORT to listen on ([v6addr]:PORT for IPv6; port 0 picks a free one)"},
    {"workers", "ALTGRAD_WORKERS", OPT_INT, OFF(workers), 0, 1, 1024,
     "compute jobs running at once (default: usable CPUs)"},
    {"cores", "ALTGRAD_CORES", OPT_INT, OFF(cores), 0, 1, 4096,
     "threads the core may use across all running jobs (default: usable CPUs)"},
    {"queue", "ALTGRAD_QUEUE", OPT_INT, OFF(queue), 0, 0, 1000000,
     "jobs that may wait for a worker; more get 429 (default 64)"},
    {"max-body", "ALTGRAD_MAX_BODY", OPT_SIZE, OFF(max_body), 0, 1, 0,
     "largest request body, bytes, K/M/G suffixes (default 256M); larger gets 413"},
    {"timeout", "ALTGRAD_TIMEOUT", OPT_SECONDS, OFF(timeout_s), 0, 0, 1e7,
     "seconds from acceptance until a job is cancelled and fails with 504 (0 = never; "
     "default 300)"},
    {"job-ttl", "ALTGRAD_JOB_TTL", OPT_SECONDS, OFF(job_ttl_s), 0, 0, 1e7,
     "seconds a finished async job and its result are kept (default 600)"},
    {"max-jobs", "ALTGRAD_MAX_JOBS", OPT_INT, OFF(max_jobs), 0, 1, 10000000,
     "async jobs held at once, any state; more get 429 (default 1024)"},
    {"memory-limit", "ALTGRAD_MEMORY_LIMIT", OPT_SIZE, OFF(memory_limit), 0, 1, 0,
     "bytes for request bodies, job workspaces and stored results together "
     "(default: half of physical memory)"},
    {"max-connections", "ALTGRAD_MAX_CONNECTIONS", OPT_INT, OFF(max_connections), 0, 1, 1000,
     "open client connections (default 512)"},
    {"max-connections-per-ip", "ALTGRAD_MAX_CONNECTIONS_PER_IP", OPT_INT,
     OFF(max_connections_per_ip), 0, 0, 1000, "open connections per client address (0 = no "
     "limit; default 0)"},
    {"connection-timeout", "ALTGRAD_CONNECTION_TIMEOUT", OPT_UINT, OFF(connection_timeout_s), 0,
     1, 86400, "seconds an idle or stalled connection is kept (default 30)"},
    {"body-min-rate", "ALTGRAD_BODY_MIN_RATE", OPT_SIZE, OFF(body_min_rate), 0, 0, 0,
     "bytes/s a request body must average: it is due within --connection-timeout plus its "
     "size at this rate, else the connection is closed (0 = no deadline; default 1K)"},
    {"drain-timeout", "ALTGRAD_DRAIN_TIMEOUT", OPT_SECONDS, OFF(drain_timeout_s), 0, 0, 86400,
     "on SIGTERM/SIGINT, seconds in-flight jobs may finish before they are cancelled "
     "(default 30)"},
    {"tokens-file", "ALTGRAD_TOKENS_FILE", OPT_STR, OFF(tokens_file), CAP(tokens_file), 0, 0,
     "file of bearer tokens, one per line; when set every /v1 endpoint needs one"},
    {"tls-cert", "ALTGRAD_TLS_CERT", OPT_STR, OFF(tls_cert), CAP(tls_cert), 0, 0,
     "PEM certificate (chain) file: serve HTTPS"},
    {"tls-key", "ALTGRAD_TLS_KEY", OPT_STR, OFF(tls_key), CAP(tls_key), 0, 0,
     "PEM private key file for --tls-cert"},
    {"port-file", "ALTGRAD_PORT_FILE", OPT_STR, OFF(port_file), CAP(port_file), 0, 0,
     "write the bound port to this file once listening"},
    {"node-id", "ALTGRAD_NODE_ID", OPT_STR, OFF(node_id), CAP(node_id), 0, 0,
     "name of this replica: job ids become NAME-<32 hex> (letters, digits, '_', '-')"},
    {"log-format", "ALTGRAD_LOG_FORMAT", OPT_LOGFMT, OFF(log_format), 0, 0, 0,
     "text or json, for the access and error logs on stderr (default text)"},
    {"calibrate", "ALTGRAD_CALIBRATE", OPT_BOOL, OFF(calibrate), 0, 0, 1,
     "1: time the auto cost model at startup (~0.2 s); 0: use built-in constants "
     "(default 1)"},
};
enum { N_OPTS = sizeof opts / sizeof opts[0] };

int srv_cpu_count(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n >= 1) return n;
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n >= 1 ? (int)n : 1;
}

void srv_config_defaults(srv_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    snprintf(cfg->listen, sizeof cfg->listen, "127.0.0.1:8080");
    cfg->workers = srv_cpu_count();
    cfg->cores = cfg->workers;
    cfg->queue = 64;
    cfg->max_body = (size_t)256 << 20;
    cfg->timeout_s = 300;
    cfg->job_ttl_s = 600;
    cfg->max_jobs = 1024;
    long pages = sysconf(_SC_PHYS_PAGES), psize = sysconf(_SC_PAGESIZE);
    cfg->memory_limit = pages > 0 && psize > 0 ? (size_t)pages * (size_t)psize / 2
                                               : (size_t)4 << 30;
    cfg->max_connections = 512;
    cfg->max_connections_per_ip = 0;
    cfg->connection_timeout_s = 30;
    cfg->body_min_rate = 1024;
    cfg->drain_timeout_s = 30;
    cfg->log_format = LOG_FORMAT_TEXT;
    cfg->calibrate = 1;
}

/* "256M", "1g", "4096" -> bytes (binary multiples). */
static int parse_size(const char *s, size_t *out)
{
    errno = 0;
    char *end;
    if (*s == '-' || *s == '\0') return -1;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s) return -1;
    unsigned shift = 0;
    if (*end) {
        switch (*end) {
        case 'k': case 'K': shift = 10; break;
        case 'm': case 'M': shift = 20; break;
        case 'g': case 'G': shift = 30; break;
        case 't': case 'T': shift = 40; break;
        default: return -1;
        }
        end++;
        if (*end == 'i' || *end == 'I') end++;
        if (*end == 'b' || *end == 'B') end++;
        if (*end) return -1;
    }
    if (shift && v > (ULLONG_MAX >> shift)) return -1;
    v <<= shift;
    if (v > SIZE_MAX) return -1;
    *out = (size_t)v;
    return 0;
}

static int parse_number(const char *s, double *out)
{
    errno = 0;
    char *end;
    double v = strtod(s, &end);
    if (errno || end == s) return -1;
    if (*end == 's' && end[1] == '\0') end++; /* "30s" */
    if (*end || !isfinite(v)) return -1;
    *out = v;
    return 0;
}

static int apply(srv_config *cfg, const opt_def *o, const char *val, const char *origin)
{
    char *base = (char *)cfg + o->offset;
    double num;
    switch (o->kind) {
    case OPT_STR:
        if (strlen(val) >= o->cap) {
            fprintf(stderr, "altgradd: %s: value too long\n", origin);
            return -1;
        }
        memcpy(base, val, strlen(val) + 1);
        return 0;
    case OPT_LOGFMT:
        if (strcasecmp(val, "text") == 0) cfg->log_format = LOG_FORMAT_TEXT;
        else if (strcasecmp(val, "json") == 0) cfg->log_format = LOG_FORMAT_JSON;
        else {
            fprintf(stderr, "altgradd: %s: expected text or json, got '%s'\n", origin, val);
            return -1;
        }
        return 0;
    case OPT_SIZE: {
        size_t v;
        if (parse_size(val, &v) != 0 || v < (size_t)o->min) {
            fprintf(stderr, "altgradd: %s: expected a byte count like 4096, 64K, 256M, 2G; "
                    "got '%s'\n", origin, val);
            return -1;
        }
        *(size_t *)base = v;
        return 0;
    }
    case OPT_INT: case OPT_UINT: case OPT_SECONDS: case OPT_BOOL:
        if (o->kind == OPT_BOOL && (strcasecmp(val, "true") == 0 || strcasecmp(val, "yes") == 0))
            val = "1";
        if (o->kind == OPT_BOOL && (strcasecmp(val, "false") == 0 || strcasecmp(val, "no") == 0))
            val = "0";
        if (parse_number(val, &num) != 0 || num < o->min || num > o->max ||
            (o->kind != OPT_SECONDS && num != floor(num))) {
            fprintf(stderr, "altgradd: %s: expected %s in [%g, %g], got '%s'\n", origin,
                    o->kind == OPT_SECONDS ? "seconds" : "an integer", o->min, o->max, val);
            return -1;
        }
        if (o->kind == OPT_SECONDS) *(double *)base = num;
        else if (o->kind == OPT_UINT) *(unsigned *)base = (unsigned)num;
        else *(int *)base = (int)num;
        return 0;
    }
    return -1;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: altgradd [--flag VALUE]...\n\n"
            "The altgrad gradient service (HTTP/JSON, API v1). With no arguments it listens on\n"
            "127.0.0.1:8080 with the defaults below. Every flag also reads from the environment\n"
            "variable shown; a flag given on the command line wins.\n\n");
    for (int i = 0; i < N_OPTS; i++)
        fprintf(f, "  --%-24s %s\n      %s\n", opts[i].flag, opts[i].env, opts[i].help);
    fprintf(f, "  --%-24s print this help\n  --%-24s print the version\n\n", "help", "version");
    fprintf(f,
            "Threads: OpenBLAS runs single-threaded (set before it starts); each job's core\n"
            "takes every free core (at least one) when it starts and gives them back when it\n"
            "ends, so a lone job uses the whole machine and concurrent jobs share it.\n");
}

static int validate(srv_config *cfg)
{
    if (!cfg->listen[0]) {
        fprintf(stderr, "altgradd: --listen: empty\n");
        return -1;
    }
    if ((cfg->tls_cert[0] != 0) != (cfg->tls_key[0] != 0)) {
        fprintf(stderr, "altgradd: --tls-cert and --tls-key go together\n");
        return -1;
    }
    /* The job-id alphabet of the client (client_job_id_valid) and of the job routes, so a
     * Kubernetes pod name (altgrad-0) works as it is; '.' is out (no "..", no dotted names in
     * URLs). */
    for (const char *p = cfg->node_id; *p; p++) {
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '_' || *p == '-')) {
            fprintf(stderr, "altgradd: --node-id: only letters, digits, '_' and '-'\n");
            return -1;
        }
    }
    return 0;
}

int srv_config_load(srv_config *cfg, int argc, char **argv)
{
    for (int i = 0; i < N_OPTS; i++) {
        const char *v = getenv(opts[i].env);
        if (v && *v && apply(cfg, &opts[i], v, opts[i].env) != 0) return -1;
    }

    struct option lopts[N_OPTS + 3];
    for (int i = 0; i < N_OPTS; i++)
        lopts[i] = (struct option){opts[i].flag, required_argument, NULL, 1000 + i};
    lopts[N_OPTS] = (struct option){"help", no_argument, NULL, 'h'};
    lopts[N_OPTS + 1] = (struct option){"version", no_argument, NULL, 'V'};
    lopts[N_OPTS + 2] = (struct option){0, 0, 0, 0};

    optind = 1;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, "hV", lopts, NULL)) != -1) {
        if (c == 'h') {
            usage(stdout);
            return 1;
        }
        if (c == 'V') {
            printf("altgradd %s (API v1)\n", ALTGRAD_VERSION);
            return 1;
        }
        if (c >= 1000 && c < 1000 + N_OPTS) {
            char origin[64];
            snprintf(origin, sizeof origin, "--%s", opts[c - 1000].flag);
            if (apply(cfg, &opts[c - 1000], optarg, origin) != 0) return -1;
            continue;
        }
        fprintf(stderr, "altgradd: unknown or incomplete option '%s' (see --help)\n",
                argv[optind - 1]);
        return -1;
    }
    if (optind < argc) {
        fprintf(stderr, "altgradd: unexpected argument '%s' (see --help)\n", argv[optind]);
        return -1;
    }
    return validate(cfg);
}
