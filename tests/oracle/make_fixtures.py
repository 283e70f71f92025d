#!/usr/bin/python3
"""Writes the PyTorch oracle fixtures of altgrad (tests/oracle/fixtures/*.json).

Run with Debian's torch (python3-torch): /usr/bin/python3 tests/oracle/make_fixtures.py DIR

Each fixture is one JSON object:
  {"name": str,
   "request": a complete request body of docs/api.md (model, layers, input, loss,
              method {"name": "exact"}, return [...]),
   "expected": {"loss": number or null, "output": T, "grad_input": T,
                "grad_weights": [{name: T, ...} per layer]}}
with T = {"shape": [...], "data": [...]} (row-major). The model is implemented here in torch,
float64, straight from docs/api.md: row vectors and y = x @ W + b with W [d_in, d_out], pre-norm
layernorm (eps 1e-5), GELU tanh form, causal mask j <= i. Request values are rounded to float32
first (the service computes in float32), so torch sees exactly what the service sees.

Deterministic: fixed seeds; regenerating gives byte-identical files.
"""
import json
import math
import os
import sys

import torch

torch.set_default_dtype(torch.float64)

# name, d_model, n_heads, n_layers, d_ff, causal, norm, activation, residual, batch, n, loss,
# batched (3-d input even for batch 1)
CONFIGS = [
    ("gpt2_like", 16, 4, 2, 32, True, "layernorm", "gelu", True, 1, 10, "mse", False),
    ("paper_pure", 8, 1, 1, 0, False, "none", "gelu", False, 1, 12, "sum", False),
    ("relu_mlp_batch3", 12, 4, 2, 24, False, "none", "relu", True, 3, 6, "grad_output", True),
    ("layernorm_no_residual", 8, 1, 2, 16, True, "layernorm", "gelu", False, 1, 9, "mse", False),
    ("no_mlp_three_layers", 16, 4, 3, 0, True, "layernorm", "relu", True, 3, 5, "sum", True),
    ("single_head_relu", 8, 1, 1, 8, True, "none", "relu", False, 1, 7, "grad_output", False),
    ("batch3_mse", 12, 4, 1, 20, False, "layernorm", "gelu", True, 3, 4, "mse", True),
    ("one_token", 8, 2, 2, 8, True, "layernorm", "gelu", True, 1, 1, "sum", False),
    ("long_noncausal", 16, 1, 2, 0, False, "none", "gelu", True, 1, 12, "mse", False),
    ("batched_input_b1", 8, 4, 1, 12, True, "layernorm", "relu", False, 1, 8, "grad_output", True),
]

PARAM_ORDER = ["wq", "wk", "wv", "wo", "ln1_gamma", "ln1_beta", "ln2_gamma", "ln2_beta",
               "w1", "b1", "w2", "b2"]


def f32(t):
    """Rounds to float32 and back: the values the service will see."""
    return t.float().double()


def uniform(gen, shape, scale):
    return f32((torch.rand(shape, generator=gen) * 2 - 1) * scale)


def make_params(gen, d, f, norm):
    ws = 1.2 / math.sqrt(d)
    p = {}
    for name in ("wq", "wk", "wv", "wo"):
        p[name] = uniform(gen, (d, d), ws)
    if norm == "layernorm":
        p["ln1_gamma"] = f32(1 + 0.3 * uniform(gen, (d,), 1))
        p["ln1_beta"] = uniform(gen, (d,), 0.3)
        if f > 0:
            p["ln2_gamma"] = f32(1 + 0.3 * uniform(gen, (d,), 1))
            p["ln2_beta"] = uniform(gen, (d,), 0.3)
    if f > 0:
        p["w1"] = uniform(gen, (d, f), ws)
        p["b1"] = uniform(gen, (f,), 0.3)
        p["w2"] = uniform(gen, (f, d), 1.2 / math.sqrt(f))
        p["b2"] = uniform(gen, (d,), 0.3)
    return p


