"""The PyTorch bridge (docs/python.md, "The torch bridge"): needs torch (Debian's
python3-torch 1.13 is the one tested).

    from altgrad.torch import Remote, from_module
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0), 2)
    y = Remote(enc, "http://127.0.0.1:8080")(x)      # forward computed by the service
    loss_fn(y).backward()                            # backward: the service's VJP
    # x.grad and every parameter's .grad of enc are filled as local autograd would

Conversions (weights travel as the wire format wants them, so the caller never transposes):
  MultiheadAttention.in_proj_weight [3E, E] -> wq, wk, wv = rows 0:E, E:2E, 2E:3E, transposed
  out_proj.weight -> wo (transposed); in_proj_bias -> bq, bk, bv; out_proj.bias -> bo
  linear1.weight [F, E] -> w1 [E, F]; linear2.weight [E, F] -> w2 [F, E]; biases -> b1, b2
  norm1/norm2 weight, bias -> ln1_gamma, ln1_beta / ln2_gamma, ln2_beta
  norm_first True/False -> norm_position "pre"/"post"; relu -> "relu", F.gelu and
  nn.GELU() -> "gelu_erf", nn.GELU(approximate="tanh") -> "gelu" (tanh form)
Absent parameters that the wire format needs are sent as their neutral values and their
gradients dropped: a LayerNorm without affine (gamma 1, beta 0), a Linear without bias
(b 0), one missing attention bias when the other is present (0).
"""
import functools
from array import array

import torch
import torch.nn.functional as F
from torch import nn

from .client import Client
from .errors import Error, UnsupportedError
from .tensor import Tensor
from .wire import as_method, model as wire_model, required_features

LAYERNORM_EPS = 1e-5  # altgrad's layernorm (docs/api.md, "model")

# Which torch attribute asks for which server feature (for the error when it is missing).
_FEATURE_ATTRIBUTE = {"norm_position": "norm_first", "attn_bias": "self_attn.in_proj_bias",
                      "gelu_erf": "activation", "lengths": "src_key_padding_mask"}


def tensor_from_torch(t):
    """A torch tensor -> Tensor (float32, same shape, row-major; detached, on the CPU)."""
    t = t.detach().to(device="cpu", dtype=torch.float32).contiguous()
    if t.dim() == 0:
        t = t.reshape(1)
    buf = array("f", bytes(4 * t.numel()))
    torch.frombuffer(buf, dtype=torch.float32).copy_(t.reshape(-1))
    return Tensor(tuple(t.shape), buf)


def tensor_to_torch(t, dtype=torch.float32, device="cpu"):
    """A Tensor -> a new torch tensor of its shape (copied)."""
    flat = torch.frombuffer(t.data, dtype=torch.float32).clone()
    return flat.reshape(t.shape).to(dtype=dtype, device=device)


class _Binding:
    """How wire weight `name` of layer `layer` comes from a torch parameter: rows of dim 0
    (or all), transposed or not; param None means the neutral value `fill`."""

    __slots__ = ("layer", "name", "param", "rows", "transpose", "fill", "shape")

    def __init__(self, layer, name, param, rows=None, transpose=False, fill=0.0, shape=None):
        self.layer, self.name, self.param = layer, name, param
        self.rows, self.transpose, self.fill, self.shape = rows, transpose, fill, shape

    def value(self):
        if self.param is None:
            return Tensor(self.shape, [self.fill] * _count(self.shape))
        v = self.param.detach()
        if self.rows is not None:
            v = v[self.rows[0]:self.rows[1]]
        return tensor_from_torch(v.t() if self.transpose else v)


def _count(shape):
    n = 1
    for s in shape:
        n *= s
    return n


