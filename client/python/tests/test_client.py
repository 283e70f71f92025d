"""Every Client call against a live altgradd: results, JSON == base64, errors, jobs."""
import os
import subprocess
import tempfile
import unittest

import live

import altgrad


def same_result(test, a, b):
    """a and b carry bit-identical tensors and losses."""
    test.assertEqual(a.loss, b.loss)
    for key in ("output", "grad_input"):
        test.assertEqual(getattr(a, key), getattr(b, key), key)
    test.assertEqual(a.grad_weights is None, b.grad_weights is None)
    if a.grad_weights is not None:
        test.assertEqual(len(a.grad_weights), len(b.grad_weights))
        for la, lb in zip(a.grad_weights, b.grad_weights):
            test.assertEqual(sorted(la), sorted(lb))
            for name in la:
                test.assertEqual(la[name], lb[name], name)


class CallsTest(live.LiveTestCase):
    def test_health_ready_info(self):
        self.assertEqual(self.client.health(), {"status": "live"})
        self.assertIs(self.client.ready(), True)
        info = self.client.info()
        self.assertEqual(info["api_version"], 1)
        self.assertIn("exact", info["methods"])
        self.assertIsInstance(self.client.features(), frozenset)
        self.assertEqual(self.client.features(), frozenset(info.get("features", ())))

    def test_gradients_shapes_and_report(self):
        req = live.small_request(batch=3, layers=2)
        r = self.client.gradients(req)
        self.assertIsInstance(r.loss, float)
        self.assertEqual(r.grad_input.shape, (3, 6, 8))
        self.assertIsNone(r.output)
        self.assertEqual(len(r.grad_weights), 2)
        self.assertEqual({k: v.shape for k, v in r.grad_weights[1].items()},
                         altgrad.layer_shapes(req["model"]))
        self.assertEqual(len(r.heads), 2)
        self.assertEqual(len(r.heads[0]), 2)
        self.assertEqual(r.heads[0][0]["method"], "exact")
        self.assertEqual(r.method["name"], "exact")
        self.assertEqual(sorted(r.timing_ms), ["compute", "decode", "encode"])
        # a 2-d input gets 2-d answers
        r2 = self.client.gradients(live.small_request(batch=0), returns=["grad_input"])
        self.assertEqual(r2.grad_input.shape, (6, 8))
        self.assertIsNone(r2.grad_weights)
        self.assertNotIn("loss", r2.raw)

    def test_json_and_b64_identical(self):
        jc = altgrad.Client(self.server.url, encoding="json")
        for loss in ("sum", "mse", "grad_output"):
            req = live.small_request(seed=4, loss=loss)
            req["return"] = ["loss", "output", "grad_input", "grad_weights"]
            a = self.client.gradients(req)
            b = jc.gradients(req)
            self.assertIn("b64", a.raw["grad_input"])
            self.assertIn("data", b.raw["grad_input"])
            same_result(self, a, b)
        jc.close()

    def test_keywords_and_dict_merge(self):
        req = live.small_request(seed=2)
        a = self.client.gradients(req)
        b = self.client.gradients(model=req["model"], layers=req["layers"], input=req["input"],
                                  loss=req["loss"], method={"name": "exact"})
        same_result(self, a, b)
        c = self.client.gradients(req, returns=["loss"])
        self.assertEqual(c.loss, a.loss)
        self.assertIsNone(c.grad_input)

    def test_vjp_of_ones_is_the_sum_loss_gradient(self):
        req = live.small_request(seed=6)
        a = self.client.gradients(req)
        shape = req["input"].shape
        req["loss"] = altgrad.grad_output(altgrad.Tensor(shape, [1.0] * altgrad.numel(shape)))
        b = self.client.gradients(req)
        self.assertIsNone(b.loss)
        same_result(self, altgrad.Result(dict(a.raw, loss=None)), b)

    def test_forward_is_the_gradients_output(self):
        req = live.small_request(seed=8, causal=True)
        f = self.client.forward(req)
        self.assertIsNone(f.grad_input)
        self.assertIsNone(f.grad_weights)
        g = self.client.gradients(req, returns=["output"])
        self.assertEqual(f.output, g.output)
        self.assertEqual(f.output.shape, req["input"].shape)
        f2 = self.client.forward(model=req["model"], layers=req["layers"], input=req["input"])
        self.assertEqual(f2.output, f.output)  # no loss given: the client supplies one
        with self.assertRaises(altgrad.Error) as cm:
            self.client.forward(req, returns=["output", "grad_input"])
        self.assertEqual((cm.exception.code, cm.exception.field, cm.exception.status),
                         ("invalid_value", "return[1]", 0))

    def test_forward_endpoint_when_listed(self):
        live.require_features(self, self.client, "forward")
        req = live.small_request(seed=9)
        del req["loss"]
        f = self.client.forward(req)
        g = self.client.gradients(dict(req, loss=altgrad.sum_loss()), returns=["output"])
        self.assertEqual(f.output, g.output)

    def test_verify_and_approx(self):
        req = live.small_request(seed=3, n=16)
        req["method"] = altgrad.method("approx", degree=6)
        req["verify"] = True
        r = self.client.gradients(req)
        self.assertEqual(r.heads[0][0]["method"], "approx")
        self.assertEqual(r.heads[0][0]["degree"], 6)
        self.assertIn("grad_input", r.verification)
        self.assertEqual(len(r.verification["layers"]), 2)


