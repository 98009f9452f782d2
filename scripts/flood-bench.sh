#!/usr/bin/env bash
# A flood of millions of distinct keys against the release example server (pinned to core 0),
# with honest known and new clients beside it (core 1); see tests-integration/benches/flood.rs.
#
#   scripts/flood-bench.sh            # FLOOD_SECONDS=45 by default
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null; then
  apt-get update && apt-get install -y wrk
fi
cargo build --release --example server
cargo bench -p tests-integration --bench flood --no-run
taskset -c 1 cargo bench -p tests-integration --bench flood
