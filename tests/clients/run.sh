#!/bin/sh
# tests/clients/run.sh - the real OpenAI and Hugging Face JS clients (pinned in package-lock.json,
# installed with npm ci) against bin/lunaserve on an ephemeral loopback port: the bundled models
# when they are there, else the golden test models. Uses $LUNA_BIN_DIR/lunaserve (default
# build/bin). Prints "N passed, N failed" (clients.mjs); bounded: the node run has 5 minutes.
# LUNASERVE_WRAP (e.g. "taskset -c 0", as make check-slow sets it) prefixes the server command.
set -eu
cd "$(dirname "$0")"
root=../..
bin=$root/${LUNA_BIN_DIR:-build/bin}/lunaserve
[ -d node_modules/openai ] && [ -d node_modules/@huggingface/inference ] || npm ci --no-audit --no-fund --loglevel=error
gen=$root/models/austen-lm
[ -f "$gen/model.safetensors" ] || gen=$root/tests/golden/lm_defaults
cls=$root/models/spam
[ -f "$cls/model.safetensors" ] || cls=$root/tests/golden/email_subject_body
log=$(mktemp)
# shellcheck disable=SC2086
${LUNASERVE_WRAP:-} "$bin" --port 0 --classify-model "$cls" --generate-model "$gen" 2>"$log" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -f "$log"' EXIT
port=""
for _ in $(seq 1 600); do  # 60 s: only a server that hangs takes that long
  port=$(grep -o '"port":[0-9]*' "$log" | head -1 | cut -d: -f2)
  [ -n "$port" ] && break
  kill -0 $pid 2>/dev/null || break
  sleep 0.1
done
[ -n "$port" ] || { echo "clients: lunaserve did not start"; cat "$log"; exit 1; }
LUNA_URL="http://127.0.0.1:$port" timeout 300 node clients.mjs
