#!/usr/bin/env bash
# Server overhead and the threads policy (make bench).
#
# 1. Tiny jobs (n 16, d_model 16, 1 layer, exact, base64): wrk on loopback, 64 connections for
#    BENCH_SERVER_SECONDS (default 10): requests/s, p50/p99 latency. The server's own view from
#    /metrics: worker time per job (job_duration_seconds: decode + compute + encode) and core
#    time per job (compute_seconds_total). Overhead = p50 at 1 connection - worker time per job.
# 2. Threads policy: one large job alone, then two at once; the X-Altgrad-Threads header says
#    how many cores each job's core ran on, beside its wall time.
# Writes $BENCH_OUT/server.csv.
set -euo pipefail

BUILD=${ALTGRAD_BUILD:-build}
OUT=${BENCH_OUT:-$BUILD/bench}
SECONDS_RUN=${BENCH_SERVER_SECONDS:-10}
SERVER=$BUILD/altgradd
CLI=$BUILD/altgrad
mkdir -p "$OUT"
command -v wrk >/dev/null || { echo "bench_server: wrk not installed (make deps)" >&2; exit 1; }

WORK=$(mktemp -d)
PID=""
cleanup() {
  [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

"$SERVER" --listen 127.0.0.1:0 --port-file "$WORK/port" --queue 256 2>"$WORK/server.log" &
PID=$!
for _ in $(seq 1 100); do [ -s "$WORK/port" ] && break; sleep 0.05; done
PORT=$(cat "$WORK/port")
URL=http://127.0.0.1:$PORT
CORES=$(curl -s "$URL/v1/info" | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["cores"])')

"$CLI" random --n 16 --d-model 16 --heads 2 --layers 1 --method exact --dry-run \
  --save-request "$WORK/tiny.json" >/dev/null
cat >"$WORK/post.lua" <<EOF
local f = io.open("$WORK/tiny.json", "rb")
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
EOF

metric() { # metric NAME-PREFIX: the sum of every sample whose name starts with it
  curl -s "$URL/metrics" | awk -v m="$1" 'index($1, m) == 1 { s += $2 } END { printf "%.9g\n", s }'
}

run_wrk() { # run_wrk CONNECTIONS THREADS -> "req_per_s p50_ms p99_ms"
  wrk -t"$2" -c"$1" -d"${SECONDS_RUN}s" --latency -s "$WORK/post.lua" "$URL/v1/gradients" \
    >"$WORK/wrk.txt"
  awk '
    function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0;
                     if (v ~ /s$/) return v * 1000; return v }
    /Requests\/sec/ { rps = $2 }
    $1 == "50%" { p50 = ms($2) }
    $1 == "99%" { p99 = ms($2) }
    / Non-2xx/ { bad = $NF }
    END { printf "%s %.3f %.3f %s\n", rps, p50, p99, bad == "" ? 0 : bad }' "$WORK/wrk.txt"
}

jobs0=$(metric 'altgrad_job_duration_seconds_count')
worker0=$(metric 'altgrad_job_duration_seconds_sum')
core0=$(metric 'altgrad_compute_seconds_total')
read -r rps64 p50_64 p99_64 bad64 < <(run_wrk 64 2)
jobs1=$(metric 'altgrad_job_duration_seconds_count')
worker1=$(metric 'altgrad_job_duration_seconds_sum')
core1=$(metric 'altgrad_compute_seconds_total')
read -r rps1 p50_1 p99_1 bad1 < <(run_wrk 1 1)
jobs2=$(metric 'altgrad_job_duration_seconds_count')
worker2=$(metric 'altgrad_job_duration_seconds_sum')

per_job() { awk -v a="$1" -v b="$2" -v n0="$3" -v n1="$4" 'BEGIN { printf "%.4f", (b - a) / (n1 - n0) * 1000 }'; }
worker_ms=$(per_job "$worker0" "$worker1" "$jobs0" "$jobs1")
core_ms=$(per_job "$core0" "$core1" "$jobs0" "$jobs1")
worker1_ms=$(per_job "$worker1" "$worker2" "$jobs1" "$jobs2")
overhead=$(awk -v p="$p50_1" -v w="$worker1_ms" 'BEGIN { printf "%.3f", p - w }')

CSV=$OUT/server.csv
echo "case,connections,req_per_s,p50_ms,p99_ms,non_2xx,worker_ms_per_job,core_ms_per_job,overhead_ms,threads,wall_s" >"$CSV"
echo "tiny,64,$rps64,$p50_64,$p99_64,$bad64,$worker_ms,$core_ms,,," >>"$CSV"
echo "tiny,1,$rps1,$p50_1,$p99_1,$bad1,$worker1_ms,,$overhead,," >>"$CSV"

# Threads policy: a job large enough to run a second or so on this machine.
"$CLI" random --n 4096 --d-model 64 --heads 8 --layers 1 --method exact --dry-run \
  --save-request "$WORK/large.json" >/dev/null
large() { # large TAG: POST the large job, print "threads wall_s"
  curl -s -o /dev/null -D "$WORK/h.$1" -w '%{time_total}\n' -H 'Content-Type: application/json' \
    --data-binary @"$WORK/large.json" "$URL/v1/gradients" >"$WORK/t.$1"
  printf '%s %s\n' "$(awk 'tolower($1) == "x-altgrad-threads:" { print $2 + 0 }' "$WORK/h.$1")" \
    "$(cat "$WORK/t.$1")"
}
read -r t_alone w_alone < <(large alone)
large a >"$WORK/r.a" &
A=$!
large b >"$WORK/r.b" &
B=$!
wait "$A" "$B"
read -r t_a w_a <"$WORK/r.a"
read -r t_b w_b <"$WORK/r.b"
echo "large_alone,1,,,,,,,,$t_alone,$w_alone" >>"$CSV"
echo "large_concurrent_a,2,,,,,,,,$t_a,$w_a" >>"$CSV"
echo "large_concurrent_b,2,,,,,,,,$t_b,$w_b" >>"$CSV"

echo "server bench ($CSV; $CORES cores, wrk ${SECONDS_RUN}s per row)"
printf '  tiny jobs, 64 connections: %s req/s, p50 %s ms, p99 %s ms, non-2xx %s\n' \
  "$rps64" "$p50_64" "$p99_64" "$bad64"
printf '  tiny jobs, 1 connection:   %s req/s, p50 %s ms, p99 %s ms\n' "$rps1" "$p50_1" "$p99_1"
printf '  per job on a worker: %s ms (core %s ms); overhead at 1 connection = p50 - worker = %s ms\n' \
  "$worker1_ms" "$core_ms" "$overhead"
printf '  threads policy: a large job alone ran on %s cores in %s s; two at once: %s and %s cores (%s s, %s s)\n' \
  "$t_alone" "$w_alone" "$t_a" "$t_b" "$w_a" "$w_b"
