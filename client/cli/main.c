/* altgrad: the command-line client of the altgrad service. Its usage text, the grad, job,
 * health and info commands, the option parser and main(); `random` is random.c's, what is
 * printed report.c's, the files files.c's. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "../../proto/proto.h"
#include "cli.h"

/* Set by SIGINT/SIGTERM; the client's abort flag. */
static atomic_int cli_interrupted;

static const char usage_text[] =
    "usage: altgrad [options] COMMAND [args]\n"
    "\n"
    "Client of the altgrad gradient service (API v1).\n"
    "\n"
    "commands:\n"
    "  grad FILE [-o OUT]      POST a request body (FILE, - = stdin) to /v1/gradients. Without\n"
    "                          -o the response body goes to stdout; with -o it goes to OUT and\n"
    "                          a readable summary to stdout.\n"
    "  random [model options]  make a random model and input, send it, print a summary (loss,\n"
    "                          method/degree/rank per layer and head, timings, --verify errors)\n"
    "  job submit FILE         POST FILE to /v1/jobs; prints the job id\n"
    "  job status ID           prints: ID STATE PROGRESS [ERROR]\n"
    "  job wait ID [-o OUT]    poll until the job ends (progress bar on stderr when it is a\n"
    "                          terminal, plain lines otherwise), then write its result body\n"
    "  job result ID [-o OUT]  write a finished job's result body\n"
    "  job cancel ID           DELETE the job; prints its state\n"
    "  health [--ready]        GET /health/live (or /health/ready); prints ok\n"
    "  info                    GET /v1/info, pretty-printed\n"
    "\n"
    "connection options (every command):\n"
    "  --server URL            default $ALTGRAD_SERVER_URL or http://127.0.0.1:8080\n"
    "  --token TOKEN           bearer token (default $ALTGRAD_TOKEN)\n"
    "  --cacert FILE           CA bundle to verify an https server with\n"
    "  --insecure              do not verify the server's certificate\n"
    "  --connect-timeout S     seconds to connect (default 10)\n"
    "  --timeout S             limit per HTTP exchange, and for job wait / random --async\n"
    "                          the whole wait (default none)\n"
    "  --retries N             retries on connection errors, 429 and 503 (default 4)\n"
    "  --encoding b64|json     tensor encoding both ways (default b64)\n"
    "  -q, --quiet             no progress output\n"
    "  -o, --output FILE       where a response body goes (- = stdout)\n"
    "\n"
    "random options:\n"
    "  --n N (256)  --d-model D (64)  --heads H (8)  --layers L (2)  --d-ff F (4*D, 0 = none)\n"
    "  --batch B (1; >1 sends a 3-d input)  --causal  --norm layernorm|none  --no-residual\n"
    "  --activation gelu|relu  --loss sum|mse|grad_output (sum)\n"
    "  --method auto|exact|approx (auto)  --epsilon E (1e-3)  --degree G  --route features|paper\n"
    "  --verify                also run exact on the server and print the measured errors\n"
    "  --seed S (1)  --scale X (0.5: weights ~ N(0, (X/sqrt(fan_in))^2), input ~ N(0, 1))\n"
    "  --shards K              split the batch into K concurrent requests, merge the results\n"
    "  --async                 go through /v1/jobs with a progress display\n"
    "  --return-output         also ask for the model output\n"
    "  --save-request FILE     write the request body too;  --dry-run: only write it\n"
    "\n"
    "exit codes:\n"
    "  0 ok                    1 internal error or malformed response\n"
    "  2 usage error           3 cannot connect / timeout / TLS failure\n"
    "  4 HTTP 4xx (request rejected, incl. 429 after retries)\n"
    "  5 HTTP 5xx (server error, 503 after retries)\n"
    "  6 job failed or was cancelled\n"
    "  7 local file error      130 interrupted\n";

/* ---- commands -------------------------------------------------------------------------- */

