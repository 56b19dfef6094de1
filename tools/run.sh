#!/bin/sh
# run.sh - what `make run` starts: lunaserve on 127.0.0.1:8080 with the bundled models.
# The bundled models live in models/spam (classifier) and models/austen-lm (generator). Until
# they are trained and committed, the server runs on the small golden test models, and says so.
# Extra arguments go to lunaserve (e.g. sh tools/run.sh --port 9000).
set -eu
cd "$(dirname "$0")/.."
classify=models/spam
generate=models/austen-lm
if [ ! -f "$classify/model.safetensors" ]; then
  echo "run.sh: $classify is not bundled yet; serving the golden test classifier tests/golden/defaults" >&2
  classify=tests/golden/defaults
fi
set -- --classify-model "$classify" "$@"
if [ -f "$generate/model.safetensors" ]; then
  set -- --generate-model "$generate" "$@"
elif [ -f tests/golden/causal_final_tied_post_sin/model.safetensors ]; then
  echo "run.sh: $generate is not bundled yet; serving a golden test generator" >&2
  set -- --generate-model tests/golden/causal_final_tied_post_sin "$@"
fi
exec bin/lunaserve --host 127.0.0.1 --port 8080 "$@"
