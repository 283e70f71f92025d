"""altgrad: the Python client of the altgrad gradient service (docs/python.md).

    import altgrad
    c = altgrad.Client("http://127.0.0.1:8080")
    r = c.gradients(model=..., layers=..., input=altgrad.Tensor([8, 16], data), loss=...)
    r.loss, r.grad_input, r.grad_weights[0]["wq"]

Standard library only. The PyTorch bridge is `altgrad.torch` (imported on first use, so
`import altgrad` never imports torch).
"""
from .client import Client, Job, JobStatus, backoff_delay, parse_retry_after
from .errors import (ConnectError, Error, HTTPError, JobError, ProtocolError, Timeout,
                     TLSError, UnsupportedError)
from .tensor import Tensor, numel, tensor
from .version import __version__
from .wire import (Result, grad_output, layer_shapes, method, model, mse, random_layers,
                   request, required_features, sum_loss)

__all__ = [
    "Client", "Job", "JobStatus", "Result", "Tensor", "Error", "HTTPError", "ConnectError",
    "Timeout", "TLSError", "ProtocolError", "JobError", "UnsupportedError", "tensor", "numel",
    "model", "request", "mse", "sum_loss", "grad_output", "method", "layer_shapes",
    "random_layers", "required_features", "backoff_delay", "parse_retry_after",
    "__version__",
]


def __getattr__(name):
    # `altgrad.torch` without an explicit `import altgrad.torch` (PEP 562)
    if name == "torch":
        import importlib
        return importlib.import_module(".torch", __name__)
    raise AttributeError("module 'altgrad' has no attribute %r" % (name,))
