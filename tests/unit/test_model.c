/* Whole-model gradients (core/model.c) against central finite differences of the double
 * reference (tests/unit/lib/ref_model.c), plus threads, concurrency, cancellation, progress
 * and argument checking. */
#include <check.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "../../core/altgrad.h"
#include "../../core/attention.h"
#include "lib/ref_model.h"

/* float32 model vs double finite differences (h = 1e-6, truncation ~1e-12): what remains is
 * float32 roundoff through two layers, observed up to ~2e-6 (relative Frobenius). */
#define TOL_GRAD 1e-4
#define TOL_OUT 1e-5
#define FD_H 1e-6

/* The finite differences themselves carry double roundoff of about 1e-16 |L| / h per entry
 * (~1e-10): relative to a gradient block that is tiny (a second layer whose tokens look alike
 * has |dwq| ~ 3e-7), that is 1e-3. So a block passes when
 *   |got - fd| <= TOL_GRAD |fd| + 1e-15 max(|L|, 1) / h sqrt(count),
 * which still catches a wrongly zero block (3e-7 > 3e-8). Returns |got - fd| / that bound. */
static double grad_check(const float *got, const double *fd, size_t count, double loss)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < count; i++) {
        num += ((double)got[i] - fd[i]) * ((double)got[i] - fd[i]);
        den += fd[i] * fd[i];
    }
    double noise = 1e-15 * fmax(fabs(loss), 1.0) / FD_H * sqrt((double)count);
    return sqrt(num) / (TOL_GRAD * sqrt(den) + noise);
}

typedef struct {
    ag_model_config cfg;
    ag_layer_params *layers;
    float *input, *tensor;
    size_t batch, n;
    ag_loss loss;
} model_case;

/* Random weights at scales that keep every part of the model active: attention scores of
 * order 1, GELU/ReLU inputs on both sides of 0, layernorm gains away from 0. */
static void case_make(model_case *m, ag_model_config cfg, size_t batch, size_t n,
                      ag_loss_kind loss, uint64_t seed)
{
    memset(m, 0, sizeof *m);
    m->cfg = cfg;
    m->batch = batch;
    m->n = n;
    m->layers = calloc((size_t)cfg.n_layers, sizeof *m->layers);
    const double wscale = 1.2 / sqrt((double)cfg.d_model);
    for (int l = 0; l < cfg.n_layers; l++) {
        ck_assert_int_eq(ag_layer_params_alloc(&cfg, &m->layers[l], NULL), AG_OK);
        for (int i = 0; i < AG_P_COUNT; i++) {
            size_t count = ag_param_numel(&cfg, i);
            float *p = m->layers[l].p[i];
            if (!count) continue;
            ref_fill(p, count, i == AG_P_W2 ? 1.2 / sqrt((double)cfg.d_ff) : wscale, &seed);
            if (i == AG_P_LN1_GAMMA || i == AG_P_LN2_GAMMA)
                for (size_t e = 0; e < count; e++) p[e] = 1.0f + 0.3f * p[e];
            if (i == AG_P_LN1_BETA || i == AG_P_LN2_BETA || i == AG_P_B1 || i == AG_P_B2)
                for (size_t e = 0; e < count; e++) p[e] *= 0.3f;
        }
    }
    size_t count = batch * n * (size_t)cfg.d_model;
    m->input = malloc(count * sizeof *m->input);
    ref_fill(m->input, count, 1.0, &seed);
    m->loss.kind = loss;
    if (loss != AG_LOSS_SUM) {
        m->tensor = malloc(count * sizeof *m->tensor);
        ref_fill(m->tensor, count, 1.0, &seed);
        m->loss.tensor = m->tensor;
    }
}

static void case_free(model_case *m)
{
    for (int l = 0; l < m->cfg.n_layers; l++) ag_layer_params_free(&m->layers[l]);
    free(m->layers);
    free(m->input);
    free(m->tensor);
}

static ag_status case_run(const model_case *m, int threads, ag_result *res, ag_error *err)
{
    ag_method method = ag_method_default(AG_METHOD_EXACT);
    ag_run_opts opts = {.threads = threads, .want_output = 1};
    return ag_gradients(&m->cfg, m->layers, m->input, m->batch, m->n, &m->loss, &method,
                        &opts, res, err);
}

