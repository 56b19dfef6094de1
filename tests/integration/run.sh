#!/bin/sh
# Runs every integration test against $LUNA_BIN_DIR/lunaserve (default build/bin); arguments
# name tests of test_server.py.
set -eu
cd "$(dirname "$0")/../.."
/usr/bin/python3 tests/integration/test_server.py "$@"
[ $# -gt 0 ] || /usr/bin/python3 tests/integration/test_state_cache.py
