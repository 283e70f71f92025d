"""The retry rules (client/transport.c's, docs/python.md "Retries"): a scripted stub server
for each rule, then the live server coming up late and answering 429 from a full queue."""
import json
import threading
import time
import unittest

import live

import altgrad

OK_BODY = json.dumps({"loss": 1.0, "method": {"name": "exact", "layers": []},
                      "timing_ms": {"decode": 0, "compute": 0, "encode": 0}})
JOB_BODY = json.dumps({"id": "0123456789abcdef0123456789abcdef", "status_url": "/v1/jobs/x"})


def error_body(code, field=""):
    return json.dumps({"error": {"code": code, "message": "stub says " + code,
                                 "field": field}})


def answers(*seq):
    """A stub script: the k-th request to any path gets seq[k-1] (the last one repeats)."""
    def script(method, path, count):
        return seq[min(count, len(seq)) - 1]
    return script


OK = (200, {"Content-Type": "application/json"}, OK_BODY)


def status(code, retry_after=None, body=None):
    headers = {"Content-Type": "application/json"}
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return (code, headers, body if body is not None else error_body("stub_%d" % code))


class StubRetryTest(unittest.TestCase):
    def stub(self, *seq):
        s = live.Stub(answers(*seq))
        self.addCleanup(s.close)
        return s

    def client(self, stub, **kw):
        kw.setdefault("backoff_initial", 0.01)
        kw.setdefault("backoff_max", 0.05)
        c = altgrad.Client(stub.url, seed=1, **kw)
        self.addCleanup(c.close)
        return c

    def test_503_then_success(self):
        s = self.stub(status(503), status(503), OK)
        r = self.client(s).gradients(live.small_request())
        self.assertEqual(r.loss, 1.0)
        self.assertEqual(s.count("POST", "/v1/gradients"), 3)

    def test_429_honours_retry_after(self):
        s = self.stub(status(429, retry_after=1), OK)
        t0 = time.monotonic()
        self.client(s).gradients(live.small_request())
        self.assertGreaterEqual(time.monotonic() - t0, 1.0)  # not the 10 ms backoff
        self.assertEqual(s.count("POST", "/v1/gradients"), 2)

    def test_retry_after_too_long_ends_the_call(self):
        s = self.stub(status(429, retry_after=120))
        t0 = time.monotonic()
        with self.assertRaises(altgrad.HTTPError) as cm:
            self.client(s).gradients(live.small_request())
        self.assertLess(time.monotonic() - t0, 1.0)
        e = cm.exception
        self.assertEqual((e.status, e.code, e.retry_after, e.attempts),
                         (429, "stub_429", 120, 1))

    def test_retries_are_bounded(self):
        s = self.stub(status(503))
        with self.assertRaises(altgrad.HTTPError) as cm:
            self.client(s, retries=2).gradients(live.small_request())
        self.assertEqual((cm.exception.status, cm.exception.attempts), (503, 3))
        self.assertEqual(s.count("POST", "/v1/gradients"), 3)

    def test_other_statuses_are_not_retried(self):
        for code in (400, 401, 404, 409, 413, 500, 502, 504):
            s = self.stub(status(code, retry_after=1), OK)
            with self.assertRaises(altgrad.HTTPError) as cm:
                self.client(s).gradients(live.small_request())
            self.assertEqual((cm.exception.status, cm.exception.attempts), (code, 1))
            self.assertEqual(s.count("POST", "/v1/gradients"), 1, code)

    def test_dropped_connection(self):
        # side-effect free calls are retried after the request may have reached the server
        s = self.stub("drop", OK)
        self.assertEqual(self.client(s).gradients(live.small_request()).loss, 1.0)
        self.assertEqual(s.count("POST", "/v1/gradients"), 2)
        s = self.stub("drop")
        with self.assertRaises(altgrad.ConnectError) as cm:
            self.client(s, retries=3).info()
        self.assertEqual((cm.exception.code, cm.exception.attempts), ("connect_failed", 4))
        self.assertEqual(s.count("GET", "/v1/info"), 4)

    def test_job_submission_not_retried_after_sending(self):
        s = self.stub("drop", (202, {}, JOB_BODY))
        with self.assertRaises(altgrad.ConnectError) as cm:
            self.client(s).submit(live.small_request())
        self.assertEqual(cm.exception.attempts, 1)
        self.assertEqual(s.count("POST", "/v1/jobs"), 1)
        # ... but an answered 429/503 created nothing, so it is retried
        s = self.stub(status(503), status(429, retry_after=0), (202, {}, JOB_BODY))
        job = self.client(s).submit(live.small_request())
        self.assertEqual(job.id, "0123456789abcdef0123456789abcdef")
        self.assertEqual(s.count("POST", "/v1/jobs"), 3)

    def test_health_never_retried(self):
        s = self.stub(status(503, retry_after=1), (200, {}, '{"status": "ready"}'))
        self.assertIs(self.client(s).ready(), False)
        self.assertEqual(s.count("GET", "/health/ready"), 1)
        s = self.stub(status(503))
        with self.assertRaises(altgrad.HTTPError):
            self.client(s).health()
        self.assertEqual(s.count("GET", "/health/live"), 1)
        c = altgrad.Client("http://127.0.0.1:%d" % live.free_port(), backoff_initial=0.01)
        with self.assertRaises(altgrad.ConnectError) as cm:
            c.health()
        self.assertEqual((cm.exception.code, cm.exception.attempts), ("connect_failed", 1))

    def test_not_our_json(self):
        s = self.stub((502, {"Content-Type": "text/html"}, "<html>\nBad gateway\n</html>"))
        with self.assertRaises(altgrad.HTTPError) as cm:
            self.client(s).info()
        e = cm.exception
        self.assertEqual((e.status, e.code, e.field), (502, "http_502", ""))
        self.assertIn("Bad gateway", e.message)
        self.assertNotIn("\n", e.message)
        s = self.stub((200, {}, "not json"))
        with self.assertRaises(altgrad.ProtocolError) as cm:
            self.client(s).info()
        self.assertEqual(cm.exception.code, "bad_response")
        s = self.stub((200, {}, '{"id": "../../etc"}'))
        with self.assertRaises(altgrad.ProtocolError):
            self.client(s).submit(live.small_request())

    def test_token_header_and_keep_alive(self):
        s = self.stub(OK)
        c = self.client(s, token="tok-1")
        for _ in range(3):
            c.gradients(live.small_request())
        auth = [h.get("Authorization") for _, _, h in s.requests]
        self.assertEqual(auth, ["Bearer tok-1"] * 3)
        self.assertEqual(s.requests[0][2].get("Content-Type"), "application/json")

    def test_response_size_bound(self):
        s = self.stub(OK)
        with self.assertRaises(altgrad.Error) as cm:
            self.client(s, max_response_bytes=10).info()
        self.assertEqual(cm.exception.code, "response_too_large")