/* Every gradient and the output against the double reference; returns the worst error.
 * input_stride > 1 checks only every input_stride-th entry of grad_input (long inputs). */
static double check_reference_sampled(const model_case *m, const char *label,
                                      size_t input_stride)
{
    ag_result res;
    ag_error err = {0};
    ck_assert_msg(case_run(m, 1, &res, &err) == AG_OK, "%s: %s", label, err.message);
    const ag_model_config *cfg = &m->cfg;
    const size_t count = m->batch * m->n * (size_t)cfg->d_model;
    ck_assert_uint_eq(res.batch, m->batch);
    ck_assert_uint_eq(res.n, m->n);
    ck_assert_int_eq(res.n_layers, cfg->n_layers);
    ck_assert_int_eq(res.has_loss, m->loss.kind != AG_LOSS_GRAD_OUTPUT);

    ref_params *rp = calloc((size_t)cfg->n_layers, sizeof *rp);
    for (int l = 0; l < cfg->n_layers; l++) ref_params_from_float(cfg, &m->layers[l], &rp[l]);
    double *x = ref_widen(m->input, count);
    double *t = m->tensor ? ref_widen(m->tensor, count) : NULL;
    double *y = malloc(count * sizeof *y);
    double loss = ref_model_loss(cfg, rp, x, m->batch, m->n, m->loss.kind, t, y);

    double worst = ref_rel_error(res.output, y, count);
    ck_assert_msg(worst < TOL_OUT, "%s: output error %.3g", label, worst);
    if (res.has_loss) {
        double e = fabs(res.loss - loss) / fmax(fabs(loss), 1e-3);
        ck_assert_msg(e < TOL_OUT, "%s: loss %.9g vs %.9g", label, res.loss, loss);
    }

    size_t sampled = (count + input_stride - 1) / input_stride;
    double *g = malloc(sampled * sizeof *g);
    float *got = malloc(sampled * sizeof *got);
    for (size_t k = 0; k < sampled; k++) {
        ref_model_fd(cfg, rp, x, m->batch, m->n, m->loss.kind, t, x + k * input_stride, 1,
                     FD_H, g + k);
        got[k] = res.grad_input[k * input_stride];
    }
    double e = ref_rel_error(got, g, sampled);
    ck_assert_msg(grad_check(got, g, sampled, loss) <= 1.0, "%s: grad_input error %.3g", label,
                  e);
    if (e > worst) worst = e;
    free(g);
    free(got);
    for (int l = 0; l < cfg->n_layers; l++)
        for (int i = 0; i < AG_P_COUNT; i++) {
            size_t pc = ag_param_numel(cfg, i);
            if (!pc) {
                ck_assert_ptr_null(res.grad_layers[l].p[i]);
                continue;
            }
            g = malloc(pc * sizeof *g);
            ref_model_fd(cfg, rp, x, m->batch, m->n, m->loss.kind, t, rp[l].p[i], pc, FD_H, g);
            e = ref_rel_error(res.grad_layers[l].p[i], g, pc);
            ck_assert_msg(grad_check(res.grad_layers[l].p[i], g, pc, loss) <= 1.0,
                          "%s: layers[%d].%s error %.3g", label, l, ag_param_name(i), e);
            if (e > worst) worst = e;
            free(g);
        }
    for (int l = 0; l < cfg->n_layers; l++) {
        for (int h = 0; h < cfg->n_heads; h++) {
            const ag_head_report *r = &res.heads[l * cfg->n_heads + h];
            ck_assert_int_eq(r->method, AG_METHOD_EXACT);
            ck_assert(r->bound >= 0 && isfinite(r->bound));
        }
        ref_params_free(&rp[l]);
    }
    free(rp);
    free(x);
    free(t);
    free(y);
    ag_result_free(&res);
    ck_assert_ptr_null(res.grad_input);
    return worst;
}

static double check_against_reference(const model_case *m, const char *label)
{
    return check_reference_sampled(m, label, 1);
}

/* A covering set of the option axes: all 32 combinations of the five binary axes (norm,
 * activation, residual, d_ff, causal), with heads, batch and loss varied across them. */