class ErrorMappingTest(live.LiveTestCase):
    def check(self, req, status, code, field):
        with self.assertRaises(altgrad.HTTPError) as cm:
            self.client.gradients(req)
        e = cm.exception
        self.assertEqual((e.status, e.code, e.field), (status, code, field), str(e))
        self.assertEqual(e.attempts, 1)  # a 4xx is never retried
        self.assertTrue(e.message)
        self.assertTrue(e.request_id)
        return e

    def test_decoder_errors(self):
        req = live.small_request()
        bad = dict(req, layers=[dict(req["layers"][0]), req["layers"][1]])
        bad["layers"][0]["wq"] = altgrad.Tensor([8, 4])
        e = self.check(bad, 400, "invalid_shape", "layers[0].wq")
        self.assertIn("expected shape [8,8]", e.message)
        self.check(dict(req, model=dict(req["model"], bogus=1)), 400, "unknown_field",
                   "model.bogus")
        no_input = dict(req)
        del no_input["input"]
        self.check(no_input, 400, "missing_field", "input")
        self.check(dict(req, model=dict(req["model"], n_heads=3)), 400, "invalid_value",
                   "model.n_heads")
        self.check(dict(req, method={"name": "approx", "epsilon": 2.0}), 400, "invalid_value",
                   "method.epsilon")
        nan = altgrad.Tensor([2, 6, 8], [float("nan")] * 96)
        self.check(dict(req, input=nan), 400, "invalid_value", "input")
        with self.assertRaises(altgrad.Error) as cm:  # JSON cannot carry NaN: refused here
            altgrad.Client(self.server.url, encoding="json").gradients(req, input=nan)
        self.assertEqual((cm.exception.code, cm.exception.status), ("invalid_value", 0))

    def test_job_not_found(self):
        with self.assertRaises(altgrad.HTTPError) as cm:
            self.client.job("0" * 32).status()
        self.assertEqual((cm.exception.status, cm.exception.code, cm.exception.field),
                         (404, "job_not_found", "id"))

    def test_too_large_body(self):
        s = live.Server("--max-body", "4K")
        try:
            with self.assertRaises(altgrad.HTTPError) as cm:
                altgrad.Client(s.url).gradients(live.small_request(n=64))
            self.assertEqual((cm.exception.status, cm.exception.code), (413, "too_large"))
            # over 64 MiB the server answers at once and closes while the body is still
            # being sent: the client reads that answer instead of failing to send
            big = altgrad.Tensor([17 << 20])
            with self.assertRaises(altgrad.HTTPError) as cm:
                altgrad.Client(s.url).gradients(live.small_request(), input=big)
            self.assertEqual((cm.exception.status, cm.exception.code, cm.exception.attempts),
                             (413, "too_large", 1))
        finally:
            s.close()

    def test_bearer_token(self):
        d = tempfile.mkdtemp(prefix="altgrad-py-")
        path = os.path.join(d, "tokens")
        with open(path, "w") as f:
            f.write("# test\ns3cret-token\n\nother-token\n")
        s = live.Server("--tokens-file", path)
        try:
            for token in (None, "wrong"):
                with self.assertRaises(altgrad.HTTPError) as cm:
                    altgrad.Client(s.url, token=token).info()
                e = cm.exception
                self.assertEqual((e.status, e.code, e.field),
                                 (401, "unauthorized", "Authorization"))
                self.assertEqual(e.attempts, 1)
            c = altgrad.Client(s.url, token="s3cret-token")
            self.assertTrue(c.info()["auth"])
            job = c.submit(live.small_request())
            self.assertEqual(job.wait(timeout=60).grad_input.shape, (2, 6, 8))
            with self.assertRaises(altgrad.HTTPError) as cm:  # another token sees nothing
                altgrad.Client(s.url, token="other-token").job(job.id).status()
            self.assertEqual((cm.exception.status, cm.exception.code), (404, "job_not_found"))
            self.assertEqual(altgrad.Client(s.url).health(), {"status": "live"})
        finally:
            s.close()
            os.unlink(path)
            os.rmdir(d)


