"""The torch bridge against torch's own modules (float32 service vs float64 torch autograd,
every tensor within 1e-4 relative Frobenius error).

What today's server computes is tested now: pre-norm (norm_first=True), no attention biases
(nn.MultiheadAttention(bias=False) in the layer), relu or tanh GELU, batch_first either way,
batch 1 and several, unbatched input, causal masks, MLP biases present or absent. The rest of
the matrix (post-norm, attention biases, erf GELU, key padding, PyTorch's default layer) is
written the same way and skipped, loudly, until /v1/info lists the feature it needs.
"""
import copy
import unittest

import live

import altgrad

try:
    import torch
    from torch import nn
    import altgrad.torch as agt
except ImportError as e:  # pragma: no cover - Debian's python3-torch is a test dependency
    torch = None
    IMPORT_ERROR = e

E, H, FF, N = 8, 2, 16, 6
TOL = 1e-4


def rel(a, b):
    """||a - b|| / ||b|| (Frobenius), in float64."""
    a, b = a.detach().double(), b.detach().double()
    nb = float(b.norm())
    return float((a - b).norm()) / nb if nb > 0 else float(a.norm())


def make_layer(norm_first=True, activation="relu", batch_first=False, attn_bias=False,
               mlp_bias=True, affine=True):
    layer = nn.TransformerEncoderLayer(E, H, FF, dropout=0.0, activation=activation,
                                       norm_first=norm_first, batch_first=batch_first)
    if not attn_bias:  # today's server has no attention biases
        layer.self_attn = nn.MultiheadAttention(E, H, bias=False, batch_first=batch_first)
    if not mlp_bias:
        layer.linear1 = nn.Linear(E, FF, bias=False)
        layer.linear2 = nn.Linear(FF, E, bias=False)
    if not affine:
        layer.norm1 = nn.LayerNorm(E, elementwise_affine=False)
        layer.norm2 = nn.LayerNorm(E, elementwise_affine=False)
    return layer


def build(kind="layer", n_layers=2, dtype=None, **kw):
    """A TransformerEncoderLayer or a TransformerEncoder of n_layers, float64 by default,
    every parameter moved off its initial value (torch starts biases at 0 and layernorm
    gammas at 1, which would hide a mapping mistake)."""
    layer = make_layer(**kw)
    module = layer if kind == "layer" else nn.TransformerEncoder(layer, n_layers)
    module = module.to(dtype or torch.float64)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return module


def causal_mask(kind, n):
    if kind == "float":
        return nn.Transformer.generate_square_subsequent_mask(n).double()
    if kind == "bool":
        return torch.ones(n, n, dtype=torch.bool).triu(1)
    return None


def padding_mask(lengths, n):
    return torch.arange(n).unsqueeze(0) >= torch.tensor(lengths).unsqueeze(1)


@unittest.skipIf(torch is None, "torch is not importable: %r" % (None if torch else IMPORT_ERROR))
class TorchCase(live.LiveTestCase):
    def setUp(self):
        torch.manual_seed(1234)

    def compare(self, module, x, causal=None, lengths=None, batch_first=False,
                frozen=(), x_grad=True):
        """Remote(copy of module) vs module itself: output (valid rows), x.grad and every
        parameter's .grad within TOL. causal: None, "float", "bool" or "is_causal"."""
        ref, rem = module, copy.deepcopy(module)
        for name in frozen:
            ref.get_parameter(name).requires_grad_(False)
            rem.get_parameter(name).requires_grad_(False)
        n = x.shape[-2] if (batch_first or x.dim() == 2) else x.shape[0]
        mask_name = "src_mask" if isinstance(module, nn.TransformerEncoderLayer) else "mask"
        ref_kw, rem_kw = {}, {}
        if causal == "is_causal":
            ref_kw[mask_name] = causal_mask("float", n)
            rem_kw["is_causal"] = True
        elif causal is not None:
            ref_kw[mask_name] = rem_kw[mask_name] = causal_mask(causal, n)
        valid = torch.ones_like(x)
        if lengths is not None:
            pad = padding_mask(lengths, n)
            ref_kw["src_key_padding_mask"] = rem_kw["src_key_padding_mask"] = pad
            keep = (~pad).to(x.dtype).unsqueeze(-1)  # [b, n, 1]
            valid = valid * (keep if batch_first else keep.transpose(0, 1))
        w = torch.randn_like(x)

        def loss(y):
            z = y * valid  # padded rows enter no loss (their output is undefined)
            return (z * w).sum() + 0.1 * (z * z).sum()

        x1 = x.clone().requires_grad_(x_grad)
        y1 = ref(x1, **ref_kw)
        loss(y1).backward()
        x2 = x.clone().requires_grad_(x_grad)
        remote = agt.Remote(rem, client=self.client, method="exact")
        y2 = remote(x2, **rem_kw)
        self.assertEqual(y2.dtype, x.dtype)
        self.assertEqual(y2.shape, y1.shape)
        loss(y2).backward()
        self.assertLessEqual(rel(y2 * valid, y1 * valid), TOL, "output")
        if lengths is not None:  # padded rows of the service's output are 0
            self.assertEqual(float((y2 * (1 - valid)).abs().max()), 0.0)
        if x_grad:
            self.assertLessEqual(rel(x2.grad, x1.grad), TOL, "x.grad")
        else:
            self.assertIsNone(x2.grad)
        for (name, p1), (_, p2) in zip(ref.named_parameters(), rem.named_parameters()):
            if name in frozen:
                self.assertIsNone(p2.grad, name)
                continue
            self.assertIsNotNone(p2.grad, name)
            self.assertLessEqual(rel(p2.grad, p1.grad), TOL, name)
        return remote

    def inputs(self, batch, batch_first, dtype=torch.float64, n=N):
        if batch == 0:
            return torch.randn(n, E, dtype=dtype)
        return torch.randn(batch, n, E, dtype=dtype) if batch_first else \
            torch.randn(n, batch, E, dtype=dtype)


