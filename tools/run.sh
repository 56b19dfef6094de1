#!/bin/sh
# run.sh - what `make run` starts: lunaserve on 127.0.0.1:8080 with the bundled models,
# models/spam (classifier) and models/austen-lm (generator), the configured defaults.
# Extra arguments go to lunaserve (e.g. --port 9000).
set -eu
cd "$(dirname "$0")/.."
exec bin/lunaserve --host 127.0.0.1 --port 8080 "$@"
