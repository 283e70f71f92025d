#!/usr/bin/env bash
# Exact gradients benchmark (make bench): altgrad vs PyTorch's CPU autograd, same model and
# thread count. Writes $BENCH_OUT/exact.csv and $BENCH_OUT/exact_torch.csv, prints a table.
# Model: d_model 64, 8 heads, 2 layers, d_ff 256, layernorm, GELU, residual, mse; n in
# {1024, 4096, 16384}, causal and not; plus one layer at n = 32768 for peak memory.
set -euo pipefail

BUILD=${ALTGRAD_BUILD:-build}
OUT=${BENCH_OUT:-$BUILD/bench}
BIN=$BUILD/bench-bin/bench_exact
THREADS=${BENCH_THREADS:-2}
SIZES=${BENCH_SIZES:-1024 4096 16384}   # override for a quick check, e.g. BENCH_SIZES=1024
MEM_N=${BENCH_MEM_N-32768}              # the one-layer memory run; empty skips it
mkdir -p "$OUT"
[ -x "$BIN" ] || { echo "bench_exact: $BIN not built (make all)" >&2; exit 1; }
export OPENBLAS_NUM_THREADS=1

. "$(dirname "$0")/openblas_core.sh"
openblas_pick_core "$BIN"

CSV=$OUT/exact.csv
TORCH=$OUT/exact_torch.csv
"$BIN" --header > "$CSV"
/usr/bin/python3 tests/bench/torch_baseline.py --header > "$TORCH"

for n in $SIZES; do
  for causal in 0 1; do
    reps=3; [ "$n" -ge 16384 ] && reps=2
    "$BIN" "$n" "$causal" 2 "$THREADS" 64 8 256 1 "$reps" | tee -a "$CSV"
    # torch_baseline.py writes a "skipped" row where torch would need more than ~10 GB. Debian's
    # torch calls the same OpenBLAS: give it the same kernels and THREADS BLAS threads.
    OPENBLAS_NUM_THREADS=$THREADS /usr/bin/python3 tests/bench/torch_baseline.py "$n" "$causal" 2 \
      "$THREADS" | tee -a "$TORCH"
  done
done
# peak memory of one layer at n = 32768 (goal: < 256 MiB)
[ -z "$MEM_N" ] || "$BIN" "$MEM_N" 0 1 "$THREADS" 64 8 256 1 1 | tee -a "$CSV"

echo
echo "altgrad exact vs PyTorch float32 autograd, $THREADS threads ($CSV, $TORCH)"
awk -F, 'NR == FNR { if (FNR > 1) { t[$1 "," $2 "," $3] = $5; s[$1 "," $2 "," $3] = $7; r[$1 "," $2 "," $3] = $6 } next }
  FNR == 1 { printf "%7s %6s %6s %10s %9s %10s %13s %11s %10s %12s %10s\n", "n", "causal",
             "layers", "time_s", "rss_MiB", "attn_GF/s", "in_model_GF/s", "sgemm_GF/s",
             "torch_s", "torch_MiB", "speedup"; next }
  { k = $1 "," $2 "," $3
    ts = (k in t && t[k] != "") ? sprintf("%.3f", t[k]) : "-"
    tr = (k in r && r[k] != "") ? sprintf("%.0f", r[k]) : "-"
    sp = (k in t && t[k] != "") ? sprintf("%.1fx", t[k] / $9) : (k in s ? "torch skipped" : "-")
    printf "%7s %6s %6s %10.3f %9.1f %10.1f %13.1f %11.1f %10s %12s %10s\n", $1, $2, $3, $9,
           $10, $12, $13, $14, ts, tr, sp }' "$TORCH" "$CSV"