class LiveRetryTest(unittest.TestCase):
    def test_server_that_comes_up_late(self):
        port = live.free_port()
        box = {}

        def start_late():
            time.sleep(0.8)
            box["server"] = live.Server("--listen", "127.0.0.1:%d" % port)

        for call in ("gradients", "submit"):  # refused: nothing was sent, so jobs retry too
            box.clear()
            t = threading.Thread(target=start_late)
            t.start()
            try:
                c = altgrad.Client("http://127.0.0.1:%d" % port, retries=8,
                                   backoff_initial=0.2, backoff_max=0.4)
                t0 = time.monotonic()
                out = getattr(c, call)(live.small_request())
                self.assertGreaterEqual(time.monotonic() - t0, 0.7)
                if call == "submit":
                    out = out.wait(timeout=60)
                self.assertEqual(out.grad_input.shape, (2, 6, 8))
                c.close()
            finally:
                t.join()
                if "server" in box:
                    box["server"].close()

    def test_full_queue_429(self):
        s = live.Server("--workers", "1", "--cores", "1", "--queue", "0")
        try:
            c = altgrad.Client(s.url, backoff_initial=0.05)
            slow = c.submit(live.slow_request())
            deadline = time.monotonic() + 30
            while slow.status().state != "running" and time.monotonic() < deadline:
                time.sleep(0.01)
            with self.assertRaises(altgrad.HTTPError) as cm:
                altgrad.Client(s.url, retries=0).gradients(live.small_request())
            e = cm.exception
            self.assertEqual((e.status, e.code, e.retry_after, e.attempts),
                             (429, "queue_full", 1, 1))
            box = {}

            def call():
                try:
                    t0 = time.monotonic()
                    box["result"] = c.gradients(live.small_request())
                    box["elapsed"] = time.monotonic() - t0
                except altgrad.Error as err:
                    box["error"] = err

            t = threading.Thread(target=call)
            t.start()
            time.sleep(0.3)
            self.assertEqual(slow.cancel().state, "cancelled")
            t.join(60)
            self.assertNotIn("error", box)
            self.assertEqual(box["result"].grad_input.shape, (2, 6, 8))
            self.assertGreaterEqual(box["elapsed"], 1.0)  # waited for Retry-After: 1
            c.close()
        finally:
            s.close()


if __name__ == "__main__":
    unittest.main()
