#!/usr/bin/env bash
# Logs under a flood on rotating addresses: the release example server (core 0) behind
# 127.0.0.1 as its trusted proxy, wrk (core 1) sending each address's burst of 12 to
# /api/hello (a near-limit INFO line each) and 14 logins (a block, WARN, each), a new address
# every burst. Prints the bytes of logs a second at INFO and at DEBUG.
#
#   scripts/log-flood.sh [SERVER]     # SECONDS=20 by default; SERVER defaults to the release example
set -euo pipefail
cd "$(dirname "$0")/.."
SERVER=${1:-target/release/examples/server}
SECONDS_=${SECONDS:-20}
PORT=${PORT:-3500}
command -v wrk >/dev/null || { apt-get update && apt-get install -y wrk; }
[ "$SERVER" != target/release/examples/server ] || cargo build --release --example server

lua=$(mktemp --suffix=.lua)
cat >"$lua" <<'LUA'
local n = 0
request = function()
  n = n + 1
  local client = math.floor(n / 26)
  local ip = string.format("10.%d.%d.%d", math.floor(client / 65536) % 256, math.floor(client / 256) % 256, client % 256)
  if n % 26 < 12 then
    return wrk.format("GET", "/api/hello", {["X-Forwarded-For"] = ip})
  end
  return wrk.format("POST", "/api/login", {["X-Forwarded-For"] = ip, ["Content-Length"] = "0"})
end
LUA

for level in info debug; do
  log=$(mktemp)
  TRUSTED_PROXIES=127.0.0.1 PORT=$PORT RUST_LOG=$level NO_COLOR=1 taskset -c 0 "$SERVER" >"$log" 2>&1 &
  server=$!
  sleep 1
  before=$(stat -c %s "$log")
  taskset -c 1 wrk -t1 -c32 -d"${SECONDS_}s" -s "$lua" "http://127.0.0.1:$PORT" | grep -E "Requests/sec"
  after=$(stat -c %s "$log")
  kill $server; wait $server 2>/dev/null || true
  echo "$level: $(( (after - before) / SECONDS_ )) bytes of logs a second ($(grep -c 'similar events suppressed' "$log" || true) suppression lines, $(grep -c 'key blocked' "$log" || true) block lines, $(grep -c 'near its limit' "$log" || true) near-limit lines)"
  rm -f "$log"
done
rm -f "$lua"