START_TEST(test_gradients_vs_finite_differences)
{
    int i = _i;
    ag_model_config cfg = {
        .d_model = 8, .n_layers = 2,
        .norm = (i & 1) ? AG_NORM_LAYERNORM : AG_NORM_NONE,
        .activation = (i & 2) ? AG_ACT_RELU : AG_ACT_GELU,
        .residual = (i >> 2) & 1,
        .d_ff = (i & 8) ? 12 : 0,
        .causal = (i >> 4) & 1,
    };
    cfg.n_heads = ((i * 7) >> 2) & 1 ? 4 : 1;
    size_t batch = ((i * 5 + 3) >> 1) & 1 ? 3 : 1;
    ag_loss_kind loss = (ag_loss_kind)(i % 3);
    model_case m;
    case_make(&m, cfg, batch, 5, loss, 100 + (uint64_t)i);
    char label[160];
    snprintf(label, sizeof label,
             "case %d (norm %d act %d residual %d d_ff %d causal %d heads %d batch %zu loss %d)",
             i, cfg.norm, cfg.activation, cfg.residual, cfg.d_ff, cfg.causal, cfg.n_heads,
             batch, loss);
    check_against_reference(&m, label);
    case_free(&m);
}
END_TEST

/* The paper's pure form and one layer with a single token. */
START_TEST(test_edge_shapes)
{
    ag_model_config pure = {.d_model = 6, .n_heads = 1, .n_layers = 1, .d_ff = 0, .causal = 0,
                            .norm = AG_NORM_NONE, .activation = AG_ACT_GELU, .residual = 0};
    model_case m;
    case_make(&m, pure, 1, 9, AG_LOSS_MSE, 7);
    check_against_reference(&m, "pure form");
    case_free(&m);
    ag_model_config full = {.d_model = 4, .n_heads = 2, .n_layers = 3, .d_ff = 5, .causal = 1,
                            .norm = AG_NORM_LAYERNORM, .activation = AG_ACT_GELU,
                            .residual = 1};
    case_make(&m, full, 2, 1, AG_LOSS_SUM, 8);
    check_against_reference(&m, "n = 1, three layers");
    case_free(&m);
}
END_TEST

static int results_identical(const ag_result *a, const ag_result *b, const ag_model_config *cfg)
{
    size_t count = a->batch * a->n * a->d_model;
    if (a->loss != b->loss || memcmp(a->grad_input, b->grad_input, count * sizeof(float)) ||
        memcmp(a->output, b->output, count * sizeof(float)))
        return 0;
    for (int l = 0; l < cfg->n_layers; l++)
        for (int i = 0; i < AG_P_COUNT; i++) {
            size_t pc = ag_param_numel(cfg, i);
            if (pc && memcmp(a->grad_layers[l].p[i], b->grad_layers[l].p[i], pc * sizeof(float)))
                return 0;
        }
    return 1;
}

/* Sizes with several row blocks and partial-sum groups, so that threads really split work. */
static const ag_model_config mid_cfg = {.d_model = 16, .n_heads = 4, .n_layers = 2, .d_ff = 24,
                                        .causal = 1, .norm = AG_NORM_LAYERNORM,
                                        .activation = AG_ACT_GELU, .residual = 1};

START_TEST(test_threads_identical)
{
    model_case m;
    case_make(&m, mid_cfg, 3, 301, AG_LOSS_MSE, 21);
    ag_result r1, r2, r3;
    ag_error err;
    ck_assert_int_eq(case_run(&m, 1, &r1, &err), AG_OK);
    ck_assert_int_eq(case_run(&m, 2, &r2, &err), AG_OK);
    ck_assert_int_eq(case_run(&m, 5, &r3, &err), AG_OK);
    ck_assert_msg(results_identical(&r1, &r2, &m.cfg), "threads 1 and 2 differ");
    ck_assert_msg(results_identical(&r1, &r3, &m.cfg), "threads 1 and 5 differ");
    ag_result_free(&r1);
    ag_result_free(&r2);
    ag_result_free(&r3);
    case_free(&m);
}
END_TEST

/* One head and one sequence: the model splits the head's queries over threads (n / 128
 * parts, up to 8). Checked against finite differences at n = 260 (2 parts) and for thread
 * independence at n = 1100 (8 parts). */
