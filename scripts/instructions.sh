#!/usr/bin/env bash
# Instructions per request of each case of tests-integration/benches/instructions.rs, exact on any machine:
# callgrind counts what runs inside its `measured` loop of N iterations, divided by N.
#
#   scripts/instructions.sh [CASE ...]     # N=20000 by default; every case without arguments
#   scripts/instructions.sh --check        # fails when a case passes its ceiling in
#                                          # scripts/instructions.budget (.ci/run runs this)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-20000}
if ! command -v valgrind >/dev/null; then
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y valgrind
fi
cargo bench -q -p tests-integration --bench instructions --no-run
bin=$(ls -t "${CARGO_TARGET_DIR:-target}"/release/deps/instructions-* | grep -v '\.d$' | head -1)
check=false
if [ "${1:-}" = "--check" ]; then
  check=true
  shift
fi
cases=("$@")
[ ${#cases[@]} -gt 0 ] || cases=(bare global-headers-off global-headers-on tower-limit shared-floor shaped-floor peer-headers-on peer-floor tower-governor unkeyed-decision unkeyed-check governor-check keyed-decision governor-check-key)
count() {
  valgrind --tool=callgrind --toggle-collect='*measured*' --callgrind-out-file=/dev/null \
    "$bin" "$1" "$2" 2>&1 | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
if $check; then
  # Each budget line: CASE CEILING, or CASE CEILING over BASE (the ceiling is then on the
  # case's count minus BASE's: a layer's overhead over the bare service).
  declare -A counted
  measure() { [ -n "${counted[$1]:-}" ] || counted[$1]=$(( $(count "$1" "$N") / N )); }
  failed=0
  while read -r case ceiling over base _; do
    case "$case" in ''|'#'*) continue ;; esac
    measure "$case"
    value=${counted[$case]}
    what="$case $value"
    if [ "$over" = over ]; then
      measure "$base"
      value=$((value - ${counted[$base]}))
      what="$case $value over $base (${counted[$case]} - ${counted[$base]})"
    fi
    if [ "$value" -le "$ceiling" ]; then
      echo "ok      $what, ceiling $ceiling"
    else
      echo "OVER    $what, ceiling $ceiling"
      failed=1
    fi
  done < scripts/instructions.budget
  [ "$failed" = 0 ] || { echo "instructions per request passed a ceiling: see scripts/instructions.budget" >&2; exit 1; }
  exit 0
fi
for case in "${cases[@]}"; do
  echo "$case $(( $(count "$case" "$N") / N ))"
done
