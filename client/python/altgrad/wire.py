"""Requests and responses of the wire format (docs/api.md) as plain Python data.

The builders return dicts exactly as the request JSON has them, with `Tensor` objects where a
tensor goes; `Client` encodes those (base64 by default). Fields the wire format added after
version 1 (norm_position, attn_bias, mlp_bias, lengths) are written only when they differ
from their defaults, so a request that does not use them is a plain v1 request that every
server accepts.
"""
import random

from .errors import Error, ProtocolError
from .tensor import Tensor

# Which /v1/info "features" entry a request field needs (a server without the entry refuses
# the field with 400 unknown_field or invalid_value).
MODEL_FEATURES = (
    ("norm_position", lambda v: v != "pre", "norm_position"),
    ("attn_bias", lambda v: bool(v), "attn_bias"),
    ("activation", lambda v: v == "gelu_erf", "gelu_erf"),
)


def model(d_model, n_heads, n_layers, d_ff=0, causal=False, norm="layernorm",
          activation="gelu", residual=True, norm_position=None, attn_bias=None,
          mlp_bias=None):
    """The request's "model" object. The last three are written only when given."""
    m = {"d_model": d_model, "n_heads": n_heads, "n_layers": n_layers, "d_ff": d_ff,
         "causal": causal, "norm": norm, "activation": activation, "residual": residual}
    for key, value in (("norm_position", norm_position), ("attn_bias", attn_bias),
                       ("mlp_bias", mlp_bias)):
        if value is not None:
            m[key] = value
    return m


def layer_shapes(model):
    """{weight name: shape} of one layer of `model` (the table of docs/api.md, "layers")."""
    d, ff = model["d_model"], model["d_ff"]
    shapes = {name: (d, d) for name in ("wq", "wk", "wv", "wo")}
    if model.get("attn_bias", False):
        shapes.update({name: (d,) for name in ("bq", "bk", "bv", "bo")})
    layernorm = model["norm"] == "layernorm"
    if layernorm:
        shapes.update(ln1_gamma=(d,), ln1_beta=(d,))
    if ff > 0:
        if layernorm:
            shapes.update(ln2_gamma=(d,), ln2_beta=(d,))
        shapes.update(w1=(d, ff), w2=(ff, d))
        if model.get("mlp_bias", True):
            shapes.update(b1=(ff,), b2=(d,))
    return shapes


def random_layers(model, seed=0, scale=None):
    """Weights for every layer of model: uniform in [-scale, scale] (default 1/sqrt(d_model)
    for matrices, 0.1 for biases), layernorm gammas near 1 and betas near 0. Deterministic
    for a seed; meant for tests and demos."""
    rng = random.Random(seed)
    s = scale if scale is not None else model["d_model"] ** -0.5
    layers = []
    for _ in range(model["n_layers"]):
        layer = {}
        for name, shape in layer_shapes(model).items():
            count = 1
            for dim in shape:
                count *= dim
            if name.endswith("_gamma"):
                data = [1.0 + rng.uniform(-0.1, 0.1) for _ in range(count)]
            elif name.endswith("_beta") or len(shape) == 1:
                data = [rng.uniform(-0.1, 0.1) for _ in range(count)]
            else:
                data = [rng.uniform(-s, s) for _ in range(count)]
            layer[name] = Tensor(shape, data)
        layers.append(layer)
    return layers


def mse(target):
    """loss {"type": "mse", "target": T}: mean((y - target)^2)."""
    return {"type": "mse", "target": target}


def sum_loss():
    """loss {"type": "sum"}: sum(y)."""
    return {"type": "sum"}


def grad_output(grad):
    """loss {"type": "grad_output", "grad": dL/dy}: the vector-Jacobian product."""
    return {"type": "grad_output", "grad": grad}


def method(name="auto", epsilon=None, degree=None, route=None, poly=None):
    """The "method" object; "exact" takes no other field."""
    m = {"name": name}
    for key, value in (("epsilon", epsilon), ("degree", degree), ("route", route),
                       ("poly", poly)):
        if value is not None:
            m[key] = value
    return m


def as_method(m):
    """None, a name ("exact", "approx", "auto") or a method dict -> a method dict or None."""
    if m is None or isinstance(m, dict):
        return m
    if isinstance(m, str):
        return {"name": m}
    raise Error("method must be None, a name or a dict, got %r" % (m,), code="invalid_value",
                field="method")


def request(model, layers, input, loss=None, method=None, returns=None, lengths=None,
            verify=None, encoding=None):
    """A complete request object; the optional fields are written only when given."""
    r = {"model": model, "layers": layers, "input": input}
    if loss is not None:
        r["loss"] = loss
    for key, value in (("method", as_method(method)), ("return", returns),
                       ("lengths", lengths), ("verify", verify), ("encoding", encoding)):
        if value is not None:
            r[key] = list(value) if key in ("return", "lengths") else value
    return r


def required_features(req):
    """{feature: field} of the /v1/info "features" a request needs beyond wire format v1."""
    need = {}
    m = req.get("model") if isinstance(req.get("model"), dict) else {}
    for key, uses, feature in MODEL_FEATURES:
        if key in m and uses(m[key]):
            need.setdefault(feature, "model." + key)
    if "lengths" in req:
        need.setdefault("lengths", "lengths")
    return need


def to_wire(obj, encoding):
    """A copy of obj in which every Tensor is its wire dict (other values are shared)."""
    if isinstance(obj, Tensor):
        return obj.wire(encoding)
    if isinstance(obj, dict):
        return {k: to_wire(v, encoding) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_wire(v, encoding) for v in obj]
    return obj


class Result:
    """A decoded answer of POST /v1/gradients (or a job's result).

    loss          float, None for grad_output (or when not returned)
    output        Tensor or None
    grad_input    Tensor or None
    grad_weights  [{name: Tensor}] one dict per layer, or None
    method        the method report dict (docs/api.md, "The response")
    heads         [[head report dict] per head] per layer
    verification  dict or None ("verify": true)
    timing_ms     {"decode", "compute", "encode"}
    raw           the answer as parsed JSON (tensors still in wire form)
    """

    def __init__(self, body):
        if not isinstance(body, dict) or not isinstance(body.get("method"), dict):
            raise ProtocolError("the answer has no method report: %.200r" % (body,),
                                code="bad_response", field="method")
        self.raw = body
        loss = body.get("loss")
        if loss is not None and not isinstance(loss, (int, float)):
            raise ProtocolError("loss is not a number", code="bad_response", field="loss")
        self.loss = loss
        self.output = self._tensor("output")
        self.grad_input = self._tensor("grad_input")
        gw = body.get("grad_weights")
        if gw is None:
            self.grad_weights = None
        elif not isinstance(gw, list):
            raise ProtocolError("grad_weights is not a list", code="bad_response",
                                field="grad_weights")
        else:
            self.grad_weights = [
                {name: Tensor.from_wire(t, "grad_weights[%d].%s" % (i, name))
                 for name, t in layer.items()}
                for i, layer in enumerate(gw)]
        self.method = body["method"]
        self.heads = [layer.get("heads", []) for layer in self.method.get("layers", [])]
        self.verification = body.get("verification")
        self.timing_ms = body.get("timing_ms", {})

    def _tensor(self, key):
        t = self.raw.get(key)
        return None if t is None else Tensor.from_wire(t, key)

    def __repr__(self):
        have = [k for k in ("loss", "output", "grad_input", "grad_weights")
                if getattr(self, k) is not None]
        return "Result(%s, method=%r)" % (", ".join(have), self.method.get("name"))
