#!/bin/sh
# tests/tools/run.sh - tests of the Python tools: the training scripts' self-tests (their batched,
# chunked forward against tools/luna_ref.py in float64, on random weights; no data needed), then
# tools/convert_fairseq.py on fairseq-apollo style checkpoints built in the test, checked against
# the C engine ($LUNA_BIN_DIR/luna, default build/bin, which is built first when LUNA_BIN_DIR is
# not set) and tools/luna_ref.py.
# Prints "N passed, N failed"; exits non-zero on a failure. The tests need /usr/bin/python3 with
# python3-torch and python3-numpy (tools/deps.sh installs them for `make test`); without them it
# says so and fails: a test that cannot run is not a pass.
# LUNA_TOOLS_SELFTESTS=0 leaves out the training scripts' self-tests, which are Python alone:
# make asan sets it, since its build changes nothing they run (make check runs them).
set -eu
cd "$(dirname "$0")/../.."
if ! /usr/bin/python3 -c 'import torch, numpy' 2>/dev/null; then
  echo "tests/tools: /usr/bin/python3 cannot import torch and numpy:" \
       "install python3-torch and python3-numpy (sh tools/deps.sh test)"
  exit 1
fi
if [ -z "${LUNA_BIN_DIR:-}" ]; then
  make -s -j2 build/bin/luna
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
fail=0
selftests="tools/train_lm.py tools/train_classifier.py"
[ "${LUNA_TOOLS_SELFTESTS:-1}" = 0 ] && selftests="" && echo "tests/tools: the training self-tests run in make check (Python alone)"
for script in $selftests; do
  if /usr/bin/python3 "$script" --selftest --threads 2 >"$log" 2>&1; then
    echo "ok   $script --selftest: $(tail -1 "$log" | cut -c1-100)"
  else
    echo "FAIL $script --selftest"; cat "$log"; fail=1
  fi
done
/usr/bin/python3 tests/tools/test_convert_fairseq.py "$@" || fail=1
exit $fail
