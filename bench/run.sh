#!/bin/sh
# bench/run.sh - the encoder benchmark of docs/benchmarks.md: Luna (l = 16, 128, 256) against the
# two softmax baselines, on the LRA byte-level text shape (d 256, 4 heads, 4 layers, FFN 1024,
# GELU, untied K/V) with random weights, all in one run so that the ratios are side by side.
#
#   sh bench/run.sh            the full table (about 20-30 minutes on 2 cores)
#   BENCH_QUICK=1 sh bench/run.sh   a smoke run with small lengths (seconds), into build/bench/quick
#
# Writes docs/bench/encoder-<cpu>-<core>.{csv,md,png} (BENCH_OUT instead of docs/bench; BENCH_NAME
# instead of <cpu>-<core>, which bench/blasinfo.py makes from /proc/cpuinfo's model name and the
# OpenBLAS kernel in use, e.g. amd-epyc-cooperlake): runs on other CPUs or kernels sit beside it.
# The table's header names the CPU and the BLAS library, version, kernel and how it was chosen
# (luna picks the kernel at startup: --blas-core auto, unless OPENBLAS_CORETYPE is set; run with
# `env -u OPENBLAS_CORETYPE` to let it choose, or LUNA_BLAS_CORE=NAME to force one). The raw JSON
# lines stay in build/bench/encoder.jsonl and build/bench/encoder-sgemm.json.
set -eu
cd "$(dirname "$0")/.."
sh tools/deps.sh bench
make --no-print-directory bin/luna

out=${BENCH_OUT:-docs/bench}
[ "${BENCH_QUICK:-0}" = 1 ] && out=${BENCH_OUT:-build/bench/quick}  # a smoke run never replaces a committed run
models=build/bench-models
threads=${BENCH_THREADS:-$(nproc)}
mkdir -p "$out" "$models"
if [ "${BENCH_QUICK:-0}" = 1 ]; then
  both="1024,2048"; luna_only="4096,8192"; pyref="1024"; ls_="16"
else
  both="1024,2048,3072,4096,8192,16384,32768,65536"
  luna_only="131072,262144,524288,1048576"; pyref="4096,16384"; ls_="16 128 256"
fi

for l in $ls_; do
  [ -f "$models/lra-l$l/model.safetensors" ] ||
    /usr/bin/python3 tools/make_random_model.py --lra --l "$l" --out "$models/lra-l$l"
done

mkdir -p build/bench
raw=build/bench/encoder.jsonl
sgemm=build/bench/encoder-sgemm.json
: >"$raw"
bin/luna sgemm --size 1024 --threads "$threads" --json > "$sgemm"
core=$(/usr/bin/python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("blas", {}).get("core", ""))' "$sgemm")
echo "bench: $(cat "$sgemm")"
# Each contender uses the cores its best way: Luna splits a forward's chunks over lanes (one
# BLAS thread each); the softmax baselines and PyTorch give the cores to BLAS.
for l in $ls_; do
  bin/luna bench --model "$models/lra-l$l" --attention luna --threads 1 --lanes "$threads" --repeat 2 \
    --lengths "$both,$luna_only" --json | tee -a "$raw"
done
first=$(echo "$ls_" | cut -d' ' -f1)
for kind in softmax softmax-stream; do
  bin/luna bench --model "$models/lra-l$first" --attention $kind --threads "$threads" \
    --lengths "$both" --json | tee -a "$raw"
done
# The PyTorch reference on the same weights (needs python3-torch; skipped with a note without it).
# Debian's torch does its matrix products in the system's OpenBLAS: it gets the core luna runs on.
if /usr/bin/python3 -c 'import torch' 2>/dev/null; then
  env ${core:+OPENBLAS_CORETYPE=$core} /usr/bin/python3 tools/bench_ref.py --model "$models/lra-l$first" --lengths "$pyref" \
    --threads "$threads" | tee -a "$raw"
else
  echo "bench: python3-torch is not installed; the PyTorch column is left out" >&2
fi
/usr/bin/python3 bench/report.py --sgemm "$sgemm" --results "$raw" --out "$out" ${BENCH_NAME:+--name "$BENCH_NAME"} \
  --date "$(date -u +%Y-%m-%d)$([ "${BENCH_QUICK:-0}" = 1 ] && echo ' (BENCH_QUICK smoke run)')" \
  --machine "Luna on $threads lanes of 1 BLAS thread, the baselines and PyTorch on $threads BLAS threads"
