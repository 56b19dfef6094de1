#!/bin/sh
# bench/load/run.sh [--quick] - the load test of lunaserve over HTTP with wrk (Debian's).
#
# One server run: its idle RSS; then for each document size (1k, 4k, 16k, 64k bytes of real
# SpamAssassin email, or synthetic without the corpus) /classify at saturation, then at 80% of
# that throughput; /generate (max_new_tokens 64) the same way; and a burst past the queue that
# must get 429s and nothing else. Around the 4k saturation run, the in-process engine's
# throughput on the same documents with the same worker count (engine_tput.c). The server's RSS
# is sampled from /proc every 0.25 s throughout. bench/load/report.py then writes the Markdown
# table and the PNG plot and checks the targets (docs/reliability.md):
#   - HTTP overhead: /classify throughput at 4k >= 90% of the in-process engine's, per CPU
#     second (the machine may be shared; the wall-clock ratio is reported beside it);
#   - RSS never above the memory budget + the documented overhead (idle RSS + the model files
#     + 32 MB);
#   - p99 <= 3 x p50 at 80% of saturation;
#   - no errors other than the deliberate 429s.
# Then the long-document scenario, bench/load/longdoc.sh, on a server of its own: 16 concurrent
# 4 MiB raw bodies under --memory-budget 256M, all answered 200 under the streaming plan, RSS
# never above the budget + the same overhead (its report: load-longdoc-<cpu>-<core>.*; the quick
# run sends 16 x 64 KiB under a 4 MiB budget, a few seconds).
#
#   sh bench/load/run.sh            the full run (about 5 minutes, and the long documents: 10 to
#                                   20 minutes on the shared 2-core machine)
#   sh bench/load/run.sh --quick    a smoke run (1k and 4k, short phases; about a minute)
#
# Below saturation, requests leave on a schedule at 80% of the saturation rate, evenly spaced
# ("paced", as wrk2's constant-throughput mode), whichever of 32 connections is free taking the
# next slot; LOAD_ARRIVALS=poisson spaces them exponentially instead (a Poisson stream: with
# 2 workers at 80%, queueing theory alone puts p99 near 4 x p50).
#
# Env: LOAD_WORKERS (default: the cores), LOAD_BUDGET (default 96M), LOAD_QUEUE (default 64),
# LOAD_CLASSIFY_MODEL / LOAD_GENERATE_MODEL (default models/spam and models/austen-lm when
# trained, else random models of the same shapes made in build/load-models), LOAD_OUT (default
# docs/bench; build/load/quick with --quick), LOAD_NAME (default <cpu>-<core>, see below),
# LOAD_STRICT=1 (exit non-zero when a performance target is missed too; errors and the RSS bound
# always count), LUNASERVE_WRAP (a command prefixed to the server's, e.g. "taskset -c 0").
#
# The report is LOAD_OUT/load-<cpu>-<core>.{md,json,png}: <cpu> from /proc/cpuinfo's model name,
# <core> the OpenBLAS kernel the server runs on, from its /info "blas" (bench/blasinfo.py), so
# that runs on other CPUs or kernels sit beside each other; its header names both. The server
# picks its kernel at startup (--blas-core auto, unless OPENBLAS_CORETYPE is set: run with
# `env -u OPENBLAS_CORETYPE` to let it choose, LUNASERVE_BLAS_CORE=NAME to force one); the
# in-process baseline (engine_tput) runs on the same kernel, through OPENBLAS_CORETYPE.
set -eu
cd "$(dirname "$0")/../.."
. bench/serve.sh
quick=0
[ "${1:-}" = "--quick" ] && quick=1

workers=${LOAD_WORKERS:-$(nproc)}
arrivals=${LOAD_ARRIVALS:-paced}
budget=${LOAD_BUDGET:-96M}
queue=${LOAD_QUEUE:-64}
out=${LOAD_OUT:-docs/bench}
[ "$quick" = 1 ] && out=${LOAD_OUT:-build/load/quick}  # a smoke run never replaces the committed results
work=build/load
data=$work/data
mkdir -p "$out" "$work" "$data"

sudo=""
[ "$(id -u)" = 0 ] || sudo=sudo
need=""
command -v wrk >/dev/null 2>&1 || need="$need wrk"
command -v gnuplot >/dev/null 2>&1 || need="$need gnuplot-nox"
command -v curl >/dev/null 2>&1 || need="$need curl"
if [ -n "$need" ]; then
  echo "load: installing$need"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need >/dev/null
fi
make --no-print-directory bin/lunaserve bin/luna >/dev/null  # and build/engine/*.o, for engine_tput

