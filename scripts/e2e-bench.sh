#!/usr/bin/env bash
# End-to-end throughput: an axum hello-world on loopback under wrk, bare vs behind tollgate's
# RateLimitLayer (per IP, never refusing, headers on) vs behind tower_governor (same, with
# use_headers), runs alternated so that drifts of a shared machine hit all alike. A control,
# bare_with_headers, writes tollgate's two header fields as constants without any limiter:
# what the extra bytes alone cost on the wire; tollgate_quiet is tollgate without headers on
# allowed responses.
#
#   scripts/e2e-bench.sh            # ROUNDS=5 DURATION=10s CONNECTIONS=32 by default
#
# Prints each run, then the median requests/s per variant and its ratio to bare.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
PORT=${PORT:-3100}
MODES=(bare bare_with_headers tollgate tollgate_quiet tower_governor)

if ! command -v wrk >/dev/null; then
  apt-get update && apt-get install -y wrk
fi
cargo build --release --example e2e_server
server=target/release/examples/e2e_server

results=$(mktemp)
trap 'rm -f "$results"; kill "${pid:-}" 2>/dev/null || true' EXIT

for round in $(seq "$ROUNDS"); do
  for mode in "${MODES[@]}"; do
    "$server" "$mode" "$PORT" &
    pid=$!
    for _ in $(seq 100); do
      curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break
      sleep 0.05
    done
    # Warm up, then measure.
    wrk -t1 -c"$CONNECTIONS" -d2s "http://127.0.0.1:$PORT/" >/dev/null
    rps=$(wrk -t1 -c"$CONNECTIONS" -d"$DURATION" "http://127.0.0.1:$PORT/" | awk '/Requests\/sec/ {print $2}')
    kill "$pid"; wait "$pid" 2>/dev/null || true
    echo "round $round  $mode  $rps req/s"
    echo "$mode $rps" >> "$results"
  done
done

echo
python3 - "$results" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    mode, rps = line.split()
    runs.setdefault(mode, []).append(float(rps))
bare = statistics.median(runs["bare"])
for mode, values in runs.items():
    median = statistics.median(values)
    print(f"{mode:15} median {median:10.0f} req/s   {median / bare:5.3f} x bare   runs {', '.join(f'{v:.0f}' for v in values)}")
PY
