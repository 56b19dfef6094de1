#!/bin/sh
# kernel.sh - the decode steps' fixed-order product against sgemm on the bundled LM's layers
# (bench/fixed_kernel.c), pinned to one core. Usage: sh bench/kernel.sh [MODEL] [BATCHES] [ROUNDS]
# (defaults models/austen-lm, 1,4,16,64, 7). Run it on a quiet machine: the rounds alternate
# the paths, so a load spike touches them all, but the absolute figures move with the load.
set -eu
model=${1:-models/austen-lm}
batches=${2:-1,4,16,64}
rounds=${3:-7}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# links the engine's objects (built by make)
cc -O2 -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -I. $(pkg-config --cflags openblas) -o "$work/fixed_kernel" \
  bench/fixed_kernel.c build/engine/*.o $(pkg-config --libs openblas) -lm -lpthread
pin=$([ "$(nproc)" -gt 1 ] && echo "taskset -c 1" || echo "")
echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ), load average $(cut -d' ' -f1-3 /proc/loadavg), pinned: ${pin:-no}"
$pin "$work/fixed_kernel" "$model" "$batches" "$rounds"
