/* The method contract: the one check of an ag_method's values. Every layer that accepts a
 * method runs it (core before it plans a head, proto after decoding a request, the client
 * before it sends one, the CLI after parsing its flags), so each rule has one message. The
 * messages name the wire's field path first ("method.epsilon: ..."), as proto's own do, and
 * err->field holds the same path. */
#include "altgrad.h"

ag_status ag_method_degree_check(long long degree, ag_error *err)
{
    if (degree >= 1 && degree <= AG_MAX_DEGREE) return AG_OK;
    return ag_error_set(err, AG_ERR_INVALID, "method.degree",
                        "method.degree: must be an integer from 1 to %d, got %lld", AG_MAX_DEGREE,
                        degree);
}

ag_status ag_method_check(const ag_method *m, ag_error *err)
{
    if (!m) return ag_error_set(err, AG_ERR_INVALID, "method", "method: missing");
    if (m->kind != AG_METHOD_EXACT && m->kind != AG_METHOD_APPROX && m->kind != AG_METHOD_AUTO)
        return ag_error_set(err, AG_ERR_INVALID, "method.name",
                            "method.name: expected \"%s\", \"%s\" or \"%s\"",
                            ag_method_name(AG_METHOD_EXACT), ag_method_name(AG_METHOD_APPROX),
                            ag_method_name(AG_METHOD_AUTO));
    if (m->kind == AG_METHOD_EXACT) return AG_OK;
    if (m->degree != 0) {
        ag_status st = ag_method_degree_check(m->degree, err);
        if (st != AG_OK) return st;
    } else if (!(m->epsilon > 0 && m->epsilon < 1)) {
        return ag_error_set(err, AG_ERR_INVALID, "method.epsilon",
                            "method.epsilon: must lie strictly between 0 and 1, got %g",
                            m->epsilon);
    }
    if (m->route != AG_ROUTE_FEATURES && m->route != AG_ROUTE_PAPER)
        return ag_error_set(err, AG_ERR_INVALID, "method.route",
                            "method.route: expected \"%s\" or \"%s\"",
                            ag_route_name(AG_ROUTE_FEATURES), ag_route_name(AG_ROUTE_PAPER));
    if (m->poly != AG_POLY_CHEBYSHEV && m->poly != AG_POLY_TAYLOR)
        return ag_error_set(err, AG_ERR_INVALID, "method.poly",
                            "method.poly: expected \"%s\" or \"%s\"",
                            ag_poly_name(AG_POLY_CHEBYSHEV), ag_poly_name(AG_POLY_TAYLOR));
    return AG_OK;
}
