#!/usr/bin/python3
"""Writes docs/example-request.json: a small valid request for POST /v1/gradients.

d_model 16, 2 heads, 2 layers, n 8, d_ff 32, layernorm, gelu, residual, causal, mse loss,
method exact. Deterministic (a fixed linear congruential generator, no numpy/torch), so the
file only changes when this script does:

    /usr/bin/python3 docs/make_example.py > docs/example-request.json
"""
import json
import math
import struct
import sys

D_MODEL, N_HEADS, N_LAYERS, N, D_FF = 16, 2, 2, 8, 32


class Lcg:
    """Numerical Recipes' 32-bit LCG: plenty for example numbers, identical everywhere."""

    def __init__(self, seed):
        self.state = seed & 0xFFFFFFFF

    def uniform(self, lo, hi):
        self.state = (1664525 * self.state + 1013904223) & 0xFFFFFFFF
        return lo + (hi - lo) * self.state / 2**32


def f32(x):
    """Rounds to float32 and prints 6 significant digits (short, still a valid float)."""
    x = struct.unpack("<f", struct.pack("<f", x))[0]
    return float(format(x, ".6g"))


def tensor(shape, gen):
    count = math.prod(shape)
    return {"shape": list(shape), "data": [f32(gen()) for _ in range(count)]}


def main():
    rng = Lcg(20240827)
    uni = lambda a: (lambda: rng.uniform(-a, a))  # noqa: E731
    layers = []
    for _ in range(N_LAYERS):
        s_in, s_ff = 1 / math.sqrt(D_MODEL), 1 / math.sqrt(D_FF)
        layer = {}
        for name in ("wq", "wk", "wv", "wo"):
            layer[name] = tensor((D_MODEL, D_MODEL), uni(s_in))
        layer["ln1_gamma"] = tensor((D_MODEL,), lambda: 1 + rng.uniform(-0.1, 0.1))
        layer["ln1_beta"] = tensor((D_MODEL,), uni(0.1))
        layer["ln2_gamma"] = tensor((D_MODEL,), lambda: 1 + rng.uniform(-0.1, 0.1))
        layer["ln2_beta"] = tensor((D_MODEL,), uni(0.1))
        layer["w1"] = tensor((D_MODEL, D_FF), uni(s_in))
        layer["b1"] = tensor((D_FF,), uni(0.1))
        layer["w2"] = tensor((D_FF, D_MODEL), uni(s_ff))
        layer["b2"] = tensor((D_MODEL,), uni(0.1))
        layers.append(layer)
    request = {
        "model": {"d_model": D_MODEL, "n_heads": N_HEADS, "n_layers": N_LAYERS, "d_ff": D_FF,
                  "causal": True, "norm": "layernorm", "activation": "gelu", "residual": True},
        "layers": layers,
        "input": tensor((N, D_MODEL), uni(1.0)),
        "loss": {"type": "mse", "target": tensor((N, D_MODEL), uni(1.0))},
        "method": {"name": "exact"},
        "return": ["loss", "grad_input", "grad_weights"],
    }

    # One line per tensor: readable, and diffs stay small.
    out = sys.stdout
    dump = lambda v: json.dumps(v, separators=(", ", ": "))  # noqa: E731
    out.write("{\n")
    out.write('  "model": %s,\n' % dump(request["model"]))
    out.write('  "layers": [\n')
    for i, layer in enumerate(layers):
        out.write("    {\n")
        names = list(layer)
        for k, name in enumerate(names):
            comma = "," if k + 1 < len(names) else ""
            out.write('      "%s": %s%s\n' % (name, dump(layer[name]), comma))
        out.write("    }%s\n" % ("," if i + 1 < len(layers) else ""))
    out.write("  ],\n")
    out.write('  "input": %s,\n' % dump(request["input"]))
    out.write('  "loss": {"type": "mse",\n           "target": %s},\n'
              % dump(request["loss"]["target"]))
    out.write('  "method": %s,\n' % dump(request["method"]))
    out.write('  "return": %s\n' % dump(request["return"]))
    out.write("}\n")


if __name__ == "__main__":
    main()
