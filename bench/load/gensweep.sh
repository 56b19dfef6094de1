#!/bin/sh
# bench/load/gensweep.sh [--quick] [--only lone-prefill] - the generation sweep of issue 25: continuous batching
# (--max-batch 64) against --max-batch 1 (each generation alone on a worker: the server before
# batching), in one run, on the bundled LM models/austen-lm (bench/load/gensweep.py measures,
# bench/load/gensweep_report.py writes the report):
#   - 1, 4, 16 and 64 concurrent /generate_stream clients in a closed loop (max_new_tokens 200,
#     short prompts of Persuasion, seeded sampling), each mode in turn: aggregate tokens/s,
#     p50/p99 time per output token, p50/p99 time to first token;
#   - a 204,800-byte prompt arriving while 16 streams decode (batch mode): their p99 time per
#     output token during its prefill against before and after it;
#   - the same prompt alone, each mode in turn, 3 rounds: time to first token; with GEN_BEFORE
#     also on lunaserve built from that commit (the target's "today": 82482f3, the server when
#     issue 25 was filed, whose prefill ran on one core);
#   - the ceiling: `luna sgemm` on all the cores over the model's FLOPs per token.
# Targets (docs/benchmarks.md): tokens/s at 16 streams >= 5x --max-batch 1's; p99 TPOT at 16
# streams <= 3x a single stream's; the long prompt's ratio <= 2; the lone prefill >= 1.7x faster.
# A missed target is reported, not fatal unless GEN_STRICT=1; a failed stream (an error answer,
# a lost event) or a server that does not exit 0 on SIGTERM always is.
#
#   sh bench/load/gensweep.sh           the full run (10 s per point; about 7 minutes on the
#                                       shared 2-core machine)
#   sh bench/load/gensweep.sh --quick   a smoke run: 2.5 s per point, a 32 KiB long prompt, one
#                                       round (about a minute), into build/gensweep/quick
#   GEN_BEFORE=82482f3 sh bench/load/gensweep.sh --only lone-prefill
#                                       only the lone prefill, now against that commit (about two
#                                       minutes): GEN_OUT/prefill-before-<cpu>-<core>.{md,json}
#
# Env: GEN_OUT (default docs/bench; build/gensweep/quick with --quick), GEN_NAME (default
# <cpu>-<core>, bench/blasinfo.py), GEN_STRICT=1, GEN_SECONDS (seconds per point), GEN_ROUNDS
# (lone-prefill rounds per server; 3, quick 1), GEN_WAIT_QUIET (seconds each lone prefill waits,
# at most, for a quiet second of the shared machine; 0), GEN_MODEL (default models/austen-lm),
# LUNASERVE_WRAP (a command prefixed to the servers', as in the tests),
# GEN_BEFORE (a commit: bench/load/build_before.sh builds its lunaserve in a worktree under /tmp,
# into build/gensweep/before-<commit>, and the lone prefill is timed on it too) or GEN_BEFORE_BIN
# (such a binary, already built; GEN_BEFORE then only names its commit).
# The report is GEN_OUT/gensweep-<cpu>-<core>.{md,json,png}; its header names the CPU and the
# kernel the servers ran on (their /info "blas"). The servers pick their kernel at startup unless
# OPENBLAS_CORETYPE is set: run with `env -u OPENBLAS_CORETYPE` to let them choose.
set -eu
cd "$(dirname "$0")/../.."
quick=0 qflag="" only=""
while [ $# -gt 0 ]; do
  case $1 in
    --quick) quick=1 qflag=--quick ;;
    --only) only=${2:?--only needs a section (lone-prefill)}; shift ;;
    *) echo "usage: gensweep.sh [--quick] [--only lone-prefill]" >&2; exit 2 ;;
  esac
  shift
done
sflag=""
[ "${GEN_STRICT:-0}" = 1 ] && sflag=--strict
if [ "$quick" = 1 ]; then
  work=build/gensweep/quick out=${GEN_OUT:-build/gensweep/quick}  # a smoke run never replaces the committed results
else
  work=build/gensweep/full out=${GEN_OUT:-docs/bench}
fi
[ -z "$only" ] || work=$work-$only  # a section alone never clears a whole run's files
model=${GEN_MODEL:-models/austen-lm}
mkdir -p "$work" "$out"
rm -f "$work"/*

if ! command -v gnuplot >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  echo "gensweep: installing gnuplot-nox"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gnuplot-nox >/dev/null
fi
make --no-print-directory bin/lunaserve bin/luna >/dev/null
before_bin=${GEN_BEFORE_BIN:-} before_commit=""
[ -z "${GEN_BEFORE:-}" ] || before_commit=$(git rev-parse --short "$GEN_BEFORE^{commit}")
if [ -n "$before_commit" ] && [ -z "$before_bin" ]; then
  before_bin=$(sh bench/load/build_before.sh "$before_commit" "build/gensweep/before-$before_commit")
fi
[ -z "$before_bin" ] || [ -n "$before_commit" ] ||
  before_commit=$(cut -c1-7 "$(dirname "$before_bin")/commit" 2>/dev/null || echo "?")
if [ ! -f "$model/config.json" ] || [ ! -f "$model/model.safetensors" ]; then echo "gensweep: no model in $model"; exit 1; fi
[ -z "${OPENBLAS_CORETYPE:-}" ] ||
  echo "gensweep: OPENBLAS_CORETYPE=$OPENBLAS_CORETYPE is set: the servers keep that kernel (env -u OPENBLAS_CORETYPE lets them choose)"

/usr/bin/python3 bench/load/gensweep.py --bin bin/lunaserve --luna bin/luna --model "$model" --out "$work/raw.json" \
  $qflag ${GEN_SECONDS:+--duration "$GEN_SECONDS"} ${GEN_ROUNDS:+--rounds "$GEN_ROUNDS"} \
  ${GEN_WAIT_QUIET:+--wait-quiet "$GEN_WAIT_QUIET"} ${only:+--only "$only"} \
  ${before_bin:+--before-bin "$before_bin" --before-commit "$before_commit"} 2>&1 | tee "$work/run.log"
# the pipe hides the measurement's exit code: a run that ended early wrote no "sgemm_after"
grep -q '"sgemm_after"' "$work/raw.json" 2>/dev/null || { echo "gensweep: the measurement did not finish (see $work/run.log)"; exit 1; }
/usr/bin/python3 bench/load/gensweep_report.py --raw "$work/raw.json" --out "$out" --work "$work" \
  ${GEN_NAME:+--name "$GEN_NAME"} $sflag
