#!/usr/bin/env bash
# End to end, two builds side by side: the e2e_server of this tree and another one (an earlier
# commit's, built in a worktree of its own), their variants interleaved in every round so that
# the machine's drifts hit both alike. CPU per request as in scripts/e2e-bench.sh (server pinned
# to core 0, wrk to core 1); prints each run, then the medians of the per-round ratios.
#
#   git worktree add /tmp/old 40f6d1c && (cd /tmp/old && cargo build --release --example e2e_server)
#   scripts/e2e-compare.sh /tmp/old/target/release/examples/e2e_server   # ROUNDS=9 DURATION=6s
set -euo pipefail
cd "$(dirname "$0")/.."
old=${1:?the e2e_server of the other build}
ROUNDS=${ROUNDS:-9}
DURATION=${DURATION:-6s}
PORT=${PORT:-3100}
CONNECTIONS=${CONNECTIONS:-32}
TICK=$(getconf CLK_TCK)
command -v wrk >/dev/null || { apt-get update && apt-get install -y wrk; }
cargo build --release -p tests-integration --example e2e_server
new=target/release/examples/e2e_server
VARIANTS=("new bare_with_headers" "new tollgate" "old bare_with_headers" "old tollgate" "new tollgate_quiet" "old tollgate_quiet")

results=$(mktemp)
trap 'rm -f "$results"; kill "${pid:-}" 2>/dev/null || true' EXIT
source scripts/e2e-run.sh

for round in $(seq "$ROUNDS"); do
  for variant in "${VARIANTS[@]}"; do
    read -r which mode <<<"$variant"
    run_server "${!which}" "$mode"
    printf 'round %s  %-3s %-17s %8.3f µs CPU/request\n' "$round" "$which" "$mode" "$us"
    echo "$round $which-$mode $us" >> "$results"
  done
done

python3 - "$results" <<'PY'
import collections, statistics, sys
rounds = collections.defaultdict(dict)
for line in open(sys.argv[1]):
    r, variant, us = line.split()
    rounds[r][variant] = float(us)
def median(ratio):
    values = [ratio(d) for d in rounds.values()]
    return statistics.median(values), min(values), max(values)
for which in ("new", "old"):
    for mode in ("tollgate", "tollgate_quiet"):
        m, lo, hi = median(lambda d: d[f"{which}-{mode}"] / d[f"{which}-bare_with_headers"])
        print(f"{which} {mode:15} {m:.3f} x its control (rounds {lo:.2f}-{hi:.2f})")
m, lo, hi = median(lambda d: d["new-tollgate"] / d["old-tollgate"])
print(f"new tollgate / old tollgate {m:.3f} (rounds {lo:.2f}-{hi:.2f})")
m, lo, hi = median(lambda d: d["new-bare_with_headers"] / d["old-bare_with_headers"])
print(f"new control / old control {m:.3f} (rounds {lo:.2f}-{hi:.2f})")
PY
