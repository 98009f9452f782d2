#!/usr/bin/env bash
# One limit for a fleet, end to end: two release example servers share `/api/feed`'s limit
# (FEED_PER_SECOND=5000, burst a second of it) through one real Redis, each driven past the
# limit by its own wrk for DURATION at once. Prints, per round:
#   - what the fleet admitted (2xx) against its bound, burst + rate × the run's time;
#   - Redis CPU per request (INFO cpu, user + sys, before and after, over every request);
#   - the p50 and p99 latency wrk saw;
# then the same two servers on the memory store (no REDIS_URL: each its own limit), for the
# p50 beside it.
#
#   scripts/feed-bench.sh           # ROUNDS=3 DURATION=6s CONNECTIONS=16 by default
#
# Needs redis-server, redis-cli and wrk (installed with apt-get when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-6s}
CONNECTIONS=${CONNECTIONS:-16}
RATE=${FEED_PER_SECOND:-5000}
REDIS_PORT=${REDIS_PORT:-6391}
PORTS=(3201 3202)

for tool in wrk redis-server; do
  if ! command -v "$tool" >/dev/null; then
    apt-get update && apt-get install -y "${tool/redis-server/redis-server}"
  fi
done
cargo build --release --example server --features redis
server=target/release/examples/server

dir=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" \
  >/dev/null &
for _ in $(seq 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.05; done
script_calls() {
  redis-cli -p "$REDIS_PORT" info commandstats |
    awk -F'[=:,]' '/^cmdstat_(evalsha|eval):/ {s += $3} END {print s + 0}'
}
redis_cpu() {
  redis-cli -p "$REDIS_PORT" info cpu |
    awk -F: '/^used_cpu_(user|sys):/ {s += $2} END {printf "%.6f", s}'
}

# Starts the two servers (with `env` before them), waits for them to answer.
start() {
  pids=()
  for port in "${PORTS[@]}"; do
    env "$@" PORT="$port" FEED_PER_SECOND="$RATE" RUST_LOG=warn "$server" >/dev/null 2>&1 &
    pids+=($!)
  done
  for port in "${PORTS[@]}"; do
    for _ in $(seq 200); do
      curl -s -o /dev/null "http://127.0.0.1:$port/" && break
      sleep 0.05
    done
  done
}

stop() {
  for pid in "${pids[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  pids=()
}

# Both wrk at once; prints "requests non2xx p50 p99 seconds" summed / taken from the first.
drive() {
  local outs=()
  local start end
  start=$(date +%s.%N)
  for port in "${PORTS[@]}"; do
    out="$dir/wrk-$port"
    wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency "http://127.0.0.1:$port/api/feed" >"$out" &
    outs+=("$out")
  done
  wait %?wrk 2>/dev/null || true
  while pgrep -x wrk >/dev/null; do sleep 0.05; done
  end=$(date +%s.%N)
  python3 - "$start" "$end" "${outs[@]}" <<'EOF'
import re, sys
start, end, files = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
def ms(v):
    n, unit = re.match(r"([\d.]+)(\w+)", v).groups()
    return float(n) * {"us": 0.001, "ms": 1, "s": 1000}[unit]
requests = non2xx = 0
p50 = []; p99 = []
for f in files:
    text = open(f).read()
    requests += int(re.search(r"(\d+) requests in", text).group(1))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    non2xx += int(m.group(1)) if m else 0
    p50.append(ms(re.search(r"50%\s+(\S+)", text).group(1)))
    p99.append(ms(re.search(r"99%\s+(\S+)", text).group(1)))
print(requests, non2xx, max(p50), max(p99), end - start)
EOF
}

for round in $(seq "$ROUNDS"); do
  redis-cli -p "$REDIS_PORT" flushall >/dev/null
  start REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
  before=$(redis_cpu)
  calls_before=$(script_calls)
  read -r requests refused p50 p99 seconds < <(drive)
  after=$(redis_cpu)
  calls=$(( $(script_calls) - calls_before ))
  stop
  python3 - "$RATE" "$requests" "$refused" "$p50" "$p99" "$seconds" "$before" "$after" "$round" "$calls" <<'EOF'
import sys
rate, requests, refused = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
p50, p99, seconds, before, after = map(float, sys.argv[4:9])
round_, calls = sys.argv[9], int(sys.argv[10])
admitted = requests - refused
bound = rate + rate * seconds
print(f"round {round_} redis:  {requests} requests, {admitted} admitted, bound {bound:.0f} "
      f"({admitted / bound:.3f}x); {calls} script calls; "
      f"Redis CPU {(after - before) / requests * 1e6:.3f} us/request; "
      f"p50 {p50:.3f} ms, p99 {p99:.3f} ms")
EOF
  start
  read -r requests refused p50 p99 seconds < <(drive)
  stop
  echo "round $round memory: $requests requests, $((requests - refused)) admitted (each server its own limit); p50 $p50 ms, p99 $p99 ms"
done
