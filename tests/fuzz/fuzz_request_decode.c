/* libFuzzer target: ag_request_decode on arbitrary bodies.
 *
 * Beyond "no crash, no leak, no UB" (the sanitizers' job) it checks three properties a
 * decoder bug would break:
 *   - lifting the tensor payloads out of jansson (jdoc.c) never changes the outcome: the body
 *     decoded with and without lifting succeeds or fails alike (but for the documented
 *     numbers jansson cannot hold), and on success the two requests hold the same values;
 *   - a failed decode leaves the request zeroed and names a 4xx/500 status and a code;
 *   - a decoded request, encoded again (ag_request_encode) and decoded, is the same request.
 * Limits are small so that no input makes the decoder allocate more than a few MB. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../proto/proto_internal.h"

static ag_proto_limits fuzz_limits(void)
{
    ag_proto_limits l = ag_proto_limits_default();
    l.max_elements = 1 << 16;
    l.max_tensor_elements = 1 << 15;
    l.max_layers = 4;
    l.max_d_model = 64;
    l.max_d_ff = 128;
    l.max_tokens = 512;
    return l;
}

#define CHECK(cond, ...)                                                                        \
    do {                                                                                         \
        if (!(cond)) {                                                                           \
            fprintf(stderr, "fuzz_request_decode: %s: ", #cond);                                 \
            fprintf(stderr, __VA_ARGS__);                                                        \
            fputc('\n', stderr);                                                                 \
            abort();                                                                             \
        }                                                                                        \
    } while (0)

static int zeroed(const ag_request *r)
{
    static const ag_request zero;
    return memcmp(r, &zero, sizeof zero) == 0;
}

static int floats_same(const float *a, const float *b, size_t n)
{
    if (!a || !b) return a == b;
    for (size_t i = 0; i < n; i++)
        if (!(a[i] == b[i])) return 0; /* -0 == +0: the lifted reader keeps the sign of "-0" */
    return 1;
}

static void same_request(const ag_request *a, const ag_request *b, const char *what)
{
    CHECK(memcmp(&a->cfg, &b->cfg, sizeof a->cfg) == 0, "%s: model", what);
    CHECK(a->batch == b->batch && a->n == b->n && a->input_batched == b->input_batched,
          "%s: input shape", what);
    CHECK(a->method.kind == b->method.kind && a->method.epsilon == b->method.epsilon &&
              a->method.degree == b->method.degree && a->method.route == b->method.route &&
              a->method.poly == b->method.poly,
          "%s: method", what);
    CHECK(a->return_mask == b->return_mask && a->encoding == b->encoding &&
              a->verify == b->verify && a->loss.kind == b->loss.kind,
          "%s: options", what);
    size_t io = a->batch * a->n * (size_t)a->cfg.d_model;
    CHECK(floats_same(a->input, b->input, io), "%s: input values", what);
    CHECK(floats_same(a->loss_tensor, b->loss_tensor, io), "%s: loss tensor", what);
    for (int l = 0; l < a->cfg.n_layers; l++)
        for (int p = 0; p < AG_P_COUNT; p++)
            CHECK(floats_same(a->layers[l].p[p], b->layers[l].p[p], ag_param_numel(&a->cfg, p)),
                  "%s: layers[%d].%s", what, l, ag_param_name(p));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ag_proto_limits lim = fuzz_limits();
    ag_request a, b;
    ag_proto_error ea, eb;
    memset(&ea, 0, sizeof ea);
    memset(&eb, 0, sizeof eb);
    /* The server hands the decoder a NUL-terminated copy; so do we (and an unterminated one
     * would let ASan see reads past the end). */
    char *body = malloc(size + 1);
    if (!body) return 0;
    memcpy(body, data, size);
    body[size] = 0;

    int ra = ag_request_decode_ex(body, size, &lim, 1, &a, &ea);
    int rb = ag_request_decode_ex(body, size, &lim, 0, &b, &eb);
    if (ra) {
        CHECK(zeroed(&a), "failed decode left a non-empty request");
        CHECK(ea.http_status >= 400 && ea.http_status <= 599 && ea.code[0],
              "error without status or code (%d, '%s')", ea.http_status, ea.code);
    }
    if (rb) CHECK(zeroed(&b), "failed plain decode left a non-empty request");
    /* Documented differences (docs/api.md, "Choosing JSON numbers or base64"): jansson refuses
     * a number beyond a double ("1e999": both fail) and an integer beyond 64 bits
     * ("4444444444444444444444444449": the lifted reader takes it as 4.4e27, a valid float32,
     * found by this fuzzer) as invalid JSON. */
    int jansson_limit = ra == 0 && rb != 0 && strcmp(eb.code, "invalid_json") == 0 &&
                        (strstr(eb.message, "too big") || strstr(eb.message, "overflow"));
    CHECK(ra == rb || jansson_limit, "lifted decode %s (%s %s) but plain decode %s (%s %s: %s)",
          ra ? "failed" : "succeeded", ea.code, ea.field, rb ? "failed" : "succeeded", eb.code,
          eb.field, eb.message);
    if (ra == 0 && rb == 0) same_request(&a, &b, "lifted vs plain");
    if (ra == 0) {
        size_t len = 0;
        char *again = ag_request_encode(&a, &len);
        CHECK(again != NULL, "a decoded request cannot be encoded");
        ag_request c;
        ag_proto_error ec;
        int rc = ag_request_decode(again, len, &lim, &c, &ec);
        CHECK(rc == 0, "re-encoded request refused: %s %s: %s", ec.code, ec.field, ec.message);
        same_request(&a, &c, "round trip");
        ag_request_free(&c);
        free(again);
    }
    ag_request_free(&a);
    ag_request_free(&b);
    free(body);
    return 0;
}
