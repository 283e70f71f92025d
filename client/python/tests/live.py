"""Shared helpers of the package's tests: a live altgradd (the Server class of
tests/scripts/hardening_lib.py), a scripted stub HTTP server for the retry rules, and the
loud skip used until the server lists a feature of the wire format's later additions.

The server binary is $ALTGRAD_SERVER (make test sets it), else build/altgradd of the
repository this file is in.
"""
import http.server
import os
import socket
import sys
import threading
import unittest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "scripts"))
import hardening_lib  # noqa: E402  (the repository's own server helper)

hardening_lib.SERVER = os.path.abspath(
    os.environ.get("ALTGRAD_SERVER", os.path.join(ROOT, "build", "altgradd")))

import altgrad  # noqa: E402

FEATURE_SKIP = "SERVER LACKS FEATURE"


class Server(hardening_lib.Server):
    """altgradd on 127.0.0.1:<free port> (flags as given); .url; stop with close()."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.url = "http://127.0.0.1:%d" % self.port

    def close(self):
        """Stops the server; AssertionError when it did not exit 0 on SIGTERM or its log
        holds a sanitizer report (make asan-test runs these tests with an ASan build)."""
        rc = self.stop()
        errors = self.sanitizer_errors()
        tail = self.log_text()[-3000:]
        self.cleanup()
        if rc != 0 or errors:
            raise AssertionError("altgradd exited %s, sanitizer reports %s; log:\n%s"
                                 % (rc, errors, tail))


def free_port():
    """A port nothing listens on right now (bound and released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require_features(test, client, *features):
    """Skips test, loudly, unless the server lists every feature in /v1/info."""
    have = client.features()
    missing = [f for f in features if f not in have]
    if missing:
        test.skipTest("%s %s: this test runs once /v1/info lists it (wire design of issue "
                      "15)" % (FEATURE_SKIP, ", ".join(repr(f) for f in missing)))


class Stub:
    """A scripted HTTP/1.1 server on 127.0.0.1 for the client's retry rules.

    script(method, path, count) -> (status, headers, body) or "drop" (read the request, then
    close without answering); count is 1 for the first request to that path. Every request
    is recorded in .requests as (method, path, headers dict).
    """

    def __init__(self, script):
        stub = self
        self.requests = []
        self.lock = threading.Lock()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _serve(self):
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                with stub.lock:
                    stub.requests.append((self.command, self.path, dict(self.headers)))
                    count = sum(1 for m, p, _ in stub.requests
                                if m == self.command and p == self.path)
                answer = script(self.command, self.path, count)
                if answer == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                status, headers, body = answer
                body = body.encode() if isinstance(body, str) else body
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_DELETE = _serve

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = "http://127.0.0.1:%d" % self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,),
                                       daemon=True)
        self.thread.start()

    def count(self, method, path):
        with self.lock:
            return sum(1 for m, p, _ in self.requests if m == method and p == path)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def small_request(seed=1, n=6, batch=2, d=8, heads=2, layers=2, d_ff=16, causal=False,
                  loss="sum"):
    """A valid request (dict with Tensor objects) for a small model."""
    import random
    rng = random.Random(seed)
    m = altgrad.model(d, heads, layers, d_ff, causal=causal)
    shape = [batch, n, d] if batch else [n, d]
    count = altgrad.numel(shape)
    x = altgrad.Tensor(shape, [rng.uniform(-1, 1) for _ in range(count)])
    if loss == "mse":
        lo = altgrad.mse(altgrad.Tensor(shape, [rng.uniform(-1, 1) for _ in range(count)]))
    elif loss == "grad_output":
        lo = altgrad.grad_output(altgrad.Tensor(shape,
                                                [rng.uniform(-1, 1) for _ in range(count)]))
    else:
        lo = altgrad.sum_loss()
    return altgrad.request(m, altgrad.random_layers(m, seed=seed), x, loss=lo,
                           method="exact")


def slow_request(n=16384, d=64):
    """A request that computes for seconds (exact attention at n 16384): tests cancel it."""
    import random
    rng = random.Random(7)
    m = altgrad.model(d, 4, 2, 0, norm="none", residual=False)
    x = altgrad.Tensor([n, d], [rng.uniform(-1, 1) for _ in range(n * d)])
    return altgrad.request(m, altgrad.random_layers(m, seed=3), x, loss=altgrad.sum_loss(),
                           method="exact")


class LiveTestCase(unittest.TestCase):
    """One server for the whole class (started in setUpClass with server_args). With
    $ALTGRAD_TEST_URL set, classes without server_args use that running server instead."""

    server_args = ()

    @classmethod
    def setUpClass(cls):
        url = os.environ.get("ALTGRAD_TEST_URL")
        cls.server = None if url and not cls.server_args else Server(*cls.server_args)
        cls.client = altgrad.Client(cls.server.url if cls.server else url,
                                    backoff_initial=0.05)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        if cls.server:
            cls.server.close()
