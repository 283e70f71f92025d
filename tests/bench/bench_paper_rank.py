#!/usr/bin/env python3
"""How small can ANY rank-r method make the error of their experiment? (make bench-paper)

For each d (n = 10 * 2^d, their distributions; their exact tensors when bench_paper_torch.py
dumped them), in float64:
  - the truncated SVD of the whole n x n matrix A = exp(q k^T) is the best rank-r approximation
    of A there is (Eckart-Young). No sub-quadratic method can compute it (it needs A), so the
    smallest r at which it meets the goal target is an optimistic floor for the rank of any
    low-rank method: polynomial features, the paper's Algorithm 1, Nystrom, random features.
  - Taylor of degree g, the paper's polynomial, at rank C(d + g, g) for comparison.
Errors of O and of the gradient dq, dk, dv (dO ~ N(0,1)), each ordinary relative error,
computed from the approximated matrix by the softmax formulas (row normalisation by the
approximated row sums; dS = P~ o (dO v^T - D)), the max of the four against the goal target
(their forward error / 10). The SVD is an eigendecomposition of A A^T (A_r = U_r U_r^T A).
Beside it, one O(n r) method that adapts to the data, Nystrom with k-means landmarks, at
1x and 4x the SVD rank (where that is at most n / 2).

  bench_paper_rank.py [--ds "4 5 ..."] [--data DIR] [--max-n N] > paper_rank.csv
"""
import argparse
import math
import os
import sys

import torch

THEIR_ERR_PCT = {4: 4.673, 5: 2.505, 6: 2.846, 7: 1.838, 8: 2.005, 9: 1.620, 10: 1.286,
                 11: 1.558, 12: 0.773}


def load(path, n, d):
    x = torch.frombuffer(bytearray(open(path, 'rb').read()), dtype=torch.float32)
    if x.numel() != n * d:
        sys.exit(f'bench_paper_rank: {path}: expected {n * d} float32 values')
    return x.reshape(n, d).double()


def inputs(d, data_dir, gen):
    n = 10 << d
    paths = [os.path.join(data_dir or '', f'paper_d{d}_{x}.f32') for x in 'qkv']
    if data_dir and all(os.path.exists(p) for p in paths):
        q, k, v = (load(p, n, d) for p in paths)
        src = 'theirs'
    else:
        q = torch.randn(n, d, generator=gen, dtype=torch.float64) / math.sqrt(d)
        k = torch.randn(n, d, generator=gen, dtype=torch.float64) / math.sqrt(d)
        v = torch.randn(n, d, generator=gen, dtype=torch.float64)
        src = 'torch-seed'
    dout = torch.randn(n, d, generator=gen, dtype=torch.float64)
    return q, k, v, dout, src


def outputs(a, k, q, v, dout):
    p = a / a.sum(1, keepdim=True)
    o = p @ v
    dp = dout @ v.T
    ds = p * (dp - (dp * p).sum(1, keepdim=True))
    return o, ds @ k, ds.T @ q, p.T @ dout


def max_err(ref, got):
    return max(((r - g).norm() / r.norm()).item() for r, g in zip(ref, got))


def kmeans(x, r, gen, iters=10):
    c = x[torch.randperm(x.shape[0], generator=gen)[:r]].clone()
    for _ in range(iters):
        lab = torch.cdist(x, c).argmin(1)
        total = torch.zeros_like(c).index_add_(0, lab, x)
        count = torch.zeros(r, dtype=x.dtype).index_add_(0, lab, torch.ones_like(x[:, 0]))
        c = torch.where(count[:, None] > 0, total / count.clamp(min=1)[:, None], c)
    return c


def nystrom_err(q, k, v, dout, ref, r, gen):
    """Nystrom with r k-means landmarks for keys (L) and queries (M), held constant:
    A ~ exp(q L^T) pinv(exp(M L^T)) exp(M k^T), O(n r) like the features; the gradient is that
    of this forward (autograd), as altgrad's features route does."""
    lm, mm = kmeans(k, r, gen), kmeans(q, r, gen)
    wp = torch.linalg.pinv(torch.exp(mm @ lm.T), rtol=1e-12)
    q, k, v = (x.clone().requires_grad_() for x in (q, k, v))
    c, rr = torch.exp(q @ lm.T), torch.exp(mm @ k.T)
    o = (c @ (wp @ (rr @ v))) / (c @ (wp @ rr.sum(1)))[:, None]
    g = torch.autograd.grad((o * dout).sum(), (q, k, v))
    return 100 * max_err(ref, (o.detach(),) + g)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--ds', default='4 5 6 7 8 9 10')
    ap.add_argument('--data', default='')
    ap.add_argument('--max-n', type=int, default=10240)
    ap.add_argument('--threads', type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    gen = torch.Generator().manual_seed(7)
    print('d,n,data,target_pct,svd_min_rank,svd_err_pct,taylor_degree,taylor_rank,'
          'taylor_err_pct,taylor_prev_err_pct,nystrom_err_pct_at_1x,nystrom_err_pct_at_4x')
    for d in (int(x) for x in a.ds.split()):
        n = 10 << d
        if n > a.max_n:
            continue
        q, k, v, dout, src = inputs(d, a.data, gen)
        target = THEIR_ERR_PCT[d] / 10
        s = q @ k.T
        amat = torch.exp(s)
        ref = outputs(amat, k, q, v, dout)
        # Taylor: the first degree meeting the target
        tg, terr, tprev, term, acc = 0, None, None, torch.ones_like(s), torch.ones_like(s)
        for g in range(1, 13):
            term = term * s / g
            acc = acc + term
            e = 100 * max_err(ref, outputs(acc, k, q, v, dout))
            if e <= target:
                tg, terr = g, e
                break
            tprev = e
        del term, acc
        # best rank r: bisection on the truncated SVD (the error falls with r, near enough)
        evals, evecs = torch.linalg.eigh(amat @ amat.T)
        u = evecs.flip(1)  # descending singular values

        def svd_err(r):
            ur = u[:, :r]
            return 100 * max_err(ref, outputs(ur @ (ur.T @ amat), k, q, v, dout))

        lo, hi = 1, min(n, math.comb(d + tg, tg) if tg else n)
        if svd_err(hi) > target:
            hi = n
        while lo < hi:
            mid = (lo + hi) // 2
            if svd_err(mid) <= target:
                hi = mid
            else:
                lo = mid + 1
        svd_err_lo = svd_err(lo)
        del evals, evecs, u
        nys = [nystrom_err(q, k, v, dout, ref, m * lo, gen) if m * lo <= n // 2 else None
               for m in (1, 4)]
        print(f'{d},{n},{src},{target:.4g},{lo},{svd_err_lo:.4g},{tg},'
              f'{math.comb(d + tg, tg) if tg else ""},{"" if terr is None else f"{terr:.4g}"},'
              f'{"" if tprev is None else f"{tprev:.4g}"},'
              + ','.join('' if e is None else f'{e:.4g}' for e in nys), flush=True)
        del amat, s


if __name__ == '__main__':
    main()
