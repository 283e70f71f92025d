/* The method contract (core/method.c): each rule's field and message, and the same answer from
 * every layer that checks a method: core's ag_gradients, proto's request decoder and the
 * client's request check. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../client/altgrad_client.h"
#include "../../core/altgrad.h"
#include "../../proto/proto.h"

static ag_method approx_eps(double eps)
{
    ag_method m = ag_method_default(AG_METHOD_APPROX);
    m.epsilon = eps;
    return m;
}

static ag_method approx_deg(int g)
{
    ag_method m = ag_method_default(AG_METHOD_APPROX);
    m.degree = g;
    return m;
}

static void expect_invalid(const ag_method *m, const char *field, const char *message)
{
    ag_error e;
    memset(&e, 0, sizeof e);
    ck_assert_int_eq(ag_method_check(m, &e), AG_ERR_INVALID);
    ck_assert_int_eq(e.status, AG_ERR_INVALID);
    ck_assert_str_eq(e.field, field);
    ck_assert_str_eq(e.message, message);
}

START_TEST(test_rules)
{
    ag_method m = ag_method_default(AG_METHOD_AUTO);
    ck_assert_int_eq(ag_method_check(&m, NULL), AG_OK);
    m = ag_method_default(AG_METHOD_EXACT);
    m.epsilon = 7; /* exact ignores the approximation's fields */
    m.degree = -3;
    ck_assert_int_eq(ag_method_check(&m, NULL), AG_OK);
    for (int g = 1; g <= AG_MAX_DEGREE; g++) {
        m = approx_deg(g);
        m.epsilon = 5; /* a fixed degree wins: epsilon is not read */
        ck_assert_int_eq(ag_method_check(&m, NULL), AG_OK);
        ck_assert_int_eq(ag_method_degree_check(g, NULL), AG_OK);
    }
    m = approx_eps(0.5);
    ck_assert_int_eq(ag_method_check(&m, NULL), AG_OK);

    char msg[128];
    snprintf(msg, sizeof msg, "method.degree: must be an integer from 1 to %d, got %d",
             AG_MAX_DEGREE, AG_MAX_DEGREE + 1);
    m = approx_deg(AG_MAX_DEGREE + 1);
    expect_invalid(&m, "method.degree", msg);
    snprintf(msg, sizeof msg, "method.degree: must be an integer from 1 to %d, got -1",
             AG_MAX_DEGREE);
    m = approx_deg(-1);
    expect_invalid(&m, "method.degree", msg);
    ag_error e;
    ck_assert_int_eq(ag_method_degree_check(0, &e), AG_ERR_INVALID); /* given, so fixed */
    ck_assert_str_eq(e.field, "method.degree");
    ck_assert_int_eq(ag_method_degree_check(1LL << 40, &e), AG_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(e.message, "got 1099511627776"));

    const double bad_eps[] = {0, 1, -0.5, 2, NAN, INFINITY};
    for (size_t i = 0; i < sizeof bad_eps / sizeof bad_eps[0]; i++) {
        m = approx_eps(bad_eps[i]);
        snprintf(msg, sizeof msg, "method.epsilon: must lie strictly between 0 and 1, got %g",
                 bad_eps[i]);
        expect_invalid(&m, "method.epsilon", msg);
        m.kind = AG_METHOD_AUTO;
        expect_invalid(&m, "method.epsilon", msg);
    }
    m = ag_method_default(AG_METHOD_AUTO);
    m.kind = (ag_method_kind)7;
    expect_invalid(&m, "method.name", "method.name: expected \"exact\", \"approx\" or \"auto\"");
    m = ag_method_default(AG_METHOD_AUTO);
    m.route = (ag_route)5;
    expect_invalid(&m, "method.route", "method.route: expected \"features\" or \"paper\"");
    m = ag_method_default(AG_METHOD_APPROX);
    m.poly = (ag_poly)-1;
    expect_invalid(&m, "method.poly", "method.poly: expected \"chebyshev\" or \"taylor\"");
    expect_invalid(NULL, "method", "method: missing");
}
END_TEST

/* A one-layer model, d_model 2, one head, no norm, no MLP; input [1, 2]. */
static const ag_model_config CFG = {.d_model = 2, .n_heads = 1, .n_layers = 1, .d_ff = 0,
                                    .norm = AG_NORM_NONE, .activation = AG_ACT_GELU};
static float W[AG_P_COUNT][4] = {{1, 0, 0, 1}, {1, 0, 0, 1}, {1, 0, 0, 1}, {1, 0, 0, 1}};
static float X[2] = {0.5f, -0.25f};

