#!/bin/sh
# bench/gen.sh - the generation benchmark of docs/benchmarks.md: the causal Luna decoder against
# the softmax decoder with a KV cache, on one random-weight LM (d 256, 4 heads, 4 layers, FFN 1024,
# l 32, pre-norm, tied K/V), with this machine's sgemm rate measured in the same run.
#
#   sh bench/gen.sh                  the full table (about 5 minutes on 2 cores)
#   BENCH_QUICK=1 sh bench/gen.sh    a smoke run with small contexts (seconds), into build/bench/quick
#
# Writes docs/bench/generate-<cpu>-<core>.{csv,md,png} (BENCH_OUT instead of docs/bench; BENCH_NAME
# instead of <cpu>-<core>, see bench/run.sh and bench/blasinfo.py): runs on other CPUs or
# kernels sit beside it, and the table's header names the CPU and the BLAS kernel. The raw JSON
# lines stay in build/bench/generate.jsonl and build/bench/generate-sgemm.json.
set -eu
cd "$(dirname "$0")/.."
sh tools/deps.sh bench
make --no-print-directory bin/luna

out=${BENCH_OUT:-docs/bench}
[ "${BENCH_QUICK:-0}" = 1 ] && out=${BENCH_OUT:-build/bench/quick}  # a smoke run never replaces a committed run
model=build/bench-models/lm-l32
threads=${BENCH_THREADS:-$(nproc)}
mkdir -p "$out"
if [ "${BENCH_QUICK:-0}" = 1 ]; then
  luna_ctx="1k,4k"; kv_ctx="1k,2k"; steps=50
else
  # The KV-cache baseline's prefill is quadratic: past 16k it would take hours, so its state
  # at 256k and 1M is given by its formula in the report, marked as such.
  luna_ctx="1k,16k,256k,1M"; kv_ctx="1k,4k,16k"; steps=300
fi
[ -f "$model/model.safetensors" ] ||
  /usr/bin/python3 tools/make_random_model.py --causal --l 32 --out "$model"

mkdir -p build/bench
raw=build/bench/generate.jsonl
sgemm=build/bench/generate-sgemm.json
: >"$raw"
bin/luna sgemm --size 1024 --threads "$threads" --json > "$sgemm"
echo "bench-gen: $(cat "$sgemm")"
bin/luna bench-gen --model "$model" --attention luna --threads "$threads" --steps "$steps" \
  --contexts "$luna_ctx" --json | tee -a "$raw"
bin/luna bench-gen --model "$model" --attention softmax --threads "$threads" --steps "$steps" \
  --contexts "$kv_ctx" --json | tee -a "$raw"
/usr/bin/python3 bench/report_gen.py --sgemm "$sgemm" --results "$raw" --out "$out" ${BENCH_NAME:+--name "$BENCH_NAME"} \
  --date "$(date -u +%Y-%m-%d)$([ "${BENCH_QUICK:-0}" = 1 ] && echo ' (BENCH_QUICK smoke run)')" \
  --machine "$threads BLAS threads"