START_TEST(test_split_head)
{
    for (int causal = 0; causal <= 1; causal++) {
        ag_model_config cfg = {.d_model = 4, .n_heads = 1, .n_layers = 2, .d_ff = 6,
                               .causal = causal, .norm = AG_NORM_LAYERNORM,
                               .activation = AG_ACT_GELU, .residual = 1};
        model_case m;
        case_make(&m, cfg, 1, 260, AG_LOSS_MSE, 80 + (uint64_t)causal);
        check_reference_sampled(&m, causal ? "split head, causal" : "split head", 13);
        case_free(&m);

        cfg.d_model = 8;
        case_make(&m, cfg, 1, 1100, AG_LOSS_SUM, 90 + (uint64_t)causal);
        ag_result r1, r2, r3;
        ag_error err;
        ck_assert_int_eq(case_run(&m, 1, &r1, &err), AG_OK);
        ck_assert_int_eq(case_run(&m, 2, &r2, &err), AG_OK);
        ck_assert_int_eq(case_run(&m, 3, &r3, &err), AG_OK);
        ck_assert_msg(results_identical(&r1, &r2, &m.cfg), "split head: threads 1, 2 differ");
        ck_assert_msg(results_identical(&r1, &r3, &m.cfg), "split head: threads 1, 3 differ");
        /* the same sequence twice: fewer parts per head (4), same gradients up to rounding */
        model_case m2;
        case_make(&m2, cfg, 2, 1100, AG_LOSS_SUM, 90 + (uint64_t)causal);
        size_t count = 1100 * 8;
        memcpy(m2.input, m.input, count * sizeof(float));
        memcpy(m2.input + count, m.input, count * sizeof(float));
        for (int l = 0; l < cfg.n_layers; l++)
            for (int i = 0; i < AG_P_COUNT; i++)
                if (ag_param_numel(&cfg, i))
                    memcpy(m2.layers[l].p[i], m.layers[l].p[i],
                           ag_param_numel(&cfg, i) * sizeof(float));
        ag_result rb;
        ck_assert_int_eq(case_run(&m2, 2, &rb, &err), AG_OK);
        ck_assert_double_lt(ag_rel_error(rb.grad_input, r1.grad_input, count), 1e-5);
        ck_assert_double_lt(ag_rel_error(rb.grad_input + count, r1.grad_input, count), 1e-5);
        for (int i = 0; i < AG_P_COUNT; i++) {
            size_t pc = ag_param_numel(&cfg, i);
            float *twice = malloc(pc * sizeof *twice);
            for (size_t e = 0; e < pc; e++) twice[e] = 0.5f * rb.grad_layers[0].p[i][e];
            ck_assert_msg(ag_rel_error(twice, r1.grad_layers[0].p[i], pc) < 1e-5,
                          "split head: batch of two, %s differs", ag_param_name(i));
            free(twice);
        }
        ag_result_free(&r1);
        ag_result_free(&r2);
        ag_result_free(&r3);
        ag_result_free(&rb);
        case_free(&m);
        case_free(&m2);
    }
}
END_TEST

typedef struct {
    const model_case *m;
    ag_result res;
    ag_status st;
} concurrent_run;

static void *run_thread(void *arg)
{
    concurrent_run *c = arg;
    ag_error err;
    c->st = case_run(c->m, 2, &c->res, &err);
    return NULL;
}

START_TEST(test_concurrent_calls)
{
    model_case a, b;
    case_make(&a, mid_cfg, 2, 257, AG_LOSS_MSE, 31);
    ag_model_config other = mid_cfg;
    other.causal = 0;
    other.activation = AG_ACT_RELU;
    case_make(&b, other, 1, 300, AG_LOSS_SUM, 32);
    ag_result sa, sb;
    ag_error err;
    ck_assert_int_eq(case_run(&a, 2, &sa, &err), AG_OK);
    ck_assert_int_eq(case_run(&b, 2, &sb, &err), AG_OK);
    for (int rep = 0; rep < 3; rep++) {
        concurrent_run ca = {.m = &a}, cb = {.m = &b};
        pthread_t ta, tb;
        ck_assert_int_eq(pthread_create(&ta, NULL, run_thread, &ca), 0);
        ck_assert_int_eq(pthread_create(&tb, NULL, run_thread, &cb), 0);
        pthread_join(ta, NULL);
        pthread_join(tb, NULL);
        ck_assert_int_eq(ca.st, AG_OK);
        ck_assert_int_eq(cb.st, AG_OK);
        ck_assert_msg(results_identical(&ca.res, &sa, &a.cfg), "concurrent run A differs");
        ck_assert_msg(results_identical(&cb.res, &sb, &b.cfg), "concurrent run B differs");
        ag_result_free(&ca.res);
        ag_result_free(&cb.res);
    }
    ag_result_free(&sa);
    ag_result_free(&sb);
    case_free(&a);
    case_free(&b);
}
END_TEST

