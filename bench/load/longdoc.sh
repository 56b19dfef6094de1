#!/bin/sh
# bench/load/longdoc.sh - the load kit's long-document scenario (issue 24): 16 concurrent
# documents of 4 MiB each sent as raw bodies to /classify of a server with --memory-budget 256M.
# Each document's resident workspace (4M tokens x d floats: 2 GiB for the spam model) cannot fit
# the budget, so every one must run under the streaming plan and be answered 200, while the
# ledger holds the bodies (16 x 4 MiB). The server's VmRSS is sampled from /proc every 0.25 s,
# as bench/load/run.sh does, and its maximum is checked against the budget + the overhead:
#
#   overhead = the server's idle RSS after startup (models loaded, before any request)
#              + the model files' bytes + 32 MiB of slack
#
# the kit's own definition (bench/load/report.py), so that one bound covers both reports: what
# the ledger does not count is the process itself (idle RSS), the mapped weights' pages (which a
# first request may fault in after the idle sample; counted whole) and the per-connection and
# per-thread buffers, the allocator's arenas and the sampler's timing (the 32 MiB).
#
#   sh bench/load/longdoc.sh            the full scenario (bench/load/run.sh runs it after the rest)
#   sh bench/load/longdoc.sh --quick    16 x 64 KiB under a 4 MiB budget (every document still
#                                       too large to be resident: 32 MiB of workspace), seconds
#
# Env: LONGDOC_N (16), LONGDOC_SIZE (4M), LONGDOC_BUDGET (256M), LOAD_CLASSIFY_MODEL (default
# models/spam, else the kit's random model of its shape), LOAD_OUT (docs/bench; build/load/quick
# with --quick), LOAD_NAME (<cpu>-<core>), LUNASERVE_WRAP. Writes LOAD_OUT/load-longdoc-NAME.{md,json,png}.
# Exits 1 when a document is not answered 200 or the RSS goes above the bound.
set -eu
cd "$(dirname "$0")/../.."
. bench/serve.sh
quick=0
[ "${1:-}" = "--quick" ] && quick=1
workers=${LOAD_WORKERS:-$(nproc)}
if [ "$quick" = 1 ]; then
  n=${LONGDOC_N:-16} size=${LONGDOC_SIZE:-64k} budget=${LONGDOC_BUDGET:-4M}
  out=${LOAD_OUT:-build/load/quick}
else
  n=${LONGDOC_N:-16} size=${LONGDOC_SIZE:-4M} budget=${LONGDOC_BUDGET:-256M}
  out=${LOAD_OUT:-docs/bench}
fi
work=build/load/longdoc$([ "$quick" = 1 ] && echo -quick)  # a smoke run never clears a full run's files
mkdir -p "$out" "$work"
rm -f "$work"/*
make --no-print-directory bin/lunaserve >/dev/null

clf=${LOAD_CLASSIFY_MODEL:-}
if [ -z "$clf" ]; then
  if [ -f models/spam/config.json ] && [ -f models/spam/model.safetensors ]; then clf=models/spam
  else
    clf=build/load-models/spam-shape
    [ -f "$clf/model.safetensors" ] || /usr/bin/python3 tools/make_random_model.py --d 128 --heads 4 --layers 2 \
      --ffn 512 --l 16 --out "$clf" >/dev/null
  fi
fi
mkdir -p build/load/models
rm -rf build/load/models/longdoc
cp -r "$clf" build/load/models/longdoc  # a model retrained in place must not change under the server
clf_src=$clf clf=build/load/models/longdoc

# one e-mail of exactly $size bytes: the held-out messages of tests/models/spam.jsonl back to back
/usr/bin/python3 bench/plans_report.py mail --out "$work" --sizes "$size" >/dev/null
doc=$work/mail-$size.eml

log=$work/server.log
# shellcheck disable=SC2086
${LUNASERVE_WRAP:-} bin/lunaserve --port 0 --classify-model "$clf" --generate-model '' --workers "$workers" \
  --blas-threads 1 --memory-budget "$budget" --max-queue 64 --request-timeout 3000 --max-request-timeout 3600 \
  --connection-timeout 3600 --max-requests-per-key 0 --max-queued-per-key 0 --max-body-bytes-per-client "$budget" \
  2>"$log" &  # 16 clients, one address: no per-client limit (the bodies' half still bounds them)
pid=$!
sampler=""
cleanup() {
  [ -n "$sampler" ] && kill "$sampler" 2>/dev/null || true
  kill "$pid" 2>/dev/null || true
}
trap cleanup EXIT INT TERM
serve_wait "$log" "$pid" longdoc
curl -sf "$url/info" >"$work/info.json"
sleep 1
idle_kb=$(awk '/^VmRSS/ { print $2 }' /proc/$pid/status)
t0=$(date +%s.%N)
rss_sample "$pid" >"$work/rss.txt" &
sampler=$!
echo "longdoc: lunaserve pid $pid, $workers workers, budget $budget: $n concurrent $size documents ($clf_src)"

i=1
pids=""
while [ $i -le "$n" ]; do
  curl -s -o "$work/answer-$i.json" -D "$work/headers-$i.txt" \
    -w "{\"i\": $i, \"http_code\": %{http_code}, \"time_total\": %{time_total}}\n" \
    -H 'Content-Type: application/octet-stream' -H 'X-Request-Timeout: 3600' \
    --data-binary @"$doc" "$url/classify" >"$work/curl-$i.json" 2>&1 &
  pids="$pids $!"
  i=$((i + 1))
done
for p in $pids; do wait "$p" || true; done
t1=$(date +%s.%N)
sleep 0.5
hwm_kb=$(awk '/^VmHWM/ { print $2 }' /proc/$pid/status)
curl -s "$url/metrics" >"$work/metrics.txt" || true
kill -TERM $pid
rc=0
wait $pid || rc=$?
kill "$sampler" 2>/dev/null || true
sampler=""
trap - EXIT INT TERM

/usr/bin/python3 bench/load/longdoc_report.py --work "$work" --out "$out" --budget "$budget" --idle-kb "$idle_kb" \
  --hwm-kb "$hwm_kb" --t0 "$t0" --t1 "$t1" --n "$n" --size "$size" --workers "$workers" --model "$clf_src" \
  --model-dir "$clf" --server-exit "$rc" --info "$work/info.json" ${LOAD_NAME:+--name "$LOAD_NAME"} \
  --date "$(date -u +%Y-%m-%d)" $([ "$quick" = 1 ] && echo --quick)
