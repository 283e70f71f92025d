/* Errors, names and parameter bookkeeping shared by every part of the core. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "altgrad.h"

ag_status ag_error_set(ag_error *err, ag_status status, const char *field, const char *fmt, ...)
{
    if (!err) return status;
    err->status = status;
    snprintf(err->field, sizeof err->field, "%s", field ? field : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    return status;
}

const char *ag_status_name(ag_status status)
{
    switch (status) {
    case AG_OK: return "ok";
    case AG_ERR_INVALID: return "invalid";
    case AG_ERR_NOMEM: return "out_of_memory";
    case AG_ERR_CANCELLED: return "cancelled";
    case AG_ERR_UNREACHABLE: return "epsilon_unreachable";
    case AG_ERR_LIMIT: return "limit_exceeded";
    }
    return "unknown";
}

ag_status ag_model_config_check(const ag_model_config *cfg, ag_error *err)
{
    if (!cfg) return ag_error_set(err, AG_ERR_INVALID, "model", "missing model");
    if (cfg->d_model < 1)
        return ag_error_set(err, AG_ERR_INVALID, "model.d_model", "d_model must be >= 1, got %d",
                            cfg->d_model);
    if (cfg->n_heads < 1)
        return ag_error_set(err, AG_ERR_INVALID, "model.n_heads", "n_heads must be >= 1, got %d",
                            cfg->n_heads);
    if (cfg->d_model % cfg->n_heads != 0)
        return ag_error_set(err, AG_ERR_INVALID, "model.n_heads",
                            "d_model (%d) must be divisible by n_heads (%d)", cfg->d_model,
                            cfg->n_heads);
    if (cfg->n_layers < 1)
        return ag_error_set(err, AG_ERR_INVALID, "model.n_layers",
                            "n_layers must be >= 1, got %d", cfg->n_layers);
    if (cfg->d_ff < 0)
        return ag_error_set(err, AG_ERR_INVALID, "model.d_ff", "d_ff must be >= 0, got %d",
                            cfg->d_ff);
    if (cfg->norm != AG_NORM_NONE && cfg->norm != AG_NORM_LAYERNORM)
        return ag_error_set(err, AG_ERR_INVALID, "model.norm", "unknown norm");
    if (cfg->activation != AG_ACT_GELU && cfg->activation != AG_ACT_RELU)
        return ag_error_set(err, AG_ERR_INVALID, "model.activation", "unknown activation");
    return AG_OK;
}

static const char *const param_names[AG_P_COUNT] = {
    "wq", "wk", "wv", "wo", "ln1_gamma", "ln1_beta", "ln2_gamma", "ln2_beta",
    "w1", "b1", "w2", "b2",
};

const char *ag_param_name(int idx)
{
    return idx >= 0 && idx < AG_P_COUNT ? param_names[idx] : "?";
}

int ag_param_index(const char *name)
{
    for (int i = 0; i < AG_P_COUNT; i++)
        if (strcmp(name, param_names[i]) == 0) return i;
    return -1;
}

int ag_param_shape(const ag_model_config *cfg, int idx, size_t shape[2])
{
    size_t d = (size_t)cfg->d_model, f = (size_t)cfg->d_ff;
    int ln = cfg->norm == AG_NORM_LAYERNORM, mlp = cfg->d_ff > 0;
    switch (idx) {
    case AG_P_WQ: case AG_P_WK: case AG_P_WV: case AG_P_WO:
        shape[0] = d; shape[1] = d; return 2;
    case AG_P_LN1_GAMMA: case AG_P_LN1_BETA:
        if (!ln) return 0;
        shape[0] = d; return 1;
    case AG_P_LN2_GAMMA: case AG_P_LN2_BETA:
        if (!ln || !mlp) return 0;
        shape[0] = d; return 1;
    case AG_P_W1:
        if (!mlp) return 0;
        shape[0] = d; shape[1] = f; return 2;
    case AG_P_B1:
        if (!mlp) return 0;
        shape[0] = f; return 1;
    case AG_P_W2:
        if (!mlp) return 0;
        shape[0] = f; shape[1] = d; return 2;
    case AG_P_B2:
        if (!mlp) return 0;
        shape[0] = d; return 1;
    }
    return 0;
}

size_t ag_param_numel(const ag_model_config *cfg, int idx)
{
    size_t shape[2];
    int nd = ag_param_shape(cfg, idx, shape);
    if (nd == 0) return 0;
    return nd == 1 ? shape[0] : shape[0] * shape[1];
}

ag_status ag_layer_params_alloc(const ag_model_config *cfg, ag_layer_params *params, ag_error *err)
{
    memset(params, 0, sizeof *params);
    size_t total = 0;
    for (int i = 0; i < AG_P_COUNT; i++) total += ag_param_numel(cfg, i);
    float *block = calloc(total ? total : 1, sizeof(float));
    if (!block) return ag_error_set(err, AG_ERR_NOMEM, "", "out of memory for layer parameters");
    size_t off = 0;
    for (int i = 0; i < AG_P_COUNT; i++) {
        size_t count = ag_param_numel(cfg, i);
        params->p[i] = count ? block + off : NULL;
        off += count;
    }
    params->block = block;
    return AG_OK;
}

void ag_layer_params_free(ag_layer_params *params)
{
    if (!params) return;
    free(params->block);
    memset(params, 0, sizeof *params);
}

ag_method ag_method_default(ag_method_kind kind)
{
    ag_method m = {.kind = kind, .epsilon = AG_DEFAULT_EPSILON, .degree = 0,
                   .route = AG_ROUTE_FEATURES, .poly = AG_POLY_CHEBYSHEV};
    return m;
}

const char *ag_method_name(ag_method_kind kind)
{
    switch (kind) {
    case AG_METHOD_EXACT: return "exact";
    case AG_METHOD_APPROX: return "approx";
    case AG_METHOD_AUTO: return "auto";
    }
    return "?";
}

const char *ag_route_name(ag_route route)
{
    return route == AG_ROUTE_PAPER ? "paper" : "features";
}

const char *ag_poly_name(ag_poly poly)
{
    return poly == AG_POLY_TAYLOR ? "taylor" : "chebyshev";
}

double ag_rel_error(const float *a, const float *b, size_t count)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < count; i++) {
        double d = (double)a[i] - (double)b[i];
        num += d * d;
        den += (double)b[i] * (double)b[i];
    }
    return sqrt(num) / (den > 0 ? sqrt(den) : 1e-30);
}
