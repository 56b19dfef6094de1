#!/bin/sh
# bench/load/tail.sh [none|steady|bursty] [SECONDS] - where the latency of /classify at 1k goes
# at 80% of saturation, with or without a competitor for the two cores. It measures the
# saturation rate (6 connections, back to back, 10 s) with the competitor running, then sends at
# 80% of that rate for SECONDS (default 15) on 32 connections as bench/load/run.sh does, and
# prints wrk's latency beside the server's own split of every request, from its log lines:
#   queue_wait  submitted -> a worker was given the job (the loop thread's wake-up included);
#   run_time    given -> done (the worker's wake-up and the forward pass);
#   http        the rest of the server's duration: body, parse, the hops back to the loop and
#               libmicrohttpd threads, rendering, the send.
# Competitors (two processes, as a training job with two threads would be):
#   none    nothing;
#   steady  two busy loops;
#   bursty  two loops busy for 0.3 s, then asleep for 0.3 s (a job whose load comes and goes).
# The server is the load test's (2 workers, 1 BLAS thread each, budget 96M, queue 64) on the
# load test's classifier and 1k documents (bench/load/run.sh --quick makes both).
#
#   sh bench/load/tail.sh none; sh bench/load/tail.sh steady; sh bench/load/tail.sh bursty
set -eu
cd "$(dirname "$0")/../.."
mode=${1:-none}
secs=${2:-15}
work=build/load/tail
mkdir -p "$work"
clf=build/load/models/classify
docs=build/load/data/classify-1k.txt
[ -f "$clf/model.safetensors" ] && [ -f "$docs" ] || { echo "tail: run sh bench/load/run.sh --quick first" >&2; exit 2; }
make --no-print-directory bin/lunaserve >/dev/null

log=$work/server.log
rm -f "$log"
bin/lunaserve --port 0 --classify-model "$clf" --generate-model "" --workers 2 --blas-threads 1 \
  --memory-budget 96M --max-queue 64 --request-timeout 300 --max-request-timeout 600 \
  --max-requests-per-key 0 --max-queued-per-key 0 --max-connections-per-ip 0 2>"$log" &  # wrk: many clients, one address
pid=$!
hogs=""
cleanup() { kill $pid $hogs 2>/dev/null || true; }
trap cleanup EXIT INT TERM
i=0
port=""
while [ -z "$port" ] && [ $i -lt 300 ]; do
  sleep 0.1; i=$((i + 1))
  port=$(grep -o '"msg":"listening".*"port":[0-9]*' "$log" 2>/dev/null | grep -o '[0-9]*$' || true)
done
[ -n "$port" ] || { echo "tail: the server did not start"; cat "$log"; exit 1; }
url=http://127.0.0.1:$port/classify

case $mode in
  none) ;;
  steady|bursty)
    for k in 1 2; do
      /usr/bin/python3 -c '
import sys, time
busy = sys.argv[1] == "bursty"
while True:
    t = time.monotonic()
    while not busy or time.monotonic() - t < 0.3:
        pass
    time.sleep(0.3)' "$mode" &
      hogs="$hogs $!"
    done ;;
  *) echo "usage: $0 [none|steady|bursty] [SECONDS]" >&2; exit 2 ;;
esac

wrkrun() {  # conns secs rate -> the LOADJSON line
  wrk -t1 -c"$1" -d"$2"s --timeout 300s -s bench/load/bodies.lua "$url" -- "$docs" "$3" 2>&1 | sed -n 's/^LOADJSON //p'
}
wrkrun 6 2 0 >/dev/null                                # warm-up
sat=$(wrkrun 6 10 0 | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["rps"])')
rate=$(/usr/bin/python3 -c "print(0.8 * $sat)")
skip=$(wc -l <"$log")
wrkrun 32 "$secs" "$rate" >"$work/wrk.json"
kill $hogs 2>/dev/null || true
hogs=""
tail -n +$((skip + 1)) "$log" | grep '"msg":"request"' >"$work/requests.jsonl" || true

/usr/bin/python3 - "$mode" "$sat" "$work/wrk.json" "$work/requests.jsonl" <<'EOF'
import json, sys
mode, sat = sys.argv[1], float(sys.argv[2])
r = json.load(open(sys.argv[3]))
rows = [json.loads(l) for l in open(sys.argv[4])]
L = r["latency_ms"]


def pct(xs, p):
    xs = sorted(xs)
    return 1000 * xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


print("tail: competitor %s; saturation %.1f req/s; at 80%%: %.1f req/s, %d answers" % (mode, sat, r["rps"], len(rows)))
print("  %-12s p50 %6.1f  p90 %6.1f  p99 %6.1f  max %6.1f ms  p99/p50 %.2f" % (
    "wrk", L["p50"], L["p90"], L["p99"], L["max"], L["p99"] / L["p50"]))
parts = {k: [x[k] for x in rows] for k in ("queue_wait", "run_time", "duration")}
parts["http"] = [x["duration"] - x["queue_wait"] - x["run_time"] for x in rows]
for k in ("duration", "queue_wait", "run_time", "http"):
    xs = parts[k]
    print("  %-12s p50 %6.1f  p90 %6.1f  p99 %6.1f  max %6.1f ms" % (
        "server " + k if k == "duration" else "  " + k, pct(xs, 50), pct(xs, 90), pct(xs, 99), pct(xs, 100)))
EOF
kill -TERM $pid 2>/dev/null || true
wait $pid || true
trap - EXIT INT TERM
