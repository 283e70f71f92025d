#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets into tests/fuzz/seeds/<target>/ (committed;
rerun after changing the API). Small on purpose: libFuzzer grows the corpus itself, and the
seeds only need to reach every branch of the request grammar once.

    python3 tests/fuzz/make_seeds.py tests/fuzz/seeds
"""
import base64
import json
import os
import random
import struct
import sys

out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "seeds")
rng = random.Random(8)


def write(target, name, data):
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def numel(shape):
    k = 1
    for s in shape:
        k *= s
    return k


def tensor(shape, b64=False, f64=False, scale=0.3, off=0.0):
    vals = [round(off + rng.uniform(-scale, scale), 5) for _ in range(numel(shape))]
    if not b64:
        return {"shape": shape, "data": vals}
    raw = struct.pack("<%d%s" % (len(vals), "d" if f64 else "f"), *vals)
    t = {"shape": shape, "b64": base64.b64encode(raw).decode()}
    if f64:
        t["dtype"] = "float64"
    return t


def request(d=4, heads=2, layers=1, ff=8, n=3, batch=0, norm="layernorm", act="gelu",
            residual=True, causal=True, loss="mse", method=None, b64=False, f64=False,
            extra=None):
    def layer():
        l = {k: tensor([d, d], b64, f64) for k in ("wq", "wk", "wv", "wo")}
        if norm == "layernorm":
            l["ln1_gamma"] = tensor([d], b64, f64, 0.1, 1.0)
            l["ln1_beta"] = tensor([d], b64, f64)
            if ff:
                l["ln2_gamma"] = tensor([d], b64, f64, 0.1, 1.0)
                l["ln2_beta"] = tensor([d], b64, f64)
        if ff:
            l["w1"] = tensor([d, ff], b64, f64)
            l["b1"] = tensor([ff], b64, f64)
            l["w2"] = tensor([ff, d], b64, f64)
            l["b2"] = tensor([d], b64, f64)
        return l
    shape = [batch, n, d] if batch else [n, d]
    r = {"model": {"d_model": d, "n_heads": heads, "n_layers": layers, "d_ff": ff,
                   "causal": causal, "norm": norm, "activation": act, "residual": residual},
         "layers": [layer() for _ in range(layers)],
         "input": tensor(shape, b64, f64, 1.0)}
    if loss == "mse":
        r["loss"] = {"type": "mse", "target": tensor(shape, b64, f64, 1.0)}
    elif loss == "grad_output":
        r["loss"] = {"type": "grad_output", "grad": tensor(shape, b64, f64, 1.0)}
    else:
        r["loss"] = {"type": "sum"}
    if method is not None:
        r["method"] = method
    if extra:
        r.update(extra)
    return r


def dump(r):
    return json.dumps(r, separators=(",", ":"))


# ---- request bodies (fuzz_request_decode; also the bodies of fuzz_http's POSTs) -----------
valid = {
    "exact_small": request(method={"name": "exact"}),
    "auto_default": request(),
    "approx_eps": request(method={"name": "approx", "epsilon": 0.01}),
    "approx_degree_paper": request(method={"name": "approx", "degree": 3, "route": "paper",
                                           "poly": "taylor"}),
    "no_mlp_none_relu": request(ff=0, norm="none", act="relu", residual=False, causal=False,
                                heads=1, loss="sum"),
    "batched_grad_output": request(batch=2, loss="grad_output", layers=2),
    "b64": request(b64=True, method={"name": "exact"},
                   extra={"encoding": "b64", "return": ["loss", "output"]}),
    "b64_f64": request(b64=True, f64=True, ff=0, extra={"verify": True}),
    "return_all": request(extra={"return": ["loss", "grad_input", "grad_weights", "output"],
                                 "encoding": "json", "verify": False}),
}
for name, r in valid.items():
    write("request_decode", "ok_" + name + ".json", dump(r))

base = valid["exact_small"]


def mutated(path, value, delete=False):
    r = json.loads(dump(base))
    o = r
    for k in path[:-1]:
        o = o[k]
    if delete:
        del o[path[-1]]
    else:
        o[path[-1]] = value
    return dump(r)


bad = {
    "empty": "",
    "truncated": dump(base)[:200],
    "not_object": "[1,2,3]",
    "string_top": "\"x\"",
    "unknown_top": mutated(["surprise"], 1),
    "missing_model": mutated(["model"], None, delete=True),
    "d_model_string": mutated(["model", "d_model"], "4"),
    "d_model_real": dump(base).replace("\"d_model\":4", "\"d_model\":4.0"),
    "d_model_huge": mutated(["model", "d_model"], 2 ** 62),
    "heads_not_divisor": mutated(["model", "n_heads"], 3),
    "n_layers_mismatch": mutated(["model", "n_layers"], 2),
    "norm_bad": mutated(["model", "norm"], "rmsnorm"),
    "shape_overflow": mutated(["input", "shape"], [2 ** 62, 2 ** 62, 4]),
    "shape_zero": mutated(["input", "shape"], [0, 4]),
    "shape_negative": mutated(["input", "shape"], [-3, 4]),
    "huge_declared_tiny_data": mutated(["input"], {"shape": [100000, 4], "data": [1.0]}),
    "wrong_shape": mutated(["layers", 0, "wq"], {"shape": [4, 2], "data": [0.0] * 8}),
    "data_short": mutated(["input"], {"shape": [3, 4], "data": [0.5] * 11}),
    "data_strings": mutated(["input"], {"shape": [1, 4], "data": ["a", "b", "c", "d"]}),
    "data_and_b64": mutated(["input"], {"shape": [1, 4], "data": [1, 2, 3, 4], "b64": "AAAA"}),
    "b64_invalid": mutated(["input"], {"shape": [1, 4], "b64": "!!!!"}),
    "b64_short": mutated(["input"], {"shape": [1, 4], "b64": "AAAAAAAA"}),
    "b64_unpadded": mutated(["input"], {"shape": [1, 1], "b64": "AACAPw"}),
    "dtype_bad": mutated(["input", "dtype"], "float16"),
    "nan_token": dump(base).replace("\"data\":[", "\"data\":[NaN,", 1),
    "inf_overflow": dump(base).replace("\"data\":[", "\"data\":[1e999,", 1),
    "float32_overflow": dump(base).replace("\"data\":[", "\"data\":[3.5e38,", 1),
    "duplicate_key": dump(base).replace("{\"d_model\":4,", "{\"d_model\":4,\"d_model\":4,", 1),
    "deep_nesting": "[" * 3000 + "]" * 3000,
    "deep_nesting_object": "{\"model\":" * 500 + "1" + "}" * 500,
    "forged_placeholder": mutated(["input"], {"shape": [1, 4], "b64": "\u0001" + "0"}),
    "escaped_b64": dump(base).replace("\"exact\"", "\"\\u0065xact\""),
    "method_both": mutated(["method"], {"name": "approx", "epsilon": 0.1, "degree": 2}),
    "epsilon_one": mutated(["method"], {"name": "approx", "epsilon": 1}),
    "degree_big": mutated(["method"], {"name": "approx", "degree": 99}),
    "exact_with_eps": mutated(["method"], {"name": "exact", "epsilon": 0.1}),
    "return_twice": mutated(["return"], ["loss", "loss"]),
    "return_unknown": mutated(["return"], ["hessian"]),
    "loss_extra": mutated(["loss", "grad"], {"shape": [3, 4], "data": [0] * 12}),
    "weight_unused": dump(request(ff=0, method={"name": "exact"})).replace(
        "\"wo\":", "\"w1\":{\"shape\":[4,8],\"data\":[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,"
                   "0,0,0,0,0,0,0,0,0,0,0,0]},\"wo\":", 1),
    "nul_in_string": dump(base).replace("\"exact\"", "\"ex\\u0000act\""),
    "utf8_bad": dump(base).encode().replace(b"\"exact\"", b"\"\xff\xfe\"").decode("latin-1"),
}
for name, body in bad.items():
    if isinstance(body, str) and name == "utf8_bad":
        write("request_decode", "bad_" + name + ".json", body.encode("latin-1"))
    else:
        write("request_decode", "bad_" + name + ".json", body)

# ---- base64 (first byte: capacity slack) --------------------------------------------------
b64_seeds = {
    "empty": b"\x00",
    "one": b"\x00" + base64.b64encode(b"a"),
    "two": b"\x01" + base64.b64encode(b"ab"),
    "three": b"\x02" + base64.b64encode(b"abc"),
    "floats": b"\x03" + base64.b64encode(struct.pack("<8f", *[i * 0.5 for i in range(8)])),
    "noncanonical": b"\x00QR==",
    "bad_char": b"\x00ab$d",
    "pad_middle": b"\x00ab=dabcd",
    "no_pad": b"\x00YWI",
    "all_pad": b"\x00====",
    "whitespace": b"\x00YWJj\nYWJj",
}
for name, data in b64_seeds.items():
    write("b64", name, data)

# ---- raw HTTP (fuzz_http) -----------------------------------------------------------------
small = dump(request(d=4, heads=1, ff=0, n=2, norm="none", method={"name": "exact"}))
small_b64 = dump(request(d=4, heads=2, ff=8, n=2, b64=True, method={"name": "approx",
                                                                     "degree": 2}))


def http(method, path, body=None, headers=(), version="HTTP/1.1"):
    lines = ["%s %s %s" % (method, path, version), "Host: 127.0.0.1"]
    lines += list(headers)
    if body is not None:
        lines.append("Content-Length: %d" % len(body.encode()))
    return ("\r\n".join(lines) + "\r\n\r\n" + (body or "")).encode()


J = ["Content-Type: application/json"]
chunk = small.encode()
chunked = (b"POST /v1/gradients HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n" % 40 + chunk[:40] + b"\r\n" +
           b"%x\r\n" % (len(chunk) - 40) + chunk[40:] + b"\r\n0\r\n\r\n")
http_seeds = {
    "live": http("GET", "/health/live"),
    "ready_head": http("HEAD", "/health/ready"),
    "info": http("GET", "/v1/info"),
    "metrics": http("GET", "/metrics", headers=["Accept: text/plain"]),
    "gradients": http("POST", "/v1/gradients", small, J + ["X-Request-Id: seed-1"]),
    "gradients_b64": http("POST", "/v1/gradients", small_b64, J),
    "gradients_chunked": chunked,
    "jobs_then_poll": http("POST", "/v1/jobs", small, J) +
    http("GET", "/v1/jobs/fuzz-0-00000000000000000000000000000000") +
    http("DELETE", "/v1/jobs/fuzz-0-00000000000000000000000000000000") +
    http("GET", "/v1/jobs/fuzz-0-00000000000000000000000000000000/result"),
    "keepalive_pipeline": http("GET", "/health/live") + http("GET", "/v1/info") +
    http("POST", "/v1/gradients", small, J, ) + http("GET", "/metrics"),
    "bad_json": http("POST", "/v1/gradients", "{\"model\": [", J),
    "wrong_type": http("POST", "/v1/gradients", small, ["Content-Type: text/plain"]),
    "no_type": http("POST", "/v1/jobs", small),
    "charset": http("POST", "/v1/gradients", small, ["Content-Type: application/json; charset=utf-8"]),
    "too_large_declared": b"POST /v1/gradients HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 99999999999\r\n\r\n{}",
    "bad_length": b"POST /v1/gradients HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: -5\r\n\r\n{}",
    "expect_continue": b"POST /v1/gradients HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n{}",
    "method_put": http("PUT", "/v1/gradients", "{}", J),
    "method_delete_info": http("DELETE", "/v1/info"),
    "path_dotdot": http("GET", "/v1/jobs/../info"),
    "path_encoded": http("GET", "/v1/jobs/%2e%2e/info"),
    "path_query": http("GET", "/health/live?x=1&y=%00"),
    "long_id": http("GET", "/v1/jobs/" + "a" * 80),
    "auth_header": http("GET", "/v1/info", headers=["Authorization: Bearer secret-token"]),
    "http10": http("GET", "/health/live", version="HTTP/1.0"),
    "garbage": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage",
    "no_version": b"GET /\r\n\r\n",
    "header_fold": b"GET /v1/info HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
}
for name, data in http_seeds.items():
    write("http", name, data)
print("seeds written to", out)
