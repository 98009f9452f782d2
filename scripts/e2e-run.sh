# Sourced by scripts/e2e-bench.sh and scripts/e2e-compare.sh: one measured run of an
# e2e_server variant. Expects PORT, DURATION, CONNECTIONS and TICK; `run_server SERVER MODE`
# starts SERVER in MODE pinned to core 0 (its pid in `pid`, for the caller's trap), warms it up
# with wrk pinned to core 1, measures, stops it, and sets `us` (the server's CPU µs per
# request, utime + stime from /proc) and `rps` (wrk's requests/s).

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

run_server() {
  local server=$1 mode=$2 before after out requests
  taskset -c 0 "$server" "$mode" "$PORT" &
  pid=$!
  for _ in $(seq 100); do
    curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break
    sleep 0.05
  done
  # Warm up, then measure.
  taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d2s "http://127.0.0.1:$PORT/" >/dev/null
  before=$(cpu_ticks "$pid")
  out=$(taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"$DURATION" "http://127.0.0.1:$PORT/")
  after=$(cpu_ticks "$pid")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  requests=$(awk '/requests in/ {print $1}' <<<"$out")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  us=$(python3 -c "print(($after - $before) / $TICK * 1e6 / $requests)")
}
