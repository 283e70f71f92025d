/* `altgrad random`: a random model and input, sent to the service, and the readable summary
 * every command prints. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"

/* ---- random numbers (splitmix64 + Box-Muller: reproducible across machines) ------------- */

typedef struct {
    uint64_t s;
} rng;

static uint64_t rng_u64(rng *r)
{
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double rng_uniform(rng *r) /* (0, 1) */
{
    return ((double)(rng_u64(r) >> 11) + 0.5) / 9007199254740992.0;
}

static void fill_normal(rng *r, float *a, size_t count, double std)
{
    for (size_t i = 0; i < count; i += 2) {
        double u = rng_uniform(r), v = rng_uniform(r);
        double m = sqrt(-2.0 * log(u)) * std;
        a[i] = (float)(m * cos(2 * M_PI * v));
        if (i + 1 < count) a[i + 1] = (float)(m * sin(2 * M_PI * v));
    }
}

/* ---- summary --------------------------------------------------------------------------- */

static const char *head_method(const ag_head_report *h)
{
    return h->method == AG_METHOD_EXACT ? "exact" : h->method == AG_METHOD_APPROX ? "approx"
                                                                                  : "auto";
}

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
                fprintf(out, "  %-22s %-6s", who, head_method(x));
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

/* ---- the command ----------------------------------------------------------------------- */

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

int cli_cmd_random(cli_opts *o, altgrad_client *client)
{
    ag_model_config cfg = {
        .d_model = (int)o->d_model, .n_heads = (int)o->heads, .n_layers = (int)o->layers,
        .d_ff = (int)o->d_ff, .causal = o->causal, .norm = o->norm,
        .activation = o->activation, .residual = o->residual,
    };
    ag_error cerr;
    if (ag_model_config_check(&cfg, &cerr) != AG_OK) {
        fprintf(stderr, "altgrad: random: %s\n", cerr.message);
        return EXIT_USAGE;
    }
    size_t row = (size_t)o->n * (size_t)o->d_model;
    if ((size_t)o->batch > ((size_t)1 << 31) / row) {
        fprintf(stderr, "altgrad: random: batch * n * d_model over 2^31 elements\n");
        return EXIT_USAGE;
    }
    size_t count = (size_t)o->batch * row;
    rng r = {o->seed};
    int rc = EXIT_OK_;
    ag_layer_params *layers = calloc((size_t)cfg.n_layers, sizeof *layers);
    float *input = malloc(count * sizeof(float));
    float *loss_t = o->loss == AG_LOSS_SUM ? NULL : malloc(count * sizeof(float));
    if (!layers || !input || (o->loss != AG_LOSS_SUM && !loss_t)) rc = EXIT_INTERNAL;
    for (int l = 0; l < cfg.n_layers && rc == EXIT_OK_; l++) {
        if (ag_layer_params_alloc(&cfg, &layers[l], NULL) != AG_OK) {
            rc = EXIT_INTERNAL;
            break;
        }
        for (int p = 0; p < AG_P_COUNT; p++) {
            size_t shape[2];
            int nd = ag_param_shape(&cfg, p, shape);
            float *w = layers[l].p[p];
            if (!nd || !w) continue;
            if (p == AG_P_LN1_GAMMA || p == AG_P_LN2_GAMMA)
                for (size_t i = 0; i < shape[0]; i++) w[i] = 1.0f;
            else if (nd == 2) /* biases and betas stay 0 */
                fill_normal(&r, w, shape[0] * shape[1], o->scale / sqrt((double)shape[0]));
        }
    }
    if (rc == EXIT_OK_) {
        fill_normal(&r, input, count, 1.0);
        if (loss_t) fill_normal(&r, loss_t, count, 1.0);
    }
    altgrad_request req = altgrad_request_init(&cfg);
    req.layers = layers;
    req.input = input;
    req.batch = (size_t)o->batch;
    req.n = (size_t)o->n;
    req.batched = o->batch > 1;
    req.loss = o->loss;
    req.loss_tensor = loss_t;
    req.method = o->method;
    req.verify = o->verify;
    req.return_mask = AG_RETURN_DEFAULT | (o->want_output ? AG_RETURN_OUTPUT : 0);

    altgrad_error err;
    if (rc == EXIT_OK_ && o->save_request) {
        size_t len = 0;
        char *body = altgrad_request_encode(&req, o->client.encoding, &len, &err);
        if (!body) rc = cli_report("random", &err);
        else if (cli_write_file(o->save_request, body, len) != 0) rc = EXIT_FILE;
        free(body);
    }
    if (rc == EXIT_OK_ && !o->dry_run) {
        if (!o->quiet)
            fprintf(stderr,
                    "altgrad random: n %ld, d_model %ld, heads %ld, layers %ld, d_ff %ld, batch "
                    "%ld%s, method %s, seed %llu\n",
                    o->n, o->d_model, o->heads, o->layers, o->d_ff, o->batch,
                    o->causal ? ", causal" : "", ag_method_name(o->method.kind), o->seed);
        altgrad_result res;
        altgrad_status st;
        double t0 = now_ms();
        if (o->async) {
            cli_progress prog;
            cli_progress_init(&prog, o->quiet);
            st = altgrad_job_run(client, &req, (long)(o->wait_timeout_s * 1000),
                                 cli_progress_cb, &prog, &res, &err);
            cli_progress_end(&prog);
        } else if (o->shards > 1) {
            st = altgrad_gradients_sharded(client, &req, o->shards, &res, &err);
        } else {
            st = altgrad_gradients(client, &req, &res, &err);
        }
        double ms = now_ms() - t0;
        if (st != ALTGRAD_OK) {
            rc = cli_report("random", &err);
        } else {
            cli_print_summary(stdout, &cfg, &res, ms);
            altgrad_result_free(&res);
        }
    }
    if (layers)
        for (int l = 0; l < cfg.n_layers; l++) ag_layer_params_free(&layers[l]);
    free(layers);
    free(input);
    free(loss_t);
    return rc;
}
