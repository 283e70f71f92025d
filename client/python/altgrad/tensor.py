"""Tensors of the wire format (docs/api.md, "Tensors"): a shape and row-major float32 data.

`Tensor` is deliberately small: a tuple shape and an `array('f')` of its elements. It turns
into the wire form (`{"shape", "dtype": "float32", "b64" | "data"}`) and back; base64 is
float32 little-endian whatever the host's byte order.
"""
import base64
import sys
from array import array

from .errors import Error, ProtocolError

_BIG_ENDIAN = sys.byteorder == "big"
_WIDTH = {"float32": 4, "float64": 8}


def numel(shape):
    """Product of the dimensions of shape (1 for an empty shape)."""
    n = 1
    for s in shape:
        n *= s
    return n


def _check_shape(shape, what):
    if not isinstance(shape, (list, tuple)) or not shape:
        raise Error("%s: shape must be a non-empty list of integers, got %r" % (what, shape),
                    code="invalid_shape", field=what)
    for s in shape:
        if isinstance(s, bool) or not isinstance(s, int) or s < 1:
            raise Error("%s: every dimension must be an integer >= 1, got %r" % (what, shape),
                        code="invalid_shape", field=what)
    return tuple(shape)


class Tensor:
    """shape: tuple of ints; data: array('f') of numel(shape) elements, row-major.

    Tensor(shape, data): data is any iterable of numbers (copied into float32, so values
    round to the nearest float32) or an array('f') (kept as is). Tensor(shape) is zeros.
    """

    __slots__ = ("shape", "data")

    def __init__(self, shape, data=None):
        self.shape = _check_shape(shape, "tensor")
        count = numel(self.shape)
        if data is None:
            data = array("f", bytes(4 * count))
        elif not (isinstance(data, array) and data.typecode == "f"):
            data = array("f", data)
        if len(data) != count:
            raise Error("tensor: shape %s needs %d elements, got %d"
                        % (list(self.shape), count, len(data)), code="invalid_shape",
                        field="tensor")
        self.data = data

    @classmethod
    def from_nested(cls, nested):
        """A Tensor from nested lists of numbers ([[1, 2], [3, 4]] has shape (2, 2))."""
        shape = []
        probe = nested
        while isinstance(probe, (list, tuple)):
            if not probe:
                raise Error("tensor: empty list in nested data", code="invalid_shape",
                            field="tensor")
            shape.append(len(probe))
            probe = probe[0]
        flat = array("f")

        def walk(x, depth):
            if depth == len(shape):
                if isinstance(x, (list, tuple)):
                    raise Error("tensor: nested lists are ragged", code="invalid_shape",
                                field="tensor")
                flat.append(x)
                return
            if not isinstance(x, (list, tuple)) or len(x) != shape[depth]:
                raise Error("tensor: nested lists are ragged", code="invalid_shape",
                            field="tensor")
            for y in x:
                walk(y, depth + 1)

        walk(nested, 0)
        return cls(shape, flat)

    def numel(self):
        return len(self.data)

    def tolist(self):
        """Nested lists of Python floats, one level per dimension."""
        flat = self.data.tolist()
        for dim in reversed(self.shape[1:]):
            flat = [flat[i:i + dim] for i in range(0, len(flat), dim)]
        return flat

    def __eq__(self, other):
        return (isinstance(other, Tensor) and self.shape == other.shape
                and self.data.tobytes() == other.data.tobytes())

    def __ne__(self, other):
        return not self == other

    __hash__ = None

    def __repr__(self):
        head = ", ".join("%.6g" % v for v in self.data[:4])
        more = ", ..." if len(self.data) > 4 else ""
        return "Tensor(shape=%s, data=[%s%s])" % (list(self.shape), head, more)

    def to_bytes(self):
        """The elements as float32 little-endian bytes."""
        if _BIG_ENDIAN:
            a = array("f", self.data)
            a.byteswap()
            return a.tobytes()
        return self.data.tobytes()

    @classmethod
    def from_bytes(cls, shape, raw, dtype="float32"):
        """A Tensor from little-endian float32 or float64 bytes (float64 rounds to float32)."""
        code = "f" if dtype == "float32" else "d"
        a = array(code)
        a.frombytes(raw)
        if _BIG_ENDIAN:
            a.byteswap()
        return cls(shape, a if code == "f" else array("f", a))

    def wire(self, encoding="b64"):
        """The wire form: {"shape", "dtype": "float32", "b64"} or {..., "data": [numbers]}."""
        out = {"shape": list(self.shape), "dtype": "float32"}
        if encoding == "json":
            out["data"] = self.data.tolist()
        elif encoding == "b64":
            out["b64"] = base64.b64encode(self.to_bytes()).decode("ascii")
        else:
            raise Error("encoding must be 'b64' or 'json', got %r" % (encoding,),
                        code="invalid_value", field="encoding")
        return out

    @classmethod
    def from_wire(cls, obj, field="tensor"):
        """Decodes a wire tensor ({"shape", "dtype"?, "data" | "b64"}); raises ProtocolError
        naming field when it does not follow docs/api.md."""
        if isinstance(obj, Tensor):
            return obj
        try:
            shape = _check_shape(obj["shape"], field)
            dtype = obj.get("dtype", "float32")
            if dtype not in _WIDTH:
                raise ValueError("unknown dtype %r" % (dtype,))
            count = numel(shape)
            if "b64" in obj:
                raw = base64.b64decode(obj["b64"], validate=True)
                if len(raw) != count * _WIDTH[dtype]:
                    raise ValueError("b64 holds %d bytes, shape %s needs %d"
                                     % (len(raw), list(shape), count * _WIDTH[dtype]))
                return cls.from_bytes(shape, raw, dtype)
            data = obj["data"]
            if any(v is None for v in data):
                raise ValueError("a non-finite number (null) in data")
            return cls(shape, data)
        except (KeyError, TypeError, ValueError, Error) as e:
            raise ProtocolError("%s: not a tensor of docs/api.md: %s" % (field, e),
                                code="bad_response", field=field) from None


def tensor(shape, data=None):
    """Tensor(shape, data): a shape and a flat row-major list (or array) of numbers."""
    return Tensor(shape, data)
