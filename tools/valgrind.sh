#!/bin/sh
# valgrind.sh - run a Criterion test binary under valgrind's memcheck and fail on any error or
# leak in ANY process. Criterion runs each test in a forked child, so valgrind must follow
# children (--trace-children=yes) and each child writes its own log; a plain --error-exitcode
# would only see the parent, which runs no test. Tests run VALGRIND_JOBS (2) at a time: the
# machine's two cores, which halves the wall time of the slowest step of CI.
# Usage: tools/valgrind.sh BINARY [criterion args]
set -u
bin=$1; shift
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
valgrind -q --trace-children=yes --child-silent-after-fork=no --leak-check=full \
  --errors-for-leak-kinds=definite,indirect --error-exitcode=1 \
  --log-file="$logs/vg.%p.log" "$bin" --jobs "${VALGRIND_JOBS:-2}" "$@"
rc=$?
n=$(ls "$logs" | wc -l)
bad=0
for f in "$logs"/vg.*.log; do
  if [ -s "$f" ]; then
    echo "valgrind: errors in $(basename "$f"):"; cat "$f"; bad=1
  fi
done
echo "valgrind: $n processes checked"
[ "$rc" = 0 ] && [ "$bad" = 0 ] && [ "$n" -gt 1 ]
