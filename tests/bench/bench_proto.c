/* Decode/encode throughput and peak memory of the wire format for one big tensor.
 *
 *   bench_proto decode json|json_jansson|b64 [elements]   a request whose input has
 *                                                          `elements` floats (default 16M)
 *   bench_proto encode json|b64 [elements]                a response whose grad_input has them
 *
 * One mode per process, so the peak RSS is that mode's: the kernel's high-water mark is reset
 * (/proc/self/clear_refs) after the body is built, then read after the operation. Prints one
 * CSV row: op,mode,elements,body_bytes,seconds,MB_per_s,rss_before_MB,peak_rss_MB,
 * peak_over_body. json_jansson is the same body parsed by jansson alone (json_loadb, then the
 * input copied out to floats), the cost proto/ avoids by lifting payloads out. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../../proto/proto.h"
#include "../../proto/proto_internal.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* VmRSS or VmHWM from /proc/self/status, in MB. */
static double proc_mb(const char *field)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    char line[256];
    double kb = -1;
    size_t n = strlen(field);
    while (fgets(line, sizeof line, f))
        if (strncmp(line, field, n) == 0 && line[n] == ':') kb = atof(line + n + 1);
    fclose(f);
    return kb / 1024.0;
}

static void reset_peak(void)
{
    FILE *f = fopen("/proc/self/clear_refs", "w");
    if (f) {
        fputs("5", f);
        fclose(f);
    }
}

static float value(size_t i)
{
    uint32_t x = (uint32_t)(i * 2654435761u);
    return (float)((double)(x >> 8) / 16777216.0 * 2.0 - 1.0);
}

/* One layer, d_model 64, 1 head, no MLP, norm none; input [elements / 64, 64]; loss sum. */
static ag_request make_request(size_t elements, int b64)
{
    ag_request req;
    memset(&req, 0, sizeof req);
    req.cfg = (ag_model_config){.d_model = 64, .n_heads = 1, .n_layers = 1, .d_ff = 0,
                                .causal = 1, .norm = AG_NORM_NONE, .activation = AG_ACT_GELU,
                                .residual = 1};
    req.layers = calloc(1, sizeof *req.layers);
    ag_layer_params_alloc(&req.cfg, &req.layers[0], NULL);
    for (int idx = 0; idx < AG_P_COUNT; idx++)
        for (size_t i = 0; i < ag_param_numel(&req.cfg, idx); i++)
            req.layers[0].p[idx][i] = value(i);
    req.batch = 1;
    req.n = elements / 64;
    req.input = malloc(req.n * 64 * sizeof(float));
    for (size_t i = 0; i < req.n * 64; i++) req.input[i] = value(i + 7);
    req.loss.kind = AG_LOSS_SUM;
    req.method = ag_method_default(AG_METHOD_EXACT);
    req.return_mask = AG_RETURN_DEFAULT;
    req.encoding = b64 ? AG_ENCODING_B64 : AG_ENCODING_JSON;
    return req;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s decode|encode json|json_jansson|b64 [elements]\n", argv[0]);
        return 2;
    }
    const char *op = argv[1], *mode = argv[2];
    size_t elements = argc > 3 ? strtoull(argv[3], NULL, 10) : (size_t)16 << 20;
    elements = elements / 64 * 64;
    int b64 = strcmp(mode, "b64") == 0, lift = strcmp(mode, "json_jansson") != 0;
    ag_proto_limits lim = ag_proto_limits_default();
    lim.max_tokens = elements; /* the default 1M tokens would refuse 16M floats at d_model 64 */

    ag_request req = make_request(elements, b64);
    double secs, rss0, peak;
    size_t body_len;
    if (strcmp(op, "decode") == 0) {
        char *body = ag_request_encode(&req, &body_len);
        ag_request_free(&req);
        if (!body) return 1;
        rss0 = proc_mb("VmRSS");
        reset_peak();
        ag_request got;
        ag_proto_error err;
        double t0 = now();
        int rc;
        if (lift) {
            rc = ag_request_decode(body, body_len, &lim, &got, &err);
        } else {
            json_error_t je;
            json_t *root = json_loadb(body, body_len, JSON_REJECT_DUPLICATES, &je);
            json_t *data = json_object_get(json_object_get(root, "input"), "data");
            memset(&got, 0, sizeof got);
            got.n = json_array_size(data) / 64;
            got.input = malloc(json_array_size(data) * sizeof(float));
            for (size_t i = 0; i < json_array_size(data); i++)
                got.input[i] = (float)json_number_value(json_array_get(data, i));
            json_decref(root);
            rc = root && got.input ? 0 : -1;
            snprintf(err.code, sizeof err.code, "jansson");
            err.field[0] = '\0';
            snprintf(err.message, sizeof err.message, "%s", je.text);
        }
        secs = now() - t0;
        peak = proc_mb("VmHWM");
        if (rc) {
            fprintf(stderr, "decode failed: %s %s %s\n", err.code, err.field, err.message);
            return 1;
        }
        if (got.n * 64 != elements || got.input[elements - 1] != value(elements - 1 + 7)) {
            fprintf(stderr, "decode gave wrong values\n");
            return 1;
        }
        ag_request_free(&got);
        free(body);
    } else {
        ag_result res;
        memset(&res, 0, sizeof res);
        res.has_loss = 1;
        res.batch = 1;
        res.n = req.n;
        res.d_model = 64;
        res.grad_input = req.input; /* borrowed */
        res.n_layers = 1;
        res.n_heads = 1;
        res.grad_layers = req.layers;
        ag_head_report head = {.method = AG_METHOD_EXACT, .reason = "exact requested"};
        res.heads = &head;
        rss0 = proc_mb("VmRSS");
        reset_peak();
        double t0 = now();
        char *body = ag_response_encode(&req, &res, NULL, NULL, &body_len);
        secs = now() - t0;
        peak = proc_mb("VmHWM");
        if (!body) return 1;
        free(body);
        ag_request_free(&req);
    }
    printf("%s,%s,%zu,%zu,%.3f,%.1f,%.1f,%.1f,%.2f\n", op, mode, elements, body_len, secs,
           (double)body_len / 1e6 / secs, rss0, peak, peak / ((double)body_len / 1048576.0));
    return 0;
}
