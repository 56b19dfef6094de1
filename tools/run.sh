#!/bin/sh
# run.sh - what `make run` starts: lunaserve on 127.0.0.1:8080 with the bundled models.
# The bundled models live in models/spam (classifier) and models/austen-lm (generator).
# While the classifier is not trained and committed, the server runs on the golden test classifier, and
# says so. Until the server itself is built (issue 5), it runs what exists: the offline CLI,
# classifying standard input. Extra arguments go to lunaserve (e.g. --port 9000).
set -eu
cd "$(dirname "$0")/.."
classify=models/spam
if [ ! -f "$classify/model.safetensors" ]; then
  echo "run.sh: $classify is not bundled yet; using the golden test classifier tests/golden/defaults" >&2
  classify=tests/golden/defaults
fi
if [ ! -x bin/lunaserve ]; then
  echo "run.sh: the HTTP server is not built yet; classifying standard input with bin/luna instead" >&2
  exec bin/luna classify --model "$classify" -
fi
set -- --classify-model "$classify" "$@"
if [ -f models/austen-lm/model.safetensors ]; then
  set -- --generate-model models/austen-lm "$@"
fi
exec bin/lunaserve --host 127.0.0.1 --port 8080 "$@"
