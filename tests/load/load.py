#!/usr/bin/env python3
"""Load and soak test of altgradd (issue 8, `make load`; a 20 s variant runs in `make test`).

Mixed traffic from N keep-alive connections on 127.0.0.1 against a fresh server:
  55%  small sync jobs         POST /v1/gradients                       -> 200
  20%  medium async jobs       POST /v1/jobs, poll, GET .../result      -> 202, 200, 200
   5%  async jobs cancelled    POST /v1/jobs, DELETE, GET .../result    -> 202, 200, 409|200
  10%  bad requests            invalid JSON, wrong shape, 404, 405, 415 -> that status
  10%  reads                   /v1/info, /health/ready, /metrics        -> 200
Every answer is checked against what its request deserves; anything else is an unexpected
error, and the run fails on the first few. Afterwards:
  - every job is accounted for: altgrad_jobs_accepted_total = done + failed + cancelled (from
    /metrics, deltas over the run), and matches what the clients saw;
  - RSS after the run (idle, finished results purged) is within 10% of RSS after warm-up;
  - p50/p99 latency per kind of request, throughput, and the numbers go to --out as JSON.
"""
import argparse
import json
import os
import random
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts"))
from hardening_lib import Conn, Server, dumps, make_request, metric_sum, metrics  # noqa: E402

JOB_TTL = 3


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.lat = {}
        self.count = {}
        self.errors = []
        self.sync_ok = 0
        self.async_accepted = 0
        self.async_done = 0
        self.async_cancelled = 0
        self.worker_failed = 0     # bad bodies that reach a worker (decode fails there)
        self.ops = 0

    def note(self, kind, seconds):
        with self.lock:
            self.lat.setdefault(kind, []).append(seconds)
            self.count[kind] = self.count.get(kind, 0) + 1

    def error(self, msg):
        with self.lock:
            if len(self.errors) < 50:
                self.errors.append(msg)
            else:
                self.errors.append(None)

    def add(self, field, n=1):
        with self.lock:
            setattr(self, field, getattr(self, field) + n)


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))] if xs else float("nan")


def bodies():
    small = [dumps(make_request(d=8, heads=2, ff=16, n=n, seed=s)) for s, n in
             ((1, 8), (2, 16), (3, 24))]
    medium = [dumps(make_request(d=32, heads=4, ff=64, n=96, layers=2, seed=10 + s,
                                 method=m, b64=b))
              for s, (m, b) in enumerate((({"name": "exact"}, True),
                                          ({"name": "auto", "epsilon": 0.01}, True),
                                          ({"name": "exact"}, False)))]
    bad_shape = make_request(d=8, heads=2, ff=16, n=8, seed=5)
    bad_shape["layers"][0]["wq"]["shape"] = [8, 4]
    J = {"Content-Type": "application/json"}
    # (what, method, path, body, headers, status, code, reaches a worker)
    bad = [
        ("invalid json", "POST", "/v1/gradients", small[0][:-40], J, 400, "invalid_json", 1),
        ("wrong shape", "POST", "/v1/gradients", dumps(bad_shape), J, 400, "invalid_shape", 1),
        ("unknown job", "GET", "/v1/jobs/load-0-" + "0" * 32, None, {}, 404, "job_not_found", 0),
        ("wrong method", "GET", "/v1/gradients", None, {}, 405, "method_not_allowed", 0),
        ("wrong type", "POST", "/v1/jobs", small[0], {"Content-Type": "text/plain"}, 415,
         "unsupported_media_type", 0),
        ("empty body", "POST", "/v1/gradients", "", J, 400, "invalid_json", 0),
    ]
    return small, medium, bad