# ---- models (copied: a model being retrained in place must not change under the mapped server) ---
clf=${LOAD_CLASSIFY_MODEL:-}
gen=${LOAD_GENERATE_MODEL:-}
if [ -z "$clf" ]; then
  if [ -f models/spam/config.json ] && [ -f models/spam/model.safetensors ]; then clf=models/spam
  else
    clf=build/load-models/spam-shape  # the shape tools/train_classifier.py trains: d 128, 2 layers, FFN 512
    [ -f "$clf/model.safetensors" ] || /usr/bin/python3 tools/make_random_model.py --d 128 --heads 4 --layers 2 \
      --ffn 512 --l 16 --out "$clf" >/dev/null
  fi
fi
if [ -z "$gen" ]; then
  if [ -f models/austen-lm/config.json ] && [ -f models/austen-lm/model.safetensors ]; then gen=models/austen-lm
  else
    gen=build/load-models/lm-l32  # d 256, 4 layers, l 32: the generation benchmark's shape
    [ -f "$gen/model.safetensors" ] || /usr/bin/python3 tools/make_random_model.py --causal --l 32 --out "$gen" >/dev/null
  fi
fi

mkdir -p "$work/models"
rm -rf "$work/models/classify" "$work/models/generate"
cp -r "$clf" "$work/models/classify"
cp -r "$gen" "$work/models/generate"
clf_src=$clf gen_src=$gen
clf=$work/models/classify gen=$work/models/generate

if [ "$quick" = 1 ]; then
  sizes="1k 4k"; dur_sat=5; dur_80=5; dur_gen=5; dur_burst=3; warm=1; n=16
else
  sizes="1k 4k 16k 64k"; dur_sat=20; dur_80=20; dur_gen=20; dur_burst=8; warm=2; n=48
fi
/usr/bin/python3 bench/load/prep.py bodies --out "$data" --sizes "$(echo $sizes | tr ' ' ,)" --n $n

