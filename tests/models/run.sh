#!/bin/sh
# The bundled models against the reference on a slice of their real test data
# (tests/models/test_models.py says what it checks; make_fixture.py rebuilds the fixture).
set -eu
cd "$(dirname "$0")/../.."
exec /usr/bin/python3 tests/models/test_models.py "$@"