def client(port, seed, stop, stats, small, medium, bad):
    rng = random.Random(seed)
    c = Conn(port, timeout=120)

    def call(kind, method, path, body=None, headers=None, want=(200,)):
        t0 = time.time()
        r = c.request(method, path, body, headers)
        stats.note(kind, time.time() - t0)
        if r.status not in want:
            stats.error("%s %s %s: %d %s" % (kind, method, path, r.status, r.body[:160]))
        return r

    while not stop.is_set():
        x = rng.random()
        stats.add("ops")
        try:
            if x < 0.55:
                r = call("sync small", "POST", "/v1/gradients", rng.choice(small))
                if r.status == 200:
                    if "grad_input" not in r.json():
                        stats.error("sync small: no grad_input")
                    stats.add("sync_ok")
            elif x < 0.80:
                cancel = x >= 0.75
                r = call("async submit", "POST", "/v1/jobs", rng.choice(medium), want=(202,))
                if r.status != 202:
                    continue
                stats.add("async_accepted")
                url = r.json()["status_url"]
                if cancel:
                    time.sleep(rng.random() * 0.02)
                    d = call("async cancel", "DELETE", url)
                    st = d.json().get("state") if d.status == 200 else None
                    if st not in ("cancelled", "done"):
                        stats.error("cancel: state %r" % st)
                else:
                    t_job = time.time()
                    while True:
                        p = call("async poll", "GET", url)
                        st = p.json().get("state") if p.status == 200 else "?"
                        if st not in ("queued", "running"):
                            break
                        time.sleep(0.05)
                    stats.note("async job end-to-end", time.time() - t_job)
                    if st != "done":
                        stats.error("async job ended %r" % st)
                res = call("async result", "GET", url + "/result", want=(200, 409))
                if res.status == 200:
                    stats.add("async_done")
                    if "grad_input" not in res.json():
                        stats.error("async result without grad_input")
                elif res.json()["error"]["code"] == "cancelled":
                    stats.add("async_cancelled")
                else:
                    stats.error("result: %s" % res.body[:160])
            elif x < 0.90:
                what, m, path, body, h, status, code, worker = rng.choice(bad)
                r = call("bad request", m, path, body, h, want=(status,))
                if r.status == status:
                    e = r.error()
                    if not e or e[0] != code:
                        stats.error("bad %s: error %r, expected %s" % (what, e, code))
                    elif worker:
                        stats.add("worker_failed")
            else:
                path = rng.choice(("/v1/info", "/health/ready", "/metrics"))
                call("read", "GET", path)
        except Exception as e:  # noqa: BLE001 - any transport failure is an unexpected error
            stats.error("transport: %s: %s" % (type(e).__name__, e))
            c.close()
    c.close()


def run_traffic(port, seconds, n_conn, stats, data):
    stop = threading.Event()
    threads = [threading.Thread(target=client, args=(port, 1000 + i, stop, stats) + data,
                                daemon=True) for i in range(n_conn)]
    t0 = time.time()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(180)
    return time.time() - t0


def quiesce(port, srv, extra_wait):
    """Until no job is in flight, then extra_wait (TTL purge); returns the metrics."""
    end = time.time() + 120
    while time.time() < end:
        m = metrics(port)
        if metric_sum(m, "altgrad_jobs_in_flight") == 0:
            break
        time.sleep(0.2)
    time.sleep(extra_wait)
    return metrics(port)


