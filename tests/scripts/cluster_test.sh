#!/usr/bin/env bash
# Cluster test (issue 7, `make cluster-test`): three altgradd replicas on loopback behind
# Debian's haproxy, configured from deploy/haproxy.cfg (its "@test" lines swapped for
# loopback addresses). build/bench-bin/cluster_load drives ~30 s of mixed sync + async load
# through libaltgrad; in the middle one replica is killed with SIGKILL and restarted. Passes
# when >= 99.9% of requests succeed, every gradient equals an in-process exact computation,
# only jobs of the killed replica were lost (and were resubmitted), HAProxy saw the replica
# fail and come back, and every replica drains and exits 0 on SIGTERM at the end. Everything listens on 127.0.0.1; every process this script
# starts is stopped on exit.
#
# Environment: ALTGRAD_BUILD (build dir, default build), ALTGRAD_SERVER (altgradd path),
# CLUSTER_DURATION (s, default 30), CLUSTER_KILL_AT (s into the load, default 10),
# CLUSTER_DOWN_FOR (s the replica stays dead, default 3), CLUSTER_THREADS (4),
# CLUSTER_RATE (requests/s per thread, 25), CLUSTER_KEEP=1 keeps the work dir.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${ALTGRAD_BUILD:-build}
case "$BUILD" in /*) ;; *) BUILD="$ROOT/$BUILD" ;; esac
SERVER=${ALTGRAD_SERVER:-$BUILD/altgradd}
LOAD=$BUILD/bench-bin/cluster_load
DURATION=${CLUSTER_DURATION:-30}
KILL_AT=${CLUSTER_KILL_AT:-10}
DOWN_FOR=${CLUSTER_DOWN_FOR:-3}
THREADS=${CLUSTER_THREADS:-4}
RATE=${CLUSTER_RATE:-25}
VICTIM=2
export OPENBLAS_NUM_THREADS=1

say() { echo "cluster-test: $*"; }
finish() { # $1 = 0 pass, else fail
    if [ "$1" = 0 ]; then say "1 passed, 0 failed"; else say "0 passed, 1 failed"; fi
    exit "$1"
}
fail() { say "FAIL: $*"; dump_logs; finish 1; }

for tool in haproxy curl ss; do
    command -v "$tool" >/dev/null || { say "FAIL: $tool not found (make deps installs it)"; finish 1; }
done
[ -x "$SERVER" ] || { say "FAIL: no server binary at $SERVER (make all)"; finish 1; }
[ -x "$LOAD" ] || { say "FAIL: no load driver at $LOAD (make all)"; finish 1; }

WORK=$(mktemp -d /tmp/altgrad-cluster.XXXXXX)
declare -a PIDS=()   # replica pids by index 1..3
HAPROXY_PID=""
LOAD_PID=""

cleanup() {
    local p
    for p in "$LOAD_PID" "$HAPROXY_PID" "${PIDS[@]:-}"; do
        [ -n "$p" ] && kill -TERM "$p" 2>/dev/null || true
    done
    for p in "$LOAD_PID" "$HAPROXY_PID" "${PIDS[@]:-}"; do
        [ -n "$p" ] || continue
        for _ in $(seq 1 30); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    if [ "${CLUSTER_KEEP:-0}" = 1 ]; then echo "cluster-test: work dir kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT TERM

dump_logs() {
    local f
    for f in "$WORK"/*.log; do
        [ -e "$f" ] || continue
        echo "---- last lines of $(basename "$f")"
        tail -n 15 "$f"
    done
}

# Free loopback ports, distinct from each other: pick_port VAR sets VAR.
TAKEN=" "
pick_port() {
    local p i
    for i in $(seq 1 200); do
        p=$((20000 + RANDOM % 40000))
        [[ "$TAKEN" == *" $p "* ]] && continue
        if [ -z "$(ss -Htln "sport = :$p" 2>/dev/null)" ]; then
            TAKEN="$TAKEN$p "
            printf -v "$1" '%s' "$p"
            return 0
        fi
    done
    fail "no free loopback port"
}

declare -a PORTS=()
port=""
for i in 1 2 3; do pick_port port; PORTS[$i]=$port; done
pick_port LB_PORT
pick_port STATS_PORT

start_replica() { # $1 = index
    local i=$1
    "$SERVER" --listen "127.0.0.1:${PORTS[$i]}" --node-id "altgrad$i" --workers 1 \
        --queue 64 --calibrate 0 --drain-timeout 2 --log-format text \
        >>"$WORK/altgrad$i.log" 2>&1 &
    PIDS[$i]=$!
}

wait_http() { # $1 = url, $2 = seconds; 0 once it answers 200
    local deadline=$((SECONDS + $2))
    while [ $SECONDS -lt "$deadline" ]; do
        [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$1" 2>/dev/null)" = 200 ] && return 0
        sleep 0.1
    done
    return 1
}

# Per-server rows of the HAProxy stats CSV: name status total-sessions check-downs
# connection-retries redispatches.
server_stats() {
    curl -s --max-time 2 "http://127.0.0.1:$STATS_PORT/stats;csv" |
        awk -F, '$1 == "altgrad" && $2 ~ /^altgrad[0-9]+$/ {print $2, $18, $8, $23, $16, $17}'
}

for i in 1 2 3; do start_replica "$i"; done
for i in 1 2 3; do
    wait_http "http://127.0.0.1:${PORTS[$i]}/health/ready" 20 || fail "replica $i did not become ready"
done

# deploy/haproxy.cfg with its "@test" lines made local.
CFG="$WORK/haproxy.cfg"
sed -e '/# @test: removed/d' \
    -e "s|^\([[:space:]]*bind\) :8080 .*# @test: bind|\1 127.0.0.1:$LB_PORT|" \
    -e "s|^\([[:space:]]*bind\) :8404 .*# @test: stats|\1 127.0.0.1:$STATS_PORT|" \
    -e 's| resolvers docker init-addr [^ ]*\(.*\)# @test: default-server| \1|' \
    -e "s|^\([[:space:]]*server altgrad1\) altgrad1:8080 .*# @test: server|\1 127.0.0.1:${PORTS[1]}|" \
    -e "s|^\([[:space:]]*server altgrad2\) altgrad2:8080 .*# @test: server|\1 127.0.0.1:${PORTS[2]}|" \
    -e "s|^\([[:space:]]*server altgrad3\) altgrad3:8080 .*# @test: server|\1 127.0.0.1:${PORTS[3]}|" \
    "$ROOT/deploy/haproxy.cfg" >"$CFG"
if grep -n -E '^[[:space:]]*[^#[:space:]].*(@test|resolvers docker|altgrad[0-9]:8080|bind :)' "$CFG"; then
    fail "deploy/haproxy.cfg has @test lines this script does not know how to rewrite"
fi
haproxy -c -q -f "$CFG" >"$WORK/haproxy-check.log" 2>&1 || { cat "$WORK/haproxy-check.log"; fail "generated haproxy config is invalid"; }
haproxy -db -f "$CFG" >>"$WORK/haproxy.log" 2>&1 &
HAPROXY_PID=$!

# All three replicas UP in HAProxy's eyes (health checks on /health/ready).
deadline=$((SECONDS + 20))
until [ "$(server_stats | awk '$2 == "UP"' | wc -l)" = 3 ]; do
    [ $SECONDS -lt $deadline ] || fail "HAProxy did not see 3 replicas UP: $(server_stats | tr '\n' ';')"
    sleep 0.2
done
say "3 replicas (ports ${PORTS[1]} ${PORTS[2]} ${PORTS[3]}) behind haproxy on 127.0.0.1:$LB_PORT"
wait_http "http://127.0.0.1:$LB_PORT/health/ready" 5 || fail "balancer not ready"

say "load for ${DURATION}s ($THREADS threads x $RATE req/s, 30% async jobs); SIGKILL altgrad$VICTIM at ${KILL_AT}s, restart after ${DOWN_FOR}s"
timeout -s KILL $((DURATION + 120)) "$LOAD" --url "http://127.0.0.1:$LB_PORT" \
    --duration "$DURATION" --threads "$THREADS" --rate "$RATE" --async 0.3 --hold 1 \
    --lost-node "altgrad$VICTIM" >"$WORK/load.out" 2>"$WORK/load.log" &
LOAD_PID=$!

sleep "$KILL_AT"
kill -0 "$LOAD_PID" 2>/dev/null || { cat "$WORK/load.out"; fail "load driver ended before the kill"; }
kill -KILL "${PIDS[$VICTIM]}"
wait "${PIDS[$VICTIM]}" 2>/dev/null || true
say "killed altgrad$VICTIM (pid ${PIDS[$VICTIM]}) with SIGKILL"
sleep "$DOWN_FOR"
start_replica "$VICTIM"
wait_http "http://127.0.0.1:${PORTS[$VICTIM]}/health/live" 20 || fail "altgrad$VICTIM did not restart"
say "restarted altgrad$VICTIM (pid ${PIDS[$VICTIM]})"

load_rc=0
wait "$LOAD_PID" || load_rc=$?
LOAD_PID=""
cat "$WORK/load.out"
[ -s "$WORK/load.log" ] && { echo "---- load driver stderr"; tail -n 20 "$WORK/load.log"; }

# Give HAProxy a moment to see the restarted replica UP again.
deadline=$((SECONDS + 10))
until [ "$(server_stats | awk '$2 == "UP"' | wc -l)" = 3 ] || [ $SECONDS -ge $deadline ]; do sleep 0.2; done
echo "haproxy servers: name status sessions check-downs conn-retries redispatches"
server_stats | sed 's/^/  /'

[ "$load_rc" = 0 ] || fail "load driver exit status $load_rc"
# HAProxy's evidence that the kill bit: the victim was marked down (it stays dead for longer
# than 2 failed checks with the default CLUSTER_DOWN_FOR) or at least refused connections.
downs=$(server_stats | awk -v v="altgrad$VICTIM" '$1 == v {print $4 + $5}')
[ "${downs:-0}" -ge 1 ] || fail "HAProxy never saw altgrad$VICTIM fail: the kill did not bite"
[ "$(server_stats | awk '$2 == "UP"' | wc -l)" = 3 ] || fail "not every replica is UP at the end"
for i in 1 2 3; do
    kill -0 "${PIDS[$i]}" 2>/dev/null || fail "altgrad$i died during the test"
done
# Every replica, the restarted one included, drains and exits 0 on SIGTERM (a sanitizer
# build's error or leak report makes that exit status non-zero).
for i in 1 2 3; do kill -TERM "${PIDS[$i]}"; done
for i in 1 2 3; do
    for _ in $(seq 1 150); do kill -0 "${PIDS[$i]}" 2>/dev/null || break; sleep 0.1; done
    kill -0 "${PIDS[$i]}" 2>/dev/null && fail "altgrad$i still running 15 s after SIGTERM"
    rc=0
    wait "${PIDS[$i]}" || rc=$?
    PIDS[$i]=""
    [ "$rc" = 0 ] || fail "altgrad$i exited with status $rc on SIGTERM"
done
say "all replicas drained and exited 0 on SIGTERM"
finish 0