class JobsTest(live.LiveTestCase):
    server_args = ("--workers", "1", "--cores", "1")

    def test_submit_wait_progress_result(self):
        req = live.small_request(seed=11, n=32)
        sync = self.client.gradients(req)
        job = self.client.submit(req)
        seen = []
        r = job.wait(progress=seen.append, poll_interval=0.01, timeout=60)
        same_result(self, r, sync)
        self.assertGreaterEqual(len(seen), 1)
        self.assertEqual(seen[-1].state, "done")
        self.assertEqual(seen[-1].progress, 1.0)
        self.assertTrue(all(s.id == job.id for s in seen))
        progress = [s.progress for s in seen]
        self.assertEqual(progress, sorted(progress))
        self.assertEqual(job.status().state, "done")
        same_result(self, job.result(), sync)
        self.assertEqual(job.cancel().state, "done")  # a finished job stays as it is
        same_result(self, self.client.run(req, timeout=60), sync)

    def test_not_ready_cancel_and_failed(self):
        job = self.client.submit(live.slow_request())
        try:
            with self.assertRaises(altgrad.HTTPError) as cm:
                job.result()
            self.assertEqual((cm.exception.status, cm.exception.code), (409, "not_ready"))
            self.assertEqual(cm.exception.attempts, 1)  # 409 has Retry-After, still no retry
            self.assertIn(job.status().state, ("queued", "running"))
            with self.assertRaises(altgrad.Error) as cm:  # the callback stops the wait
                job.wait(progress=lambda s: True)
            self.assertEqual(cm.exception.code, "aborted")
            with self.assertRaises(altgrad.Timeout) as cm:
                job.wait(timeout=0.05, poll_interval=0.01)
            self.assertEqual(cm.exception.code, "timeout")
        finally:
            st = job.cancel()
        self.assertEqual(st.state, "cancelled")
        self.assertTrue(st.terminal)
        with self.assertRaises(altgrad.JobError) as cm:
            job.wait(timeout=10)
        self.assertEqual(cm.exception.code, "cancelled")
        with self.assertRaises(altgrad.HTTPError) as cm:
            job.result()
        self.assertEqual((cm.exception.status, cm.exception.code), (409, "cancelled"))
        # a job that fails in the core: approx whose bound cannot be met
        req = live.small_request(seed=2, n=16)
        req["layers"] = [{k: altgrad.Tensor(v.shape, [x * 40 for x in v.data])
                          for k, v in layer.items()} for layer in req["layers"]]
        req["method"] = altgrad.method("approx", epsilon=1e-6)
        with self.assertRaises(altgrad.JobError) as cm:
            self.client.submit(req).wait(timeout=60)
        self.assertIn(cm.exception.code, ("epsilon_unreachable", "limit_exceeded"))
        self.assertEqual(cm.exception.status, 400)

    def test_run_cancels_on_timeout(self):
        with self.assertRaises(altgrad.Timeout):
            self.client.run(live.slow_request(), timeout=0.2, poll_interval=0.02)
        # the job was cancelled: the single worker is free again at once
        r = self.client.gradients(live.small_request())
        self.assertEqual(r.grad_input.shape, (2, 6, 8))


class TLSTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="altgrad-py-tls-")
        cls.cert = os.path.join(cls.dir, "cert.pem")
        cls.key = os.path.join(cls.dir, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", cls.key, "-out",
                        cls.cert, "-days", "1", "-subj", "/CN=localhost", "-addext",
                        "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                       check=True, capture_output=True)
        cls.server = live.Server("--tls-cert", cls.cert, "--tls-key", cls.key)
        cls.url = "https://127.0.0.1:%d" % cls.server.port

    @classmethod
    def tearDownClass(cls):
        cls.server.close()
        for name in os.listdir(cls.dir):
            os.unlink(os.path.join(cls.dir, name))
        os.rmdir(cls.dir)

    def test_verified(self):
        c = altgrad.Client(self.url, ca_file=self.cert)
        self.assertTrue(c.info()["tls"])
        self.assertEqual(c.gradients(live.small_request()).grad_input.shape, (2, 6, 8))

    def test_unverified_certificate_refused_then_allowed(self):
        with self.assertRaises(altgrad.TLSError) as cm:
            altgrad.Client(self.url).info()
        self.assertEqual((cm.exception.code, cm.exception.attempts), ("tls_error", 1))
        self.assertTrue(altgrad.Client(self.url, verify_tls=False).info()["tls"])


if __name__ == "__main__":
    unittest.main()