static int cmd_grad(cli_opts *o, altgrad_client *c, const char *file)
{
    size_t len = 0;
    char *body = cli_read_file(file, &len);
    if (!body) return CLI_EXIT_FILE;
    /* Decoded locally only to know the model for the summary; the server judges the body. */
    ag_request req;
    ag_proto_error perr;
    ag_proto_limits lim = ag_proto_limits_default();
    int have_cfg = o->output && ag_request_decode(body, len, &lim, &req, &perr) == 0;
    ag_model_config cfg;
    if (have_cfg) {
        cfg = req.cfg;
        ag_request_free(&req);
    }
    char *resp = NULL;
    size_t resp_len = 0;
    altgrad_error err;
    double t0 = cli_now_ms();
    altgrad_status st = altgrad_post_raw(c, "/v1/gradients", body, len, &resp, &resp_len, &err);
    double ms = cli_now_ms() - t0;
    free(body);
    if (st != ALTGRAD_OK) return cli_report("grad", &err);
    int rc = CLI_EXIT_OK;
    if (cli_write_file(o->output ? o->output : "-", resp, resp_len) != 0) rc = CLI_EXIT_FILE;
    if (rc == CLI_EXIT_OK && o->output && strcmp(o->output, "-") != 0) {
        altgrad_result res;
        if (have_cfg && altgrad_result_decode(resp, resp_len, &cfg, &res, &err) == ALTGRAD_OK) {
            cli_print_summary(stdout, &cfg, &res, ms);
            altgrad_result_free(&res);
        } else {
            printf("response written to %s (%zu bytes, %.1f ms)\n", o->output, resp_len, ms);
        }
    }
    free(resp);
    return rc;
}

static int cmd_job(cli_opts *o, altgrad_client *c, int argc, char **argv)
{
    if (argc < 1) {
        fprintf(stderr, "altgrad: job: expected submit|status|wait|result|cancel\n");
        return CLI_EXIT_USAGE;
    }
    const char *sub = argv[0];
    if (argc != 2) {
        fprintf(stderr, "altgrad: job %s: expected exactly one %s\n", sub,
                strcmp(sub, "submit") == 0 ? "FILE" : "ID");
        return CLI_EXIT_USAGE;
    }
    const char *arg = argv[1];
    altgrad_error err;
    altgrad_job_info info;
    if (strcmp(sub, "submit") == 0) {
        size_t len = 0;
        char *body = cli_read_file(arg, &len);
        if (!body) return CLI_EXIT_FILE;
        char *resp = NULL;
        altgrad_status st = altgrad_post_raw(c, "/v1/jobs", body, len, &resp, NULL, &err);
        free(body);
        if (st != ALTGRAD_OK) return cli_report("job submit", &err);
        json_error_t jerr;
        json_t *root = json_loads(resp, 0, &jerr);
        const char *id = json_string_value(json_object_get(root, "id"));
        int rc = CLI_EXIT_OK;
        if (id) printf("%s\n", id);
        else {
            fprintf(stderr, "altgrad: job submit: no id in the answer\n");
            rc = CLI_EXIT_INTERNAL;
        }
        json_decref(root);
        free(resp);
        return rc;
    }
    if (strcmp(sub, "status") == 0 || strcmp(sub, "cancel") == 0) {
        int cancel = sub[0] == 'c';
        altgrad_status st = cancel ? altgrad_job_cancel(c, arg, &info, &err)
                                   : altgrad_job_status(c, arg, &info, &err);
        if (st != ALTGRAD_OK) return cli_report(cancel ? "job cancel" : "job status", &err);
        printf("%s %s %.3f", info.id[0] ? info.id : arg, altgrad_job_state_name(info.state),
               info.progress);
        if (info.error_code[0] || info.error_message[0])
            printf(" %s%s%s", info.error_code, info.error_code[0] ? ": " : "",
                   info.error_message);
        printf("\n");
        return CLI_EXIT_OK;
    }
    if (strcmp(sub, "wait") == 0 || strcmp(sub, "result") == 0) {
        if (sub[0] == 'w') {
            cli_progress prog;
            cli_progress_init(&prog, o->quiet);
            altgrad_status st = altgrad_job_wait(c, arg, (long)(o->wait_timeout_s * 1000),
                                                 cli_progress_cb, &prog, &info, &err);
            cli_progress_end(&prog);
            if (st == ALTGRAD_E_ABORTED)
                fprintf(stderr, "altgrad: job %s keeps running; `altgrad job cancel %s` stops "
                                "it\n", arg, arg);
            if (st != ALTGRAD_OK) return cli_report("job wait", &err);
        }
        char path[ALTGRAD_JOB_ID_MAX + 32];
        if (!strchr(arg, '/') && strlen(arg) < ALTGRAD_JOB_ID_MAX)
            snprintf(path, sizeof path, "/v1/jobs/%s/result", arg);
        else {
            fprintf(stderr, "altgrad: bad job id\n");
            return CLI_EXIT_USAGE;
        }
        char *resp = NULL;
        size_t len = 0;
        if (altgrad_get_raw(c, path, &resp, &len, &err) != ALTGRAD_OK)
            return cli_report("job result", &err);
        int rc = cli_write_file(o->output ? o->output : "-", resp, len) ? CLI_EXIT_FILE
                                                                          : CLI_EXIT_OK;
        free(resp);
        return rc;
    }
    fprintf(stderr, "altgrad: job: unknown subcommand '%s'\n", sub);
    return CLI_EXIT_USAGE;
}