typedef struct {
    double values[4096];
    int count;
    atomic_int *cancel_at_half; /* raise this flag once progress passes 0.5 */
} progress_log;

static void on_progress(void *ctx, double f)
{
    progress_log *p = ctx;
    if (p->count < 4096) p->values[p->count++] = f;
    if (p->cancel_at_half && f > 0.5) atomic_store(p->cancel_at_half, 1);
}

START_TEST(test_progress)
{
    model_case m;
    case_make(&m, mid_cfg, 2, 200, AG_LOSS_MSE, 41);
    progress_log log = {.count = 0};
    ag_method method = ag_method_default(AG_METHOD_EXACT);
    ag_run_opts opts = {.threads = 2, .progress = on_progress, .progress_ctx = &log};
    ag_result res;
    ag_error err;
    ck_assert_int_eq(ag_gradients(&m.cfg, m.layers, m.input, m.batch, m.n, &m.loss, &method,
                                  &opts, &res, &err), AG_OK);
    /* at least once per layer forward and backward, and per head group */
    ck_assert_int_ge(log.count, 4 * m.cfg.n_layers);
    ck_assert(log.values[0] >= 0.0);
    for (int i = 1; i < log.count; i++)
        ck_assert_msg(log.values[i] >= log.values[i - 1], "progress went back at %d: %g < %g",
                      i, log.values[i], log.values[i - 1]);
    ck_assert_double_eq(log.values[log.count - 1], 1.0);
    ck_assert_ptr_null(res.output); /* want_output = 0 */
    ag_result_free(&res);
    case_free(&m);
}
END_TEST

START_TEST(test_cancel)
{
    model_case m;
    case_make(&m, mid_cfg, 2, 300, AG_LOSS_MSE, 51);
    ag_method method = ag_method_default(AG_METHOD_EXACT);
    atomic_int flag = 1;
    ag_run_opts opts = {.threads = 2, .cancel = &flag};
    ag_result res;
    ag_error err = {0};
    ck_assert_int_eq(ag_gradients(&m.cfg, m.layers, m.input, m.batch, m.n, &m.loss, &method,
                                  &opts, &res, &err), AG_ERR_CANCELLED);
    ck_assert_int_eq(err.status, AG_ERR_CANCELLED);
    ck_assert_ptr_null(res.grad_input);
    ck_assert_ptr_null(res.grad_layers);
    ag_result_free(&res); /* empty result: must be safe */

    /* raised half-way, from the progress callback: stops at the next checkpoint */
    atomic_store(&flag, 0);
    progress_log log = {.count = 0, .cancel_at_half = &flag};
    opts.progress = on_progress;
    opts.progress_ctx = &log;
    ck_assert_int_eq(ag_gradients(&m.cfg, m.layers, m.input, m.batch, m.n, &m.loss, &method,
                                  &opts, &res, &err), AG_ERR_CANCELLED);
    ck_assert_ptr_null(res.grad_input);
    ck_assert(log.values[log.count - 1] < 1.0);
    case_free(&m);
}
END_TEST