def finished(m):
    return {s: m.get('altgrad_jobs_finished_total{state="%s"}' % s, 0)
            for s in ("done", "failed", "cancelled")}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", default=os.environ.get("ALTGRAD_SERVER", "build/altgradd"))
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--warmup", type=float, default=0)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--rss-tolerance", type=float, default=0.10)
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    os.environ["ALTGRAD_SERVER"] = a.server
    import hardening_lib
    hardening_lib.SERVER = a.server
    warm = a.warmup or max(5.0, min(20.0, a.seconds / 6))
    # Finished jobs are held for JOB_TTL seconds; at the ~550 async submissions/s a fast
    # machine reaches, the default --max-jobs 1024 fills and honest submissions got 429
    # too_many_jobs (the suite failed in most runs there). The test is about load, not about
    # that limit (tests/scripts/bad_requests.py and the server tests cover it): room for
    # JOB_TTL s of submissions at 4000/s.
    args = ["--queue", str(2 * a.connections), "--job-ttl", str(JOB_TTL), "--max-body", "8M",
            "--connection-timeout", "30", "--max-jobs", str(4000 * JOB_TTL)]
    if a.workers:
        args += ["--workers", str(a.workers)]
    srv = Server(*args)
    data = bodies()
    fails = []
    try:
        print("load: %d connections, warm-up %.0f s, run %.0f s, server pid %d" %
              (a.connections, warm, a.seconds, srv.pid), flush=True)
        run_traffic(srv.port, warm, a.connections, Stats(), data)
        m0 = quiesce(srv.port, srv, JOB_TTL + 1.5)
        rss_warm = srv.rss_bytes()
        stats = Stats()
        elapsed = run_traffic(srv.port, a.seconds, a.connections, stats, data)
        m1 = quiesce(srv.port, srv, JOB_TTL + 1.5)
        rss_end = srv.rss_bytes()

        acc = m1["altgrad_jobs_accepted_total"] - m0["altgrad_jobs_accepted_total"]
        f0, f1 = finished(m0), finished(m1)
        fin = {k: f1[k] - f0[k] for k in f1}
        held = metric_sum(m1, "altgrad_jobs")
        budget = metric_sum(m1, "altgrad_memory_budget_used_bytes")
        errors = [e for e in stats.errors if e]
        n_err = len(stats.errors)

        total = sum(stats.count.values())
        print("load: %d requests in %.1f s (%.0f/s), %d operations, %d unexpected errors" %
              (total, elapsed, total / elapsed, stats.ops, n_err))
        report = {"connections": a.connections, "seconds": elapsed, "requests": total,
                  "requests_per_s": total / elapsed, "unexpected_errors": n_err,
                  "latency_ms": {}, "jobs": {}, "rss": {}}
        for kind in sorted(stats.lat):
            xs = stats.lat[kind]
            p50, p99 = pct(xs, 0.5) * 1e3, pct(xs, 0.99) * 1e3
            report["latency_ms"][kind] = {"n": len(xs), "p50": p50, "p99": p99,
                                          "max": max(xs) * 1e3}
            print("  %-22s n %6d  p50 %8.1f ms  p99 %8.1f ms  max %8.1f ms" %
                  (kind, len(xs), p50, p99, max(xs) * 1e3))
        print("  jobs: accepted %d = done %d + failed %d + cancelled %d (%s); held now %d, "
              "memory budget %d B" % (acc, fin["done"], fin["failed"], fin["cancelled"],
                                       "ok" if acc == sum(fin.values()) else "MISMATCH",
                                       held, budget))
        print("  clients saw: sync 200 %d, async accepted %d (done %d, cancelled %d), bad "
              "bodies failed on a worker %d" % (stats.sync_ok, stats.async_accepted,
                                                stats.async_done, stats.async_cancelled,
                                                stats.worker_failed))
        print("  RSS after warm-up %.1f MiB, after the run %.1f MiB (%+.1f%%)" %
              (rss_warm / 2**20, rss_end / 2**20, 100.0 * (rss_end - rss_warm) / rss_warm))
        report["jobs"] = {"accepted": acc, "finished": fin, "held_after": held,
                          "client_sync_ok": stats.sync_ok,
                          "client_async_accepted": stats.async_accepted,
                          "client_async_done": stats.async_done,
                          "client_async_cancelled": stats.async_cancelled,
                          "client_worker_failed": stats.worker_failed}
        report["rss"] = {"after_warmup": rss_warm, "after_run": rss_end}

        if n_err:
            fails.append("%d unexpected errors, first: %s" % (n_err, errors[:5]))
        if acc != sum(fin.values()):
            fails.append("accepted %d != finished %d" % (acc, sum(fin.values())))
        if fin["done"] != stats.sync_ok + stats.async_done:
            fails.append("done %d != sync 200 %d + async done %d" %
                         (fin["done"], stats.sync_ok, stats.async_done))
        if fin["cancelled"] != stats.async_cancelled:
            fails.append("cancelled %d != cancels the clients saw %d" %
                         (fin["cancelled"], stats.async_cancelled))
        if fin["failed"] != stats.worker_failed:
            fails.append("failed %d != bad bodies the clients sent to workers %d" %
                         (fin["failed"], stats.worker_failed))
        if stats.async_accepted != stats.async_done + stats.async_cancelled:
            fails.append("async accepted %d != done %d + cancelled %d" %
                         (stats.async_accepted, stats.async_done, stats.async_cancelled))
        if held != 0 or budget != 0:
            fails.append("after the TTL: %d jobs held, %d budget bytes" % (held, budget))
        if hardening_lib.sanitized(a.server):
            print("  (ASan build: its quarantine of freed memory makes RSS no measure of "
                  "leaks; LeakSanitizer checks them at exit)")
        elif rss_end > rss_warm * (1 + a.rss_tolerance):
            fails.append("RSS grew %.1f%% (over %.0f%%)" %
                         (100.0 * (rss_end - rss_warm) / rss_warm, 100 * a.rss_tolerance))
        rc = srv.stop()
        if rc != 0:
            fails.append("exit status %r after SIGTERM" % rc)
        if srv.sanitizer_errors():
            fails.append("sanitizer reports %s" % srv.sanitizer_errors())
        report["failures"] = fails
        if a.out:
            os.makedirs(a.out, exist_ok=True)
            with open(os.path.join(a.out, "load-%ds.json" % int(a.seconds)), "w") as f:
                json.dump(report, f, indent=1)
    finally:
        srv.cleanup()
    for f in fails:
        print("FAIL: " + f)
    print("load: %s" % ("ok" if not fails else "FAILED"))
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
