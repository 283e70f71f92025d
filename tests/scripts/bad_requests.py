#!/usr/bin/env python3
"""A table of malformed and hostile requests against a real altgradd (issue 8): each must be
answered with the right status and a JSON error {"error": {"code", "message", "field"}}
naming the field at fault, and the server must stay healthy (and, in the ASan build, clean).

    ALTGRAD_SERVER=build/altgradd python3 tests/scripts/bad_requests.py

A few requests are refused by libmicrohttpd itself before any handler sees them (a request
line or header block it cannot parse, or larger than its 128 KiB connection pool): those
carry its own short HTML body (or, for bytes that are not HTTP at all, just a close), and
the table checks only their status (docs/hardening.md).
"""
import copy
import json
import sys
import time

sys.path.insert(0, __import__("os").path.dirname(__file__))
from hardening_lib import Server, build, dumps, make_request, raw, request  # noqa: E402

JSON = {"Content-Type": "application/json", "Connection": "close"}
BASE = make_request(d=8, heads=2, ff=16, n=4, seed=3)
BASE_B64 = make_request(d=8, heads=2, ff=16, n=4, seed=3, b64=True)
ID = "0123456789abcdef0123456789abcdef"


def mut(fn, base=BASE):
    r = copy.deepcopy(base)
    fn(r)
    return dumps(r)


def setp(path, value):
    def f(r):
        o = r
        for k in path[:-1]:
            o = o[k]
        o[path[-1]] = value
    return f


def delp(path):
    def f(r):
        o = r
        for k in path[:-1]:
            o = o[k]
        del o[path[-1]]
    return f


def post(body, headers=None, path="/v1/gradients", **kw):
    h = dict(JSON)
    h.update(headers or {})
    return build("POST", path, body, h, **kw)


def get(path, method="GET", headers=None):
    h = {"Connection": "close"}
    h.update(headers or {})
    return build(method, path, None, h)


def f32_b64(*vals):
    import base64
    import struct
    return base64.b64encode(struct.pack("<%df" % len(vals), *vals)).decode()


def f64_b64(*vals):
    import base64
    import struct
    return base64.b64encode(struct.pack("<%dd" % len(vals), *vals)).decode()


def huge_declared(d, ff):
    """A model of width d whose weights declare their full shapes but hold one number."""
    def t(*shape):
        return {"shape": list(shape), "data": [0.5]}
    layer = {k: t(d, d) for k in ("wq", "wk", "wv", "wo")}
    if ff:
        layer.update(w1=t(d, ff), b1=t(ff), w2=t(ff, d), b2=t(d))
    return {"model": {"d_model": d, "n_heads": 2, "n_layers": 1, "d_ff": ff, "causal": True,
                      "norm": "none", "activation": "gelu", "residual": True},
            "layers": [layer], "input": t(4, d), "loss": {"type": "sum"}}


def bad_char(text, at=10):
    return text[:at] + "!" + text[at + 1:]


base_text = dumps(BASE)
nan = float("nan")
inf = float("inf")
MHD = None  # libmicrohttpd's own answer: status only

