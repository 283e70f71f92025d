/* PLACEHOLDER until the approximation lands: only the exact plan is available. */
#include <math.h>
#include "attention.h"

ag_cost_model ag_cost_model_default(void)
{
    ag_cost_model m = {.exact_s_per_flop = 1.0 / 90e9, .approx_s_per_flop = 1.0 / 60e9};
    return m;
}

ag_status ag_cost_model_calibrate(ag_cost_model *model, ag_error *err)
{
    (void)err;
    *model = ag_cost_model_default();
    return AG_OK;
}

double ag_attn_score_bound(const ag_attn_shape *s, const float *q, const float *k)
{
    (void)s; (void)q; (void)k;
    return 0;
}

ag_status ag_head_plan_choose(const ag_method *method, size_t d_head, size_t n, int causal,
                              double R, const ag_cost_model *cost, size_t rank_ceiling,
                              ag_head_plan *plan, ag_error *err)
{
    (void)d_head; (void)n; (void)causal; (void)cost; (void)rank_ceiling;
    *plan = (ag_head_plan){0};
    plan->report.method = AG_METHOD_EXACT;
    plan->report.bound = R;
    plan->report.reason = "exact requested";
    if (method->kind == AG_METHOD_EXACT) return AG_OK;
    return ag_error_set(err, AG_ERR_UNREACHABLE, "method", "approximation not available yet");
}

ag_status ag_attn_approx_forward(const ag_attn_shape *s, const ag_head_plan *plan,
                                 const float *q, const float *k, const float *v, float *o,
                                 float *row_stat, ag_error *err)
{
    (void)s; (void)plan; (void)q; (void)k; (void)v; (void)o; (void)row_stat;
    return ag_error_set(err, AG_ERR_INVALID, "method", "approximation not available yet");
}

ag_status ag_attn_approx_backward(const ag_attn_shape *s, const ag_head_plan *plan,
                                  const float *q, const float *k, const float *v,
                                  const float *o, const float *row_stat, const float *dout,
                                  float *dq, float *dk, float *dv, ag_error *err)
{
    (void)s; (void)plan; (void)q; (void)k; (void)v; (void)o; (void)row_stat; (void)dout;
    (void)dq; (void)dk; (void)dv;
    return ag_error_set(err, AG_ERR_INVALID, "method", "approximation not available yet");
}
