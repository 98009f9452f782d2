#!/usr/bin/env bash
# End to end: an axum hello-world on loopback under wrk, measured as the server's CPU time per
# request (utime + stime from /proc, server pinned to core 0 with taskset, wrk to core 1),
# which varies by about ±2% where requests/s swings by ±15% on these shared machines.
#
# Variants, alternated round by round so that drifts of the machine hit all alike:
#   bare               axum hello-world
#   bare_with_headers  the control: no limiter, tollgate's two header fields written as
#                      constants (what the bytes alone cost)
#   tollgate           a per-IP limit that never refuses, headers on
#   tollgate_quiet     the same, no headers on allowed responses
#   tower_governor     tower_governor's per-IP limit with use_headers
#
#   scripts/e2e-bench.sh            # ROUNDS=5 DURATION=8s CONNECTIONS=32 by default
#   MODES="bare bare_with_headers tollgate" ROUNDS=15 scripts/e2e-bench.sh
#                                   # some variants only, more rounds (bare always runs)
#
# Prints each run, then per variant the median CPU µs per request, the medians of its per-round
# ratios to bare and to the control, and the median requests/s for reference.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-8s}
CONNECTIONS=${CONNECTIONS:-32}
PORT=${PORT:-3100}
read -r -a MODES <<<"${MODES:-bare bare_with_headers tollgate tollgate_quiet tower_governor}"
[[ " ${MODES[*]} " == *" bare "* ]] || MODES=(bare "${MODES[@]}")
TICK=$(getconf CLK_TCK)

if ! command -v wrk >/dev/null; then
  apt-get update && apt-get install -y wrk
fi
cargo build --release -p tests-integration --example e2e_server
server=target/release/examples/e2e_server

results=$(mktemp)
trap 'rm -f "$results"; kill "${pid:-}" 2>/dev/null || true' EXIT

source scripts/e2e-run.sh

for round in $(seq "$ROUNDS"); do
  for mode in "${MODES[@]}"; do
    run_server "$server" "$mode"
    printf 'round %s  %-17s %8.3f µs CPU/request  %9.0f req/s\n' "$round" "$mode" "$us" "$rps"
    echo "$mode $us $rps" >> "$results"
  done
done

echo
python3 - "$results" <<'PY'
import statistics, sys
cpu, rps, rounds = {}, {}, []
for line in open(sys.argv[1]):
    mode, us, r = line.split()
    cpu.setdefault(mode, []).append(float(us))
    rps.setdefault(mode, []).append(float(r))
# Ratios within each round (the variants of one round ran seconds apart, so a drift of the
# machine hits them alike), then their median over the rounds.
n = len(cpu["bare"])
def paired(mode, reference):
    return statistics.median(cpu[mode][i] / cpu[reference][i] for i in range(n))
for mode in cpu:
    m = statistics.median(cpu[mode])
    control = (f"  {paired(mode, 'bare_with_headers'):5.3f} x control"
               if "bare_with_headers" in cpu else "")
    print(f"{mode:17} median {m:6.3f} µs CPU/request  {paired(mode, 'bare'):5.3f} x bare"
          f"{control} (medians of per-round ratios)"
          f"  ({statistics.median(rps[mode]):8.0f} req/s)  runs {', '.join(f'{v:.3f}' for v in cpu[mode])}")
PY
