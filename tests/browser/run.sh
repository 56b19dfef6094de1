#!/bin/sh
# tests/browser/run.sh - the playground page (GET /) in Debian's Chromium, driven by playwright-core
# (pinned in package-lock.json, installed with npm ci; it downloads no browser of its own),
# against bin/lunaserve on ephemeral loopback ports: the bundled models when they are there, else
# the golden test models. Two servers: one with --max-new-tokens 1000000 --max-input-bytes 100000
# (long streams to stop, a 413 to show), one with --api-key. Installs chromium when it is missing.
# Uses $LUNA_BIN_DIR/lunaserve (default build/bin). Prints "N passed, N failed" (playground.mjs);
# bounded: the node run has 3 minutes. --update-screenshots writes docs/playground-{1280,390}.png.
# LUNASERVE_WRAP (e.g. "taskset -c 0") prefixes the server command.
set -eu
cd "$(dirname "$0")"
root=../..
bin=$root/${LUNA_BIN_DIR:-build/bin}/lunaserve
sudo=""
[ "$(id -u)" = 0 ] || sudo=sudo
want=""
[ -x /usr/bin/chromium ] || want="chromium"
command -v node >/dev/null && command -v npm >/dev/null || want="$want nodejs npm"
if [ -n "$want" ]; then
  echo "browser: installing$want"
  $sudo apt-get update -qq
  # shellcheck disable=SC2086
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $want >/dev/null
fi
[ -d node_modules/playwright-core ] || PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error
gen=$root/models/austen-lm
[ -f "$gen/model.safetensors" ] || gen=$root/tests/golden/lm_defaults
cls=$root/models/spam
[ -f "$cls/model.safetensors" ] || cls=$root/tests/golden/email_subject_body

logs=$(mktemp -d)
pids=""
trap 'for p in $pids; do kill $p 2>/dev/null; done; for p in $pids; do wait $p 2>/dev/null; done; rm -rf "$logs"' EXIT
# start NAME ARGS...: a server on an ephemeral port; sets $port once it logs "listening"
start() {
  name=$1; shift
  # shellcheck disable=SC2086
  ${LUNASERVE_WRAP:-} "$bin" --port 0 --classify-model "$cls" --generate-model "$gen" "$@" 2>"$logs/$name.log" &
  pid=$!
  pids="$pids $pid"
  port=""
  for _ in $(seq 1 600); do  # 60 s: only a server that hangs takes that long
    port=$(grep '"msg":"listening"' "$logs/$name.log" | grep -o '"port":[0-9]*' | head -1 | cut -d: -f2)
    [ -n "$port" ] && return 0
    kill -0 $pid 2>/dev/null || break
    sleep 0.1
  done
  echo "browser: lunaserve ($name) did not start"
  cat "$logs/$name.log"
  exit 1
}
start main --max-new-tokens 1000000 --max-input-bytes 100000
main=$port
start auth --api-key secret --workers 1
auth=$port
status=0
LUNA_URL="http://127.0.0.1:$main" LUNA_AUTH_URL="http://127.0.0.1:$auth" LUNA_API_KEY=secret \
  timeout 180 node playground.mjs "$@" || status=$?
[ $status -eq 0 ] || { echo "browser: server logs (main, last lines):"; tail -n 20 "$logs/main.log"; }
exit $status