class TodayTest(TorchCase):
    """What today's server supports, against torch's own modules."""

    def test_matrix(self):
        gelu_tanh = nn.GELU(approximate="tanh")
        for kind in ("layer", "encoder"):
            for batch_first in (False, True):
                for activation in ("relu", gelu_tanh):
                    for causal in (None, "float", "bool", "is_causal"):
                        for batch in (1, 3):
                            with self.subTest(kind=kind, batch_first=batch_first,
                                              activation=activation, causal=causal,
                                              batch=batch):
                                m = build(kind, activation=activation, batch_first=batch_first)
                                self.compare(m, self.inputs(batch, batch_first), causal=causal,
                                             batch_first=batch_first)

    def test_unbatched_input(self):
        for batch_first in (False, True):
            for causal in (None, "float"):
                with self.subTest(batch_first=batch_first, causal=causal):
                    m = build("layer", batch_first=batch_first)
                    self.compare(m, self.inputs(0, batch_first), causal=causal)

    def test_neutral_fills(self):
        # MLP without biases, layernorm without affine: sent as zeros/ones, grads dropped
        for kw in ({"mlp_bias": False}, {"affine": False}, {"mlp_bias": False, "affine": False}):
            with self.subTest(**kw):
                m = build("encoder", **kw)
                model, layers = agt.from_module(m)
                self.assertEqual(sorted(layers[0]), sorted(altgrad.layer_shapes(model)))
                self.assertNotIn("mlp_bias", model)  # a plain v1 model
                self.compare(m, self.inputs(2, False), causal="float")

    def test_no_padding_needs_no_lengths(self):
        m = build("encoder", batch_first=True)
        self.compare(m, self.inputs(3, True), lengths=[N, N, N], batch_first=True)

    def test_float32_module_deeper_stack(self):
        m = build("encoder", n_layers=3, dtype=torch.float32, batch_first=True)
        x = self.inputs(2, True, dtype=torch.float32)
        self.compare(m, x, causal="bool", batch_first=True)

    def test_frozen_parameters_and_input_without_grad(self):
        m = build("encoder")
        self.compare(m, self.inputs(2, False), frozen=("layers.0.linear1.weight",
                                                       "layers.1.self_attn.in_proj_weight"),
                     x_grad=False)

    def test_weights_are_read_at_every_call(self):
        m = build("encoder", batch_first=True)
        remote = agt.Remote(m, client=self.client, method="exact")
        opt = torch.optim.SGD(remote.parameters(), lr=0.05)
        x = self.inputs(2, True)
        outputs = []
        for _ in range(3):
            opt.zero_grad()
            y = remote(x)
            self.assertLessEqual(rel(y, m(x)), TOL)
            outputs.append(y.detach())
            (y * y).mean().backward()
            opt.step()
        self.assertGreater(rel(outputs[2], outputs[0]), 1e-3)  # the steps changed something
        self.assertIs(altgrad.torch, agt)  # the lazy attribute of the package
        y = remote(x.clone().requires_grad_())
        g, = torch.autograd.grad((y * y).sum(), remote.module.layers[0].linear1.weight,
                                 create_graph=True)
        with self.assertRaisesRegex(RuntimeError, "once_differentiable"):  # not silent zeros
            g.sum().backward()
        with torch.no_grad():  # inference: forward only
            y = remote(x)
            self.assertLessEqual(rel(y, m(x)), TOL)
            twin = copy.deepcopy(remote)  # its own module and client, the same weights
            self.assertIsNot(twin.client, remote.client)
            self.assertTrue(torch.equal(twin(x), y))

    def test_missing_features_are_named(self):
        cases = [("norm_position", dict(norm_first=False), "norm_first"),
                 ("attn_bias", dict(attn_bias=True), "self_attn.in_proj_bias"),
                 ("gelu_erf", dict(activation="gelu"), "activation")]
        have = self.client.features()
        for feature, kw, attribute in cases + [("lengths", {}, "src_key_padding_mask")]:
            if feature in have:
                continue
            with self.subTest(feature=feature):
                m = build("layer", **kw)
                r = agt.Remote(m, client=self.client)
                pad = {"src_key_padding_mask": padding_mask([N, 3], N)} \
                    if feature == "lengths" else {}
                with self.assertRaises(altgrad.UnsupportedError) as cm:
                    r(self.inputs(2, False), **pad)
                self.assertEqual(cm.exception.code, "unsupported_feature")
                self.assertEqual(cm.exception.field, attribute)
                self.assertIn(feature, cm.exception.message)


