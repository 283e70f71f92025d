/* altgradd configuration: embedded defaults, then ALTGRAD_* environment variables, then
 * command-line flags (each flag has an environment twin; flags win). */
#ifndef ALTGRAD_SERVER_CONFIG_H
#define ALTGRAD_SERVER_CONFIG_H

#include <stddef.h>

typedef enum { LOG_FORMAT_TEXT = 0, LOG_FORMAT_JSON } srv_log_format;

typedef struct {
    char listen[256];          /* HOST:PORT, [v6]:PORT; port 0 = ephemeral */
    int workers;               /* compute jobs running at once (libuv pool threads) */
    int cores;                 /* threads the core may use across all running jobs */
    int queue;                 /* jobs waiting for a worker before 429 */
    size_t max_body;           /* bytes of one request body */
    double timeout_s;          /* per-job deadline from acceptance; 0 = none */
    double job_ttl_s;          /* how long a finished async job is kept */
    int max_jobs;              /* async jobs held at once (any state) */
    size_t memory_limit;       /* bytes: in-flight workspaces + stored results + bodies */
    int max_connections;
    int max_connections_per_ip; /* 0 = unlimited */
    unsigned connection_timeout_s; /* idle connection timeout */
    size_t body_min_rate;      /* bytes/s a body must average past the first connection_timeout_s;
                                  0 = no deadline */
    double drain_timeout_s;    /* SIGTERM: time given to in-flight work before it is cancelled */
    char tokens_file[1024];    /* "" = no authentication */
    char tls_cert[1024];       /* PEM files; both or neither */
    char tls_key[1024];
    char port_file[1024];      /* "" = none; receives the bound port after listening */
    char node_id[32];          /* "" = none; job ids become NODE-<hex> */
    srv_log_format log_format;
    int calibrate;             /* time the cost model at startup */
} srv_config;

/* Fills cfg with the embedded defaults (workers and cores = usable CPUs, memory limit = half
 * of physical memory). */
void srv_config_defaults(srv_config *cfg);

/* Applies the environment, then argv. Returns 0 to run, 1 when the process should exit 0
 * (--help, --version printed to stdout), -1 on a bad value (message printed to stderr). */
int srv_config_load(srv_config *cfg, int argc, char **argv);

/* Usable CPUs of this process (affinity mask), >= 1. */
int srv_cpu_count(void);

#endif
