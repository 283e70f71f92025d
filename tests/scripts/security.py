#!/usr/bin/env python3
"""Security checks of issue 8 against a real altgradd (127.0.0.1 only):
  - bearer tokens: missing/wrong -> 401 JSON naming Authorization; the right one works;
    health and metrics need none; no token (right or wrong) ever appears in the logs, in
    text or JSON format;
  - a job is invisible to another token: every job route answers exactly as for a missing id;
  - job ids: [NODE-]<32 hex> (128 bits), all distinct, bits balanced (getrandom, not a
    counter); --node-id takes a Kubernetes pod name (altgrad-0) and refuses '.', and the
    client library (the altgrad CLI) accepts the ids the server makes;
  - TLS with a certificate generated here (TLS >= 1.2, the certificate verified, plain HTTP
    on the TLS port refused);
  - the container image runs as a non-root user (deploy/Dockerfile USER).
The constant-time comparison of tokens is timed in tests/unit/test_auth_timing.c.
"""
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
from hardening_lib import SERVER, Server, build, dumps, make_request, raw, request  # noqa

CLI = os.environ.get("ALTGRAD_CLI", "build/altgrad")
failures = []
TOK_A = "tokA-7f3a9c1e5b2d4f60aa11bb22cc33dd44"
TOK_B = "tokB-0e1d2c3b4a5968778899aabbccddeeff"
TOK_WRONG = "tokW-deadbeefdeadbeefdeadbeefdeadbeef"


def fail(msg):
    failures.append(msg)
    print("FAIL: " + msg, flush=True)


def auth(tok):
    return {"Authorization": "Bearer " + tok}


def tokens_and_visibility(log_format):
    d = tempfile.mkdtemp(prefix="altgrad-sec-")
    tf = os.path.join(d, "tokens")
    with open(tf, "w") as f:
        f.write("# two callers\n%s\n\n%s\n" % (TOK_A, TOK_B))
    srv = Server("--tokens-file", tf, "--log-format", log_format, "--node-id", "altgrad-0")
    body = dumps(make_request(seed=4))
    try:
        p = srv.port
        r = request(p, "GET", "/v1/info")
        e = r.error()
        if r.status != 401 or not e or e[:2] != ("unauthorized", "Authorization") or \
                "bearer" not in r.headers.get("www-authenticate", "").lower():
            fail("no token: %d %r %r" % (r.status, e, r.headers.get("www-authenticate")))
        for h in (auth(TOK_WRONG), {"Authorization": "Basic " + TOK_A},
                  {"Authorization": "Bearer " + TOK_A[:-1]}, {"Authorization": "Bearer " + TOK_A + "x"},
                  {"Authorization": "Bearer"}, {"Authorization": "Bearer " + "a" * 600}):
            r = request(p, "POST", "/v1/gradients", body, h)
            if r.status != 401 or (r.error() or ("",))[0] != "unauthorized":
                fail("bad credentials %r...: %d" % (list(h.values())[0][:20], r.status))
        for path in ("/health/live", "/health/ready", "/metrics"):
            if request(p, "GET", path).status != 200:
                fail("%s needs a token" % path)
        r = request(p, "POST", "/v1/gradients", body, auth(TOK_A))
        if r.status != 200:
            fail("token A cannot compute: %d" % r.status)
        # A job of A, seen by B and by nobody.
        r = request(p, "POST", "/v1/jobs", body, auth(TOK_A))
        jid = r.json()["id"]
        if not re.fullmatch(r"altgrad-0-[0-9a-f]{32}", jid):
            fail("job id %r is not altgrad-0-<32 hex>" % jid)
        missing = "altgrad-0-" + "0" * 32
        for suffix, method in (("", "GET"), ("/result", "GET"), ("", "DELETE")):
            rb = request(p, method, "/v1/jobs/" + jid + suffix, None, auth(TOK_B))
            rm = request(p, method, "/v1/jobs/" + missing + suffix, None, auth(TOK_B))
            if rb.status != 404 or rb.error() is None or rb.error()[:2] != rm.error()[:2] or \
                    rb.error()[2].replace(jid, "") != rm.error()[2].replace(missing, ""):
                fail("another token's job %s%s is distinguishable: %d %r vs %d %r" %
                     (method, suffix, rb.status, rb.body, rm.status, rm.body))
        ra = request(p, "GET", "/v1/jobs/" + jid, None, auth(TOK_A))
        if ra.status != 200:
            fail("the owner cannot see its job: %d" % ra.status)
        # The client library takes the server's ids (node id with '-').
        if os.path.exists(CLI):
            out = subprocess.run([CLI, "--server", "http://127.0.0.1:%d" % p, "--token", TOK_A,
                                  "job", "status", jid], capture_output=True, text=True,
                                 timeout=30)
            if out.returncode != 0 or not out.stdout.startswith(jid):
                fail("altgrad job status %s: exit %d %r %r" % (jid, out.returncode, out.stdout,
                                                                out.stderr))
        rc = srv.stop()
        if rc != 0:
            fail("exit status %r" % rc)
        log = srv.log_text()
        for name, tok in (("A", TOK_A), ("B", TOK_B), ("wrong", TOK_WRONG)):
            for probe in (tok, tok[5:21]):
                if probe in log:
                    fail("token %s (%s) appears in the %s log" % (name, probe, log_format))
        n_access = log.count("access")
        print("tokens (%s logs): %d log lines scanned, no token in them; another token's "
              "job answers as a missing one" % (log_format, n_access), flush=True)
    finally:
        srv.cleanup()
        os.unlink(tf)
        os.rmdir(d)