START_TEST(test_bad_arguments)
{
    model_case m;
    case_make(&m, mid_cfg, 1, 4, AG_LOSS_MSE, 61);
    ag_method exact = ag_method_default(AG_METHOD_EXACT);
    ag_result res;
    ag_error err;
#define EXPECT(want, field_prefix, call)                                                    \
    do {                                                                                     \
        memset(&err, 0, sizeof err);                                                         \
        ck_assert_int_eq((call), want);                                                      \
        ck_assert_int_eq(err.status, want);                                                  \
        ck_assert_msg(strncmp(err.field, field_prefix, strlen(field_prefix)) == 0,           \
                      "field '%s', expected '%s'", err.field, field_prefix);                \
        ck_assert(err.message[0] != 0);                                                      \
        ck_assert_ptr_null(res.grad_input);                                                  \
    } while (0)

    EXPECT(AG_ERR_INVALID, "model", ag_gradients(NULL, m.layers, m.input, 1, 4, &m.loss,
                                                 &exact, NULL, &res, &err));
    EXPECT(AG_ERR_INVALID, "layers", ag_gradients(&m.cfg, NULL, m.input, 1, 4, &m.loss,
                                                  &exact, NULL, &res, &err));
    EXPECT(AG_ERR_INVALID, "input", ag_gradients(&m.cfg, m.layers, NULL, 1, 4, &m.loss,
                                                 &exact, NULL, &res, &err));
    EXPECT(AG_ERR_INVALID, "input", ag_gradients(&m.cfg, m.layers, m.input, 1, 0, &m.loss,
                                                 &exact, NULL, &res, &err));
    EXPECT(AG_ERR_INVALID, "input", ag_gradients(&m.cfg, m.layers, m.input, 0, 4, &m.loss,
                                                 &exact, NULL, &res, &err));
    EXPECT(AG_ERR_INVALID, "loss", ag_gradients(&m.cfg, m.layers, m.input, 1, 4, NULL,
                                                &exact, NULL, &res, &err));
    EXPECT(AG_ERR_INVALID, "method", ag_gradients(&m.cfg, m.layers, m.input, 1, 4, &m.loss,
                                                  NULL, NULL, &res, &err));
    ck_assert_int_eq(ag_gradients(&m.cfg, m.layers, m.input, 1, 4, &m.loss, &exact, NULL,
                                  NULL, &err), AG_ERR_INVALID);
    /* NULL err is fine too */
    ck_assert_int_eq(ag_gradients(&m.cfg, m.layers, m.input, 1, 0, &m.loss, &exact, NULL, &res,
                                  NULL), AG_ERR_INVALID);

    /* missing loss tensors */
    ag_loss mse = {.kind = AG_LOSS_MSE, .tensor = NULL};
    EXPECT(AG_ERR_INVALID, "loss.target", ag_gradients(&m.cfg, m.layers, m.input, 1, 4, &mse,
                                                       &exact, NULL, &res, &err));
    ag_loss go = {.kind = AG_LOSS_GRAD_OUTPUT, .tensor = NULL};
    EXPECT(AG_ERR_INVALID, "loss.grad", ag_gradients(&m.cfg, m.layers, m.input, 1, 4, &go,
                                                     &exact, NULL, &res, &err));
    ag_loss weird = {.kind = (ag_loss_kind)42, .tensor = m.tensor};
    EXPECT(AG_ERR_INVALID, "loss", ag_gradients(&m.cfg, m.layers, m.input, 1, 4, &weird,
                                                &exact, NULL, &res, &err));

    /* invalid configs: heads not dividing d_model, no layers, negative d_ff */
    ag_model_config bad = m.cfg;
    bad.n_heads = 3;
    EXPECT(AG_ERR_INVALID, "model.n_heads", ag_gradients(&bad, m.layers, m.input, 1, 4,
                                                         &m.loss, &exact, NULL, &res, &err));
    bad = m.cfg;
    bad.n_layers = 0;
    EXPECT(AG_ERR_INVALID, "model.n_layers", ag_gradients(&bad, m.layers, m.input, 1, 4,
                                                          &m.loss, &exact, NULL, &res, &err));
    bad = m.cfg;
    bad.d_ff = -1;
    EXPECT(AG_ERR_INVALID, "model.d_ff", ag_gradients(&bad, m.layers, m.input, 1, 4, &m.loss,
                                                      &exact, NULL, &res, &err));

    /* parameters that do not match the config: a config wanting an MLP given layers
     * without one (the mismatch shows up as a missing parameter), and a NULL weight */
    ag_model_config no_mlp = m.cfg;
    no_mlp.d_ff = 0;
    no_mlp.norm = AG_NORM_NONE;
    model_case small;
    case_make(&small, no_mlp, 1, 4, AG_LOSS_MSE, 62);
    EXPECT(AG_ERR_INVALID, "layers[0].ln1_gamma",
           ag_gradients(&m.cfg, small.layers, m.input, 1, 4, &m.loss, &exact, NULL, &res,
                        &err));
    float *keep = m.layers[1].p[AG_P_W1];
    m.layers[1].p[AG_P_W1] = NULL;
    EXPECT(AG_ERR_INVALID, "layers[1].w1", ag_gradients(&m.cfg, m.layers, m.input, 1, 4,
                                                        &m.loss, &exact, NULL, &res, &err));
    m.layers[1].p[AG_P_W1] = keep;

    /* methods out of range */
    ag_method a = ag_method_default(AG_METHOD_APPROX);
    a.epsilon = 2;
    EXPECT(AG_ERR_INVALID, "method.epsilon", ag_gradients(&m.cfg, m.layers, m.input, 1, 4,
                                                          &m.loss, &a, NULL, &res, &err));
    a = ag_method_default(AG_METHOD_APPROX);
    a.degree = AG_MAX_DEGREE + 1;
    EXPECT(AG_ERR_INVALID, "method.degree", ag_gradients(&m.cfg, m.layers, m.input, 1, 4,
                                                         &m.loss, &a, NULL, &res, &err));
    ag_method k = {.kind = (ag_method_kind)9};
    EXPECT(AG_ERR_INVALID, "method", ag_gradients(&m.cfg, m.layers, m.input, 1, 4, &m.loss,
                                                  &k, NULL, &res, &err));

    /* sizes whose products overflow: refused before any allocation */
    EXPECT(AG_ERR_LIMIT, "input", ag_gradients(&m.cfg, m.layers, m.input, SIZE_MAX / 2, 4,
                                               &m.loss, &exact, NULL, &res, &err));
    /* the same call works with good arguments and NULL opts */
    ck_assert_int_eq(ag_gradients(&m.cfg, m.layers, m.input, 1, 4, &m.loss, &exact, NULL,
                                  &res, &err), AG_OK);
    ag_result_free(&res);
    ag_result_free(NULL);
    case_free(&small);
    case_free(&m);
#undef EXPECT
}
END_TEST

