"""The package without a server: tensors, request builders, retry arithmetic, errors."""
import base64
import email.utils
import json
import random
import struct
import sys
import time
import unittest
from array import array


import altgrad
from altgrad.wire import to_wire


class TensorTest(unittest.TestCase):
    def test_b64_is_float32_little_endian(self):
        vals = [0.1, -2.5, 3e-39, 1e30, -0.0, 7.0]
        t = altgrad.Tensor([2, 3], vals)
        w = t.wire("b64")
        self.assertEqual(w["shape"], [2, 3])
        self.assertEqual(w["dtype"], "float32")
        self.assertEqual(base64.b64decode(w["b64"]), struct.pack("<6f", *vals))
        back = altgrad.Tensor.from_wire(w)
        self.assertEqual(back, t)
        self.assertEqual(struct.pack("<f", back.data[4]), struct.pack("<f", -0.0))

    def test_json_form_reads_back_bit_identical(self):
        rng = random.Random(3)
        t = altgrad.Tensor([4, 5], [rng.uniform(-1e3, 1e3) for _ in range(20)])
        w = json.loads(json.dumps(t.wire("json")))
        self.assertEqual(altgrad.Tensor.from_wire(w), t)
        self.assertEqual(altgrad.Tensor.from_wire(t.wire("b64")), t)

    def test_values_round_to_float32(self):
        t = altgrad.Tensor([1], [0.1])
        self.assertEqual(t.data[0], struct.unpack("<f", struct.pack("<f", 0.1))[0])
        self.assertNotEqual(t.data[0], 0.1)

    def test_float64_b64_decodes(self):
        w = {"shape": [2], "dtype": "float64",
             "b64": base64.b64encode(struct.pack("<2d", 1.5, -0.25)).decode()}
        self.assertEqual(altgrad.Tensor.from_wire(w).tolist(), [1.5, -0.25])

    def test_nested_lists(self):
        t = altgrad.Tensor.from_nested([[[1, 2], [3, 4], [5, 6]]])
        self.assertEqual(t.shape, (1, 3, 2))
        self.assertEqual(t.tolist(), [[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]])
        for bad in ([[1, 2], [3]], [[1, 2], 3], [], [[]]):
            with self.assertRaises(altgrad.Error) as cm:
                altgrad.Tensor.from_nested(bad)
            self.assertEqual(cm.exception.code, "invalid_shape")

    def test_shape_checks(self):
        for shape, data in (([2, 2], [1, 2, 3]), ([0, 2], []), ([2.0], [1, 2]), ([], []),
                            ([True], [1])):
            with self.assertRaises(altgrad.Error) as cm:
                altgrad.Tensor(shape, data)
            self.assertEqual(cm.exception.code, "invalid_shape")
        self.assertEqual(altgrad.Tensor([2, 3]).data, array("f", [0.0] * 6))

    def test_bad_wire_tensors_name_the_field(self):
        good = altgrad.Tensor([2], [1, 2]).wire("b64")
        bad = [
            {"shape": [3], "b64": good["b64"]},              # byte count
            {"shape": [2], "b64": good["b64"][:-1]},          # padding
            {"shape": [2], "data": [1, None]},                # non-finite, as the server writes
            {"shape": [2], "dtype": "int8", "data": [1, 2]},  # dtype
            {"data": [1, 2]},                                 # no shape
        ]
        for w in bad:
            with self.assertRaises(altgrad.ProtocolError) as cm:
                altgrad.Tensor.from_wire(w, "grad_weights[1].wq")
            self.assertEqual(cm.exception.code, "bad_response")
            self.assertEqual(cm.exception.field, "grad_weights[1].wq")


