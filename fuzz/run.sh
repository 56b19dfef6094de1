#!/bin/sh
# fuzz/run.sh [SECONDS] [HARNESS...] - builds the libFuzzer harnesses with clang
# (-fsanitize=fuzzer,address,undefined) against the project's own sources and runs each for
# SECONDS (default 60), FUZZ_PARALLEL of them at a time (default: one per core), starting from
# the committed seeds in fuzz/corpus/<harness>/ and the inputs of the bugs found so far,
# fuzz/crashes/<harness>/ (a regression test: a bug that comes back stops the run at once). New
# inputs go to build/fuzz/corpus/<harness>/, not into the repo.
# Prints executions, coverage and crashes per harness; a crashing input is kept in
# fuzz/crashes/<harness>/ and the script exits 1. Harnesses: fuzz_api fuzz_model fuzz_utf8_sse
# fuzz_state.
#
#   sh fuzz/run.sh            60 s each (what CI runs)
#   sh fuzz/run.sh 10 fuzz_api
#   FUZZ_JOBS=2 sh fuzz/run.sh   run each with 2 workers (-fork=2)
#   FUZZ_BUILD_ONLY=1 sh fuzz/run.sh   build them only (a harness newer than its sources is kept)
#
# Reproduce a crash: build/fuzz/fuzz_api fuzz/crashes/fuzz_api/crash-...
set -eu
cd "$(dirname "$0")/.."
secs=${1:-60}
[ $# -gt 0 ] && shift
harnesses=${*:-fuzz_api fuzz_model fuzz_utf8_sse fuzz_state}
jobs=${FUZZ_JOBS:-1}

sudo=""
[ "$(id -u)" = 0 ] || sudo=sudo
# clang, and libFuzzer, which Debian ships in compiler-rt (libclang-rt-dev: only a Recommends
# of clang, so --no-install-recommends leaves it out)
fuzzer_rt() { command -v clang >/dev/null 2>&1 && [ -f "$(clang -print-file-name=libclang_rt.fuzzer-x86_64.a)" ]; }
if ! fuzzer_rt; then
  echo "fuzz: installing clang and libclang-rt-dev (Debian's libFuzzer)"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends clang libclang-rt-dev >/dev/null
  fuzzer_rt || { echo "fuzz: no libFuzzer runtime after the install" >&2; exit 2; }
fi
for p in libcjson openblas; do
  pkg-config --exists "$p" || { echo "fuzz: $p is missing: run sh tools/deps.sh all" >&2; exit 2; }
done

out=build/fuzz
mkdir -p "$out"
CC=${FUZZ_CC:-clang}
SAN="-fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
CFLAGS="-std=c11 -D_GNU_SOURCE -ffp-contract=off -g -O1 -I. $(pkg-config --cflags libcjson openblas) -Wall -Wno-unused-function"
API_SRC=$(ls api/*.c)
ENGINE_SRC=$(ls engine/*.c | grep -v '^engine/model.c$')
LIBS="$(pkg-config --libs libcjson openblas) -lm -lpthread"

# A harness is rebuilt unless its binary is newer than every source it could use.
build() {
  h=$1
  if [ -x "$out/$h" ] && [ -z "$(find api engine fuzz \( -name '*.[ch]' -o -name '*.inc' \) -newer "$out/$h" | head -1)" ]; then
    echo "== $h: up to date"
    return 0
  fi
  case $h in
    fuzz_api)  # and the engine's sampler, which must take every accepted request
      $CC $CFLAGS $SAN -o "$out/$h" "fuzz/$h.c" $API_SRC engine/sample.c $LIBS ;;
    fuzz_utf8_sse)
      $CC $CFLAGS $SAN -o "$out/$h" "fuzz/$h.c" $API_SRC $LIBS ;;
    fuzz_model)
      # model.c's mmap becomes a heap copy of the file (see fuzz_model.c), so ASan sees past-the-end reads
      $CC $CFLAGS -fsanitize=address,undefined -fsanitize=fuzzer-no-link -fno-sanitize-recover=undefined \
        -Dmmap=fuzz_mmap -Dmunmap=fuzz_munmap -c -o "$out/model.o" engine/model.c
      $CC $CFLAGS $SAN -o "$out/$h" "fuzz/$h.c" "$out/model.o" $ENGINE_SRC $LIBS ;;
    fuzz_state)  # the real loader: the harness loads two fixture models from tests/golden
      $CC $CFLAGS $SAN -o "$out/$h" "fuzz/$h.c" engine/model.c $ENGINE_SRC $LIBS ;;
    *) echo "fuzz: unknown harness $h" >&2; exit 2 ;;
  esac
}

# Options per harness: the largest input, and a dictionary where one helps.
opts() {
  case $1 in
    fuzz_api) echo "-max_len=4096 -dict=fuzz/api.dict" ;;
    fuzz_model) echo "-max_len=16384 -dict=fuzz/model.dict -rss_limit_mb=2048 -malloc_limit_mb=1024" ;;
    fuzz_utf8_sse) echo "-max_len=1024" ;;
    fuzz_state) echo "-max_len=4096" ;;
  esac
}

export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:symbolize=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
# One harness: build, fuzz, report. Its lines go to $out/$h.out; its summary line to
# $out/$h.summary; exit 1 on a crash or a broken invariant.
one() {
  h=$1
  echo "== $h: building"
  build "$h"
  corpus="$out/corpus/$h"
  crashes="fuzz/crashes/$h"
  mkdir -p "$corpus" "$crashes"
  log="$out/$h.log"
  echo "== $h: fuzzing for ${secs}s (log: $log)"
  ls "$crashes" | sort >"$out/$h.before"
  rc=0
  if [ "$jobs" -gt 1 ]; then
    # -fork: crashes are kept going and collected; the log lists them
    "$out/$h" $(opts "$h") -max_total_time="$secs" -fork="$jobs" -ignore_crashes=1 \
      -artifact_prefix="$crashes/" -print_final_stats=1 "$corpus" "fuzz/corpus/$h" "$crashes" >"$log" 2>&1 || rc=$?
  else
    "$out/$h" $(opts "$h") -max_total_time="$secs" -timeout=10 \
      -artifact_prefix="$crashes/" -print_final_stats=1 "$corpus" "fuzz/corpus/$h" "$crashes" >"$log" 2>&1 || rc=$?
  fi
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || true)
  [ -n "$execs" ] || execs=$(grep -o '^#[0-9]*' "$log" | tail -1 | tr -d '#' || true)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || true)
  ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || true)
  # the inputs this run added (fuzz/crashes/ keeps the known ones of earlier runs)
  ncrash=$(ls "$crashes" | sort | comm -13 "$out/$h.before" - | grep -c -E '^(crash|leak|timeout|oom|slow-unit)-' || true)
  persec=$(awk -v e="${execs:-0}" -v s="$secs" 'BEGIN { printf "%.0f", e / s }')
  line=$(printf '%-14s %10s execs (%s/s)  cov %-5s ft %-6s  crash files %s  exit %s' "$h" "${execs:-?}" "$persec" \
         "${cov:-?}" "${ft:-?}" "$ncrash" "$rc")
  echo "$line"
  echo "$line" >"$out/$h.summary"
  if [ "$rc" != 0 ] || grep -q -E 'ERROR: (libFuzzer|AddressSanitizer|LeakSanitizer)|runtime error:|fuzz: invariant failed' "$log"; then
    echo "== $h: FAILED; the report:"
    grep -E -A 30 'ERROR: |runtime error:|fuzz: invariant failed' "$log" | head -60
    ls -l "$crashes"
    return 1
  fi
  return 0
}

# FUZZ_BUILD_ONLY=1: build the harnesses (FUZZ_PARALLEL at a time), run none (.ci/run builds
# them in the background while the tests run).
if [ "${FUZZ_BUILD_ONLY:-0}" = 1 ]; then
  par=${FUZZ_PARALLEL:-$(nproc 2>/dev/null || echo 1)}
  set -- $harnesses
  status=0
  while [ $# -gt 0 ]; do
    pids=""
    n=0
    while [ $# -gt 0 ] && [ "$n" -lt "$par" ]; do
      build "$1" &
      pids="$pids $!"
      n=$((n + 1))
      shift
    done
    for p in $pids; do wait "$p" || status=1; done
  done
  exit "$status"
fi

# FUZZ_PARALLEL harnesses at a time (default: one per core, each on a core of its own for
# its SECONDS); each one's output is printed when its batch ends.
par=${FUZZ_PARALLEL:-$(nproc 2>/dev/null || echo 1)}
[ "$par" -ge 1 ] 2>/dev/null || par=1
status=0
summary=""
set -- $harnesses
while [ $# -gt 0 ]; do
  batch=""
  while [ $# -gt 0 ] && [ "$(echo $batch | wc -w)" -lt "$par" ]; do
    batch="$batch $1"
    shift
  done
  for h in $batch; do
    rm -f "$out/$h.summary" "$out/$h.rc"
    ( one "$h"; echo $? >"$out/$h.rc" ) >"$out/$h.out" 2>&1 &
  done
  wait
  for h in $batch; do
    cat "$out/$h.out"
    [ "$(cat "$out/$h.rc" 2>/dev/null)" = 0 ] || status=1
    summary="$summary$(cat "$out/$h.summary" 2>/dev/null || echo "$h: no summary (build failed?)")
"
  done
done
echo
echo "== summary (${secs}s each)"
printf '%s' "$summary"
[ "$status" = 0 ] && echo "fuzz: no crashes" || echo "fuzz: FAILED (a crash: its input is in fuzz/crashes/; or a harness that did not build)"
exit "$status"