# (name, raw request bytes, status, code, field)   code/field None: not checked
CASES = [
    # ---- bodies that are not JSON, or not the right JSON -----------------------------------
    ("empty body", post(""), 400, "invalid_json", ""),
    ("truncated JSON", post(base_text[:150]), 400, "invalid_json", ""),
    ("truncated at the end", post(base_text[:-1]), 400, "invalid_json", ""),
    ("not JSON at all", post("model=1&layers=2"), 400, "invalid_json", ""),
    ("single quotes", post("{'model': 1}"), 400, "invalid_json", ""),
    ("trailing garbage", post(base_text + "x"), 400, "invalid_json", ""),
    ("top-level array", post("[1, 2, 3]"), 400, "invalid_type", ""),
    ("top-level string", post("\"model\""), 400, "invalid_json", ""),
    ("top-level null", post("null"), 400, "invalid_json", ""),
    ("NUL byte in a string", post(base_text.replace("\"exact\"", "\"ex\\u0000act\"")), 400,
     "invalid_json", ""),
    ("invalid UTF-8", post(base_text.encode().replace(b"\"exact\"", b"\"\xff\xfe\"")), 400,
     "invalid_json", ""),
    ("deep nesting (arrays)", post("[" * 100000 + "]" * 100000), 400, "invalid_json", ""),
    ("deep nesting inside model", post("{\"model\":" + "[" * 5000 + "]" * 5000 + "}"), 400,
     "invalid_json", ""),
    ("deep nesting of objects", post("{\"a\":" * 3000 + "1" + "}" * 3000), 400,
     "invalid_json", ""),
    ("duplicate top-level key", post(base_text.replace("{\"model\":", "{\"verify\":false,"
                                                       "\"verify\":true,\"model\":", 1)),
     400, "duplicate_key", "verify"),
    ("duplicate key in model", post(base_text.replace("\"d_model\":8,",
                                                      "\"d_model\":8,\"d_model\":8,", 1)),
     400, "duplicate_key", "model.d_model"),
    ("duplicate key in a tensor", post(base_text.replace("\"input\":{\"shape\":[4,8],",
                                                         "\"input\":{\"shape\":[4,8],"
                                                         "\"shape\":[4,8],", 1)),
     400, "duplicate_key", "input.shape"),
    ("too many JSON values", post("{\"return\":[" + "1," * 1100000 + "1]}"), 413, "too_large",
     ""),
    # ---- structure and types ---------------------------------------------------------------
    ("unknown top-level field", post(mut(setp(["surprise"], 1))), 400, "unknown_field",
     "surprise"),
    ("missing model", post(mut(delp(["model"]))), 400, "missing_field", "model"),
    ("missing layers", post(mut(delp(["layers"]))), 400, "missing_field", "layers"),
    ("missing input", post(mut(delp(["input"]))), 400, "missing_field", "input"),
    ("missing loss", post(mut(delp(["loss"]))), 400, "missing_field", "loss"),
    ("model is an array", post(mut(setp(["model"], [1]))), 400, "invalid_type", "model"),
    ("d_model is a string", post(mut(setp(["model", "d_model"], "8"))), 400, "invalid_type",
     "model.d_model"),
    ("d_model is a real", post(base_text.replace("\"d_model\":8", "\"d_model\":8.0", 1)), 400,
     "invalid_type", "model.d_model"),
    ("d_model negative", post(mut(setp(["model", "d_model"], -8))), 400, "invalid_value",
     "model.d_model"),
    ("d_model over the limit", post(mut(setp(["model", "d_model"], 2 ** 40))), 413,
     "too_large", "model.d_model"),
    ("d_model over int64", post(base_text.replace("\"d_model\":8", "\"d_model\":"
                                                  "18446744073709551616", 1)), 400,
     "invalid_json", ""),
    ("n_heads zero", post(mut(setp(["model", "n_heads"], 0))), 400, "invalid_value",
     "model.n_heads"),
    ("n_heads not a divisor", post(mut(setp(["model", "n_heads"], 3))), 400, "invalid_value",
     "model.n_heads"),
    ("n_layers disagrees with layers", post(mut(setp(["model", "n_layers"], 2))), 400,
     "invalid_value", "layers"),
    ("causal is a string", post(mut(setp(["model", "causal"], "yes"))), 400, "invalid_type",
     "model.causal"),
    ("unknown norm", post(mut(setp(["model", "norm"], "rmsnorm"))), 400, "invalid_value",
     "model.norm"),
    ("activation is a number", post(mut(setp(["model", "activation"], 1))), 400,
     "invalid_type", "model.activation"),
    ("unknown model field", post(mut(setp(["model", "dropout"], 0.1))), 400, "unknown_field",
     "model.dropout"),
    ("layers is an object", post(mut(setp(["layers"], {"0": {}}))), 400, "invalid_type",
     "layers"),
    ("a layer is a number", post(mut(setp(["layers", 0], 7))), 400, "invalid_type",
     "layers[0]"),
    ("missing weight", post(mut(delp(["layers", 0, "wq"]))), 400, "missing_field",
     "layers[0].wq"),
    ("unknown weight", post(mut(setp(["layers", 0, "wz"], {"shape": [1], "data": [1]}))),
     400, "unknown_field", "layers[0].wz"),
    ("wrong weight shape", post(mut(setp(["layers", 0, "wk"], {"shape": [8, 4],
                                                                "data": [0.1] * 32}))),
     400, "invalid_shape", "layers[0].wk"),
    ("tensor is a list", post(mut(setp(["layers", 0, "wv"], [0.1] * 64))), 400, "invalid_type",
     "layers[0].wv"),
    ("unknown tensor field", post(mut(setp(["input", "strides"], [8, 1]))), 400,
     "unknown_field", "input.strides"),
    # ---- shapes and sizes ------------------------------------------------------------------
    ("shape overflows size_t", post(mut(setp(["input", "shape"], [2 ** 62, 2 ** 62, 8]))),
     413, "too_large", "input"),
    ("shape with a zero", post(mut(setp(["input", "shape"], [0, 8]))), 400, "invalid_shape",
     "input"),
    ("shape negative", post(mut(setp(["input", "shape"], [-4, 8]))), 400, "invalid_shape",
     "input"),
    ("shape of four dimensions", post(mut(setp(["input", "shape"], [1, 1, 4, 8]))), 400,
     "invalid_shape", "input"),
    ("shape is a number", post(mut(setp(["input", "shape"], 32))), 400, "invalid_type",
     "input.shape"),
    ("shape holds a string", post(mut(setp(["input", "shape"], ["4", 8]))), 400,
     "invalid_type", "input.shape[0]"),
    ("shape holds a real", post(mut(setp(["input", "shape"], [4.5, 8]))), 400,
     "invalid_type", "input.shape[0]"),
    ("input without d_model last", post(mut(setp(["input", "shape"], [8, 4]))), 400,
     "invalid_shape", "input"),
    ("huge token count, tiny data", post(mut(setp(["input"], {"shape": [4000000, 8],
                                                               "data": [1.0]}))),
     413, "too_large", "input"),
    ("huge weights declared, tiny data", post(dumps(huge_declared(4096, 16384))), 413,
     "too_large", "layers[0].w1"),
    ("large weights declared, tiny data", post(dumps(huge_declared(1024, 0))), 400, None,
     "layers[0].wq"),
    ("data shorter than shape", post(mut(setp(["input", "data"], [0.5] * 31))), 400, None,
     "input"),
    ("data longer than shape", post(mut(setp(["input", "data"], [0.5] * 33))), 400, None,
     "input"),
    ("data holds strings", post(mut(setp(["input", "data"], ["0.5"] * 32))), 400, None,
     "input.data[0]"),
    ("data nested", post(mut(setp(["input", "data"], [[0.5] * 8] * 4))), 400, None, "input"),
    ("data and b64 both", post(mut(setp(["input", "b64"], "AAAA"))), 400, "invalid_value",
     "input"),
    ("neither data nor b64", post(mut(delp(["input", "data"]))), 400, "missing_field",
     "input.data"),
    ("unknown dtype", post(mut(setp(["input", "dtype"], "float16"))), 400, "invalid_value",
     "input.dtype"),
    # ---- base64 ----------------------------------------------------------------------------
    ("base64 bad character", post(mut(setp(["input", "b64"], bad_char(f32_b64(*[0.5] * 32))), BASE_B64)), 400,
     "invalid_base64", "input"),
    ("base64 wrong length", post(mut(setp(["input", "b64"], "AAAA"), BASE_B64)), 400, None,
     "input"),
    ("base64 without padding", post(mut(setp(["input", "b64"], f32_b64(*[0.5] * 32)[:-2]),
                                        BASE_B64)), 400, None, "input"),
    ("base64 with a newline", post(mut(setp(["input", "b64"], f32_b64(*[0.5] * 16) + "\n" +
                                            f32_b64(*[0.5] * 16)), BASE_B64)), 400, None,
     "input"),
    ("base64 padding inside", post(mut(setp(["input", "b64"], "AA==" + f32_b64(*[0.5] * 31)),
                                       BASE_B64)), 400, None, "input"),
    ("base64 non-canonical tail", post(mut(setp(["layers", 0, "b1"],
                                                {"shape": [16], "b64": f32_b64(*[0.0] * 16)
                                                 [:-4] + "AAB="}), BASE_B64)), 400, None,
     "layers[0].b1"),
    ("base64 float64 count", post(mut(setp(["input"], {"shape": [4, 8], "dtype": "float64",
                                                        "b64": f32_b64(*[0.5] * 32)}),
                                      BASE_B64)), 400, None, "input"),
    # ---- non-finite numbers ----------------------------------------------------------------
    ("NaN token", post(base_text.replace("\"data\":[", "\"data\":[NaN,", 1)), 400,
     "invalid_json", ""),
    ("Infinity token", post(base_text.replace("\"data\":[", "\"data\":[Infinity,", 1)), 400,
     "invalid_json", ""),
    ("1e999 in data", post(mut(setp(["input", "data"], [0.5] * 31 + [0]))
                           .replace(",0]", ",1e999]", 1)), 400, None, "input"),
    ("float32 overflow 3.5e38", post(mut(setp(["input", "data"], [0.5] * 31 + [3.5e38]))),
     400, "invalid_value", "input"),
    ("NaN in float32 base64", post(mut(setp(["input", "b64"], f32_b64(*[0.5] * 31 + [nan])),
                                       BASE_B64)), 400, "invalid_value", "input"),
    ("Inf in float64 base64", post(mut(setp(["input"], {"shape": [4, 8], "dtype": "float64",
                                                         "b64": f64_b64(*[0.5] * 31 + [inf])}),
                                       BASE_B64)), 400, "invalid_value", "input"),
    ("float64 base64 over float32", post(mut(setp(["input"], {"shape": [4, 8],
                                                               "dtype": "float64",
                                                               "b64": f64_b64(*[1e300] * 32)}),
                                             BASE_B64)), 400, "invalid_value", "input"),
    # ---- method, loss, options -------------------------------------------------------------
    ("method epsilon and degree", post(mut(setp(["method"], {"name": "approx", "epsilon": 0.1,
                                                             "degree": 3}))), 400,
     "invalid_value", "method"),
    ("epsilon zero", post(mut(setp(["method"], {"name": "approx", "epsilon": 0}))), 400,
     "invalid_value", "method.epsilon"),
    ("epsilon is a string", post(mut(setp(["method"], {"name": "auto", "epsilon": "1e-3"}))),
     400, "invalid_type", "method.epsilon"),
    ("degree 21", post(mut(setp(["method"], {"name": "approx", "degree": 21}))), 400,
     "invalid_value", "method.degree"),
    ("unknown method", post(mut(setp(["method"], {"name": "magic"}))), 400, "invalid_value",
     "method.name"),
    ("exact with epsilon", post(mut(setp(["method"], {"name": "exact", "epsilon": 0.1}))),
     400, "unknown_field", "method.epsilon"),
    ("unknown route", post(mut(setp(["method"], {"name": "approx", "route": "fast"}))), 400,
     "invalid_value", "method.route"),
    ("return unknown", post(mut(setp(["return"], ["hessian"]))), 400, "invalid_value",
     "return[0]"),
    ("return twice", post(mut(setp(["return"], ["loss", "loss"]))), 400, "invalid_value",
     "return[1]"),
    ("return is a string", post(mut(setp(["return"], "loss"))), 400, "invalid_type",
     "return"),
    ("unknown encoding", post(mut(setp(["encoding"], "msgpack"))), 400, "invalid_value",
     "encoding"),
    ("verify is a string", post(mut(setp(["verify"], "true"))), 400, "invalid_type", "verify"),
    ("unknown loss", post(mut(setp(["loss", "type"], "cross_entropy"))), 400,
     "invalid_value", "loss.type"),
    ("mse without target", post(mut(delp(["loss", "target"]))), 400, "missing_field",
     "loss.target"),
    ("sum with a target", post(mut(setp(["loss", "type"], "sum"))), 400, "unknown_field",
     "loss.target"),
    ("target of another shape", post(mut(setp(["loss", "target"], {"shape": [8, 4],
                                                                    "data": [0.1] * 32}))),
     400, "invalid_shape", "loss.target"),
    # ---- HTTP: methods, types, lengths -----------------------------------------------------
    ("GET /v1/gradients", get("/v1/gradients"), 405, "method_not_allowed", ""),
    ("PUT /v1/jobs", build("PUT", "/v1/jobs", base_text, JSON), 405, "method_not_allowed", ""),
    ("DELETE /v1/info", get("/v1/info", "DELETE"), 405, "method_not_allowed", ""),
    ("POST /health/live", post("{}", path="/health/live"), 405, "method_not_allowed", ""),
    ("PATCH a job", get("/v1/jobs/" + ID, "PATCH"), 405, "method_not_allowed", ""),
    ("OPTIONS /v1/info", get("/v1/info", "OPTIONS"), 405, "method_not_allowed", ""),
    ("text/plain body", post(base_text, {"Content-Type": "text/plain"}), 415,
     "unsupported_media_type", "Content-Type"),
    ("no Content-Type", build("POST", "/v1/gradients", base_text, {"Connection": "close"}),
     415, "unsupported_media_type", "Content-Type"),
    ("application/jsonx", post(base_text, {"Content-Type": "application/jsonx"}), 415,
     "unsupported_media_type", "Content-Type"),
    ("form-encoded body", post("model=1", {"Content-Type": "application/x-www-form-urlencoded"}),
     415, "unsupported_media_type", "Content-Type"),
    ("Content-Length over --max-body", build("POST", "/v1/gradients", None,
                                             dict(JSON, **{"Content-Length": "999999999999"})),
     413, "too_large", ""),
    ("Content-Length over size_t", build("POST", "/v1/gradients", None,
                                         dict(JSON, **{"Content-Length":
                                                       "99999999999999999999999"})),
     MHD, None, None),
    ("Content-Length not a number", build("POST", "/v1/gradients", None,
                                          dict(JSON, **{"Content-Length": "12abc"})),
     MHD, None, None),
    ("chunked body over --max-body",
     build("POST", "/v1/gradients", b"".join(b"%x\r\n%s\r\n" % (65536, b" " * 65536)
                                             for _ in range(60)) + b"0\r\n\r\n",
           dict(JSON, **{"Transfer-Encoding": "chunked"}), length=False), 413, "too_large", ""),
    ("declared body never sent (Expect)", build("POST", "/v1/gradients", None,
                                                dict(JSON, **{"Content-Length": "5000000000",
                                                              "Expect": "100-continue"})),
     413, "too_large", ""),
    ("oversize header", build("GET", "/v1/info", None, {"X-Big": "a" * 200000,
                                                        "Connection": "close"}), MHD, None,
     None),
    ("oversize URL", get("/v1/info?" + "a" * 200000), MHD, None, None),
    ("long URL under the pool", get("/v1/" + "a" * 60000), 404, "not_found", ""),
    ("garbage request line", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", MHD,
     None, None),
    ("HTTP/9.9", get("/v1/info").replace(b"HTTP/1.1", b"HTTP/9.9", 1), MHD, None, None),
    # ---- paths and ids ---------------------------------------------------------------------
    ("unknown path", get("/v2/gradients"), 404, "not_found", ""),
    ("unknown job", get("/v1/jobs/" + ID), 404, "job_not_found", "id"),
    ("unknown job result", get("/v1/jobs/" + ID + "/result"), 404, "job_not_found", "id"),
    ("delete unknown job", get("/v1/jobs/" + ID, "DELETE"), 404, "job_not_found", "id"),
    ("job id with a node", get("/v1/jobs/altgrad-0-" + ID), 404, "job_not_found", "id"),
    ("path /v1/jobs/../info", get("/v1/jobs/../info"), 404, "not_found", ""),
    ("path %2e%2e", get("/v1/jobs/%2e%2e/info"), 404, "not_found", ""),
    ("path /v1/jobs/..", get("/v1/jobs/.."), 404, "not_found", ""),
    ("path /v1/jobs/%2e%2e", get("/v1/jobs/%2e%2e"), 404, "not_found", ""),
    ("path with %00", get("/v1/info%00"), 404, "not_found", ""),
    ("encoded slash in id", get("/v1/jobs/" + ID + "%2fresult"), 404, "not_found", ""),
    ("double slash", get("/v1//info"), 404, "not_found", ""),
    ("trailing slash", get("/v1/info/"), 404, "not_found", ""),
    ("upper case path", get("/V1/INFO"), 404, "not_found", ""),
    ("very long id", get("/v1/jobs/" + "a" * 5000), 404, "not_found", ""),
    ("id of 71 characters", get("/v1/jobs/" + "b" * 71), 404, "job_not_found", "id"),
    ("id of 72 characters", get("/v1/jobs/" + "b" * 72), 404, "not_found", ""),
    ("id with a dot", get("/v1/jobs/node.1-" + ID), 404, "not_found", ""),
    ("result of a long id", get("/v1/jobs/" + "c" * 100 + "/result"), 404, "not_found", ""),
    ("suffix after result", get("/v1/jobs/" + ID + "/result/x"), 404, "not_found", ""),
    ("query string on a job", get("/v1/jobs/" + ID + "?x=../../etc/passwd"), 404,
     "job_not_found", "id"),
]


