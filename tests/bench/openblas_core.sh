# Sourced by the bench scripts: pick OpenBLAS's kernels for this CPU. $1: a bench binary that
# answers --corename. Debian's OpenBLAS 0.3.21 (DYNAMIC_ARCH) does not know recent Xeons (CPU
# model 207 and up) and falls back to its SSE3 "Prescott" kernels, 3-4x slower; every baseline
# (exact, torch, which loads the same library) should be a fast one. OPENBLAS_CORETYPE is read
# when the library loads, so it is exported for the processes the script starts. altgradd
# makes the same choice for itself (server/blas.c).
openblas_pick_core() {
  if [ -z "${OPENBLAS_CORETYPE:-}" ] && [ "$("$1" --corename)" = "Prescott" ]; then
    if grep -qw avx512_bf16 /proc/cpuinfo; then export OPENBLAS_CORETYPE=Cooperlake
    elif grep -qw avx512f /proc/cpuinfo; then export OPENBLAS_CORETYPE=SkylakeX
    elif grep -qw avx2 /proc/cpuinfo; then export OPENBLAS_CORETYPE=Haswell
    fi
    echo "OpenBLAS detected Prescott; using OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-Prescott}"
  fi
}
