#!/bin/bash
# `make valgrind-test`: the server integration tests with every altgradd they start running
# under valgrind memcheck. Passes when every server process that exited ended its log with
# zero bytes definitely and indirectly lost and zero memcheck errors (invalid reads/writes,
# uninitialised jumps), and every test passed. Logs: $ALTGRAD_BUILD/valgrind/vg.<pid>.log.
#
# The server under test is $ALTGRAD_SERVER (an unsanitised build: ASan and valgrind do not
# mix).
set -u
cd "$(dirname "$0")/../.."
BUILD=${ALTGRAD_BUILD:-build/valgrind}
REAL=$(readlink -f "${ALTGRAD_SERVER:-$BUILD/altgradd}")
command -v valgrind >/dev/null || { echo "valgrind-test: valgrind is not installed"; exit 1; }
out=$(readlink -f "$BUILD")/valgrind
rm -rf "$out"
mkdir -p "$out"
wrapper=$out/altgradd-vg
cat > "$wrapper" <<WRAP
#!/bin/sh
exec valgrind --tool=memcheck --leak-check=full --show-leak-kinds=definite,indirect \
  --errors-for-leak-kinds=definite,indirect --num-callers=30 \
  --log-file=$out/vg.%p.log "$REAL" "\$@"
WRAP
chmod +x "$wrapper"

# Valgrind emulates AVX2 but not AVX-512, and no re-exec (server/blas.c) under valgrind.
export OPENBLAS_NUM_THREADS=1 OPENBLAS_CORETYPE=Haswell ALTGRAD_SERVER=$wrapper
export ALTGRAD_UNDER_VALGRIND=1   # faults.py: smaller jobs, so that drains finish in time
fail=0
timing=0
# run [--timing] CMD...: --timing marks suites whose assertions on latency and deadlines do
# not hold at valgrind's 20-50x slowdown; their servers' leak verdicts count, their test
# failures are only reported.
run() {
    local soft=0
    if [ "$1" = --timing ]; then soft=1; shift; fi
    echo "== valgrind: $*"
    local t0=$SECONDS n=$((n_run + 1))
    n_run=$n
    if ! "$@" > "$out/test.$n.log" 2>&1; then
        if [ $soft -eq 1 ]; then
            echo "   timing assertions failed under valgrind (not counted):"
            grep -E "^[^ ]+:[0-9]+:F:" "$out/test.$n.log" | head -5 | sed 's/^/     /'
            timing=$((timing + 1))
        else
            echo "FAILED under valgrind: $*"
            tail -30 "$out/test.$n.log"
            fail=1
        fi
    fi
    echo "   ($((SECONDS - t0)) s)"
}
n_run=0
run "$BUILD/tests/test_server_http"
run --timing "$BUILD/tests/test_server_ops"
run --timing "$BUILD/tests/test_server_compute"
run /usr/bin/python3 tests/scripts/bad_requests.py
run /usr/bin/python3 tests/scripts/faults.py
run /usr/bin/python3 tests/scripts/security.py
run /usr/bin/python3 tests/load/load.py --seconds 15 --warmup 5 --connections 8 \
    --rss-tolerance 100
run bash tests/scripts/test_server_clients.sh

# Every server's verdict.
n=0; clean=0; nosum=0; def=0; ind=0; errs=0
for f in "$out"/vg.*.log; do
    [ -e "$f" ] || continue
    n=$((n + 1))
    if ! grep -q "ERROR SUMMARY" "$f"; then
        nosum=$((nosum + 1)); continue   # killed (SIGKILL) or still running: no verdict
    fi
    d=$(grep -o "definitely lost: [0-9,]* bytes" "$f" | tr -dc 0-9); d=${d:-0}
    i=$(grep -o "indirectly lost: [0-9,]* bytes" "$f" | tr -dc 0-9); i=${i:-0}
    e=$(grep -o "ERROR SUMMARY: [0-9,]* errors" "$f" | tr -dc 0-9); e=${e:-0}
    def=$((def + d)); ind=$((ind + i)); errs=$((errs + e))
    if [ "$d" -eq 0 ] && [ "$i" -eq 0 ] && [ "$e" -eq 0 ]; then
        clean=$((clean + 1))
    else
        echo "memcheck: $f: definitely $d, indirectly $i bytes lost, $e errors"
        grep -A25 "definitely lost in\|indirectly lost in\|Invalid \|uninitialised" "$f" | head -60
    fi
done
echo "valgrind-test: $n altgradd processes, $clean clean, $nosum without a verdict (killed);" \
     "definitely lost $def bytes, indirectly lost $ind bytes, $errs memcheck errors;" \
     "$timing suites with timing failures under valgrind"
[ "$n" -gt 0 ] || fail=1
[ "$def" -eq 0 ] && [ "$ind" -eq 0 ] && [ "$errs" -eq 0 ] || fail=1
[ $fail -eq 0 ] && echo "valgrind-test: ok" || echo "valgrind-test: FAILED"
exit $fail
