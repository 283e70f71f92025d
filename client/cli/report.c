/* What the CLI tells its user: the exit code of a library status, error lines, the job
 * progress display and the readable summary of a result. */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

/* ---- errors ---------------------------------------------------------------------------- */

int cli_exit_code(altgrad_status st)
{
    switch (st) {
    case ALTGRAD_OK: return CLI_EXIT_OK;
    case ALTGRAD_E_ARG: return CLI_EXIT_USAGE;
    case ALTGRAD_E_CONNECT:
    case ALTGRAD_E_TIMEOUT:
    case ALTGRAD_E_TLS: return CLI_EXIT_CONNECT;
    case ALTGRAD_E_HTTP_4XX: return CLI_EXIT_HTTP_4XX;
    case ALTGRAD_E_HTTP_5XX: return CLI_EXIT_HTTP_5XX;
    case ALTGRAD_E_JOB: return CLI_EXIT_JOB;
    case ALTGRAD_E_ABORTED: return CLI_EXIT_INTERRUPTED;
    case ALTGRAD_E_PROTOCOL:
    case ALTGRAD_E_NOMEM: return CLI_EXIT_INTERNAL;
    }
    return CLI_EXIT_INTERNAL;
}

int cli_report(const char *what, const altgrad_error *err)
{
    fprintf(stderr, "altgrad: %s: %s", what, err->message);
    if (err->code[0] || err->field[0]) {
        fprintf(stderr, " (");
        if (err->code[0]) fprintf(stderr, "code %s", err->code);
        if (err->field[0]) fprintf(stderr, "%sfield %s", err->code[0] ? ", " : "", err->field);
        fprintf(stderr, ")");
    }
    if (err->attempts > 1) fprintf(stderr, " after %d attempts", err->attempts);
    fprintf(stderr, "\n");
    return cli_exit_code(err->status);
}

/* ---- progress -------------------------------------------------------------------------- */

void cli_progress_init(cli_progress *p, int quiet)
{
    memset(p, 0, sizeof *p);
    p->tty = isatty(STDERR_FILENO);
    p->quiet = quiet;
    p->last_state = -1;
    p->last_decile = -1;
}

int cli_progress_cb(void *ctx, const altgrad_job_info *info)
{
    cli_progress *p = ctx;
    if (p->quiet) return 0;
    if (p->tty) {
        int width = 30, fill = (int)(info->progress * width + 0.5);
        char bar[64];
        for (int i = 0; i < width; i++) bar[i] = i < fill ? '#' : '.';
        bar[width] = '\0';
        fprintf(stderr, "\r[%s] %3d%% %-9s", bar, (int)(info->progress * 100 + 0.5),
                altgrad_job_state_name(info->state));
        p->drawn = 1;
    } else {
        int decile = (int)(info->progress * 10);
        if ((int)info->state != p->last_state || decile != p->last_decile)
            fprintf(stderr, "job %s: %s %d%%\n", info->id, altgrad_job_state_name(info->state),
                    (int)(info->progress * 100 + 0.5));
        p->last_decile = decile;
    }
    p->last_state = (int)info->state;
    fflush(stderr);
    return 0;
}

void cli_progress_end(cli_progress *p)
{
    if (p->drawn) fputc('\n', stderr);
    p->drawn = 0;
}

/* ---- the summary of a result ----------------------------------------------------------- */

static int heads_alike(const ag_head_report *a, const ag_head_report *b)
{
    return a->method == b->method && a->degree == b->degree && a->rank == b->rank &&
           a->route == b->route;
}

static double l2(const float *a, size_t count)
{
    double s = 0;
    for (size_t i = 0; i < count; i++) s += (double)a[i] * a[i];
    return sqrt(s);
}

void cli_print_summary(FILE *out, const ag_model_config *cfg, const altgrad_result *res,
                       double client_ms)
{
    if (res->has_loss) fprintf(out, "loss          %.9g\n", res->loss);
    else fprintf(out, "loss          (none: grad_output)\n");
    fprintf(out, "method        %s\n", res->method_name[0] ? res->method_name : "?");
    if (res->heads) {
        for (int l = 0; l < res->n_layers; l++) {
            const ag_head_report *hs = res->heads + (size_t)l * res->n_heads;
            int alike = 1;
            double rmax = 0, emax = 0;
            for (int h = 0; h < res->n_heads; h++) {
                alike &= heads_alike(&hs[0], &hs[h]);
                if (hs[h].bound > rmax) rmax = hs[h].bound;
                if (hs[h].error_bound > emax) emax = hs[h].error_bound;
            }
            for (int h = 0; h < res->n_heads; h++) {
                const ag_head_report *x = &hs[h];
                if (alike && h > 0) break;
                char who[48];
                if (alike && res->n_heads > 1)
                    snprintf(who, sizeof who, "layer %d heads 0-%d", l, res->n_heads - 1);
                else
                    snprintf(who, sizeof who, "layer %d head %d", l, h);
                fprintf(out, "  %-22s %-6s", who, ag_method_name(x->method));
                if (x->method == AG_METHOD_APPROX)
                    fprintf(out, " degree %2d rank %6zu route %s", x->degree, x->rank,
                            ag_route_name(x->route));
                fprintf(out, "  R %s%.3g", alike && res->n_heads > 1 ? "<= " : "",
                        alike ? rmax : x->bound);
                if (x->method == AG_METHOD_APPROX)
                    fprintf(out, "  error bound %s%.2g", alike && res->n_heads > 1 ? "<= " : "",
                            alike ? emax : x->error_bound);
                if (x->reason) fprintf(out, "  (%s)", x->reason);
                fputc('\n', out);
            }
        }
    }
    size_t count = res->batch * res->n * res->d_model;
    if (res->grad_input)
        fprintf(out, "grad_input    [%zu, %zu, %zu]  |g| %.6g\n", res->batch, res->n,
                res->d_model, l2(res->grad_input, count));
    if (res->grad_layers)
        for (int l = 0; l < res->n_layers; l++) {
            fprintf(out, "grad layer %-2d", l);
            for (int p = 0; p < AG_P_COUNT; p++) {
                size_t numel = ag_param_numel(cfg, p);
                if (numel && res->grad_layers[l].p[p])
                    fprintf(out, " %s %.4g", ag_param_name(p), l2(res->grad_layers[l].p[p], numel));
            }
            fputc('\n', out);
        }
    fprintf(out, "timing        server decode %.1f ms, compute %.1f ms, encode %.1f ms",
            res->timing.decode_ms, res->timing.compute_ms, res->timing.encode_ms);
    if (client_ms >= 0) fprintf(out, "; round trip %.1f ms", client_ms);
    fputc('\n', out);
    if (res->has_verification) {
        fprintf(out, "verification  relative error vs exact: grad_input %.3g\n",
                res->verification.grad_input);
        if (res->verification.layers)
            for (int l = 0; l < res->n_layers; l++) {
                fprintf(out, "  layer %-2d    ", l);
                for (int p = 0; p < AG_P_COUNT; p++) {
                    double e = res->verification.layers[(size_t)l * AG_P_COUNT + p];
                    if (!isnan(e)) fprintf(out, " %s %.3g", ag_param_name(p), e);
                }
                fputc('\n', out);
            }
    }
}

double cli_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}
