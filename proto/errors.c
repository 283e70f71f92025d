/* Errors of the wire format: the one setter, their JSON body both ways, the core-to-API
 * mapping; the limits; field paths and type names for messages. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "proto_internal.h"

int ag_proto_fail(ag_proto_error *err, int http_status, const char *code, const char *field,
                  const char *fmt, ...)
{
    if (!err) return -1;
    err->http_status = http_status;
    snprintf(err->code, sizeof err->code, "%s", code ? code : "");
    snprintf(err->field, sizeof err->field, "%s", field ? field : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    return -1;
}

char *ag_error_encode(const ag_proto_error *err, size_t *len)
{
    ag_buf b = {0};
    ag_buf_reserve(&b, 64 + 2 * (sizeof err->code + sizeof err->field + sizeof err->message));
    ag_buf_puts(&b, "{\"error\":{\"code\":");
    ag_buf_json_string(&b, err->code, strnlen(err->code, sizeof err->code));
    ag_buf_puts(&b, ",\"message\":");
    ag_buf_json_string(&b, err->message, strnlen(err->message, sizeof err->message));
    ag_buf_puts(&b, ",\"field\":");
    ag_buf_json_string(&b, err->field, strnlen(err->field, sizeof err->field));
    ag_buf_puts(&b, "}}");
    return ag_buf_finish(&b, len);
}

int ag_proto_error_from_json(const json_t *e, const char *no_code, ag_proto_error *err)
{
    const char *code = json_string_value(json_object_get(e, "code"));
    const char *msg = json_string_value(json_object_get(e, "message"));
    const char *field = json_string_value(json_object_get(e, "field"));
    ag_proto_fail(err, 0, code ? code : no_code, field ? field : "", "%s", msg ? msg : "");
    return code || msg;
}

int ag_proto_error_decode(const char *body, size_t len, ag_proto_error *err)
{
    json_error_t jerr;
    json_t *root = body ? json_loadb(body, len, 0, &jerr) : NULL;
    json_t *e = json_object_get(root, "error");
    ag_proto_error got;
    int rc = json_is_object(e) && ag_proto_error_from_json(e, "", &got) ? 0 : -1;
    json_decref(root);
    if (rc == 0) *err = got;
    return rc;
}

void ag_proto_from_core(const ag_error *core, ag_proto_error *err)
{
    int status = 500;
    const char *code = "internal_error";
    switch (core->status) {
    case AG_ERR_INVALID: status = 400; code = "invalid_request"; break;
    case AG_ERR_UNREACHABLE: status = 400; code = "epsilon_unreachable"; break;
    case AG_ERR_LIMIT: status = 400; code = "limit_exceeded"; break;
    /* Only the server raises the cancel flag (DELETE, timeout, shutdown): the request was
     * fine but the service gave up on it. */
    case AG_ERR_CANCELLED: status = 503; code = "cancelled"; break;
    case AG_ERR_NOMEM: status = 500; code = "out_of_memory"; break;
    case AG_OK: break;
    }
    ag_proto_fail(err, status, code, core->field, "%s",
                  core->message[0] ? core->message : ag_status_name(core->status));
}

ag_proto_limits ag_proto_limits_default(void)
{
    ag_proto_limits l = {
        .max_elements = (size_t)64 << 20,
        .max_tensor_elements = (size_t)16 << 20,
        .max_layers = 64,
        .max_d_model = 4096,
        .max_d_ff = 16384,
        .max_tokens = (size_t)1 << 20,
    };
    return l;
}

void ag_proto_path_key(char *out, size_t cap, const char *parent, const char *key)
{
    if (parent && parent[0])
        snprintf(out, cap, "%s.%s", parent, key);
    else
        snprintf(out, cap, "%s", key);
}

void ag_proto_path_index(char *out, size_t cap, const char *parent, size_t i)
{
    snprintf(out, cap, "%s[%zu]", parent ? parent : "", i);
}

const char *ag_proto_json_type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a real number";
    case JSON_TRUE: case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "?";
}