# ---- the server ------------------------------------------------------------------------------
log=$work/server.log
rm -f "$work"/*.json "$work/rss.txt" "$work/phases.txt" "$work/cpu.txt" "$log"  # the port is read from the log
# wrk, one address, stands for many clients: the per-client and per-address limits are off, as
# they would be behind a proxy (bench/soak_hostile.sh tests them)
# shellcheck disable=SC2086
${LUNASERVE_WRAP:-} bin/lunaserve --port 0 --classify-model "$clf" --generate-model "$gen" --workers "$workers" --blas-threads 1 \
  --memory-budget "$budget" --max-queue "$queue" --max-new-tokens 256 --request-timeout 300 \
  --max-request-timeout 600 --max-requests-per-key 0 --max-queued-per-key 0 --max-connections-per-ip 0 2>"$log" &
pid=$!
sampler=""
cleanup() {
  [ -n "$sampler" ] && kill "$sampler" 2>/dev/null || true
  kill "$pid" 2>/dev/null || true
}
trap cleanup EXIT INT TERM
serve_wait "$log" "$pid" load
curl -sf "$url/info" >"$work/info.json" || { echo "load: /info does not answer"; exit 1; }
core=$(/usr/bin/python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("blas", {}).get("core", ""))' \
  "$work/info.json")

t0=$(date +%s.%N)
rss_sample "$pid" >"$work/rss.txt" &
sampler=$!
phase() { printf '%s %s\n' "$(date +%s.%N)" "$1" >>"$work/phases.txt"; }

echo "load: lunaserve pid $pid on $url: $workers workers, budget $budget, queue $queue"
echo "load: classify model $clf_src, generate model $gen_src"
echo "load: blas $(/usr/bin/python3 -c 'import json,sys; b=json.load(open(sys.argv[1])).get("blas", {}); print(b.get("library"), b.get("version"), "core", b.get("core"), "(%s);" % b.get("selection"), "CPU", b.get("cpu"))' "$work/info.json")"
sleep 1
idle_kb=$(awk '/^VmRSS/ { print $2 }' /proc/$pid/status)

/usr/bin/python3 bench/load/prep.py tokens --port "$port" --out "$data"

# ---- the in-process engine on the same 4k documents, with the same worker count ---------------
# engine_tput (bench/load/engine_tput.c, linked against the server's own engine objects) runs
# $workers threads, each with its own context, classifying the 4k documents for a few seconds:
# right before and right after the 4k saturation run, interleaved because the machine is
# shared; the baseline is the mean of the two.
cc -O2 -std=c11 -D_GNU_SOURCE -Wall -Wextra -I. $(pkg-config --cflags openblas) -o "$work/engine_tput" bench/load/engine_tput.c \
  build/engine/*.o $(pkg-config --libs openblas) -lm -lpthread
eng_secs=$([ "$quick" = 1 ] && echo 4 || echo 10)
rm -f "$work"/engine-*.json
engine() {  # tag
  phase "engine-$1"
  env ${core:+OPENBLAS_CORETYPE=$core} "$work/engine_tput" "$clf" "$data/classify-4k.raw" 4096 "$workers" \
    "$eng_secs" >"$work/engine-$1.json"
  phase idle
}

# ---- wrk runs ----------------------------------------------------------------------------------
cpu_ticks() { awk '{ print $14 + $15 }' /proc/$pid/stat; }  # the server's user + system time
busy_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat; }  # the machine's
run_wrk() {  # name path conns secs body-file rate [arrivals]
  phase "$1"
  c0=$(cpu_ticks) b0=$(busy_ticks)
  wrk -t1 -c"$3" -d"$4"s --timeout 300s -s bench/load/bodies.lua "$url$2" -- "$5" "$6" "${7:-paced}" \
    >"$work/$1.out" 2>&1 || true
  echo "$1 $c0 $(cpu_ticks) $(getconf CLK_TCK) $b0 $(busy_ticks)" >>"$work/cpu.txt"
  grep '^LOADJSON ' "$work/$1.out" | sed 's/^LOADJSON //' >"$work/$1.json"
  if [ ! -s "$work/$1.json" ]; then echo "load: wrk failed in $1:"; cat "$work/$1.out"; exit 1; fi
  phase idle
}
rps_of() { /usr/bin/python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["rps"])' "$1"; }
sat_conns=$((2 * workers + 2))
loaded() {  # name path body-file secs_sat secs_80
  name=$1 path=$2 file=$3
  wrk -t1 -c"$sat_conns" -d"${warm}"s --timeout 300s -s bench/load/bodies.lua "$url$path" -- "$file" 0 >/dev/null 2>&1 || true
  run_wrk "$name-sat" "$path" "$sat_conns" "$4" "$file" 0
  [ "$name" = classify-4k ] && engine after
  x=$(rps_of "$work/$name-sat.json")
  rate=$(/usr/bin/python3 -c "print(0.8 * $x)")
  # 32 connections (below the queue, so that nothing gets 429) take the slots of a schedule at
  # 80% of the saturation rate
  run_wrk "$name-80" "$path" 32 "$5" "$file" "$rate" "$arrivals"
  echo "load: $name: saturation $(printf %.2f "$x") req/s; at 80%: $(printf %.2f "$(rps_of "$work/$name-80.json")") req/s"
}

for s in $sizes; do
  case $s in
    16k) d1=$((dur_sat + 5)); d2=$((dur_80 + 5)) ;;
    64k) d1=$((dur_sat * 2)); d2=$((dur_80 * 2)) ;;
    *) d1=$dur_sat; d2=$dur_80 ;;
  esac
  [ "$s" = 4k ] && engine before
  loaded "classify-$s" /classify "$data/classify-$s.txt" "$d1" "$d2"
done
loaded generate /generate "$data/generate.txt" "$dur_gen" "$dur_gen"

# a burst past the queue: the excess must get 429 (and nothing else)
run_wrk burst-1k /classify $((workers + queue + 32)) "$dur_burst" "$data/classify-1k.txt" 0
phase end
sleep 0.5
metrics=$(curl -s "$url/metrics")
echo "$metrics" >"$work/metrics.txt"

kill -TERM $pid
rc=0
wait $pid || rc=$?
kill "$sampler" 2>/dev/null || true
sampler=""
trap - EXIT INT TERM

rc_report=0
/usr/bin/python3 bench/load/report.py --work "$work" --out "$out" --budget "$budget" --idle-kb "$idle_kb" \
  --workers "$workers" --queue "$queue" --t0 "$t0" --classify-model "$clf_src" --generate-model "$gen_src" --models "$work/models" \
  --server-exit "$rc" --arrivals "$arrivals" --info "$work/info.json" ${LOAD_NAME:+--name "$LOAD_NAME"} \
  --date "$(date -u +%Y-%m-%d)" ${LOAD_STRICT:+--strict} $([ "$quick" = 1 ] && echo --quick) || rc_report=$?

# ---- long documents (issue 24): 16 concurrent 4 MiB raw bodies under a 256 MiB budget, every
# one under the streaming plan, its own server and report (load-longdoc-<cpu>-<core>.*); the quick
# run sends 16 x 64 KiB under a 4 MiB budget (bench/load/longdoc.sh) ------------------------------
rc_long=0
sh bench/load/longdoc.sh $([ "$quick" = 1 ] && echo --quick) || rc_long=$?
[ "$rc_long" = 0 ] || echo "load: FAILED: the long-document scenario (bench/load/longdoc.sh)"
[ "$rc_report" = 0 ] && [ "$rc_long" = 0 ]
