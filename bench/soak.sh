#!/bin/sh
# bench/soak.sh [SECONDS] - the soak test: the AddressSanitizer + UBSan build of lunaserve
# (build/asan, as `make asan` builds it) under mixed load (bench/load/mixed.py: classify of
# every size, generate, streams, clients that leave, OpenAI routes, deadlines, bad requests)
# for SECONDS (default 120), its RSS sampled every second; then SIGTERM, and the exit must be 0
# with no ASan, UBSan or LeakSanitizer report (LeakSanitizer checks at exit: 0 leaks expected).
# Reports RSS at start, after warm-up, at the end, the maximum, and the drift.
#
#   sh bench/soak.sh          2 minutes (what CI runs)
#   sh bench/soak.sh 1800     half an hour
#
# Env: SOAK_THREADS (client threads, default 6), SOAK_MAX_DRIFT_MB (fail when the RSS grows
# more than this from the end of the warm-up to the end; default 64), SOAK_BIN (the server
# binary; default build/asan/bin/lunaserve, built if missing), SOAK_OUT (default build/soak).
# ASan's quarantine is capped at 64 MB (quarantine_size_mb) so that the RSS it adds levels off
# early instead of growing towards ASan's default of 256 MB over the run. LUNASERVE_WRAP (e.g.
# "taskset -c 0") prefixes the server command.
#
# Timing: every request but the deliberate 1 us deadlines must get 200; the server's deadline is
# set here (--request-timeout 120), below mixed.py's client timeout (180 s), so that a request
# slowed down by the sanitizers on a loaded machine is neither a 504 nor a client timeout.
set -eu
cd "$(dirname "$0")/.."
secs=${1:-120}
threads=${SOAK_THREADS:-6}
max_drift=${SOAK_MAX_DRIFT_MB:-64}
out=${SOAK_OUT:-build/soak}
bin=${SOAK_BIN:-build/asan/bin/lunaserve}
mkdir -p "$out"

if [ -z "${SOAK_BIN:-}" ]; then
  make --no-print-directory -j2 BUILD=build/asan \
    OPT="-O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all" \
    build/asan/bin/lunaserve >/dev/null
fi

log="$out/server.log"
rm -f "$log"  # the port is read from it: never from an earlier run's
ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:quarantine_size_mb=64:malloc_context_size=20${ASAN_EXTRA:+:$ASAN_EXTRA}" \
UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
  ${LUNASERVE_WRAP:-} "$bin" --port 0 --classify-model tests/golden/email_subject_body --generate-model tests/golden/lm_defaults \
    --workers 2 --max-queue 64 --max-new-tokens 128 --max-body-bytes 65536 --sse-ping-interval 0.5 \
    --request-timeout 120 --drain-timeout 20 2>"$log" &
pid=$!
trap 'kill -9 $pid 2>/dev/null || true' EXIT INT TERM

port=""
i=0
while [ $i -lt 600 ]; do  # 60 s: only a server that hangs takes that long
  port=$(grep -o '"msg":"listening".*"port":[0-9]*' "$log" 2>/dev/null | grep -o '[0-9]*$' || true)
  [ -n "$port" ] && break
  kill -0 $pid 2>/dev/null || break
  sleep 0.1
  i=$((i + 1))
done
if [ -z "$port" ]; then
  echo "soak: the server did not start:"; cat "$log"; exit 1
fi
echo "soak: $bin (pid $pid) on 127.0.0.1:$port for ${secs}s, $threads client threads"

load_rc=0
/usr/bin/python3 bench/load/mixed.py --port "$port" --pid "$pid" --seconds "$secs" --threads "$threads" \
  --out "$out/report.json" || load_rc=$?

kill -TERM $pid 2>/dev/null || true
rc=0
wait $pid || rc=$?
trap - EXIT INT TERM

fail=0
if [ "$load_rc" != 0 ]; then echo "soak: FAIL: unexpected answers under load (see above)"; fail=1; fi
if [ "$rc" != 0 ]; then echo "soak: FAIL: the server exited $rc"; fail=1; fi
leaks=$(grep -c 'ERROR: LeakSanitizer' "$log" || true)
asan=$(grep -c -E 'ERROR: AddressSanitizer|runtime error:' "$log" || true)
if [ "$leaks" != 0 ] || [ "$asan" != 0 ]; then
  echo "soak: FAIL: $leaks leak report(s), $asan ASan/UBSan report(s):"
  grep -A 40 -E 'ERROR: (LeakSanitizer|AddressSanitizer)|runtime error:' "$log" | head -120
  fail=1
fi
leaked_bytes=$(grep -o 'SUMMARY: AddressSanitizer: [0-9]* byte(s) leaked' "$log" | grep -o '[0-9]*' | head -1 || true)
drift_kb=$(/usr/bin/python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("rss_drift_kb", 0))' \
  "$out/report.json" 2>/dev/null || echo 0)
if [ "$drift_kb" -gt $((max_drift * 1024)) ]; then
  echo "soak: FAIL: RSS grew $((drift_kb / 1024)) MB after the warm-up (limit ${max_drift} MB)"
  fail=1
fi
requests=$(grep -c '"msg":"request"' "$log" || true)
echo "soak: server exit $rc; leak reports $leaks (${leaked_bytes:-0} bytes); ASan/UBSan reports $asan;" \
     "requests logged $requests; RSS drift after warm-up $((drift_kb / 1024)) MB (limit ${max_drift} MB)"
echo "soak: report $out/report.json, server log $log"
[ "$fail" = 0 ] && echo "soak: PASS" || echo "soak: FAIL"
exit "$fail"
