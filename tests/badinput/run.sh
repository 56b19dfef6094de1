#!/bin/sh
# tests/badinput/run.sh - the bad-input matrix (test_badinput.py) against $LUNA_BIN_DIR/lunaserve
# (default build/bin): every case checks the status, the error JSON shape, and that the server
# still answers a good request afterwards. Raises the open-file limit for the 1000 idle
# connections. Prints "N passed, N failed"; exits non-zero on a failure. make check runs it
# (so make test and make asan: once against the plain build, once against the ASan one).
#
#   sh tests/badinput/run.sh                    the whole matrix (about 20 s: six cases wait out
#                                               the server's 3 s connection timeout)
#   sh tests/badinput/run.sh pipelined slowloris   only the cases whose names contain these
set -eu
cd "$(dirname "$0")/../.."
ulimit -n 4096 2>/dev/null || ulimit -n "$(ulimit -H -n)" 2>/dev/null || true
exec /usr/bin/python3 tests/badinput/test_badinput.py "$@"
