#!/bin/bash
# healthcheck.sh [PATH] - the image's HEALTHCHECK (installed as /app/bin/healthcheck): GET PATH
# (default /health) on the health listener when there is one (LUNASERVE_HEALTH_PORT, which
# answers even when the main port has every connection it may take), else on the port the
# server listens on (LUNASERVE_PORT, default 8080); exits 0 only on HTTP 200. bash's /dev/tcp
# makes the request, so the image needs no curl.
# /health is liveness: it never waits on the engine, so a busy server stays healthy. /ready is
# readiness (503 while loading, draining, or when the memory budget or the queue is full):
# compose.yaml checks it to start HAProxy once the replicas can serve.
path=${1:-/health}
port=${LUNASERVE_PORT:-8080}
case "${LUNASERVE_HEALTH_PORT:--1}" in -*|0) ;; *) port=$LUNASERVE_HEALTH_PORT ;; esac
host=${LUNASERVE_HOST:-127.0.0.1}
case "$host" in 0.0.0.0|"") host=127.0.0.1 ;; "::"|"[::]") host=::1 ;; esac
exec 3<>"/dev/tcp/$host/$port" || exit 1
printf 'GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n' "$path" >&3
IFS=' ' read -r -t 3 _ status _ <&3 || exit 1
[ "$status" = 200 ] || { echo "$path: HTTP $status" >&2; exit 1; }
echo "$path: ok"
