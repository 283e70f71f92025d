#!/usr/bin/env bash
# The backward routes side by side (make bench; docs/paper_route.md): exact, features and paper
# for one head of d_head 8 at R = 1, one thread, fixed degrees, causal and not. Per row: time
# (forward + backward, and the backward alone), CPU time, peak RSS, the gradients' error against
# exact at equal degree. Writes $BENCH_OUT/routes.csv, plots routes.png (time and error against
# the degree) and prints the paper/features cost ratio.
#
#   BENCH_ROUTES_NS        sequence lengths (default "4096 16384")
#   BENCH_ROUTES_DEGREES   degrees (default "3 4 5 6")
set -euo pipefail

BUILD=${ALTGRAD_BUILD:-build}
OUT=${BENCH_OUT:-$BUILD/bench}
BIN=$BUILD/bench-bin/bench_routes
NS=${BENCH_ROUTES_NS:-"4096 16384"}
DEGREES=${BENCH_ROUTES_DEGREES:-"3 4 5 6"}
mkdir -p "$OUT" "$OUT/routes_ref"
[ -x "$BIN" ] || { echo "bench_routes: $BIN not built (make all)" >&2; exit 1; }
export OPENBLAS_NUM_THREADS=1

. "$(dirname "$0")/openblas_core.sh"
openblas_pick_core "$BIN"

CSV=$OUT/routes.csv
"$BIN" --header > "$CSV"
for n in $NS; do
  reps=3; [ "$n" -ge 16384 ] && reps=2
  for causal in 0 1; do
    "$BIN" "$n" "$causal" exact 0 "$OUT/routes_ref" "$reps" | tee -a "$CSV"
    for g in $DEGREES; do
      "$BIN" "$n" "$causal" features "$g" "$OUT/routes_ref" "$reps" | tee -a "$CSV"
      "$BIN" "$n" "$causal" paper "$g" "$OUT/routes_ref" "$reps" | tee -a "$CSV"
    done
  done
done
rm -rf "$OUT/routes_ref"

# ---- plot (CPU time: one thread, least inflated by other jobs) ------------------------------
PLOT=$OUT/routes_plot
mkdir -p "$PLOT"
nmax=$(printf '%s\n' $NS | sort -n | tail -1)
for c in 0 1; do
  for r in features paper; do
    awk -F, -v r=$r -v c=$c -v n=$nmax 'NR > 1 && $4 == r && $3 == c && $1 == n { print $5, $11, $14, $8 }' \
      "$CSV" > "$PLOT/${r}_$c.dat"
  done
  awk -F, -v c=$c -v n=$nmax 'NR > 1 && $4 == "exact" && $3 == c && $1 == n { print $11 }' "$CSV" \
    > "$PLOT/exact_$c.dat"
done
if command -v gnuplot > /dev/null; then
  ex0=$(cat "$PLOT/exact_0.dat"); ex1=$(cat "$PLOT/exact_1.dat")
  gnuplot -e "outdir='$OUT'; pdir='$PLOT'; nmax=$nmax; ex0=${ex0:-0}; ex1=${ex1:-0}" \
    tests/bench/bench_routes.gp
  echo "plot: $OUT/routes.png"
fi

# ---- summary -------------------------------------------------------------------------------
echo
echo "routes, one head of d_head 8, R = 1, one thread, OpenBLAS ${OPENBLAS_CORETYPE:-$("$BIN" --corename)} ($CSV)"
awk -F, 'NR > 1 { k = $1 "," $3 "," $5
    if ($4 == "exact") { ex[$1 "," $3] = $11; next }
    if (!(k in seen)) { seen[k] = 1; order[++nk] = k }
    c[k "," $4] = $11; b[k "," $4] = $12; e[k "," $4] = $14; m[k "," $4] = $13
    fl[k "," $4] = $18; rank[k] = $6; eb[k] = $8 }
  END {
    printf "%6s %6s %2s %5s %8s | %8s %8s %8s | %6s %6s %6s | %8s %8s %6s | %6s %6s\n", "n",
           "causal", "g", "rank", "bound", "exact_s", "feat_s", "paper_s", "p/f", "p/f_bw",
           "model", "feat_err", "pap_err", "f/p", "f_MiB", "p_MiB"
    for (i = 1; i <= nk; i++) { k = order[i]; split(k, f, ",")
      printf "%6s %6s %2s %5s %8s | %8s %8.4f %8.4f | %5.2fx %5.2fx %5.2fx | %8s %8s %5.1fx | %6s %6s\n",
        f[1], f[2], f[3], rank[k], eb[k], ex[f[1] "," f[2]], c[k ",features"], c[k ",paper"],
        c[k ",paper"] / c[k ",features"], b[k ",paper"] / b[k ",features"],
        fl[k ",paper"] / fl[k ",features"], e[k ",features"], e[k ",paper"],
        (e[k ",paper"] > 0 ? e[k ",features"] / e[k ",paper"] : 0), m[k ",features"], m[k ",paper"] }
    print "(seconds: best process CPU time, forward + backward; p/f: paper / features; p/f_bw:"
    print " the backward alone; model: the cost model flop ratio; f/p: features error / paper error)"
  }' "$CSV"
