#!/usr/bin/python3
"""The benchmark model of bench_exact in PyTorch (float32 autograd, CPU): one CSV row.

    /usr/bin/python3 tests/bench/torch_baseline.py N CAUSAL LAYERS THREADS [REPS]
    /usr/bin/python3 tests/bench/torch_baseline.py --header

Same model as tests/bench/bench_exact.c: d_model 64, 8 heads, d_ff 256, pre-norm layernorm,
GELU (tanh form), residual, mse loss; torch.set_num_threads(THREADS). time_s is the best of
REPS forward+backward passes; peak_rss_mib is the process's peak resident set (torch itself
included). Sizes whose n x n attention tensors would need more than ~10 GB are not run: the row
says "skipped" with the estimate.
"""
import math
import resource
import sys
import time

HEADER = "n,causal,layers,threads,time_s,peak_rss_mib,status"
D, H, F = 64, 8, 256
MEMORY_LIMIT_GB = 10.0


def estimate_gb(n, layers):
    # autograd keeps the softmax output of every layer (H n^2 floats) plus the scores and
    # their gradient of the layer being differentiated; measured 8.7 GB at n = 8192, 2 layers
    return (2 * layers + 1) * H * n * n * 4 / 1e9


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--header":
        print(HEADER)
        return
    n, causal, layers, threads = (int(a) for a in sys.argv[1:5])
    reps = int(sys.argv[5]) if len(sys.argv) > 5 else 3
    est = estimate_gb(n, layers)
    if est > MEMORY_LIMIT_GB:
        print("%d,%d,%d,%d,,,skipped (needs ~%.0f GB)" % (n, causal, layers, threads, est))
        return

    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    f = torch.nn.functional

    def param(*shape, scale):
        return ((torch.rand(*shape) * 2 - 1) * scale).requires_grad_(True)

    params = []
    for _ in range(layers):
        params.append({
            "wq": param(D, D, scale=D ** -0.5), "wk": param(D, D, scale=D ** -0.5),
            "wv": param(D, D, scale=D ** -0.5), "wo": param(D, D, scale=D ** -0.5),
            "g1": (torch.ones(D)).requires_grad_(True), "b1n": torch.zeros(D, requires_grad=True),
            "g2": (torch.ones(D)).requires_grad_(True), "b2n": torch.zeros(D, requires_grad=True),
            "w1": param(D, F, scale=D ** -0.5), "b1": param(F, scale=D ** -0.5),
            "w2": param(F, D, scale=F ** -0.5), "b2": param(D, scale=F ** -0.5),
        })
    x = (torch.rand(n, D) * 2 - 1).requires_grad_(True)
    target = torch.rand(n, D) * 2 - 1
    mask = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1) if causal else None
    dh = D // H

    def forward():
        y = x
        for p in params:
            a = f.layer_norm(y, (D,), p["g1"], p["b1n"], 1e-5)
            q = (a @ p["wq"]).view(n, H, dh).transpose(0, 1)
            k = (a @ p["wk"]).view(n, H, dh).transpose(0, 1)
            v = (a @ p["wv"]).view(n, H, dh).transpose(0, 1)
            s = q @ k.transpose(-1, -2) / math.sqrt(dh)
            if mask is not None:
                s = s.masked_fill(mask, float("-inf"))
            o = (torch.softmax(s, dim=-1) @ v).transpose(0, 1).reshape(n, D)
            h = y + o @ p["wo"]
            u = f.layer_norm(h, (D,), p["g2"], p["b2n"], 1e-5)
            y = h + f.gelu(u @ p["w1"] + p["b1"], approximate="tanh") @ p["w2"] + p["b2"]
        return ((y - target) ** 2).mean()

    best = float("inf")
    for _ in range(reps):
        for t in [x] + [t for p in params for t in p.values()]:
            t.grad = None
        t0 = time.perf_counter()
        forward().backward()
        best = min(best, time.perf_counter() - t0)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print("%d,%d,%d,%d,%.4f,%.1f,ok" % (n, causal, layers, threads, best, rss))


if __name__ == "__main__":
    main()