static int cmd_health(cli_opts *o, altgrad_client *c)
{
    altgrad_error err;
    if (altgrad_health(c, o->ready, &err) != ALTGRAD_OK)
        return cli_report(o->ready ? "ready" : "health", &err);
    printf("ok\n");
    return CLI_EXIT_OK;
}

static int cmd_info(altgrad_client *c)
{
    altgrad_error err;
    char *text = NULL;
    if (altgrad_info(c, &text, &err) != ALTGRAD_OK) return cli_report("info", &err);
    json_error_t jerr;
    json_t *root = json_loads(text, 0, &jerr);
    char *pretty = root ? json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
    printf("%s\n", pretty ? pretty : text);
    free(pretty);
    json_decref(root);
    free(text);
    return CLI_EXIT_OK;
}

/* ---- options --------------------------------------------------------------------------- */

enum {
    O_SERVER = 256, O_TOKEN, O_CACERT, O_INSECURE, O_CONNECT_TIMEOUT, O_TIMEOUT, O_RETRIES,
    O_ENCODING, O_READY,
    /* random */
    O_N, O_D_MODEL, O_HEADS, O_LAYERS, O_D_FF, O_BATCH, O_CAUSAL, O_NORM, O_NO_RESIDUAL,
    O_ACTIVATION, O_LOSS, O_METHOD, O_EPSILON, O_DEGREE, O_ROUTE, O_VERIFY, O_SEED, O_SCALE,
    O_SHARDS, O_ASYNC, O_RETURN_OUTPUT, O_SAVE_REQUEST, O_DRY_RUN, O_HELP, O_VERSION
};

static const struct option long_opts[] = {
    {"server", required_argument, 0, O_SERVER},
    {"token", required_argument, 0, O_TOKEN},
    {"cacert", required_argument, 0, O_CACERT},
    {"insecure", no_argument, 0, O_INSECURE},
    {"connect-timeout", required_argument, 0, O_CONNECT_TIMEOUT},
    {"timeout", required_argument, 0, O_TIMEOUT},
    {"retries", required_argument, 0, O_RETRIES},
    {"encoding", required_argument, 0, O_ENCODING},
    {"quiet", no_argument, 0, 'q'},
    {"output", required_argument, 0, 'o'},
    {"ready", no_argument, 0, O_READY},
    {"n", required_argument, 0, O_N},
    {"d-model", required_argument, 0, O_D_MODEL},
    {"heads", required_argument, 0, O_HEADS},
    {"layers", required_argument, 0, O_LAYERS},
    {"d-ff", required_argument, 0, O_D_FF},
    {"batch", required_argument, 0, O_BATCH},
    {"causal", no_argument, 0, O_CAUSAL},
    {"norm", required_argument, 0, O_NORM},
    {"no-residual", no_argument, 0, O_NO_RESIDUAL},
    {"activation", required_argument, 0, O_ACTIVATION},
    {"loss", required_argument, 0, O_LOSS},
    {"method", required_argument, 0, O_METHOD},
    {"epsilon", required_argument, 0, O_EPSILON},
    {"degree", required_argument, 0, O_DEGREE},
    {"route", required_argument, 0, O_ROUTE},
    {"verify", no_argument, 0, O_VERIFY},
    {"seed", required_argument, 0, O_SEED},
    {"scale", required_argument, 0, O_SCALE},
    {"shards", required_argument, 0, O_SHARDS},
    {"async", no_argument, 0, O_ASYNC},
    {"return-output", no_argument, 0, O_RETURN_OUTPUT},
    {"save-request", required_argument, 0, O_SAVE_REQUEST},
    {"dry-run", no_argument, 0, O_DRY_RUN},
    {"help", no_argument, 0, O_HELP},
    {"version", no_argument, 0, O_VERSION},
    {0, 0, 0, 0},
};

