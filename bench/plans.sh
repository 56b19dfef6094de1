#!/bin/sh
# bench/plans.sh - the plan benchmark of docs/benchmarks.md (issue 24): what the streaming plan
# costs against the resident one, in time and in memory, all in one run.
#
#   sh bench/plans.sh                 the full run (about 25 minutes on the shared 2-core machine)
#   PLANS_QUICK=1 sh bench/plans.sh   a smoke run with small lengths (a minute or two)
#
# Two phases:
#  1. Timed, one job at a time. (a) the LRA text shape (tools/make_random_model.py --lra --l 16,
#     the encoder benchmark's model: d 256, 4 layers) under `luna bench --plan resident` and
#     `--plan streaming`, alternated per length (resident, streaming, resident, ...), each run a
#     fresh process (--lanes = cores, one BLAS thread, as bench/run.sh), the best of the rounds;
#     its peak anonymous RSS (anon_mb: the child's peak RSS less its mapped files). (b) the
#     bundled spam model (models/spam, d 128, 2 layers, P pooling) on e-mails of 1 and 4 MiB
#     made of the held-out messages of tests/models/spam.jsonl, timed by bench/plan_time.c: both
#     plans alternated in one process on the same mapped file.
#  2. Memory only, three jobs at once (their times are not compared): (a) the LRA shape at
#     PLANS_LRA_BIG = 4M tokens under the streaming plan only (its resident plan would take 4 GiB
#     and, with the streaming run, some 10 to 20 minutes more on the shared machine: its bytes are
#     reported as predicted, n x d x 4; to time it, add 4M:1 to PLANS_LRA and set
#     PLANS_LRA_BIG=""); (c) a 64 MiB e-mail through `luna classify --plan
#     streaming` under /usr/bin/time (peak RSS: the mapped file's pages count); (d) the same
#     e-mail as a raw body to lunaserve's /classify with --memory-budget 256M (status,
#     X-Luna-Plan, the server's VmHWM and its VmRSS sampled every 0.25 s).
#
# Env: PLANS_QUICK=1, PLANS_OUT (default docs/bench), PLANS_NAME (default <cpu>-<core>),
# PLANS_LRA ("N:ROUNDS ..." timed lengths, default "64k:3 256k:2 1M:2"), PLANS_LRA_BIG
# (streaming only, in phase 2; default 4M, "" for none), PLANS_SPAM ("BYTES:ROUNDS ...", default "1M:3 4M:2"), PLANS_MAIL (default 64M).
# Run it with `env -u OPENBLAS_CORETYPE` to let luna pick the kernel (--blas-core auto); the
# header of the report names the CPU and the kernel (bench/blasinfo.py). Writes
# OUT/plans-<cpu>-<core>.{md,csv,png}; raw JSON lines stay in build/plans/.
set -eu
cd "$(dirname "$0")/.."
. bench/serve.sh
make --no-print-directory bin/luna bin/lunaserve >/dev/null
command -v gnuplot >/dev/null 2>&1 || echo "plans: gnuplot not found (apt-get install gnuplot-nox): no PNG" >&2

quick=${PLANS_QUICK:-0}
out=${PLANS_OUT:-docs/bench}
work=build/plans
lanes=$(nproc)
if [ "$quick" = 1 ]; then
  out=${PLANS_OUT:-build/plans/quick}
  lra=${PLANS_LRA:-"4k:2 16k:2 64k:1"}; lra_big=${PLANS_LRA_BIG:-}; spam=${PLANS_SPAM:-"64k:2 256k:2"}
  mail=${PLANS_MAIL:-4M}
else
  lra=${PLANS_LRA:-"64k:3 256k:2 1M:2"}; lra_big=${PLANS_LRA_BIG-4M}; spam=${PLANS_SPAM:-"1M:3 4M:2"}
  mail=${PLANS_MAIL:-64M}
