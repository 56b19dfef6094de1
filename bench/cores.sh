#!/bin/sh
# bench/cores.sh - this machine's sgemm rate on several OpenBLAS kernels ("cores"), measured
# alternately in one run so that a shared machine's load weighs on each alike: ROUNDS rounds,
# each running `luna --blas-core CORE sgemm` once per core, in turn. Prints every measurement and
# a Markdown table (median, min and max per core, and each median over the first core's).
#
#   sh bench/cores.sh [CORE ...]     default: Prescott Haswell SkylakeX Cooperlake
#
# Env: ROUNDS (default 5), SGEMM_SIZE (1024), SGEMM_THREADS (the cores), SGEMM_SECONDS (luna's
# default). A core this CPU cannot run fails luna's self-check and is reported as such.
set -eu
cd "$(dirname "$0")/.."
make --no-print-directory bin/luna >/dev/null
[ $# -gt 0 ] || set -- Prescott Haswell SkylakeX Cooperlake
rounds=${ROUNDS:-5}
size=${SGEMM_SIZE:-1024}
threads=${SGEMM_THREADS:-$(nproc)}
raw=$(mktemp)
trap 'rm -f "$raw"' EXIT
i=1
while [ $i -le "$rounds" ]; do
  for core in "$@"; do
    bin/luna --blas-core "$core" sgemm --size "$size" --threads "$threads" \
      ${SGEMM_SECONDS:+--seconds "$SGEMM_SECONDS"} --json >>"$raw" ||
      echo "{\"failed\": \"$core\"}" >>"$raw"
    tail -n 1 "$raw"
  done
  i=$((i + 1))
done
/usr/bin/python3 - "$raw" "$rounds" "$size" "$threads" "$@" <<'EOF'
import json, statistics, sys
raw, rounds, size, threads, cores = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
rows = [json.loads(l) for l in open(raw) if l.startswith("{")]
by = {c: [r for r in rows if r.get("blas", {}).get("core", "").lower() == c.lower()] for c in cores}
blas = next((r["blas"] for r in rows if "blas" in r), {})
print()
print("sgemm %s³, %s threads, %s rounds alternating; %s %s; CPU %s" % (
    size, threads, rounds, blas.get("library", "?"), blas.get("version", "?"), blas.get("cpu", "?")))
print()
print("| core | GFLOP/s, median | min | max | median ÷ %s's |" % cores[0])
print("|---|---|---|---|---|")
base = statistics.median(r["gflops"] for r in by[cores[0]]) if by[cores[0]] else None
for c in cores:
    g = [r["gflops"] for r in by[c]]
    if not g:
        print("| %s | did not run | | | |" % c)
        continue
    med = statistics.median(g)
    print("| %s | %.1f | %.1f | %.1f | %s |" % (c, med, min(g), max(g), "%.2f" % (med / base) if base else "–"))
EOF
