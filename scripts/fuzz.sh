#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo-fuzz, libFuzzer) of every parser of attacker bytes: see
# fuzz/ and src/fuzz.rs, and TESTING.md's "Fuzzing".
#
#   scripts/fuzz.sh                 every target 10 s (CI)
#   scripts/fuzz.sh 60              every target 60 s
#   scripts/fuzz.sh --runs 10000000 every target 10^7 executions (the long run)
#   scripts/fuzz.sh 30 forwarded    only the targets named
#
# On a shared machine, CARGO_BUILD_JOBS=1 keeps the build to one core (the fuzzing itself is
# one process, one target at a time).
# Builds on the stable toolchain: `--sanitizer none` needs no nightly flag (no ASan; Rust's
# own checks, with overflow checks and debug assertions on through `-a`, are what finds bugs
# here). Each target starts from a copy of its seeds in fuzz/corpus/<target>/, in a temporary
# directory, so a run never grows the committed corpus. A crash (a panic: a broken property
# or a bug) stops the script with a failure; its input is kept in fuzz/artifacts/<target>/.
# Reproduce one with `fuzz/target/*/release/<target> fuzz/artifacts/<target>/crash-…`.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

limit=(-max_total_time=10)
mode="10 s each"
case "${1:-}" in
  --runs)
    limit=(-runs="${2:?--runs needs a count}")
    mode="$2 runs each"
    shift 2
    ;;
  [0-9]*)
    limit=(-max_total_time="$1")
    mode="$1 s each"
    shift
    ;;
esac

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "cargo-fuzz is missing: cargo install cargo-fuzz --locked" >&2
  exit 1
fi

# -O -a: optimised, with debug assertions and overflow checks (what catches arithmetic on
# hostile numbers; `-O` alone turns them off).
cargo fuzz build --sanitizer none -O -a

targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
fi
bin_dir="target/$(rustc -vV | sed -n 's/^host: //p')/release"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

printf '\nfuzzing %s (%s)\n' "${targets[*]}" "$mode"
printf '%-18s %14s %8s %10s %s\n' target executions seconds 'cov/ft' result
failed=()
for target in "${targets[@]}"; do
  corpus="$work/$target"
  mkdir -p "$corpus" "artifacts/$target"
  cp corpus/"$target"/* "$corpus"/ 2>/dev/null || true
  log="$work/$target.log"
  start=$(date +%s%N)
  status=0
  # -rss_limit_mb and -timeout: a hang or a blow-up of memory is a failure too.
  "$bin_dir/$target" "$corpus" "${limit[@]}" -print_final_stats=1 -timeout=10 \
    -rss_limit_mb=2048 -artifact_prefix="artifacts/$target/" >"$log" 2>&1 || status=$?
  millis=$((($(date +%s%N) - start) / 1000000))
  seconds="$((millis / 1000)).$((millis % 1000 / 100))"
  executions=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  coverage=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -1 | awk '{print $2 "/" $4}')
  if [ "$status" -eq 0 ]; then
    result=ok
  else
    result="CRASH (exit $status)"
    failed+=("$target")
  fi
  printf '%-18s %14s %8s %10s %s\n' "$target" "${executions:-?}" "$seconds" "${coverage:-?}" "$result"
  if [ "$status" -ne 0 ]; then
    grep -E -A12 "panicked at|ERROR: libFuzzer" "$log" | head -40 >&2 || tail -40 "$log" >&2
    ls -1 "artifacts/$target"/ >&2
  fi
done

if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzzing found crashes in: ${failed[*]}" >&2
  exit 1
fi
