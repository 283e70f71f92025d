#!/usr/bin/env bash
# The `altgrad` CLI against a live altgradd: outputs, exit codes (0, 2, 3, 4, 5, 6), job
# commands with and without a terminal, and the train_copy demo's loss going down.
#
# Environment (set by `make test-run`): ALTGRAD_CLI, ALTGRAD_SERVER, ALTGRAD_BUILD.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${ALTGRAD_BUILD:-build}
case "$BUILD" in /*) ;; *) BUILD="$ROOT/$BUILD" ;; esac
CLI=${ALTGRAD_CLI:-$BUILD/altgrad}
SERVER=${ALTGRAD_SERVER:-$BUILD/altgradd}
DEMO=$BUILD/examples/train_copy
export OPENBLAS_NUM_THREADS=1
unset ALTGRAD_SERVER_URL ALTGRAD_TOKEN

WORK=$(mktemp -d /tmp/agcli.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
    rm -rf "$WORK"
}
trap cleanup EXIT

pass=0
fail=0
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*"; }

# expect CODE DESCRIPTION -- command...: runs it (stdout -> $WORK/out, stderr -> $WORK/err)
expect() {
    local want=$1 what=$2
    shift 3
    "$@" >"$WORK/out" 2>"$WORK/err"
    local got=$?
    if [ "$got" = "$want" ]; then ok; else
        bad "$what: exit $got, expected $want"
        sed 's/^/    stdout: /' "$WORK/out" | head -5
        sed 's/^/    stderr: /' "$WORK/err" | head -5
    fi
}
has() { # has FILE PATTERN DESCRIPTION
    if grep -qE -- "$2" "$1"; then ok; else bad "$3: no /$2/ in $(basename "$1")"; sed 's/^/    /' "$1" | head -8; fi
}

for f in "$CLI" "$SERVER"; do
    [ -x "$f" ] || { echo "FAIL: $f missing (make all)"; exit 1; }
done

"$SERVER" --listen 127.0.0.1:0 --port-file "$WORK/port" --calibrate 0 --workers 2 \
    2>"$WORK/server.log" &
PIDS+=($!)
for _ in $(seq 300); do [ -s "$WORK/port" ] && break; sleep 0.1; done
[ -s "$WORK/port" ] || { echo "FAIL: server did not start"; cat "$WORK/server.log"; exit 1; }
URL="http://127.0.0.1:$(cat "$WORK/port")"
A=("$CLI" --server "$URL")

# ---- usage -------------------------------------------------------------------------------
expect 0 "--help" -- "$CLI" --help
has "$WORK/out" "exit codes" "--help"
has "$WORK/out" "130 interrupted" "--help lists the codes"
expect 2 "no command" -- "$CLI"
expect 2 "unknown command" -- "$CLI" frobnicate
expect 2 "bad number" -- "${A[@]}" random --n abc
expect 2 "option of another command" -- "${A[@]}" health --n 5
expect 2 "epsilon and degree" -- "${A[@]}" random --epsilon 1e-3 --degree 3
expect 2 "epsilon out of range" -- "${A[@]}" random --dry-run --epsilon 2
has "$WORK/err" "method.epsilon: must lie strictly between 0 and 1, got 2" "the method contract"
expect 2 "degree 0 given" -- "${A[@]}" random --dry-run --degree 0
has "$WORK/err" "method.degree: must be an integer from 1 to 20, got 0" "a given degree is fixed"
expect 2 "grad without a file" -- "${A[@]}" grad
expect 7 "missing request file" -- "${A[@]}" grad "$WORK/nonexistent.json"

# ---- health, info ------------------------------------------------------------------------
expect 0 "health" -- "${A[@]}" health
has "$WORK/out" "^ok$" "health"
expect 0 "health --ready" -- "${A[@]}" health --ready
expect 0 "info" -- "${A[@]}" info
if /usr/bin/python3 -c 'import json,sys; json.load(open(sys.argv[1]))' "$WORK/out"; then ok; else bad "info is not JSON"; fi
expect 0 "server from the environment" -- env ALTGRAD_SERVER_URL="$URL" "$CLI" health

# ---- random ------------------------------------------------------------------------------
expect 0 "random exact --verify" -- "${A[@]}" random --n 48 --d-model 16 --heads 2 --layers 2 \
    --method exact --verify --batch 2 --causal
has "$WORK/out" "^loss +-?[0-9]" "random summary: loss"
has "$WORK/out" "layer 1 heads 0-1 +exact" "random summary: method per layer and head"
has "$WORK/out" "^timing .*compute" "random summary: timings"
has "$WORK/out" "^grad layer 0 +wq" "random summary: gradient norms"
expect 0 "random approx --verify" -- "${A[@]}" random --n 256 --d-model 16 --heads 2 --layers 1 \
    --method approx --epsilon 1e-3 --verify --scale 0.3
has "$WORK/out" "approx +degree +[0-9]+ rank +[0-9]+" "approx summary: degree and rank"
has "$WORK/out" "^verification .*grad_input [0-9.e-]+" "approx summary: measured error"
err=$(sed -nE 's/^verification .*grad_input ([0-9.e+-]+).*/\1/p' "$WORK/out")
if /usr/bin/python3 -c "import sys; sys.exit(0 if float('$err') < 0.05 else 1)" 2>/dev/null; then ok
else bad "approx grad_input error '$err' not below 0.05"; fi
expect 0 "random --shards 3" -- "${A[@]}" random --n 16 --d-model 8 --heads 2 --layers 1 \
    --batch 5 --shards 3 --loss mse --method exact