class Conversion:
    """What from_module computes: the wire `model` and `layers`, and how to map gradients
    back (`params`: the module's parameters that reach the wire, each once; `features`:
    {server feature: torch attribute} of what goes beyond wire format v1; `batch_first`)."""

    def __init__(self, model, bindings, features, batch_first):
        self.model = model
        self.bindings = bindings
        self.features = features
        self.batch_first = batch_first
        seen, params = set(), []
        for b in bindings:
            if b.param is not None and id(b.param) not in seen:
                seen.add(id(b.param))
                params.append(b.param)
        self.params = params

    def layers(self):
        """The wire layers from the parameters' current values."""
        out = [{} for _ in range(self.model["n_layers"])]
        for b in self.bindings:
            out[b.layer][b.name] = b.value()
        return out

    def param_grads(self, grad_weights):
        """[grad of each of self.params] (torch tensors of the parameter's shape, dtype and
        device) from a response's grad_weights; a parameter no binding fed gets zeros."""
        grads = {id(p): torch.zeros_like(p, memory_format=torch.contiguous_format)
                 for p in self.params}
        for b in self.bindings:
            if b.param is None:
                continue
            try:
                w = grad_weights[b.layer][b.name]
            except (IndexError, KeyError, TypeError):
                raise Error("the answer lacks grad_weights[%d].%s" % (b.layer, b.name),
                            code="bad_response",
                            field="grad_weights[%d].%s" % (b.layer, b.name)) from None
            g = tensor_to_torch(Tensor.from_wire(w), dtype=b.param.dtype,
                                device=b.param.device)
            if b.transpose:
                g = g.t()
            target = grads[id(b.param)]
            if b.rows is not None:
                target = target[b.rows[0]:b.rows[1]]
            if tuple(g.shape) != tuple(target.shape):
                raise Error("grad_weights[%d].%s has shape %s, expected %s"
                            % (b.layer, b.name, list(g.shape), list(target.shape)),
                            code="bad_response",
                            field="grad_weights[%d].%s" % (b.layer, b.name))
            target += g
        return [grads[id(p)] for p in self.params]


def _unsupported(field, message):
    return UnsupportedError("%s: %s" % (field, message), code="unsupported", field=field)


def _activation(act, field):
    """altgrad's activation name for a TransformerEncoderLayer's activation."""
    if act is F.relu or isinstance(act, nn.ReLU):
        return "relu"
    if act is F.gelu:
        return "gelu_erf"
    approximate = None
    if isinstance(act, nn.GELU):
        approximate = getattr(act, "approximate", "none")
    elif (isinstance(act, functools.partial) and act.func is F.gelu and not act.args
          and set(act.keywords) <= {"approximate"}):
        approximate = act.keywords.get("approximate", "none")
    if approximate == "none":
        return "gelu_erf"
    if approximate == "tanh":
        return "gelu"
    raise _unsupported(field, "activation %r is not relu, erf GELU or tanh GELU" % (act,))


def _encoder_layers(module):
    """[(prefix, layer)] of a TransformerEncoderLayer or a TransformerEncoder."""
    if isinstance(module, nn.TransformerEncoderLayer):
        return [("", module)]
    if isinstance(module, nn.TransformerEncoder):
        if module.norm is not None:
            raise _unsupported("norm", "a final norm after the layers has no wire form; "
                               "apply it locally after Remote (norm=None here)")
        out = []
        for i, layer in enumerate(module.layers):
            if not isinstance(layer, nn.TransformerEncoderLayer):
                raise _unsupported("layers.%d" % i, "%s is not an nn.TransformerEncoderLayer"
                                   % type(layer).__name__)
            out.append(("layers.%d." % i, layer))
        if not out:
            raise _unsupported("layers", "the encoder has no layers")
        return out
    raise _unsupported("module", "%s is neither nn.TransformerEncoderLayer nor "
                       "nn.TransformerEncoder" % type(module).__name__)


def _check_dropout(p, layer):
    for name in ("dropout", "dropout1", "dropout2"):
        d = getattr(layer, name, None)
        if isinstance(d, nn.Dropout) and d.p > 0 and d.training:
            raise _unsupported(p + name, "dropout %g in training mode: the service computes "
                               "without dropout (set p=0 or call .eval())" % d.p)
    sa = layer.self_attn
    if sa.dropout > 0 and sa.training:
        raise _unsupported(p + "self_attn.dropout", "attention dropout %g in training mode "
                           "(set dropout=0 or call .eval())" % sa.dropout)


