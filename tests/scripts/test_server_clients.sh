#!/bin/bash
# altgradd driven by the clients callers use: Python's http.client (plain and HTTPS with a
# certificate generated here) and curl (--cacert). Needs openssl, curl, /usr/bin/python3.
set -u
SERVER=${ALTGRAD_SERVER:-build/altgradd}
PY=/usr/bin/python3
tmp=$(mktemp -d /tmp/altgrad-clients-XXXXXX)
pid=""

cleanup() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null; fi
    rm -rf "$tmp"
}
trap cleanup EXIT

fail() {
    echo "FAIL: $*"
    [ -f "$tmp/log" ] && tail -20 "$tmp/log"
    exit 1
}

# start ARGS...: runs the server on an ephemeral port; sets pid and port.
start() {
    rm -f "$tmp/port"
    OPENBLAS_NUM_THREADS=1 "$SERVER" --listen 127.0.0.1:0 --port-file "$tmp/port" \
        --calibrate 0 "$@" 2>"$tmp/log" &
    pid=$!
    for _ in $(seq 200); do
        [ -s "$tmp/port" ] && break
        kill -0 "$pid" 2>/dev/null || fail "server exited at startup"
        sleep 0.05
    done
    [ -s "$tmp/port" ] || fail "server did not start"
    port=$(cat "$tmp/port")
}

# stop: SIGTERM, expect exit status 0 within 20 s.
stop() {
    kill -TERM "$pid"
    for _ in $(seq 400); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    kill -0 "$pid" 2>/dev/null && fail "server still running 20 s after SIGTERM"
    wait "$pid"
    rc=$?
    pid=""
    [ "$rc" -eq 0 ] || fail "server exited with $rc after SIGTERM"
}

# A small valid request (d_model 8, 2 heads, 1 layer, n 6), deterministic.
$PY - "$tmp/request.json" <<'EOF'
import json, random, sys
random.seed(5)
d, f, n = 8, 16, 6
def t(shape, scale=0.3, off=0.0):
    k = 1
    for s in shape: k *= s
    return {"shape": shape, "data": [round(off + random.uniform(-scale, scale), 6) for _ in range(k)]}
layer = {"wq": t([d, d]), "wk": t([d, d]), "wv": t([d, d]), "wo": t([d, d]),
         "ln1_gamma": t([d], 0.1, 1.0), "ln1_beta": t([d]), "ln2_gamma": t([d], 0.1, 1.0),
         "ln2_beta": t([d]), "w1": t([d, f]), "b1": t([f]), "w2": t([f, d]), "b2": t([d])}
req = {"model": {"d_model": d, "n_heads": 2, "n_layers": 1, "d_ff": f, "causal": True,
                 "norm": "layernorm", "activation": "gelu", "residual": True},
       "layers": [layer], "input": t([n, d], 1.0),
       "loss": {"type": "mse", "target": t([n, d], 1.0)}, "method": {"name": "exact"}}
json.dump(req, open(sys.argv[1], "w"))
EOF

# ---- plain HTTP with http.client ---------------------------------------------------------
start --workers 2 --max-body 1M
$PY - "$port" "$tmp/request.json" <<'EOF' || fail "http.client checks"
import http.client, json, sys, time
port, body = int(sys.argv[1]), open(sys.argv[2], "rb").read()
c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)   # one keep-alive connection
def req(method, path, body=None, headers=None):
    c.request(method, path, body=body, headers=headers or {})
    r = c.getresponse()
    data = r.read()
    return r.status, dict((k.lower(), v) for k, v in r.getheaders()), data
J = {"Content-Type": "application/json"}
def error_of(data):
    e = json.loads(data)["error"]
    assert set(e) >= {"code", "message", "field"}, e
    return e

s, h, d = req("GET", "/health/live"); assert s == 200, s
s, h, d = req("GET", "/health/ready"); assert s == 200, s
s, h, d = req("GET", "/v1/info"); assert s == 200 and json.loads(d)["limits"]["max_body_bytes"] == 1 << 20
s, h, d = req("GET", "/metrics"); assert s == 200 and h["content-type"].startswith("text/plain")
s, h, d = req("POST", "/v1/gradients", body, J)
assert s == 200, (s, d[:300])
r = json.loads(d)
assert isinstance(r["loss"], (int, float)) and r["grad_input"]["shape"] == [6, 8], r.keys()
assert len(r["grad_weights"]) == 1 and r["grad_weights"][0]["wq"]["shape"] == [8, 8]
assert set(r["timing_ms"]) == {"decode", "compute", "encode"}
sync = r
s, h, d = req("POST", "/v1/jobs", body, J)
assert s == 202 and h["location"] == json.loads(d)["status_url"], (s, h, d)
url = h["location"]
for _ in range(500):
    s, h, d = req("GET", url); st = json.loads(d)
    assert s == 200 and 0.0 <= st["progress"] <= 1.0
    if st["state"] not in ("queued", "running"): break
    time.sleep(0.01)
