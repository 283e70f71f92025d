"""Shared helpers of the reliability tests (docs/hardening.md): start altgradd on a loopback
port, talk raw HTTP/1.1 to it, build valid requests, read its RSS and metrics.

Only the standard library and only 127.0.0.1: the scripts run in `make test` and in CI.
"""
import base64
import json
import os
import random
import re
import signal
import socket
import struct
import subprocess
import tempfile
import time

SERVER = os.environ.get("ALTGRAD_SERVER", "build/altgradd")
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                   "ThreadSanitizer", "SUMMARY: UndefinedBehaviorSanitizer")


def sanitized(path=None):
    """Whether the server binary is an ASan build (RSS and latency bounds do not apply: ASan
    keeps freed memory in quarantine and runs several times slower)."""
    try:
        with open(path or SERVER, "rb") as f:
            return b"__asan_init" in f.read()
    except OSError:
        return False


class Server:
    """altgradd on 127.0.0.1:<free port>, stderr into a log file. Stop with stop()."""

    def __init__(self, *args, env=None, timeout=30.0, wrapper=None):
        self.dir = tempfile.mkdtemp(prefix="altgrad-h8-")
        self.port_file = os.path.join(self.dir, "port")
        self.log_path = os.path.join(self.dir, "log")
        e = dict(os.environ)
        e.setdefault("OPENBLAS_NUM_THREADS", "1")
        if env:
            e.update(env)
        cmd = list(wrapper or []) + [SERVER, "--listen", "127.0.0.1:0", "--port-file",
                                      self.port_file, "--calibrate", "0"] + list(args)
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=e)
        end = time.time() + timeout
        while time.time() < end:
            if os.path.exists(self.port_file) and os.path.getsize(self.port_file) > 0:
                break
            if self.proc.poll() is not None:
                raise RuntimeError("altgradd exited at startup:\n" + self.log_text()[-3000:])
            time.sleep(0.02)
        else:
            self.proc.kill()
            raise RuntimeError("altgradd did not start within %g s" % timeout)
        self.port = int(open(self.port_file).read().strip())
        self.pid = self.proc.pid

    def log_text(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def sanitizer_errors(self):
        text = self.log_text()
        return [m for m in SANITIZER_MARKS if m in text]

    def alive(self):
        return self.proc.poll() is None

    def rss_bytes(self):
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def stop(self, sig=signal.SIGTERM, timeout=60.0):
        """Signals and waits; returns the exit status (None when it had to be killed)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self.log.close()
                return None
        self.log.close()
        return self.proc.returncode

    def cleanup(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for name in os.listdir(self.dir):
            os.unlink(os.path.join(self.dir, name))
        os.rmdir(self.dir)


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers  # lower-case name -> value
        self.body = body

    def json(self):
        return json.loads(self.body)

    def error(self):
        """(code, field) of a {"error": {...}} body, or None."""
        try:
            e = json.loads(self.body)["error"]
            return e["code"], e["field"], e["message"]
        except (ValueError, KeyError, TypeError):
            return None


def recv_response(sock, timeout=30.0, head=False):
    """Reads one HTTP/1.1 response (Content-Length or chunked or until close)."""
    sock.settimeout(timeout)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            if not buf:
                raise ConnectionError("closed before a response")
            break
        buf += chunk
    head_raw, _, rest = buf.partition(b"\r\n\r\n")
    lines = head_raw.decode("latin-1").split("\r\n")
    m = re.match(r"HTTP/1\.[01] (\d{3})", lines[0])
    if not m:
        raise ConnectionError("not an HTTP response: %r" % lines[0][:80])
    status = int(m.group(1))
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if head or status in (204, 304) or 100 <= status < 200:
        return Response(status, headers, b""), rest
    if "content-length" in headers:
        n = int(headers["content-length"])
        while len(rest) < n:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
        return Response(status, headers, rest[:n]), rest[n:]
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            while b"\r\n" not in rest:
                chunk = sock.recv(65536)
                if not chunk:
                    return Response(status, headers, body), b""
                rest += chunk
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            while len(rest) < size + 2:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                rest += chunk
            body += rest[:size]
            rest = rest[size + 2:]
            if size == 0:
                return Response(status, headers, body), rest
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return Response(status, headers, rest), b""


def raw(port, data, timeout=30.0, head=False):
    """Sends raw bytes on a fresh connection and reads one response."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered early and closed: the answer may still be readable
        r, _ = recv_response(s, timeout, head)
        return r


def build(method, path, body=None, headers=None, version="HTTP/1.1", length=True):
    if isinstance(body, str):
        body = body.encode()
    h = {"Host": "127.0.0.1"}
    if body is not None and length:
        h["Content-Length"] = str(len(body))
    h.update(headers or {})
    out = ["%s %s %s" % (method, path, version)] + ["%s: %s" % kv for kv in h.items()]
    return ("\r\n".join(out) + "\r\n\r\n").encode("latin-1") + (body or b"")


def request(port, method, path, body=None, headers=None, timeout=60.0):
    hdr = {"Connection": "close"}
    if body is not None:
        hdr["Content-Type"] = "application/json"
    hdr.update(headers or {})
    return raw(port, build(method, path, body, hdr), timeout, head=(method == "HEAD"))


class Conn:
    """One keep-alive connection (the load generator's client)."""

    def __init__(self, port, timeout=120.0):
        self.port = port
        self.timeout = timeout
        self.sock = None
        self.rest = b""

    def _connect(self):
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.rest = b""

    def close(self):
        if self.sock:
            self.sock.close()
        self.sock = None

    def request(self, method, path, body=None, headers=None):
        hdr = {}
        if body is not None:
            hdr["Content-Type"] = "application/json"
        hdr.update(headers or {})
        data = build(method, path, body, hdr)
        for attempt in (0, 1):
            fresh = self.sock is None
            if fresh:
                self._connect()
            try:
                self.sock.sendall(data)
                r, self.rest = recv_response(self.sock, self.timeout, method == "HEAD")
                if r.headers.get("connection", "").lower() == "close":
                    self.close()
                return r
            except (ConnectionError, BrokenPipeError, socket.timeout, OSError):
                self.close()
                # A keep-alive connection the server closed while idle: retry once fresh.
                if fresh or attempt == 1:
                    raise
        raise ConnectionError("unreachable")


def metrics(port):
    """Prometheus text -> {"name{labels}": value}."""
    r = request(port, "GET", "/metrics")
    out = {}
    for line in r.body.decode().splitlines():
        if not line or line.startswith("#"):
            continue
        k, _, v = line.rpartition(" ")
        try:
            out[k] = float(v)
        except ValueError:
            pass
    return out


def metric_sum(m, prefix):
    return sum(v for k, v in m.items() if k == prefix or k.startswith(prefix + "{"))


# ---- requests ------------------------------------------------------------------------------

def _numel(shape):
    k = 1
    for s in shape:
        k *= s
    return k


def tensor(rng, shape, scale=0.3, off=0.0, b64=False):
    vals = [round(off + rng.uniform(-scale, scale), 5) for _ in range(_numel(shape))]
    if b64:
        return {"shape": shape,
                "b64": base64.b64encode(struct.pack("<%df" % len(vals), *vals)).decode()}
    return {"shape": shape, "data": vals}


def make_request(d=8, heads=2, layers=1, ff=16, n=6, batch=0, seed=1, method=None, b64=False,
                 loss="mse", norm="layernorm"):
    """A valid request as a dict (layernorm, gelu, residual, causal)."""
    rng = random.Random(seed)

    def layer():
        l = {k: tensor(rng, [d, d], b64=b64) for k in ("wq", "wk", "wv", "wo")}
        if norm == "layernorm":
            l["ln1_gamma"] = tensor(rng, [d], 0.1, 1.0, b64)
            l["ln1_beta"] = tensor(rng, [d], b64=b64)
            if ff:
                l["ln2_gamma"] = tensor(rng, [d], 0.1, 1.0, b64)
                l["ln2_beta"] = tensor(rng, [d], b64=b64)
        if ff:
            l["w1"] = tensor(rng, [d, ff], b64=b64)
            l["b1"] = tensor(rng, [ff], b64=b64)
            l["w2"] = tensor(rng, [ff, d], b64=b64)
            l["b2"] = tensor(rng, [d], b64=b64)
        return l

    shape = [batch, n, d] if batch else [n, d]
    r = {"model": {"d_model": d, "n_heads": heads, "n_layers": layers, "d_ff": ff,
                   "causal": True, "norm": norm, "activation": "gelu", "residual": True},
         "layers": [layer() for _ in range(layers)],
         "input": tensor(rng, shape, 1.0, b64=b64)}
    if loss == "mse":
        r["loss"] = {"type": "mse", "target": tensor(rng, shape, 1.0, b64=b64)}
    else:
        r["loss"] = {"type": loss}
    r["method"] = method if method is not None else {"name": "exact"}
    return r


def dumps(obj):
    return json.dumps(obj, separators=(",", ":"))