has "$WORK/out" "grad_input +\[5, 16, 8\]" "sharded result has the whole batch"
expect 0 "random --async" -- "${A[@]}" random --n 32 --d-model 8 --heads 2 --layers 1 --async
has "$WORK/err" "job .*: done 100%" "async progress lines (stderr not a terminal)"

# ---- grad with request files, JSON and base64 ----------------------------------------------
R=(random --n 24 --d-model 8 --heads 2 --layers 2 --seed 7 --loss mse --method exact --dry-run)
expect 0 "save a b64 request" -- "$CLI" "${R[@]}" --save-request "$WORK/req.json"
expect 0 "save a json request" -- "$CLI" "${R[@]}" --encoding json --save-request "$WORK/reqj.json"
has "$WORK/req.json" '"b64"' "b64 request file"
has "$WORK/reqj.json" '"data"' "json request file"
expect 0 "grad -o" -- "${A[@]}" grad "$WORK/req.json" -o "$WORK/res.json"
has "$WORK/out" "^loss " "grad -o prints a summary"
expect 0 "grad to stdout" -- "${A[@]}" grad "$WORK/reqj.json"
cp "$WORK/out" "$WORK/resj.json"
if /usr/bin/python3 - "$WORK/res.json" "$WORK/resj.json" <<'EOF'; then ok; else bad "JSON and b64 responses differ"; fi
import base64, json, struct, sys
def tensor(t):
    if "b64" in t:
        raw = base64.b64decode(t["b64"]); return list(struct.unpack("<%df" % (len(raw) // 4), raw))
    return t["data"]
a, b = (json.load(open(p)) for p in sys.argv[1:3])
assert abs(a["loss"] - b["loss"]) <= 1e-6 * abs(b["loss"]), (a["loss"], b["loss"])
ga, gb = tensor(a["grad_input"]), tensor(b["grad_input"])
assert len(ga) == len(gb) == 24 * 8
assert max(abs(x - y) for x, y in zip(ga, gb)) <= 1e-6 * max(abs(y) for y in gb)
for la, lb in zip(a["grad_weights"], b["grad_weights"]):
    assert la.keys() == lb.keys()
    for k in la:
        assert max(abs(x - y) for x, y in zip(tensor(la[k]), tensor(lb[k]))) <= 1e-5
EOF

# ---- HTTP errors -------------------------------------------------------------------------
echo '{"model": {}}' >"$WORK/bad.json"
expect 4 "invalid request -> 4" -- "${A[@]}" grad "$WORK/bad.json"
has "$WORK/err" "HTTP 400" "400 reported"
has "$WORK/err" "code [a-z_]+" "server error code reported"
expect 4 "unknown job -> 4" -- "${A[@]}" job status 0123456789abcdef0123456789abcdef
has "$WORK/err" "HTTP 404" "404 reported"
expect 3 "nobody listening -> 3" -- "$CLI" --server http://127.0.0.1:1 --retries 0 health
expect 3 "retries on refused connections" -- "$CLI" --server http://127.0.0.1:1 --retries 2 info
has "$WORK/err" "after 3 attempts" "retry count reported"

# a fake server that is always unavailable: 503 + Retry-After, retried, then exit 5
cat >"$WORK/fake.py" <<'EOF'
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def answer(self):
        body = b'{"error": {"code": "draining", "message": "going away", "field": ""}}'
        self.send_response(503); self.send_header("Retry-After", "1")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    do_GET = do_POST = do_DELETE = answer
    def log_message(self, *a): pass
s = http.server.HTTPServer(("127.0.0.1", 0), H)
open(sys.argv[1], "w").write(str(s.server_address[1]))
s.serve_forever()
EOF
/usr/bin/python3 "$WORK/fake.py" "$WORK/fakeport" &
PIDS+=($!)
for _ in $(seq 100); do [ -s "$WORK/fakeport" ] && break; sleep 0.1; done
FAKE="http://127.0.0.1:$(cat "$WORK/fakeport")"
t0=$(date +%s.%N)
expect 5 "503 after retries -> 5" -- "$CLI" --server "$FAKE" --retries 1 info
t1=$(date +%s.%N)
has "$WORK/err" "going away .*code draining.* after 2 attempts" "503 message, code and attempts"
if /usr/bin/python3 -c "import sys; sys.exit(0 if $t1 - $t0 >= 0.9 else 1)"; then ok; else bad "Retry-After: 1 not honoured"; fi

# a server that accepts connections and never answers: timeouts -> 3, GETs retried
cat >"$WORK/hang.py" <<'EOF'
import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(16)
open(sys.argv[1], "w").write(str(s.getsockname()[1]))
time.sleep(120)
EOF
/usr/bin/python3 "$WORK/hang.py" "$WORK/hangport" &
PIDS+=($!)
for _ in $(seq 100); do [ -s "$WORK/hangport" ] && break; sleep 0.1; done
HANG="http://127.0.0.1:$(cat "$WORK/hangport")"
expect 3 "overall timeout -> 3" -- "$CLI" --server "$HANG" --timeout 0.3 --retries 1 info
has "$WORK/err" "[Tt]imeout.* after 2 attempts" "timeout reported and retried once"

# HTTPS with a certificate made here, and bearer tokens
if command -v openssl >/dev/null && openssl req -x509 -newkey rsa:2048 -nodes -days 2 \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" -subj "/CN=127.0.0.1" \
    -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" >/dev/null 2>&1; then
    echo "cli-test-token" >"$WORK/tokens"
    "$SERVER" --listen 127.0.0.1:0 --port-file "$WORK/tlsport" --calibrate 0 \
        --tls-cert "$WORK/cert.pem" --tls-key "$WORK/key.pem" --tokens-file "$WORK/tokens" \
        2>"$WORK/tls.log" &
    PIDS+=($!)
    for _ in $(seq 300); do [ -s "$WORK/tlsport" ] && break; sleep 0.1; done
    TLS="https://127.0.0.1:$(cat "$WORK/tlsport")"
    expect 0 "https + --cacert + --token" -- "$CLI" --server "$TLS" --cacert "$WORK/cert.pem" \
        --token cli-test-token random --n 8 --d-model 8 --heads 2 --layers 1
    has "$WORK/out" "^loss" "https random summary"
    expect 3 "unknown CA -> 3" -- "$CLI" --server "$TLS" --token cli-test-token info
    has "$WORK/err" "code tls_error" "TLS failure reported"
    expect 4 "no token -> 4" -- "$CLI" --server "$TLS" --cacert "$WORK/cert.pem" info
    has "$WORK/err" "HTTP 401" "401 reported"
    expect 0 "--insecure, token from ALTGRAD_TOKEN" -- env ALTGRAD_TOKEN=cli-test-token \
        "$CLI" --server "$TLS" --insecure info
else
    echo "test_cli: openssl could not make a certificate; HTTPS checks skipped"
fi

# ---- jobs --------------------------------------------------------------------------------
expect 0 "job submit" -- "${A[@]}" job submit "$WORK/req.json"
ID=$(cat "$WORK/out")
[ -n "$ID" ] && ok || bad "job submit printed no id"
expect 0 "job wait" -- "${A[@]}" job wait "$ID" -o "$WORK/jobres.json"
has "$WORK/err" "job $ID: done 100%" "job wait plain progress lines"
if /usr/bin/python3 - "$WORK/jobres.json" "$WORK/res.json" <<'EOF'; then ok; else bad "job result differs from grad"; fi
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
assert abs(a["loss"] - b["loss"]) <= 1e-6 * abs(b["loss"])
EOF
expect 0 "job status" -- "${A[@]}" job status "$ID"
has "$WORK/out" "^$ID done 1.000" "job status line"
expect 0 "job result" -- "${A[@]}" job result "$ID"
has "$WORK/out" '"grad_input"' "job result body"
expect 2 "job without id" -- "${A[@]}" job status

"$CLI" random --n 8192 --d-model 64 --heads 8 --layers 2 --d-ff 0 --method exact --dry-run \
    --save-request "$WORK/slow.json" >/dev/null
expect 0 "job submit (slow)" -- "${A[@]}" job submit "$WORK/slow.json"
SLOW=$(cat "$WORK/out")
expect 0 "job cancel" -- "${A[@]}" job cancel "$SLOW"
expect 6 "job wait on a cancelled job -> 6" -- "${A[@]}" job wait "$SLOW"
has "$WORK/err" "cancelled" "cancelled job reported"

# SIGINT while waiting: exit 130, the job keeps running and the hint says how to cancel it
expect 0 "job submit (slow, interrupted)" -- "${A[@]}" job submit "$WORK/slow.json"
SLOW2=$(cat "$WORK/out")
"${A[@]}" job wait "$SLOW2" >"$WORK/out" 2>"$WORK/err" &
WPID=$!
sleep 0.5
kill -INT "$WPID"
wait "$WPID"
rc=$?
[ "$rc" = 130 ] && ok || bad "interrupted job wait: exit $rc, expected 130"
has "$WORK/err" "job cancel $SLOW2" "interrupt hint"
expect 0 "job status after interrupt" -- "${A[@]}" job status "$SLOW2"
has "$WORK/out" "^$SLOW2 (queued|running|done)" "job still alive after the client was interrupted"
"${A[@]}" job cancel "$SLOW2" >/dev/null 2>&1

# a progress bar when stderr is a terminal (script(1) provides one)
if command -v script >/dev/null; then
    expect 0 "job submit (tty)" -- "${A[@]}" job submit "$WORK/req.json"
    ID2=$(cat "$WORK/out")
    script -qec "$CLI --server $URL job wait $ID2 -o $WORK/tty.json" "$WORK/tty.log" >/dev/null 2>&1
    has "$WORK/tty.log" '\[#+\] 100% done' "progress bar on a terminal"
fi

# ---- the demo ----------------------------------------------------------------------------
if [ -x "$DEMO" ]; then
    t0=$(date +%s.%N)
    expect 0 "train_copy" -- "$DEMO" --server "$URL"
    t1=$(date +%s.%N)
    has "$WORK/out" "decreasing" "demo loss decreasing"
    acc=$(grep '^step' "$WORK/out" | tail -1 | sed -nE 's/.*reversed right +([0-9.]+)%.*/\1/p')
    if /usr/bin/python3 -c "import sys; sys.exit(0 if float('${acc:-0}') >= 90 else 1)"; then ok
    else bad "demo learned only ${acc:-?}% of the reversal"; fi
    sed -n '1p;$p' "$WORK/out"
    /usr/bin/python3 -c "print('train_copy took %.1f s' % ($t1 - $t0))"
    expect 3 "train_copy without a server" -- "$DEMO" --server http://127.0.0.1:1
else
    bad "demo $DEMO not built"
fi

echo "test_cli: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