def check(port, case):
    name, data, status, code, field = case
    try:
        r = raw(port, data, timeout=60)
    except (ConnectionError, OSError) as e:
        if status is MHD:
            return [], None  # not HTTP at all: closing is an answer too
        return ["no response (%s)" % e], None
    problems = []
    if status is MHD:
        if not 400 <= r.status <= 599:
            problems.append("status %d, expected a 4xx/5xx from libmicrohttpd" % r.status)
        return problems, r
    if r.status != status:
        problems.append("status %d, expected %d" % (r.status, status))
    if not r.headers.get("content-type", "").startswith("application/json"):
        problems.append("content type %r" % r.headers.get("content-type"))
    e = r.error()
    if e is None:
        problems.append("not a JSON error body: %r" % r.body[:200])
    else:
        if code is not None and e[0] != code:
            problems.append("code %r, expected %r" % (e[0], code))
        if field is not None and e[1] != field:
            problems.append("field %r, expected %r" % (e[1], field))
        if not e[2]:
            problems.append("empty message")
    if r.status == 405 and "allow" not in r.headers:
        problems.append("405 without Allow")
    return problems, r


def main():
    srv = Server("--workers", "2", "--queue", "8", "--max-body", "2560K",
                 "--connection-timeout", "10")
    failures = 0
    try:
        t0 = time.time()
        for case in CASES:
            problems, r = check(srv.port, case)
            if problems:
                failures += 1
                print("FAIL %-36s %s" % (case[0], "; ".join(problems)))
            if not srv.alive():
                print("FAIL: the server died after %r" % case[0])
                failures += 1
                break
        print("bad requests: %d cases in %.1f s, %d failed" % (len(CASES), time.time() - t0,
                                                                failures))
        # Still healthy: ready, and a valid request computes.
        r = request(srv.port, "GET", "/health/ready")
        if r.status != 200:
            print("FAIL: /health/ready answered %d afterwards" % r.status)
            failures += 1
        r = request(srv.port, "POST", "/v1/gradients", dumps(BASE))
        if r.status != 200 or "grad_input" not in r.json():
            print("FAIL: a valid request afterwards: %d %r" % (r.status, r.body[:200]))
            failures += 1
        rc = srv.stop()
        if rc != 0:
            print("FAIL: exit status %r after SIGTERM" % rc)
            failures += 1
        bad = srv.sanitizer_errors()
        if bad:
            print("FAIL: sanitizer reports in the server log: %s" % ", ".join(bad))
            print(srv.log_text()[-4000:])
            failures += 1
    finally:
        srv.cleanup()
    if len(CASES) < 60:
        print("FAIL: only %d cases" % len(CASES))
        failures += 1
    print("test_bad_requests: %s" % ("ok" if failures == 0 else "FAILED"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
