/* `altgrad random`: a random model and input (reproducible from --seed), sent to the service;
 * the summary of the answer is report.c's. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

/* ---- the command ----------------------------------------------------------------------- */

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
        return CLI_EXIT_USAGE;
    }
    size_t row = (size_t)o->n * (size_t)o->d_model;
    if ((size_t)o->batch > ((size_t)1 << 31) / row) {
        fprintf(stderr, "altgrad: random: batch * n * d_model over 2^31 elements\n");
        return CLI_EXIT_USAGE;
    }
    size_t count = (size_t)o->batch * row;
    rng r = {o->seed};
    int rc = CLI_EXIT_OK;
    ag_layer_params *layers = calloc((size_t)cfg.n_layers, sizeof *layers);
    float *input = malloc(count * sizeof(float));
    float *loss_t = o->loss == AG_LOSS_SUM ? NULL : malloc(count * sizeof(float));
    if (!layers || !input || (o->loss != AG_LOSS_SUM && !loss_t)) rc = CLI_EXIT_INTERNAL;
    for (int l = 0; l < cfg.n_layers && rc == CLI_EXIT_OK; l++) {
        if (ag_layer_params_alloc(&cfg, &layers[l], NULL) != AG_OK) {
            rc = CLI_EXIT_INTERNAL;
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
    if (rc == CLI_EXIT_OK) {
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
    if (rc == CLI_EXIT_OK && o->save_request) {
        size_t len = 0;
        char *body = altgrad_request_encode(&req, o->client.encoding, &len, &err);
        if (!body) rc = cli_report("random", &err);
        else if (cli_write_file(o->save_request, body, len) != 0) rc = CLI_EXIT_FILE;
        free(body);
    }
    if (rc == CLI_EXIT_OK && !o->dry_run) {
        if (!o->quiet)
            fprintf(stderr,
                    "altgrad random: n %ld, d_model %ld, heads %ld, layers %ld, d_ff %ld, batch "
                    "%ld%s, method %s, seed %llu\n",
                    o->n, o->d_model, o->heads, o->layers, o->d_ff, o->batch,
                    o->causal ? ", causal" : "", ag_method_name(o->method.kind), o->seed);
        altgrad_result res;
        altgrad_status st;
        double t0 = cli_now_ms();
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
        double ms = cli_now_ms() - t0;
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
