#!/bin/sh
# docker-entrypoint.sh - the image's entrypoint (installed as /app/bin/docker-entrypoint).
# Serves the bundled models (/app/models/spam, /app/models/austen-lm) when the image has them.
# A bundled model that the image lacks, and that no LUNASERVE_CLASSIFY_MODEL /
# LUNASERVE_GENERATE_MODEL names, is replaced by the golden test model in /app/fallback-models
# (random weights; the server says so in its log). Set a variable to "" to serve no such model.
# Arguments that start with "-" go to lunaserve (e.g. --help, --print-config, --workers 2);
# any other command runs instead of it (e.g. `luna classify --model ... -`).
# lunaserve is exec'd, so it is PID 1 and receives SIGTERM itself (it drains, then exits 0).
set -eu
cd /app
warn() {
  printf '{"time":"%s","level":"warn","msg":"%s","path":"%s"}\n' \
    "$(date -u +%Y-%m-%dT%H:%M:%S.000Z)" "$1" "$2" >&2
}
case "${1:-}" in
  ""|-*) ;;
  *) exec "$@" ;;
esac
if [ -z "${LUNASERVE_CLASSIFY_MODEL+set}" ] && [ ! -f models/spam/model.safetensors ]; then
  export LUNASERVE_CLASSIFY_MODEL=/app/fallback-models/email_subject_body
  warn "bundled classifier absent from the image; serving the golden test model" "$LUNASERVE_CLASSIFY_MODEL"
fi
if [ -z "${LUNASERVE_GENERATE_MODEL+set}" ] && [ ! -f models/austen-lm/model.safetensors ]; then
  export LUNASERVE_GENERATE_MODEL=/app/fallback-models/lm_defaults
  warn "bundled generator absent from the image; serving the golden test model" "$LUNASERVE_GENERATE_MODEL"
fi
exec /app/bin/lunaserve "$@"