assert st["state"] == "done", st
s, h, d = req("GET", url + "/result"); assert s == 200
assert json.loads(d)["grad_input"] == sync["grad_input"]
s, h, d = req("DELETE", url); assert s == 200 and json.loads(d)["state"] == "done"
# errors
s, h, d = req("GET", "/v1/jobs/ffffffffffffffffffffffffffffffff"); assert s == 404; error_of(d)
s, h, d = req("GET", "/v1/gradients"); assert s == 405 and h["allow"] == "POST"; error_of(d)
s, h, d = req("POST", "/v1/gradients", body, {"Content-Type": "text/plain"}); assert s == 415
c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)   # the 415 closed that one
s, h, d = req("POST", "/v1/gradients", b"{\"model\": ", J); assert s == 400; error_of(d)
bad = json.loads(body); bad["layers"][0]["wq"]["shape"] = [8, 4]
s, h, d = req("POST", "/v1/gradients", json.dumps(bad).encode(), J)
assert s == 400 and error_of(d)["field"] == "layers[0].wq", d
bad = json.loads(body); bad["surprise"] = 1
s, h, d = req("POST", "/v1/gradients", json.dumps(bad).encode(), J)
assert s == 400 and error_of(d)["field"] == "surprise", d
c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
s, h, d = req("POST", "/v1/gradients", b" " * (2 << 20), J); assert s == 413; error_of(d)
print("http.client: ok")
EOF
# curl, with the early 413 (curl sends Expect: 100-continue for large bodies).
code=$(head -c 3000000 /dev/zero | tr '\0' ' ' | curl -s -o /dev/null -w '%{http_code}' \
       -H 'Content-Type: application/json' --data-binary @- "http://127.0.0.1:$port/v1/gradients")
[ "$code" = 413 ] || fail "curl large body: $code"
code=$(curl -s -o "$tmp/out.json" -w '%{http_code}' -H 'Content-Type: application/json' \
       --data @"$tmp/request.json" "http://127.0.0.1:$port/v1/gradients")
[ "$code" = 200 ] || fail "curl gradients: $code $(head -c 300 "$tmp/out.json")"
stop
echo "plain: ok"

# ---- HTTPS ------------------------------------------------------------------------------
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$tmp/key.pem" -out "$tmp/cert.pem" -days 1 \
    -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" 2>/dev/null \
    || fail "openssl req"
start --tls-cert "$tmp/cert.pem" --tls-key "$tmp/key.pem"
code=$(curl -s -o "$tmp/out.json" -w '%{http_code}' --cacert "$tmp/cert.pem" \
       "https://127.0.0.1:$port/health/live")
[ "$code" = 200 ] || fail "curl https live: $code"
code=$(curl -s -o "$tmp/out.json" -w '%{http_code}' --cacert "$tmp/cert.pem" \
       -H 'Content-Type: application/json' --data @"$tmp/request.json" \
       "https://localhost:$port/v1/gradients")
[ "$code" = 200 ] || fail "curl https gradients: $code $(head -c 300 "$tmp/out.json")"
curl -s -o /dev/null "https://127.0.0.1:$port/health/live" && fail "untrusted cert accepted"
curl -s -m 3 -o /dev/null "http://127.0.0.1:$port/health/live" && fail "plain HTTP on the TLS port"
$PY - "$port" "$tmp/cert.pem" "$tmp/request.json" <<'EOF' || fail "https http.client"
import http.client, json, ssl, sys
port, ca, body = int(sys.argv[1]), sys.argv[2], open(sys.argv[3], "rb").read()
ctx = ssl.create_default_context(cafile=ca)
c = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=30)
c.request("GET", "/v1/info"); r = c.getresponse(); info = json.loads(r.read())
assert r.status == 200 and info["tls"] is True, info
c.request("POST", "/v1/gradients", body=body, headers={"Content-Type": "application/json"})
r = c.getresponse(); d = json.loads(r.read())
assert r.status == 200 and "grad_input" in d, d
print("https http.client: ok")
EOF
stop
echo "tls: ok"
echo "test_server_clients: all ok"
