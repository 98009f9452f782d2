#!/usr/bin/env bash
# Instructions per request of each case of tests-integration/benches/instructions.rs, exact on any machine:
# callgrind counts what runs inside its `measured` loop of N iterations, divided by N.
#
#   scripts/instructions.sh [CASE ...]     # N=20000 by default; every case without arguments
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-20000}
command -v valgrind >/dev/null || { apt-get update && apt-get install -y valgrind; }
cargo bench -p tests-integration --bench instructions --no-run 2>/dev/null
bin=$(ls -t "${CARGO_TARGET_DIR:-target}"/release/deps/instructions-* | grep -v '\.d$' | head -1)
cases=("$@")
[ ${#cases[@]} -gt 0 ] || cases=(bare global-headers-off global-headers-on tower-limit shared-floor peer-headers-on tower-governor unkeyed-decision unkeyed-check governor-check keyed-decision governor-check-key)
count() {
  valgrind --tool=callgrind --toggle-collect='*measured*' --callgrind-out-file=/dev/null \
    "$bin" "$1" "$2" 2>&1 | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
for case in "${cases[@]}"; do
  echo "$case $(( $(count "$case" "$N") / N ))"
done