class TransposeGuardTest(TorchCase):
    """from_module never needs the caller to transpose a weight."""

    def test_wire_weights_are_the_transposes(self):
        m = build("layer")
        model, layers = agt.from_module(m)
        w_in = m.self_attn.in_proj_weight.detach().float()
        for j, name in enumerate(("wq", "wk", "wv")):
            square = w_in[j * E:(j + 1) * E]
            self.assertGreater(rel(square, square.t()), 0.1)  # not symmetric: a test can tell
            got = agt.tensor_to_torch(layers[0][name])
            self.assertTrue(torch.equal(got, square.t()), name)
        self.assertTrue(torch.equal(agt.tensor_to_torch(layers[0]["wo"]),
                                    m.self_attn.out_proj.weight.detach().float().t()))
        self.assertEqual(layers[0]["w1"].shape, (E, FF))
        self.assertTrue(torch.equal(agt.tensor_to_torch(layers[0]["w1"]),
                                    m.linear1.weight.detach().float().t()))
        self.assertEqual(layers[0]["w2"].shape, (FF, E))
        self.assertEqual(model, {"d_model": E, "n_heads": H, "n_layers": 1, "d_ff": FF,
                                 "causal": False, "norm": "layernorm", "activation": "relu",
                                 "residual": True})

    def test_a_forgotten_transpose_is_caught(self):
        m = build("layer", batch_first=True)
        x = self.inputs(2, True)
        model, layers = agt.from_module(m)
        req = {"model": model, "layers": layers, "input": agt.tensor_from_torch(x)}
        right = agt.tensor_to_torch(self.client.forward(req).output, torch.float64)
        self.assertLessEqual(rel(right, m(x)), TOL)
        forgot = [dict(layer) for layer in layers]
        for name in ("wq", "wk", "wv", "wo"):  # what a hand-written converter might send
            forgot[0][name] = agt.tensor_from_torch(agt.tensor_to_torch(layers[0][name]).t())
        wrong = agt.tensor_to_torch(self.client.forward(dict(req, layers=forgot)).output,
                                    torch.float64)
        self.assertGreater(rel(wrong, m(x)), 1e-2)

    def test_gradients_to_module(self):
        m = build("encoder", batch_first=True)
        ref = copy.deepcopy(m)
        x = self.inputs(2, True)
        g = torch.randn_like(x)
        (ref(x) * g).sum().backward()
        model, layers = agt.from_module(m)
        r = self.client.gradients(model=model, layers=layers, input=agt.tensor_from_torch(x),
                                  loss=altgrad.grad_output(agt.tensor_from_torch(g)),
                                  method="exact")
        agt.gradients_to_module(m, r)
        for (name, p1), (_, p2) in zip(ref.named_parameters(), m.named_parameters()):
            self.assertLessEqual(rel(p2.grad, p1.grad), TOL, name)
        agt.gradients_to_module(m, r.grad_weights)  # accumulates, as autograd does
        for (name, p1), (_, p2) in zip(ref.named_parameters(), m.named_parameters()):
            self.assertLessEqual(rel(p2.grad, 2 * p1.grad), TOL, name)
        agt.gradients_to_module(m, r, accumulate=False)
        for (name, p1), (_, p2) in zip(ref.named_parameters(), m.named_parameters()):
            self.assertLessEqual(rel(p2.grad, p1.grad), TOL, name)