/* Allocation failure: with the address space capped (in Check's forked child), a job too big
 * for it fails with AG_ERR_NOMEM and an empty result instead of crashing. The cancel flag is
 * raised so that, should the allocation wrongly succeed, the test ends at once (CANCELLED).
 * Skipped under AddressSanitizer, whose shadow memory needs terabytes of address space. */
START_TEST(test_out_of_memory)
{
#if defined(__SANITIZE_ADDRESS__)
    return;
#else
    ag_model_config cfg = {.d_model = 64, .n_heads = 8, .n_layers = 2, .d_ff = 256,
                           .causal = 0, .norm = AG_NORM_LAYERNORM, .activation = AG_ACT_GELU,
                           .residual = 1};
    const size_t n = 65536; /* ~450 MB of activations */
    model_case m;
    case_make(&m, cfg, 1, 4, AG_LOSS_SUM, 3);
    float *x = calloc(n * 64, sizeof *x);
    ck_assert_ptr_nonnull(x);
    FILE *f = fopen("/proc/self/statm", "r");
    ck_assert_ptr_nonnull(f);
    unsigned long pages = 0;
    ck_assert_int_eq(fscanf(f, "%lu", &pages), 1);
    fclose(f);
    struct rlimit old, lim;
    ck_assert_int_eq(getrlimit(RLIMIT_AS, &old), 0);
    lim = old;
    lim.rlim_cur = pages * 4096ul + (128ul << 20);
    ck_assert_int_eq(setrlimit(RLIMIT_AS, &lim), 0);
    atomic_int cancel = 1;
    ag_method exact = ag_method_default(AG_METHOD_EXACT);
    ag_run_opts opts = {.threads = 2, .cancel = &cancel};
    ag_loss loss = {.kind = AG_LOSS_SUM};
    ag_result res;
    ag_error err = {0};
    ag_status st = ag_gradients(&cfg, m.layers, x, 1, n, &loss, &exact, &opts, &res, &err);
    setrlimit(RLIMIT_AS, &old); /* in case Check runs without fork (CK_FORK=no) */
    ck_assert_int_eq(st, AG_ERR_NOMEM);
    ck_assert_int_eq(err.status, AG_ERR_NOMEM);
    ck_assert_ptr_null(res.grad_input);
    ck_assert_ptr_null(res.grad_layers);
    free(x);
    case_free(&m);
#endif
}
END_TEST