class RequestTest(unittest.TestCase):
    def test_model_writes_new_fields_only_when_given(self):
        m = altgrad.model(8, 2, 1, 16)
        self.assertEqual(sorted(m), ["activation", "causal", "d_ff", "d_model", "n_heads",
                                     "n_layers", "norm", "residual"])
        self.assertEqual(altgrad.required_features({"model": m}), {})
        m2 = altgrad.model(8, 2, 1, 16, activation="gelu_erf", norm_position="post",
                           attn_bias=True)
        self.assertEqual(altgrad.required_features({"model": m2, "lengths": [1]}),
                         {"gelu_erf": "model.activation", "norm_position": "model.norm_position",
                          "attn_bias": "model.attn_bias", "lengths": "lengths"})
        self.assertEqual(altgrad.required_features(
            {"model": altgrad.model(8, 2, 1, 16, norm_position="pre", attn_bias=False)}), {})

    def test_layer_shapes_follow_the_api_table(self):
        self.assertEqual(altgrad.layer_shapes(altgrad.model(8, 2, 1, 0, norm="none")),
                         {"wq": (8, 8), "wk": (8, 8), "wv": (8, 8), "wo": (8, 8)})
        s = altgrad.layer_shapes(altgrad.model(8, 2, 1, 16, attn_bias=True))
        self.assertEqual(s["w1"], (8, 16))
        self.assertEqual(s["w2"], (16, 8))
        self.assertEqual(s["b1"], (16,))
        self.assertEqual(s["bq"], (8,))
        self.assertIn("ln2_gamma", s)
        s = altgrad.layer_shapes(altgrad.model(8, 2, 1, 16, mlp_bias=False))
        self.assertNotIn("b1", s)
        self.assertNotIn("bq", s)

    def test_request_builder_and_to_wire(self):
        m = altgrad.model(4, 1, 1, 0, norm="none")
        layers = altgrad.random_layers(m, seed=5)
        self.assertEqual(layers, altgrad.random_layers(m, seed=5))
        x = altgrad.Tensor([3, 4], range(12))
        r = altgrad.request(m, layers, x, loss=altgrad.mse(x), method="exact",
                            returns=("loss",), verify=True)
        self.assertEqual(r["method"], {"name": "exact"})
        self.assertEqual(r["return"], ["loss"])
        self.assertNotIn("lengths", r)
        w = to_wire(r, "json")
        self.assertEqual(w["input"]["data"], [float(i) for i in range(12)])
        self.assertEqual(w["loss"]["target"], w["input"])
        self.assertIs(r["input"], x)  # to_wire copies, never changes the request
        json.dumps(to_wire(r, "b64"))
        self.assertEqual(altgrad.method("approx", degree=3), {"name": "approx", "degree": 3})


class RetryArithmeticTest(unittest.TestCase):
    def test_backoff_is_exponential_with_equal_jitter(self):
        rng = random.Random(1)
        for attempt in range(1, 12):
            base = min(0.2 * 2 ** (attempt - 1), 10.0)
            seen = [altgrad.backoff_delay(attempt, 0.2, 10.0, rng) for _ in range(200)]
            self.assertGreaterEqual(min(seen), base / 2)
            self.assertLessEqual(max(seen), base)
            self.assertGreater(max(seen) - min(seen), base / 4)  # jittered, not fixed

    def test_retry_after_forms(self):
        self.assertEqual(altgrad.parse_retry_after("1"), 1)
        self.assertEqual(altgrad.parse_retry_after(" 30 "), 30)
        self.assertIsNone(altgrad.parse_retry_after(None))
        self.assertIsNone(altgrad.parse_retry_after("soon"))
        now = time.time()
        date = email.utils.formatdate(now + 5, usegmt=True)
        self.assertIn(altgrad.parse_retry_after(date, now=now), (5, 6))
        past = email.utils.formatdate(now - 50, usegmt=True)
        self.assertEqual(altgrad.parse_retry_after(past, now=now), 0)


class ErrorAndClientArgsTest(unittest.TestCase):
    def test_error_fields_and_text(self):
        e = altgrad.HTTPError("layers[0].wq: expected shape [8,8]", code="invalid_shape",
                              field="layers[0].wq", status=400)
        self.assertIsInstance(e, altgrad.Error)
        self.assertEqual(str(e), "HTTP 400 invalid_shape at layers[0].wq: "
                                 "layers[0].wq: expected shape [8,8]")
        self.assertTrue(issubclass(altgrad.Timeout, altgrad.ConnectError))
        self.assertTrue(issubclass(altgrad.TLSError, altgrad.ConnectError))

    def test_bad_client_arguments(self):
        for url in ("ftp://x", "127.0.0.1:8080", "http://", "http://h:99999",
                    "http://h/?q=1"):
            with self.assertRaises(altgrad.Error) as cm:
                altgrad.Client(url)
            self.assertEqual(cm.exception.code, "bad_url", url)
        with self.assertRaises(altgrad.Error):
            altgrad.Client(encoding="xml")
        with self.assertRaises(altgrad.Error):
            altgrad.Client(token="a\r\nX-Evil: 1")
        with self.assertRaises(altgrad.Error) as cm:
            altgrad.Client().job("../v1/info")
        self.assertEqual(cm.exception.field, "id")
        self.assertNotIn("secret", repr(altgrad.Client(token="secret")))

    def test_copies(self):
        import copy
        import pickle
        c = altgrad.Client("https://127.0.0.1:1/p", token="t0k", verify_tls=False)
        twin = copy.deepcopy(c)
        self.assertEqual((twin.url, twin._token, twin._prefix), (c.url, "t0k", "/p"))
        self.assertIsNot(twin._local, c._local)
        self.assertFalse(twin._ssl.check_hostname)
        raw = pickle.dumps(c)
        self.assertNotIn(b"t0k", raw)  # a pickled client never carries its token
        back = pickle.loads(raw)
        self.assertIsNone(back._token)
        back.set_token("new")
        self.assertEqual(back._token, "new")

    def test_import_does_not_import_torch(self):
        import subprocess
        out = subprocess.run([sys.executable, "-c",
                              "import sys, altgrad; print('torch' in sys.modules)"],
                             capture_output=True, text=True, check=True)
        self.assertEqual(out.stdout.strip(), "False")


if __name__ == "__main__":
    unittest.main()
