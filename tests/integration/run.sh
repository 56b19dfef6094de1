#!/bin/sh
# Runs every integration test against $LUNA_BIN_DIR/lunaserve (default build/bin).
set -eu
cd "$(dirname "$0")/../.."
exec /usr/bin/python3 tests/integration/test_server.py "$@"
