# bench/serve.sh - sourced by the benchmark scripts that start bin/lunaserve (bench/load/run.sh,
# bench/load/longdoc.sh, bench/plans.sh), from the repository root, after `pid=$!`:
#   serve_wait LOG PID WHO   waits for the server's "listening" line (60 s at most) and for /health
#                            to answer (30 s at most); sets port and url, or exits 1 with the log
#   rss_sample PID           prints "time VmRSS_kB" every 0.25 s while PID lives (run it with &)

serve_wait() {
  port=""
  _i=0
  while [ $_i -lt 600 ]; do
    port=$(grep -o '"msg":"listening".*"port":[0-9]*' "$1" 2>/dev/null | grep -o '[0-9]*$' || true)
    [ -n "$port" ] && break
    kill -0 "$2" 2>/dev/null || break
    sleep 0.1
    _i=$((_i + 1))
  done
  [ -n "$port" ] || { echo "$3: the server did not start"; cat "$1"; exit 1; }
  url=http://127.0.0.1:$port
  _i=0
  until curl -sf "$url/health" >/dev/null 2>&1; do
    _i=$((_i + 1)); [ $_i -lt 300 ] || { echo "$3: /health does not answer"; exit 1; }; sleep 0.1
  done
}

rss_sample() {
  while kill -0 "$1" 2>/dev/null; do
    printf '%s %s\n' "$(date +%s.%N)" "$(awk '/^VmRSS/ { print $2 }' /proc/"$1"/status 2>/dev/null)"
    sleep 0.25
  done
}