START_TEST(test_workspace_estimate)
{
    ag_method exact = ag_method_default(AG_METHOD_EXACT);
    ag_model_config cfg = {.d_model = 64, .n_heads = 8, .n_layers = 2, .d_ff = 256,
                           .causal = 1, .norm = AG_NORM_LAYERNORM, .activation = AG_ACT_GELU,
                           .residual = 1};
    size_t a = ag_gradients_workspace_bytes(&cfg, 1, 1024, &exact);
    size_t b = ag_gradients_workspace_bytes(&cfg, 1, 4096, &exact);
    size_t c = ag_gradients_workspace_bytes(&cfg, 4, 4096, &exact);
    ck_assert(a > 0 && a < b && b < c && c != SIZE_MAX);
    /* at least the activations it must keep: 2 layers x (Q K V ctx h y) + z, in bytes */
    ck_assert_uint_ge(b, (size_t)2 * (6 * 4096 * 64 + 4096 * 256) * 4);
    ck_assert_uint_eq(ag_gradients_workspace_bytes(&cfg, SIZE_MAX / 4, 1024, &exact), SIZE_MAX);
    ck_assert_uint_eq(ag_gradients_workspace_bytes(&cfg, 0, 1024, &exact), SIZE_MAX);
    ck_assert_uint_eq(ag_gradients_workspace_bytes(NULL, 1, 1024, &exact), SIZE_MAX);
    /* approximate, non-causal: also the keys' states kept from forward to backward, every
     * head of both layers at the default rank ceiling (2 x 8 x 20000 x 9 floats) */
    ag_method approx = ag_method_default(AG_METHOD_APPROX);
    cfg.causal = 0;
    size_t e = ag_gradients_workspace_bytes(&cfg, 1, 4096, &exact);
    size_t ap = ag_gradients_workspace_bytes(&cfg, 1, 4096, &approx);
    ck_assert(ap != SIZE_MAX && e != SIZE_MAX);
    ck_assert_uint_ge(ap - e, ag_attn_approx_workspace_bytes(8, AG_DEFAULT_RANK_CEILING, 0) +
                                  (size_t)2 * 8 * 20000 * 9 * sizeof(float));
    cfg.causal = 1; /* causal heads keep no state */
    size_t ac = ag_gradients_workspace_bytes(&cfg, 1, 4096, &approx);
    ck_assert_uint_lt(ac - b, ap - e);
    cfg.n_heads = 7;
    ck_assert_uint_eq(ag_gradients_workspace_bytes(&cfg, 1, 1024, &exact), SIZE_MAX);
}
END_TEST

/* Method auto runs end to end and reports a valid plan per head (which one it picks is the
 * approximation's business, tested in test_approx_model). */
START_TEST(test_auto_method_runs)
{
    model_case m;
    case_make(&m, mid_cfg, 1, 64, AG_LOSS_SUM, 71);
    ag_method method = ag_method_default(AG_METHOD_AUTO);
    ag_run_opts opts = {.threads = 2};
    ag_result res;
    ag_error err = {0};
    ag_status st = ag_gradients(&m.cfg, m.layers, m.input, m.batch, m.n, &m.loss, &method,
                                &opts, &res, &err);
    ck_assert_msg(st == AG_OK, "auto failed: %s", err.message);
    for (int i = 0; i < m.cfg.n_layers * m.cfg.n_heads; i++) {
        ck_assert(res.heads[i].method == AG_METHOD_EXACT ||
                  res.heads[i].method == AG_METHOD_APPROX);
        ck_assert(res.heads[i].reason != NULL);
    }
    size_t count = m.n * (size_t)m.cfg.d_model;
    for (size_t i = 0; i < count; i++) ck_assert(isfinite(res.grad_input[i]));
    ag_result_free(&res);
    case_free(&m);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("model");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 600);
    tcase_add_loop_test(tc, test_gradients_vs_finite_differences, 0, 32);
    tcase_add_test(tc, test_edge_shapes);
    tcase_add_test(tc, test_threads_identical);
    tcase_add_test(tc, test_split_head);
    tcase_add_test(tc, test_concurrent_calls);
    tcase_add_test(tc, test_progress);
    tcase_add_test(tc, test_cancel);
    tcase_add_test(tc, test_bad_arguments);
    tcase_add_test(tc, test_out_of_memory);
    tcase_add_test(tc, test_workspace_estimate);
    tcase_add_test(tc, test_auto_method_runs);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