def job_ids():
    srv = Server("--workers", "1", "--queue", "256", "--max-jobs", "512")
    body = dumps(make_request(d=4, heads=1, ff=0, n=2, seed=1, loss="sum", norm="none"))
    try:
        ids = []
        for _ in range(200):
            r = request(srv.port, "POST", "/v1/jobs", body)
            ids.append(r.json()["id"])
        srv.stop()
    finally:
        srv.cleanup()
    bad = [i for i in ids if not re.fullmatch(r"[0-9a-f]{32}", i)]
    if bad:
        fail("job ids not 32 hex digits: %r" % bad[:3])
    if len(set(ids)) != len(ids):
        fail("duplicate job ids")
    ones = sum(bin(int(i, 16)).count("1") for i in ids)
    bits = 128 * len(ids)
    # Binomial(25600, 1/2): sd 80; 5 sd is still only 1.6% off balance.
    if abs(ones - bits / 2) > 400:
        fail("job id bits unbalanced: %d of %d set" % (ones, bits))
    # Adjacent ids must not share a prefix the way counters or timestamps do.
    shared = sum(1 for a, b in zip(ids, ids[1:]) if a[:6] == b[:6])
    if shared > 2:
        fail("%d adjacent job ids share 6 leading hex digits" % shared)
    print("job ids: %d distinct, 128 bits each, %d of %d bits set (%.2f%%)" %
          (len(set(ids)), ones, bits, 100.0 * ones / bits), flush=True)


def node_ids():
    for nid, ok in (("altgrad-0", True), ("web_1-b", True), ("a.b", False), ("a/b", False),
                    ("n" * 31, True), ("n" * 32, False)):
        try:
            srv = Server("--node-id", nid)
        except RuntimeError as e:
            if ok:
                fail("--node-id %r refused: %s" % (nid, str(e)[-200:]))
            continue
        try:
            if not ok:
                fail("--node-id %r accepted" % nid)
            srv.stop()
        finally:
            srv.cleanup()
    print("node ids: '-' and '_' accepted, '.', '/' and 32+ characters refused", flush=True)


def tls():
    d = tempfile.mkdtemp(prefix="altgrad-tls-")
    cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True,
                   capture_output=True, timeout=60)
    srv = Server("--tls-cert", cert, "--tls-key", key)
    try:
        ctx = ssl.create_default_context(cafile=cert)
        with socket.create_connection(("127.0.0.1", srv.port), timeout=20) as s:
            with ctx.wrap_socket(s, server_hostname="localhost") as t:
                version = t.version()
                t.sendall(build("GET", "/v1/info", None, {"Connection": "close"}))
                data = b""
                while True:
                    chunk = t.recv(65536)
                    if not chunk:
                        break
                    data += chunk
        body = json.loads(data.split(b"\r\n\r\n", 1)[1])
        if body.get("tls") is not True:
            fail("TLS: /v1/info says tls %r" % body.get("tls"))
        if version not in ("TLSv1.2", "TLSv1.3"):
            fail("TLS: negotiated %s" % version)
        # An unverified certificate is refused by a verifying client...
        try:
            with socket.create_connection(("127.0.0.1", srv.port), timeout=20) as s:
                with ssl.create_default_context().wrap_socket(s, server_hostname="localhost"):
                    fail("TLS: a client without the CA accepted the certificate")
        except ssl.SSLError:
            pass
        # ... and plain HTTP on the TLS port gets no HTTP answer.
        try:
            r = raw(srv.port, build("GET", "/health/live", None, {"Connection": "close"}),
                    timeout=5)
            if r.status == 200:
                fail("TLS: plain HTTP served on the TLS port")
        except (ConnectionError, OSError):
            pass
        rc = srv.stop()
        if rc != 0:
            fail("TLS: exit status %r" % rc)
        print("TLS: %s with a generated P-256 certificate, verified; plain HTTP refused" %
              version, flush=True)
    finally:
        srv.cleanup()
        for f in (cert, key):
            os.unlink(f)
        os.rmdir(d)


def container_user():
    path = os.path.join(os.path.dirname(__file__), "..", "..", "deploy", "Dockerfile")
    if not os.path.exists(path):
        print("container: no deploy/Dockerfile (skipped)")
        return
    users = [l.split(None, 1)[1].strip() for l in open(path)
             if l.strip().upper().startswith("USER ")]
    if not users:
        fail("deploy/Dockerfile has no USER: the container runs as root")
        return
    last = users[-1].split(":")[0]
    if last in ("root", "0"):
        fail("deploy/Dockerfile: USER %s" % users[-1])
    print("container: runs as USER %s (non-root)" % users[-1], flush=True)


def main():
    tokens_and_visibility("text")
    tokens_and_visibility("json")
    job_ids()
    node_ids()
    tls()
    container_user()
    print("test_security: %s" % ("ok" if not failures else "FAILED (%d)" % len(failures)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