@unittest.skipIf(torch is None, "torch is not importable")
class RefusalTest(unittest.TestCase):
    """What has no wire form raises UnsupportedError naming the attribute."""

    def refused(self, field, fn):
        with self.assertRaises(altgrad.UnsupportedError) as cm:
            fn()
        self.assertEqual(cm.exception.field, field, str(cm.exception))
        self.assertEqual(cm.exception.code, "unsupported")
        return cm.exception

    def test_module_attributes(self):
        layer = nn.TransformerEncoderLayer(E, H, FF)  # dropout 0.1, training mode
        self.refused("dropout", lambda: agt.from_module(layer))
        layer.eval()
        agt.from_module(layer)  # eval mode: dropout does nothing
        enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(E, H, FF, dropout=0.0), 2)
        enc.layers[1].self_attn.dropout = 0.5
        self.refused("layers.1.self_attn.dropout", lambda: agt.from_module(enc))
        layer = nn.TransformerEncoderLayer(E, H, FF, dropout=0.0, activation=torch.tanh)
        self.refused("activation", lambda: agt.from_module(layer))
        layer = nn.TransformerEncoderLayer(E, H, FF, dropout=0.0)
        layer.self_attn = nn.MultiheadAttention(E, H, kdim=4, vdim=4)
        self.refused("self_attn.kdim", lambda: agt.from_module(layer))
        layer.self_attn = nn.MultiheadAttention(E, H, add_bias_kv=True)
        self.refused("self_attn.bias_k", lambda: agt.from_module(layer))
        layer.self_attn = nn.MultiheadAttention(E, H, add_zero_attn=True)
        self.refused("self_attn.add_zero_attn", lambda: agt.from_module(layer))
        layer = nn.TransformerEncoderLayer(E, H, FF, dropout=0.0, layer_norm_eps=1e-6)
        self.refused("norm1.eps", lambda: agt.from_module(layer))
        enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(E, H, FF, dropout=0.0), 2,
                                    norm=nn.LayerNorm(E))
        self.refused("norm", lambda: agt.from_module(enc))
        enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(E, H, FF, dropout=0.0), 2)
        enc.layers[1].activation = torch.nn.functional.gelu
        self.refused("layers.1.activation", lambda: agt.from_module(enc))
        self.refused("module", lambda: agt.from_module(nn.Linear(E, E)))
        self.refused("module", lambda: agt.from_module(nn.TransformerDecoderLayer(E, H, FF)))

    def test_forward_arguments(self):
        layer = make_layer()
        remote = agt.Remote(layer, "http://127.0.0.1:1")  # refused before any request
        x = torch.randn(N, 2, E)
        self.refused("src", lambda: remote(torch.randn(N, 2, E + 1)))
        band = torch.zeros(N, N)
        band[0, 1] = float("-inf")
        self.refused("src_mask", lambda: remote(x, src_mask=band))
        self.refused("mask", lambda: remote(x, mask=torch.ones(N, N, dtype=torch.bool)))
        self.refused("src_mask", lambda: remote(x, src_mask=torch.zeros(4, N, N)))
        left = torch.tensor([[True, False, False, False, False, False]] * 2)
        self.refused("src_key_padding_mask", lambda: remote(x, src_key_padding_mask=left))
        empty = torch.ones(2, N, dtype=torch.bool)
        self.refused("src_key_padding_mask", lambda: remote(x, src_key_padding_mask=empty))
        halfway = torch.zeros(2, N)
        halfway[0, -1] = -1.0
        self.refused("src_key_padding_mask", lambda: remote(x, src_key_padding_mask=halfway))
        self.refused("src_key_padding_mask",
                     lambda: remote(x, src_key_padding_mask=torch.zeros(3, N, dtype=torch.bool)))
        with self.assertRaises(altgrad.ConnectError):  # what passes goes to the (absent) server
            remote(x, src_key_padding_mask=torch.zeros(2, N, dtype=torch.bool))
        remote.client.close()


