#!/usr/bin/env bash
# Wire-format throughput and peak RSS for one 16M-float tensor (make bench):
# request decode as JSON numbers (lifted), as JSON numbers through jansson alone (for
# comparison), and as base64; response encode as JSON numbers and as base64.
# One process per row, so each peak RSS is that mode's own. CSV: $BENCH_OUT/proto.csv.
set -euo pipefail
BUILD=${ALTGRAD_BUILD:-build}
BIN=$BUILD/bench-bin/bench_proto
OUT=${BENCH_OUT:-$BUILD/bench}
N=${PROTO_BENCH_ELEMENTS:-16777216}
mkdir -p "$OUT"
csv=$OUT/proto.csv
echo "op,mode,elements,body_bytes,seconds,MB_per_s,rss_before_MB,peak_rss_MB,peak_over_body" >"$csv"
for m in b64 json json_jansson; do "$BIN" decode "$m" "$N" >>"$csv"; done
for m in b64 json; do "$BIN" encode "$m" "$N" >>"$csv"; done
column -s, -t <"$csv"
