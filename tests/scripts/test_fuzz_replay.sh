#!/bin/bash
# Replays every fuzz target's seeds and past crashes (tests/fuzz/regress/<target>/) through
# the target built with the project's compiler ($ALTGRAD_BUILD/fuzz-replay/, part of `make
# all`; sanitised in the asan build). `make fuzz` is the clang/libFuzzer side.
set -u
BUILD=${ALTGRAD_BUILD:-build}
cd "$(dirname "$0")/../.."
fail=0
for src in tests/fuzz/fuzz_*.c; do
    t=$(basename "$src" .c)
    name=${t#fuzz_}
    bin=$BUILD/fuzz-replay/$t
    [ -x "$bin" ] || { echo "FAIL: $bin not built (make all)"; fail=1; continue; }
    dirs=(tests/fuzz/seeds/"$name")
    [ -d tests/fuzz/regress/"$name" ] && dirs+=(tests/fuzz/regress/"$name")
    if ! OPENBLAS_NUM_THREADS=1 timeout 300 "$bin" "${dirs[@]}"; then
        echo "FAIL: $t on ${dirs[*]}"
        fail=1
    fi
done
[ $fail -eq 0 ] && echo "test_fuzz_replay: ok"
exit $fail