def _layer_config(p, layer):
    """(config dict, attention biases present) of one layer, refusing what has no wire form."""
    sa = layer.self_attn
    if not isinstance(sa, nn.MultiheadAttention):
        raise _unsupported(p + "self_attn", "not an nn.MultiheadAttention")
    if not sa._qkv_same_embed_dim:
        raise _unsupported(p + "self_attn.kdim", "kdim/vdim (%s/%s) differ from embed_dim %d"
                           % (sa.kdim, sa.vdim, sa.embed_dim))
    if sa.bias_k is not None or sa.bias_v is not None:
        raise _unsupported(p + "self_attn.bias_k", "add_bias_kv has no wire form")
    if sa.add_zero_attn:
        raise _unsupported(p + "self_attn.add_zero_attn", "add_zero_attn has no wire form")
    e = sa.embed_dim
    for name in ("linear1", "linear2"):
        lin = getattr(layer, name)
        if type(lin) is not nn.Linear:
            raise _unsupported(p + name, "%s is not an nn.Linear" % type(lin).__name__)
    d_ff = layer.linear1.out_features
    if layer.linear1.in_features != e or layer.linear2.in_features != d_ff or \
            layer.linear2.out_features != e:
        raise _unsupported(p + "linear2", "linear1/linear2 are not [%d -> d_ff -> %d]" % (e, e))
    for name in ("norm1", "norm2"):
        ln = getattr(layer, name)
        if not isinstance(ln, nn.LayerNorm):
            raise _unsupported(p + name, "%s is not an nn.LayerNorm" % type(ln).__name__)
        if tuple(ln.normalized_shape) != (e,):
            raise _unsupported(p + name + ".normalized_shape", "must be (%d,)" % e)
        if ln.eps != LAYERNORM_EPS:
            raise _unsupported(p + name + ".eps", "eps %g, altgrad's layernorm uses %g"
                               % (ln.eps, LAYERNORM_EPS))
    activation = _activation(layer.activation, p + "activation")
    cfg = {"d_model": e, "n_heads": sa.num_heads, "d_ff": d_ff, "activation": activation,
           "norm_first": bool(layer.norm_first), "batch_first": bool(sa.batch_first)}
    has_bias = sa.in_proj_bias is not None or sa.out_proj.bias is not None
    return cfg, has_bias


def convert(module, check_training=True):
    """The Conversion of an nn.TransformerEncoderLayer or an nn.TransformerEncoder of them;
    raises UnsupportedError naming the attribute when something has no wire form (dropout
    in training mode only when check_training)."""
    layers = _encoder_layers(module)
    configs = []
    for p, layer in layers:
        if check_training:
            _check_dropout(p, layer)
        configs.append(_layer_config(p, layer))
    first, _ = configs[0]
    for (p, _), (cfg, _) in zip(layers[1:], configs[1:]):
        for key in first:
            if cfg[key] != first[key]:
                raise _unsupported(p + key, "%r differs from layers.0's %r (altgrad's layers "
                                   "share one configuration)" % (cfg[key], first[key]))
    attn_bias = any(has for _, has in configs)
    e, d_ff = first["d_model"], first["d_ff"]
    model = wire_model(e, first["n_heads"], len(layers), d_ff, causal=False,
                       norm="layernorm", activation=first["activation"], residual=True,
                       norm_position=None if first["norm_first"] else "post",
                       attn_bias=True if attn_bias else None)
    bindings = []
    for i, (_, layer) in enumerate(layers):
        sa = layer.self_attn
        for j, name in enumerate(("wq", "wk", "wv")):
            bindings.append(_Binding(i, name, sa.in_proj_weight, (j * e, (j + 1) * e), True))
        bindings.append(_Binding(i, "wo", sa.out_proj.weight, None, True))
        if attn_bias:
            for j, name in enumerate(("bq", "bk", "bv")):
                bindings.append(_Binding(i, name, sa.in_proj_bias,
                                         (j * e, (j + 1) * e) if sa.in_proj_bias is not None
                                         else None, shape=(e,)))
            bindings.append(_Binding(i, "bo", sa.out_proj.bias, shape=(e,)))
        for k, ln in ((1, layer.norm1), (2, layer.norm2)):
            bindings.append(_Binding(i, "ln%d_gamma" % k, ln.weight, fill=1.0, shape=(e,)))
            bindings.append(_Binding(i, "ln%d_beta" % k, ln.bias, shape=(e,)))
        bindings.append(_Binding(i, "w1", layer.linear1.weight, None, True))
        bindings.append(_Binding(i, "b1", layer.linear1.bias, shape=(d_ff,)))
        bindings.append(_Binding(i, "w2", layer.linear2.weight, None, True))
        bindings.append(_Binding(i, "b2", layer.linear2.bias, shape=(e,)))
    features = {f: _FEATURE_ATTRIBUTE[f] for f in required_features({"model": model})}
    return Conversion(model, bindings, features, first["batch_first"])