class FeatureTest(TorchCase):
    """The rest of issue 15's matrix: skipped until the server lists each feature."""

    def test_post_norm(self):
        live.require_features(self, self.client, "norm_position")
        for kind in ("layer", "encoder"):
            for batch_first in (False, True):
                for activation in ("relu", nn.GELU(approximate="tanh")):
                    for causal in (None, "float"):
                        for batch in (1, 3):
                            with self.subTest(kind=kind, batch_first=batch_first,
                                              activation=activation, causal=causal,
                                              batch=batch):
                                m = build(kind, norm_first=False, activation=activation,
                                          batch_first=batch_first)
                                self.compare(m, self.inputs(batch, batch_first), causal=causal,
                                             batch_first=batch_first)
        self.compare(build("layer", norm_first=False), self.inputs(0, False))

    def test_attention_biases_pre_norm(self):
        live.require_features(self, self.client, "attn_bias")
        for kind in ("layer", "encoder"):
            for batch in (1, 3):
                with self.subTest(kind=kind, batch=batch):
                    m = build(kind, attn_bias=True)
                    self.assertTrue(agt.from_module(m)[0]["attn_bias"])
                    self.compare(m, self.inputs(batch, False), causal="float")
        m = build("layer", attn_bias=True)  # only out_proj.bias: the missing ones are zeros
        m.self_attn.in_proj_bias = None
        self.compare(m, self.inputs(2, False))

    def test_attention_biases_post_norm(self):
        live.require_features(self, self.client, "attn_bias", "norm_position")
        for batch_first in (False, True):
            with self.subTest(batch_first=batch_first):
                m = build("encoder", norm_first=False, attn_bias=True, batch_first=batch_first)
                self.compare(m, self.inputs(3, batch_first), batch_first=batch_first)

    def test_gelu_erf(self):
        live.require_features(self, self.client, "gelu_erf")
        for activation in ("gelu", torch.nn.functional.gelu, nn.GELU()):
            for batch in (1, 3):
                with self.subTest(activation=activation, batch=batch):
                    m = build("encoder", activation=activation)
                    self.assertEqual(agt.from_module(m)[0]["activation"], "gelu_erf")
                    self.compare(m, self.inputs(batch, False), causal="bool")

    def test_key_padding(self):
        live.require_features(self, self.client, "lengths")
        for batch_first in (False, True):
            for causal in (None, "float"):
                for lengths in ([N - 2], [N, 4, 1], [2, N, 5]):
                    with self.subTest(batch_first=batch_first, causal=causal, lengths=lengths):
                        m = build("encoder", batch_first=batch_first)
                        x = self.inputs(len(lengths), batch_first)
                        self.compare(m, x, causal=causal, lengths=lengths,
                                     batch_first=batch_first)
        m = build("layer")  # a float mask (-inf = padding) is the same
        pad = padding_mask([N, 3], N)
        f = torch.zeros(2, N).masked_fill(pad, float("-inf"))
        x = self.inputs(2, False)
        y = agt.Remote(copy.deepcopy(m), client=self.client, method="exact")(
            x, src_key_padding_mask=f)
        y0 = agt.Remote(m, client=self.client, method="exact")(x, src_key_padding_mask=pad)
        self.assertTrue(torch.equal(y, y0))

    def test_pytorch_default_layer(self):
        # nn.TransformerEncoderLayer as PyTorch makes it: post-norm, relu, every bias
        live.require_features(self, self.client, "norm_position", "attn_bias")
        for batch in (1, 3):
            with self.subTest(batch=batch):
                torch.manual_seed(batch)
                layer = nn.TransformerEncoderLayer(E, H, FF, dropout=0.0)
                m = nn.TransformerEncoder(layer, 2).double()
                with torch.no_grad():
                    for p in m.parameters():
                        p.add_(0.2 * torch.randn_like(p))
                self.compare(m, self.inputs(batch, False), causal="float")

    def test_every_option_together(self):
        live.require_features(self, self.client, "norm_position", "attn_bias", "gelu_erf",
                              "lengths")
        for norm_first in (False, True):
            with self.subTest(norm_first=norm_first):
                m = build("encoder", norm_first=norm_first, activation="gelu", attn_bias=True,
                          batch_first=True)
                self.compare(m, self.inputs(3, True), causal="is_causal", lengths=[N, 3, 5],
                             batch_first=True)


if __name__ == "__main__":
    unittest.main()
