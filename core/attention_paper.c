/* Route paper (AG_ROUTE_PAPER): the paper's Algorithm 1 for the gradient of the approximate
 * attention, O(n r d_head^2) (DESIGN.md point 5, paper.md section 3). NOT IMPLEMENTED YET:
 * this file is the seam where it goes. It may reuse ag_approx_head_init / ag_approx_load_t
 * (core/approx_internal.h) for the key centring, the balanced scalings and the feature map,
 * and must accumulate (+=) into dq, dk, dv like the features route, including the centring's
 * gradient dk_j -= mean(dk').
 */
#include "approx_internal.h"

ag_status ag_attn_approx_backward_paper(const ag_attn_shape *s, const ag_head_plan *plan,
                                        const float *q, const float *k, const float *v,
                                        const float *o, const float *row_stat,
                                        const float *dout, float *dq, float *dk, float *dv,
                                        ag_error *err)
{
    (void)s; (void)plan; (void)q; (void)k; (void)v; (void)o; (void)row_stat; (void)dout;
    (void)dq; (void)dk; (void)dv;
    return ag_error_set(err, AG_ERR_INVALID, "method.route", "route paper not implemented");
}