def from_module(module):
    """(model, layers) of the wire format for an nn.TransformerEncoderLayer or an
    nn.TransformerEncoder of them: layers is a list of {name: Tensor}, already transposed
    to altgrad's [d_in, d_out]. model["causal"] is False; set it for a causal mask. Raises
    UnsupportedError naming the attribute that has no wire form."""
    conv = convert(module)
    return dict(conv.model), conv.layers()


def gradients_to_module(module, grad_weights, accumulate=True):
    """Writes a response's grad_weights (Result.grad_weights, or a Result) into the .grad
    of module's parameters, transposed back to torch's layout: added to an existing .grad
    when accumulate (as autograd does), else replacing it."""
    if hasattr(grad_weights, "grad_weights"):
        grad_weights = grad_weights.grad_weights
    conv = convert(module, check_training=False)
    for p, g in zip(conv.params, conv.param_grads(grad_weights)):
        if accumulate and p.grad is not None:
            p.grad += g
        else:
            p.grad = g


def _is_causal_mask(mask, n):
    if tuple(mask.shape) != (n, n):
        return False
    above = torch.ones(n, n, dtype=torch.bool, device=mask.device).triu(1)
    if mask.dtype == torch.bool:
        return bool(torch.equal(mask, above))
    if not torch.is_floating_point(mask):
        return False
    neg_inf = torch.isinf(mask) & (mask < 0)
    return bool(torch.equal(neg_inf, above)) and bool((mask[~above] == 0).all())


def _lengths(mask, batch, n, name):
    """Per-sequence lengths of a right-padding key padding mask (True or -inf = padding);
    None when nothing is padded."""
    if mask.dtype == torch.bool:
        pad = mask
    elif torch.is_floating_point(mask):
        pad = torch.isinf(mask) & (mask < 0)
        if not bool(((mask == 0) | pad).all()):
            raise _unsupported(name, "a float key padding mask must hold only 0 and -inf")
    else:
        raise _unsupported(name, "must be bool or float, got %s" % mask.dtype)
    pad = pad.reshape(batch, n) if pad.dim() == 1 and batch == 1 else pad
    if tuple(pad.shape) != (batch, n):
        raise _unsupported(name, "shape %s, expected [%d, %d]" % (list(mask.shape), batch, n))
    lengths = (~pad).sum(dim=1)
    positions = torch.arange(n, device=pad.device).expand(batch, n)
    if not torch.equal(pad, positions >= lengths.unsqueeze(1)):
        raise _unsupported(name, "only right padding (True only after the last valid token) "
                           "maps to the wire's lengths")
    if bool((lengths == 0).any()):
        raise _unsupported(name, "a sequence that is all padding")
    if bool((lengths == n).all()):
        return None
    return [int(v) for v in lengths.tolist()]


class _Call:
    """One Remote forward: the request parts both exchanges (forward, VJP) share."""

    def __init__(self, remote, conv, causal, lengths):
        self.client = remote.client
        self.method = remote.method
        self.conv = conv
        self.model = dict(conv.model, causal=causal)
        self.layers = conv.layers()
        self.lengths = lengths
        self.features = dict(conv.features)
        if lengths is not None:
            self.features["lengths"] = _FEATURE_ATTRIBUTE["lengths"]

    def check_features(self):
        if not self.features:
            return
        have = self.client.features()
        for feature, attribute in self.features.items():
            if feature not in have:
                raise UnsupportedError(
                    "%s: needs the server feature %r, which %s does not list in /v1/info "
                    "(it lists %s)" % (attribute, feature, self.client.url, sorted(have)),
                    code="unsupported_feature", field=attribute)

    def request(self, x, returns, loss=None):
        r = {"model": self.model, "layers": self.layers, "input": x, "return": returns}
        if loss is not None:
            r["loss"] = loss
        if self.lengths is not None:
            r["lengths"] = self.lengths
        if self.method is not None:
            r["method"] = self.method
        return r