def layer_forward(x, p, cfg):
    """One layer of docs/api.md on x [b, n, d]."""
    b, n, d = x.shape
    H = cfg["n_heads"]
    dh = d // H
    ln = cfg["norm"] == "layernorm"
    a = torch.nn.functional.layer_norm(x, (d,), p["ln1_gamma"], p["ln1_beta"], 1e-5) if ln else x
    q = (a @ p["wq"]).view(b, n, H, dh).transpose(1, 2)
    k = (a @ p["wk"]).view(b, n, H, dh).transpose(1, 2)
    v = (a @ p["wv"]).view(b, n, H, dh).transpose(1, 2)
    s = q @ k.transpose(-1, -2) / math.sqrt(dh)
    if cfg["causal"]:
        hidden = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
        s = s.masked_fill(hidden, float("-inf"))
    o = (torch.softmax(s, dim=-1) @ v).transpose(1, 2).reshape(b, n, d)
    attn = o @ p["wo"]
    h = x + attn if cfg["residual"] else attn
    if cfg["d_ff"] == 0:
        return h
    u = torch.nn.functional.layer_norm(h, (d,), p["ln2_gamma"], p["ln2_beta"], 1e-5) if ln else h
    z = u @ p["w1"] + p["b1"]
    if cfg["activation"] == "gelu":
        g = torch.nn.functional.gelu(z, approximate="tanh")
    else:
        g = torch.relu(z)
    m = g @ p["w2"] + p["b2"]
    return h + m if cfg["residual"] else m


def tensor_json(t, exact):
    """{"shape", "data"}; request tensors with 9 significant digits (exact for float32),
    expected values with full double precision."""
    data = t.detach().reshape(-1).tolist()
    if not exact:
        data = [float("%.9g" % v) for v in data]
    return {"shape": list(t.shape), "data": data}


def make_fixture(index, spec):
    (name, d, H, L, f, causal, norm, act, residual, batch, n, loss, batched) = spec
    gen = torch.Generator().manual_seed(20240 + index)
    cfg = {"d_model": d, "n_heads": H, "n_layers": L, "d_ff": f, "causal": causal,
           "norm": norm, "activation": act, "residual": residual}
    layers = [make_params(gen, d, f, norm) for _ in range(L)]
    x3 = uniform(gen, (batch, n, d), 1.0)
    shape = (batch, n, d) if batched else (n, d)
    target = uniform(gen, (batch, n, d), 1.0) if loss != "sum" else None

    for p in layers:
        for t in p.values():
            t.requires_grad_(True)
    x = x3.clone().reshape(shape).requires_grad_(True)
    y = x.reshape(batch, n, d)
    for p in layers:
        y = layer_forward(y, p, cfg)
    if loss == "mse":
        value = ((y - target) ** 2).mean()
        value.backward()
        loss_value = value.item()
    elif loss == "sum":
        value = y.sum()
        value.backward()
        loss_value = value.item()
    else:
        y.backward(target)
        loss_value = None

    loss_json = {"type": loss}
    if loss == "mse":
        loss_json["target"] = tensor_json(target.reshape(shape), False)
    elif loss == "grad_output":
        loss_json["grad"] = tensor_json(target.reshape(shape), False)
    request = {
        "model": cfg,
        "layers": [{k: tensor_json(p[k], False) for k in PARAM_ORDER if k in p} for p in layers],
        "input": tensor_json(x.detach(), False),
        "loss": loss_json,
        "method": {"name": "exact"},
        "return": ["loss", "grad_input", "grad_weights", "output"],
    }
    expected = {
        "loss": loss_value,
        "output": tensor_json(y.detach().reshape(shape), True),
        "grad_input": tensor_json(x.grad, True),
        "grad_weights": [{k: tensor_json(p[k].grad, True) for k in PARAM_ORDER if k in p}
                         for p in layers],
    }
    return {"name": name, "request": request, "expected": expected}


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__),
                                                             "fixtures")
    os.makedirs(out, exist_ok=True)
    for i, spec in enumerate(CONFIGS):
        fx = make_fixture(i, spec)
        path = os.path.join(out, "%02d_%s.json" % (i, fx["name"]))
        with open(path, "w") as fh:
            json.dump(fx, fh, separators=(",", ":"))
            fh.write("\n")
        print("%s  %d bytes" % (path, os.path.getsize(path)))


if __name__ == "__main__":
    main()