fi
budget=256M
mkdir -p "$out" "$work"
rm -f "$work"/*.json "$work"/*.jsonl "$work"/*.txt "$work"/*.log "$work"/*.eml
raw=$work/plans.jsonl
: >"$raw"
t_start=$(date +%s)
cut -d' ' -f1-3 /proc/loadavg >"$work/loadavg.txt"

M=build/bench-models/lra-l16
[ -f "$M/model.safetensors" ] || /usr/bin/python3 tools/make_random_model.py --lra --l 16 --out "$M" >/dev/null
S=models/spam

bin/luna sgemm --size 1024 --threads "$lanes" --json >"$work/sgemm.json"
core=$(/usr/bin/python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("blas", {}).get("core", ""))' "$work/sgemm.json")
echo "plans: $(cat "$work/sgemm.json")"

# plan_time links the engine's objects (built by make); it runs on luna's kernel (OPENBLAS_CORETYPE)
cc -O2 -std=c11 -D_GNU_SOURCE -Wall -Wextra -I. $(pkg-config --cflags openblas) -o "$work/plan_time" bench/plan_time.c \
  build/engine/*.o $(pkg-config --libs openblas) -lm -lpthread

# e-mails of exactly the sizes (held-out messages back to back; see bench/plans_report.py mail)
sizes=$(for s in $spam; do echo "${s%%:*}"; done | tr '\n' ',')
/usr/bin/python3 bench/plans_report.py mail --out "$work" --sizes "${sizes}$mail"

tag() {  # kind round: prefix every JSON line of stdin with the two fields
  sed "s/^{/{\"kind\": \"$1\", \"round\": $2, /" | tee -a "$raw"
}

# ---- phase 1: timed, one job at a time -------------------------------------------------------
echo "plans: phase 1 (timed) at $(date -u +%H:%M:%S)"
for spec in $lra; do
  n=${spec%%:*} rounds=${spec#*:}
  r=1
  while [ "$r" -le "$rounds" ]; do
    for plan in resident streaming; do
      bin/luna bench --model "$M" --threads 1 --lanes "$lanes" --plan $plan --lengths "$n" --json | tag lra "$r"
    done
    r=$((r + 1))
  done
done
for spec in $spam; do
  s=${spec%%:*} rounds=${spec#*:}
  env ${core:+OPENBLAS_CORETYPE=$core} "$work/plan_time" "$S" "$work/mail-$s.eml" "$rounds" "$lanes" | tag spam 0
done

# ---- phase 2: memory only, three jobs at once -------------------------------------------------
cut -d' ' -f1-3 /proc/loadavg >>"$work/loadavg.txt"
echo "plans: phase 2 (memory) at $(date -u +%H:%M:%S)"
# (a) the LRA shape at PLANS_LRA_BIG, streaming only
job_a=""
[ -z "$lra_big" ] || ( bin/luna bench --model "$M" --threads 1 --lanes "$lanes" --plan streaming --lengths "$lra_big" --json \
    >"$work/lra-big.json" 2>"$work/lra-big.log" || echo "plans: LRA $lra_big failed" >&2 ) &
[ -z "$lra_big" ] || job_a=$!

# (c) the e-mail through luna classify, streaming plan (one BLAS thread: three jobs share the cores)
( /usr/bin/time -f '{"max_rss_kb": %M, "wall_s": %e, "exit": %x}' -o "$work/classify-time.json" \
    env OPENBLAS_NUM_THREADS=1 bin/luna classify --model "$S" --plan streaming "$work/mail-$mail.eml" >"$work/classify.json" \
    2>"$work/classify.log" || echo "plans: luna classify failed" >&2 ) &
job_c=$!

# (d) the same e-mail as a raw body to /classify under a 256 MiB budget
log=$work/server.log
bin/lunaserve --port 0 --classify-model "$S" --generate-model '' --workers "$lanes" --blas-threads 1 \
  --memory-budget $budget --request-timeout 3000 --max-request-timeout 3600 --connection-timeout 3600 2>"$log" &
pid=$!
sampler=""
cleanup() {
  [ -n "$sampler" ] && kill "$sampler" 2>/dev/null || true
  kill "$pid" 2>/dev/null || true
}
trap cleanup EXIT INT TERM
serve_wait "$log" "$pid" plans
curl -sf "$url/info" >"$work/info.json"
sleep 1
idle_kb=$(awk '/^VmRSS/ { print $2 }' /proc/$pid/status)
rss_sample "$pid" >"$work/server-rss.txt" &
sampler=$!
curl -s -o "$work/server-answer.json" -D "$work/server-headers.txt" \
  -w '{"http_code": %{http_code}, "time_total": %{time_total}, "size_upload": %{size_upload}}\n' \
  -H 'Content-Type: application/octet-stream' -H 'X-Request-Timeout: 3600' \
  --data-binary @"$work/mail-$mail.eml" "$url/classify" >"$work/server-curl.json" || true
hwm_kb=$(awk '/^VmHWM/ { print $2 }' /proc/$pid/status)
curl -s "$url/metrics" >"$work/server-metrics.txt" || true
kill -TERM $pid
rc=0
wait $pid || rc=$?
kill "$sampler" 2>/dev/null || true
sampler=""
trap - EXIT INT TERM
echo "{\"idle_kb\": $idle_kb, \"hwm_kb\": $hwm_kb, \"exit\": $rc, \"budget\": \"$budget\"}" >"$work/server.json"
echo "plans: server: $(cat "$work/server-curl.json") $(cat "$work/server.json")"

wait $job_c || true
echo "plans: classify: $(cat "$work/classify-time.json") $(cat "$work/classify.json")"
if [ -n "$job_a" ]; then
  wait $job_a || true
  tag lra-big 1 <"$work/lra-big.json"
fi
t_end=$(date +%s)
cut -d' ' -f1-3 /proc/loadavg >>"$work/loadavg.txt"
echo "plans: done in $((t_end - t_start)) s"

/usr/bin/python3 bench/plans_report.py report --work "$work" --out "$out" ${PLANS_NAME:+--name "$PLANS_NAME"} \
  --mail "$mail" --seconds $((t_end - t_start)) --lanes "$lanes" --model-lra "$M" --model-spam "$S" \
  --date "$(date -u +%Y-%m-%d)$([ "$quick" = 1 ] && echo ' (PLANS_QUICK smoke run)')"