class _RemoteFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, call, x, *params):
        ctx.call = call
        ctx.x_wire = tensor_from_torch(x)
        res = call.client.forward(call.request(ctx.x_wire, ["output"]))
        if res.output is None or tuple(res.output.shape) != tuple(x.shape):
            raise Error("the answer's output does not have the input's shape %s"
                        % list(x.shape), code="bad_response", field="output")
        ctx.x_meta = (x.dtype, x.device)
        return tensor_to_torch(res.output, *ctx.x_meta)

    @staticmethod
    @torch.autograd.function.once_differentiable  # the VJP has no derivative of its own
    def backward(ctx, grad_out):
        call = ctx.call
        want_x = ctx.needs_input_grad[1]
        want_w = any(ctx.needs_input_grad[2:])
        returns = (["grad_input"] if want_x else []) + (["grad_weights"] if want_w else [])
        loss = {"type": "grad_output", "grad": tensor_from_torch(grad_out)}
        res = call.client.gradients(call.request(ctx.x_wire, returns, loss))
        gx = None
        if want_x:
            if res.grad_input is None or res.grad_input.shape != ctx.x_wire.shape:
                raise Error("the answer's grad_input does not have the input's shape",
                            code="bad_response", field="grad_input")
            gx = tensor_to_torch(res.grad_input, *ctx.x_meta)
        gw = call.conv.param_grads(res.grad_weights) if want_w else [None] * len(call.conv.params)
        gw = [g if need else None for g, need in zip(gw, ctx.needs_input_grad[2:])]
        return (None, gx) + tuple(gw)


class Remote(nn.Module):
    """An nn.Module computing `module` (an nn.TransformerEncoderLayer or nn.TransformerEncoder)
    on the altgrad service: forward sends the input and the current weights and asks for the
    output; backward sends grad_output and fills the input's and every parameter's gradient
    (a torch.autograd.Function), so loss.backward() works as with the local module.

    module is registered as a submodule: Remote(...).parameters() are module's parameters
    (give them to an optimizer). method: None (the server's default, auto), a name
    ("exact", "approx", "auto") or a method dict. The client is built from url, token and
    client_options (Client's keywords), unless client is given.

    forward(src, mask=None, src_key_padding_mask=None, is_causal=None, src_mask=None):
    src is [n, b, E] ([b, n, E] with batch_first) or [n, E]; mask/src_mask must be causal
    (bool True above the diagonal, or float -inf above and 0 elsewhere) or None;
    is_causal=True asks for the causal mask; src_key_padding_mask (True or -inf = padding)
    must be right padding: it becomes the wire's lengths. The output rows at padded positions
    are 0 and their grad_output rows are ignored (what torch's nested-tensor path does too).
    """

    def __init__(self, module, url="http://127.0.0.1:8080", method=None, token=None,
                 client=None, **client_options):
        super().__init__()
        self.module = module
        self.client = client if client is not None else Client(url, token=token,
                                                                **client_options)
        self.method = as_method(method)
        convert(module, check_training=False)  # refuse what has no wire form at once

    def extra_repr(self):
        return "url=%r, method=%r" % (self.client.url, self.method)

    def forward(self, src, mask=None, src_key_padding_mask=None, is_causal=None,
                src_mask=None):
        conv = convert(self.module)
        e = conv.model["d_model"]
        if src.dim() not in (2, 3) or src.shape[-1] != e:
            raise _unsupported("src", "shape %s, expected [n, b, %d], [b, n, %d] (batch_first) "
                               "or [n, %d]" % (list(src.shape), e, e, e))
        if src.dim() == 3 and not conv.batch_first:
            x = src.transpose(0, 1)
        else:
            x = src
        n = x.shape[-2]
        batch = x.shape[0] if x.dim() == 3 else 1
        mask_name, m = ("src_mask", src_mask) if src_mask is not None else ("mask", mask)
        causal = bool(is_causal)
        if m is not None:
            if not _is_causal_mask(m, n):
                raise _unsupported(mask_name, "only the causal mask (True or -inf above the "
                                   "diagonal) maps to the wire format")
            causal = True
        lengths = None
        if src_key_padding_mask is not None:
            lengths = _lengths(src_key_padding_mask, batch, n, "src_key_padding_mask")
        call = _Call(self, conv, causal, lengths)
        call.check_features()
        y = _RemoteFunction.apply(call, x, *conv.params)
        if src.dim() == 3 and not conv.batch_first:
            y = y.transpose(0, 1)
        return y
