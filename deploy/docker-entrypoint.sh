#!/bin/sh
# docker-entrypoint.sh - the image's entrypoint (installed as /app/bin/docker-entrypoint).
# Serves the bundled models (/app/models/spam, /app/models/austen-lm), or those that
# LUNASERVE_CLASSIFY_MODEL / LUNASERVE_GENERATE_MODEL name; set one to "" to serve no such model.
# Arguments that start with "-" go to lunaserve (e.g. --help, --print-config, --workers 2);
# any other command runs instead of it (e.g. `luna classify --model ... -`).
# lunaserve is exec'd, so it is PID 1 and receives SIGTERM itself (it drains, then exits 0).
set -eu
cd /app
case "${1:-}" in
  ""|-*) ;;
  *) exec "$@" ;;
esac
exec /app/bin/lunaserve "$@"