static void core_error(const ag_method *m, ag_error *e)
{
    ag_layer_params layer;
    memset(&layer, 0, sizeof layer);
    for (int i = AG_P_WQ; i <= AG_P_WO; i++) layer.p[i] = W[i];
    ag_loss loss = {.kind = AG_LOSS_SUM};
    ag_result res;
    memset(e, 0, sizeof *e);
    ck_assert_int_eq(ag_gradients(&CFG, &layer, X, 1, 1, &loss, m, NULL, &res, e),
                     AG_ERR_INVALID);
}

static void client_error(const ag_method *m, altgrad_error *e)
{
    ag_layer_params layer;
    memset(&layer, 0, sizeof layer);
    for (int i = AG_P_WQ; i <= AG_P_WO; i++) layer.p[i] = W[i];
    altgrad_request req = altgrad_request_init(&CFG);
    req.layers = &layer;
    req.input = X;
    req.n = 1;
    req.method = *m;
    ck_assert_int_eq(altgrad_request_check(&req, e), ALTGRAD_E_ARG);
}

/* The request body of the model above with `method` as its method block. */
static void proto_error(const char *method, ag_proto_error *e)
{
    char body[1024];
    const char *t = "{\"shape\":[2,2],\"data\":[1,0,0,1]}";
    snprintf(body, sizeof body,
             "{\"model\":{\"d_model\":2,\"n_heads\":1,\"n_layers\":1,\"d_ff\":0,\"causal\":false,"
             "\"norm\":\"none\",\"activation\":\"gelu\",\"residual\":false},"
             "\"layers\":[{\"wq\":%s,\"wk\":%s,\"wv\":%s,\"wo\":%s}],"
             "\"input\":{\"shape\":[1,2],\"data\":[0.5,-0.25]},\"loss\":{\"type\":\"sum\"},"
             "\"method\":%s}",
             t, t, t, t, method);
    ag_request req;
    memset(e, 0, sizeof *e);
    ck_assert_int_eq(ag_request_decode(body, strlen(body), NULL, &req, e), -1);
}

START_TEST(test_every_layer_says_the_same)
{
    static const struct {
        const char *json;
        ag_method m;
    } cases[] = {
        {"{\"name\":\"approx\",\"epsilon\":2}", {AG_METHOD_APPROX, 2, 0, 0, 0}},
        {"{\"name\":\"auto\",\"epsilon\":0}", {AG_METHOD_AUTO, 0, 0, 0, 0}},
        {"{\"name\":\"approx\",\"epsilon\":-1e-3}", {AG_METHOD_APPROX, -1e-3, 0, 0, 0}},
        {"{\"name\":\"approx\",\"degree\":21}", {AG_METHOD_APPROX, 1e-3, 21, 0, 0}},
        {"{\"name\":\"auto\",\"degree\":-4}", {AG_METHOD_AUTO, 1e-3, -4, 0, 0}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ag_error want, core;
        ck_assert_int_eq(ag_method_check(&cases[i].m, &want), AG_ERR_INVALID);
        core_error(&cases[i].m, &core);
        ck_assert_str_eq(core.field, want.field);
        ck_assert_str_eq(core.message, want.message);
        altgrad_error client;
        client_error(&cases[i].m, &client);
        ck_assert_str_eq(client.code, "invalid_value");
        ck_assert_str_eq(client.field, want.field);
        ck_assert_str_eq(client.message, want.message);
        ag_proto_error wire;
        proto_error(cases[i].json, &wire);
        ck_assert_int_eq(wire.http_status, 400);
        ck_assert_str_eq(wire.code, "invalid_value");
        ck_assert_str_eq(wire.field, want.field);
        ck_assert_str_eq(wire.message, want.message);
    }
    /* degree 0 is "choose from epsilon" in the struct, but a degree given on the wire is a
     * fixed one: the wire refuses it with the contract's degree message */
    ag_error want;
    ck_assert_int_eq(ag_method_degree_check(0, &want), AG_ERR_INVALID);
    ag_proto_error wire;
    proto_error("{\"name\":\"approx\",\"degree\":0}", &wire);
    ck_assert_str_eq(wire.field, want.field);
    ck_assert_str_eq(wire.message, want.message);
    /* rules of the JSON itself stay the decoder's */
    proto_error("{\"name\":\"approx\",\"degree\":3,\"epsilon\":0.1}", &wire);
    ck_assert_str_eq(wire.field, "method");
    ck_assert_str_eq(wire.message, "method: give epsilon or degree, not both");
    proto_error("{\"name\":\"approx\",\"route\":\"fast\"}", &wire);
    ck_assert_str_eq(wire.field, "method.route");
    ck_assert_str_eq(wire.message, "method.route: expected \"features\" or \"paper\"");
}
END_TEST

static Suite *method_suite(void)
{
    Suite *s = suite_create("method");
    TCase *tc = tcase_create("contract");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_rules);
    tcase_add_test(tc, test_every_layer_says_the_same);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(method_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
