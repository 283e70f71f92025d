#!/usr/bin/python3
"""Fine-tune a small nn.TransformerEncoder whose forward and backward run on altgrad.

The task: reverse a sequence of 8 tokens. Token and position embeddings and the output head
are ordinary local torch modules; the encoder in the middle is wrapped in
altgrad.torch.Remote, so each step sends its input and current weights to the service twice
(forward: the output; backward: the VJP of grad_output), and loss.backward() fills every
encoder parameter's .grad as local autograd would. A torch optimizer then updates all of
them locally. The loss is printed every step.

    make run                                      # a server on 127.0.0.1:8080, elsewhere
    /usr/bin/python3 client/python/examples/finetune.py [--url URL] [--steps 150]

Exits 0 when the mean loss of the last 5 steps is below that of the first 5.
"""
import argparse
import sys
import time

import torch
from torch import nn

import altgrad
from altgrad.torch import Remote

# What PyTorch's default nn.TransformerEncoderLayer needs from the service: post-norm,
# attention biases, erf GELU (when asked for). A server that does not list them in /v1/info
# gets the layer in a form it computes exactly: pre-norm, attention without biases, relu.
STOCK_FEATURES = ("norm_position", "attn_bias", "gelu_erf")


def encoder(d_model, heads, d_ff, layers, stock):
    if stock:
        layer = nn.TransformerEncoderLayer(d_model, heads, d_ff, dropout=0.0,
                                           activation="gelu", batch_first=True)
    else:
        layer = nn.TransformerEncoderLayer(d_model, heads, d_ff, dropout=0.0,
                                           activation="relu", norm_first=True,
                                           batch_first=True)
        layer.self_attn = nn.MultiheadAttention(d_model, heads, bias=False, batch_first=True)
    return nn.TransformerEncoder(layer, layers)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--token", default=None)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    vocab, n, d, heads, d_ff, n_layers = 8, 8, 16, 2, 32, 2
    client = altgrad.Client(args.url, token=args.token)
    try:
        stock = all(f in client.features() for f in STOCK_FEATURES)
    except altgrad.Error as e:
        print("finetune: %s" % e, file=sys.stderr)
        return 3
    enc = encoder(d, heads, d_ff, n_layers, stock)
    remote = Remote(enc, client=client, method="exact")
    embed = nn.Embedding(vocab, d)
    pos = nn.Parameter(0.1 * torch.randn(n, d))
    head = nn.Linear(d, vocab)
    params = list(embed.parameters()) + [pos] + list(head.parameters()) + \
        list(remote.parameters())
    opt = torch.optim.Adam(params, lr=args.lr)
    print("finetune: reverse %d tokens; encoder %d layers, width %d, %d heads, d_ff %d "
          "(%s layer); batch %d, Adam lr %g; server %s"
          % (n, n_layers, d, heads, d_ff, "PyTorch's default" if stock else "pre-norm, no "
             "attention bias, relu", args.batch, args.lr, args.url))

    losses = []
    for step in range(args.steps):
        tokens = torch.randint(0, vocab, (args.batch, n))
        target = tokens.flip(1)
        t0 = time.monotonic()
        try:
            h = remote(embed(tokens) + pos)
        except altgrad.Error as e:
            print("finetune: %s" % e, file=sys.stderr)
            return 3
        logits = head(h)
        loss = nn.functional.cross_entropy(logits.reshape(-1, vocab), target.reshape(-1))
        opt.zero_grad()
        loss.backward()  # the encoder's part runs on the service
        opt.step()
        losses.append(float(loss))
        right = float((logits.argmax(-1) == target).float().mean())
        print("step %3d  loss %.5f  reversed right %5.1f%%  (%.0f ms)"
              % (step, losses[-1], 100 * right, 1000 * (time.monotonic() - t0)))
    k = min(5, len(losses))
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    print("mean loss of the first %d steps %.5f, of the last %d steps %.5f: %s"
          % (k, first, k, last, "decreasing" if last < first else "NOT decreasing"))
    return 0 if last < first else 1


if __name__ == "__main__":
    sys.exit(main())