static int parse_long(const char *flag, const char *s, long min, long max, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < min || v > max) {
        if (min == LONG_MIN && max == LONG_MAX)
            fprintf(stderr, "altgrad: --%s: expected an integer, got '%s'\n", flag, s);
        else
            fprintf(stderr, "altgrad: --%s: expected an integer in [%ld, %ld], got '%s'\n", flag,
                    min, max, s);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_double(const char *flag, const char *s, double min, double max, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= min && v <= max)) {
        if (isinf(min) && isinf(max))
            fprintf(stderr, "altgrad: --%s: expected a number, got '%s'\n", flag, s);
        else
            fprintf(stderr, "altgrad: --%s: expected a number in [%g, %g], got '%s'\n", flag,
                    min, max, s);
        return -1;
    }
    *out = v;
    return 0;
}

/* The index of s in names[0..n), or -1 with a message. */
static int parse_name(const char *flag, const char *s, const char *const *names, int n)
{
    for (int i = 0; i < n; i++)
        if (strcmp(s, names[i]) == 0) return i;
    fprintf(stderr, "altgrad: --%s: expected", flag);
    for (int i = 0; i < n; i++)
        fprintf(stderr, "%s %s", i == 0 ? "" : i == n - 1 ? " or" : ",", names[i]);
    fprintf(stderr, ", got '%s'\n", s);
    return -1;
}

static void on_signal(int sig)
{
    (void)sig;
    atomic_store(&cli_interrupted, 1);
}

/* Options a command may take besides the connection ones. */
static int option_allowed(const char *cmd, int opt)
{
    if (opt == 'o') return strcmp(cmd, "grad") == 0 || strcmp(cmd, "job") == 0;
    if (opt < O_READY) return 1; /* connection options, -q */
    if (opt == O_READY) return strcmp(cmd, "health") == 0;
    return strcmp(cmd, "random") == 0;
}

