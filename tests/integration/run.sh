#!/bin/sh
# Runs every integration test against $LUNA_BIN_DIR/lunaserve (default build/bin): those of
# test_server.py, then those of test_state_cache.py. Arguments name tests of test_server.py (run
# one after another, in one process).
#
# LUNA_TEST_SHARDS=n (make check-slow sets 2) runs test_server.py as n processes side by side,
# test_state_cache.py beside them: each shard goes through the list in its own order and takes
# the next test that no shard has claimed yet (test_server.py: shard_order, claim), so that
# together they run each test once. It pays where each shard's servers get cores of their own:
# with LUNASERVE_WRAP="taskset -c 0" (make check-slow: the server on one core), shard i pins its
# servers to core i (modulo the cores), and the suite took 2 minutes less there. Unpinned, the
# shards' servers share the cores, and the tests that double their work until a round holds do
# many times the work (under ASan the suite took 339 s against 204 s one after another): make
# check runs one shard.
# Prints each process's lines and "N passed, N failed" in all; exits 1 on any failure.
set -eu
cd "$(dirname "$0")/../.."
if [ $# -gt 0 ]; then
  exec /usr/bin/python3 tests/integration/test_server.py "$@"
fi
shards=${LUNA_TEST_SHARDS:-1}
if [ "$shards" -le 1 ]; then
  rc=0
  /usr/bin/python3 tests/integration/test_server.py || rc=1
  /usr/bin/python3 tests/integration/test_state_cache.py || rc=1
  exit "$rc"
fi
cores=$(nproc 2>/dev/null || echo 1)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/claims"
pids=""
i=0
while [ "$i" -lt "$shards" ]; do
  wrap=${LUNASERVE_WRAP:-}
  [ "$wrap" = "taskset -c 0" ] && wrap="taskset -c $((i % cores))"
  LUNASERVE_WRAP=$wrap LUNA_TEST_SHARD="$i/$shards" LUNA_TEST_CLAIMS="$tmp/claims" \
    /usr/bin/python3 tests/integration/test_server.py >"$tmp/shard$i.out" 2>&1 &
  pids="$pids $!"
  i=$((i + 1))
done
/usr/bin/python3 tests/integration/test_state_cache.py >"$tmp/state_cache.out" 2>&1 &
pids="$pids $!"
rc=0
for p in $pids; do wait "$p" || rc=1; done
i=0
while [ "$i" -lt "$shards" ]; do
  echo "== test_server.py, shard $i of $shards"
  cat "$tmp/shard$i.out"
  i=$((i + 1))
done
echo "== test_state_cache.py"
cat "$tmp/state_cache.out"
cat "$tmp"/shard*.out "$tmp/state_cache.out" | awk '/^[0-9]+ passed, [0-9]+ failed/ { p += $1; f += $3 }
  END { printf "integration: %d passed, %d failed\n", p, f }'
# every test of test_server.py ran once: as many claims as tests
n=$(ls "$tmp/claims" | wc -l)
want=$(cat "$tmp/claims/.total" 2>/dev/null || echo "?")
[ "$n" = "$want" ] || { echo "integration: $n of $want tests were claimed"; rc=1; }
exit "$rc"