int main(int argc, char **argv)
{
    json_object_seed(0);
    signal(SIGPIPE, SIG_IGN); /* NOSIGNAL transfers: a peer's reset must not kill us */

    cli_opts o;
    memset(&o, 0, sizeof o);
    o.client = altgrad_client_opts_default();
    const char *env = getenv("ALTGRAD_SERVER_URL");
    if (env && *env) o.client.base_url = env;
    env = getenv("ALTGRAD_TOKEN");
    if (env && *env) o.client.token = env;
    o.n = 256;
    o.d_model = 64;
    o.heads = 8;
    o.layers = 2;
    o.d_ff = -1;
    o.batch = 1;
    o.residual = 1;
    o.norm = AG_NORM_LAYERNORM;
    o.activation = AG_ACT_GELU;
    o.method = ag_method_default(AG_METHOD_AUTO);
    o.loss = AG_LOSS_SUM;
    o.seed = 1;
    o.scale = 0.5;
    o.shards = 1;

    int seen[O_VERSION + 1] = {0};
    int epsilon_set = 0, c, k;
    ag_error cerr;
    /* Indexed by the enum values (each counts from 0); the method's names are core's. */
    static const char *const encoding_names[] = {"json", "b64"};
    static const char *const norm_names[] = {"none", "layernorm"};
    static const char *const activation_names[] = {"gelu", "relu"};
    static const char *const loss_names[] = {"mse", "sum", "grad_output"};
    const char *const method_names[] = {ag_method_name(AG_METHOD_EXACT),
                                        ag_method_name(AG_METHOD_APPROX),
                                        ag_method_name(AG_METHOD_AUTO)};
    const char *const route_names[] = {ag_route_name(AG_ROUTE_FEATURES),
                                       ag_route_name(AG_ROUTE_PAPER)};
    long v = 0;
    double dv = 0;
    while ((c = getopt_long(argc, argv, "qo:h", long_opts, NULL)) != -1) {
        const char *name = NULL;
        for (const struct option *lo = long_opts; lo->name; lo++)
            if (lo->val == c) name = lo->name;
        if (c >= 0 && c <= O_VERSION) seen[c] = 1;
        switch (c) {
        case O_SERVER: o.client.base_url = optarg; break;
        case O_TOKEN: o.client.token = optarg; break;
        case O_CACERT: o.client.ca_file = optarg; break;
        case O_INSECURE: o.client.insecure = 1; break;
        case O_CONNECT_TIMEOUT:
            if (parse_double(name, optarg, 0.001, 86400, &dv)) return CLI_EXIT_USAGE;
            o.client.connect_timeout_ms = (long)(dv * 1000);
            break;
        case O_TIMEOUT:
            if (parse_double(name, optarg, 0.001, 1e7, &dv)) return CLI_EXIT_USAGE;
            o.client.timeout_ms = (long)(dv * 1000);
            o.wait_timeout_s = dv;
            break;
        case O_RETRIES:
            if (parse_long(name, optarg, 0, 100, &v)) return CLI_EXIT_USAGE;
            o.client.max_retries = (int)v;
            break;
        case O_ENCODING:
            if ((k = parse_name(name, optarg, encoding_names, 2)) < 0) return CLI_EXIT_USAGE;
            o.client.encoding = (ag_encoding)k;
            break;
        case 'q': o.quiet = 1; break;
        case 'o': o.output = optarg; break;
        case O_READY: o.ready = 1; break;
        case O_N:
            if (parse_long(name, optarg, 1, 1L << 24, &o.n)) return CLI_EXIT_USAGE;
            break;
        case O_D_MODEL:
            if (parse_long(name, optarg, 1, 65536, &o.d_model)) return CLI_EXIT_USAGE;
            break;
        case O_HEADS:
            if (parse_long(name, optarg, 1, 65536, &o.heads)) return CLI_EXIT_USAGE;
            break;
        case O_LAYERS:
            if (parse_long(name, optarg, 1, 1024, &o.layers)) return CLI_EXIT_USAGE;
            break;
        case O_D_FF:
            if (parse_long(name, optarg, 0, 1L << 20, &o.d_ff)) return CLI_EXIT_USAGE;
            break;
        case O_BATCH:
            if (parse_long(name, optarg, 1, 1L << 20, &o.batch)) return CLI_EXIT_USAGE;
            break;
        case O_CAUSAL: o.causal = 1; break;
        case O_NO_RESIDUAL: o.residual = 0; break;
        case O_NORM:
            if ((k = parse_name(name, optarg, norm_names, 2)) < 0) return CLI_EXIT_USAGE;
            o.norm = (ag_norm)k;
            break;
        case O_ACTIVATION:
            if ((k = parse_name(name, optarg, activation_names, 2)) < 0) return CLI_EXIT_USAGE;
            o.activation = (ag_activation)k;
            break;
        case O_LOSS:
            if ((k = parse_name(name, optarg, loss_names, 3)) < 0) return CLI_EXIT_USAGE;
            o.loss = (ag_loss_kind)k;
            break;
        case O_METHOD:
            if ((k = parse_name(name, optarg, method_names, 3)) < 0) return CLI_EXIT_USAGE;
            o.method.kind = (ag_method_kind)k;
            break;
        case O_EPSILON: /* the range is the method contract's, checked below */
            if (parse_double(name, optarg, -HUGE_VAL, HUGE_VAL, &dv)) return CLI_EXIT_USAGE;
            o.method.epsilon = dv;
            epsilon_set = 1;
            break;
        case O_DEGREE:
            if (parse_long(name, optarg, LONG_MIN, LONG_MAX, &v)) return CLI_EXIT_USAGE;
            if (ag_method_degree_check(v, &cerr) != AG_OK) {
                fprintf(stderr, "altgrad: %s\n", cerr.message);
                return CLI_EXIT_USAGE;
            }
            o.method.degree = (int)v;
            break;
        case O_ROUTE:
            if ((k = parse_name(name, optarg, route_names, 2)) < 0) return CLI_EXIT_USAGE;
            o.method.route = (ag_route)k;
            break;
        case O_VERIFY: o.verify = 1; break;
        case O_SEED:
            if (parse_long(name, optarg, 0, __LONG_MAX__, &v)) return CLI_EXIT_USAGE;
            o.seed = (unsigned long long)v;
            break;
        case O_SCALE:
            if (parse_double(name, optarg, 0, 1e6, &o.scale)) return CLI_EXIT_USAGE;
            break;
        case O_SHARDS:
            if (parse_long(name, optarg, 1, 1024, &v)) return CLI_EXIT_USAGE;
            o.shards = (int)v;
            break;
        case O_ASYNC: o.async = 1; break;
        case O_RETURN_OUTPUT: o.want_output = 1; break;
        case O_SAVE_REQUEST: o.save_request = optarg; break;
        case O_DRY_RUN: o.dry_run = 1; break;
        case 'h':
        case O_HELP: fputs(usage_text, stdout); return CLI_EXIT_OK;
        case O_VERSION: printf("altgrad 1.0 (API v1)\n"); return CLI_EXIT_OK;
        default: fputs("altgrad: see altgrad --help\n", stderr); return CLI_EXIT_USAGE;
        }
    }
    if (optind >= argc) {
        fputs(usage_text, stderr);
        return CLI_EXIT_USAGE;
    }
    const char *cmd = argv[optind];
    static const char *const cmds[] = {"grad", "random", "job", "health", "info"};
    int known = 0;
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) known |= strcmp(cmd, cmds[i]) == 0;
    if (!known) {
        fprintf(stderr, "altgrad: unknown command '%s' (see altgrad --help)\n", cmd);
        return CLI_EXIT_USAGE;
    }
    for (int opt = 'o'; opt <= O_DRY_RUN; opt++) {
        if (!seen[opt] || option_allowed(cmd, opt)) continue;
        const char *name = "output";
        for (const struct option *lo = long_opts; lo->name; lo++)
            if (lo->val == opt) name = lo->name;
        fprintf(stderr, "altgrad: %s does not take --%s\n", cmd, name);
        return CLI_EXIT_USAGE;
    }
    if (o.method.degree && epsilon_set) {
        fprintf(stderr, "altgrad: give --epsilon or --degree, not both\n");
        return CLI_EXIT_USAGE;
    }
    if (o.method.kind == AG_METHOD_EXACT && (o.method.degree || epsilon_set)) {
        fprintf(stderr, "altgrad: --epsilon/--degree need --method approx or auto\n");
        return CLI_EXIT_USAGE;
    }
    if (ag_method_check(&o.method, &cerr) != AG_OK) {
        fprintf(stderr, "altgrad: %s\n", cerr.message);
        return CLI_EXIT_USAGE;
    }
    if (o.async && o.shards > 1) {
        fprintf(stderr, "altgrad: --async and --shards do not go together\n");
        return CLI_EXIT_USAGE;
    }
    if (o.d_ff < 0) o.d_ff = 4 * o.d_model;
    int npos = argc - optind - 1;
    char **pos = argv + optind + 1;
    if ((strcmp(cmd, "grad") == 0 && npos != 1) ||
        ((strcmp(cmd, "random") == 0 || strcmp(cmd, "health") == 0 ||
          strcmp(cmd, "info") == 0) && npos != 0)) {
        fprintf(stderr, "altgrad: %s: wrong number of arguments (see altgrad --help)\n", cmd);
        return CLI_EXIT_USAGE;
    }

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    o.client.abort = &cli_interrupted;

    altgrad_error err;
    altgrad_client *client = NULL;
    if (!(strcmp(cmd, "random") == 0 && o.dry_run)) {
        client = altgrad_client_new(&o.client, &err);
        if (!client) return cli_report("client", &err);
    }
    int rc;
    if (strcmp(cmd, "grad") == 0) rc = cmd_grad(&o, client, pos[0]);
    else if (strcmp(cmd, "random") == 0) rc = cli_cmd_random(&o, client);
    else if (strcmp(cmd, "job") == 0) rc = cmd_job(&o, client, npos, pos);
    else if (strcmp(cmd, "health") == 0) rc = cmd_health(&o, client);
    else rc = cmd_info(client);
    altgrad_client_free(client);
    return rc;
}
