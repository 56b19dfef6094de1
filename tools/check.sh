#!/bin/sh
# tools/check.sh SUITE... - runs test suites against the binaries in $LUNA_BIN_DIR (make check
# and make check-slow call it): each suite in the order given, but the bad-input matrix in the
# background from the start, since most of its time is spent waiting out the server's 3 s
# timeouts; its lines are printed once the others are done. Every suite runs even when one
# fails; each prints how long it took, and the script exits 1 if any failed.
# Suites: unit (the Criterion binary, $CRITERION_FLAGS), cli, tools, integration, openapi,
# models, cluster, clients, browser, badinput.
set -u
cd "$(dirname "$0")/.."
: "${LUNA_BIN_DIR:=build/bin}"
export LUNA_BIN_DIR
failed=""
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
run() {
  t=$(date +%s)
  case $1 in
    unit) "$LUNA_BIN_DIR/unit-tests" --jobs 2 ${CRITERION_FLAGS:-} ;;
    *) sh "tests/$1/run.sh" ;;
  esac
  rc=$?
  echo "check: $1 took $(($(date +%s) - t)) s$([ "$rc" = 0 ] || echo ", FAILED")"
  return "$rc"
}
bg=""
for s in "$@"; do
  [ "$s" = badinput ] || continue
  ( run badinput >"$tmp/badinput.out" 2>&1; echo $? >"$tmp/badinput.rc" ) &
  bg=$!
done
for s in "$@"; do
  [ "$s" = badinput ] && continue
  run "$s" || failed="$failed $s"
done
if [ -n "$bg" ]; then
  wait "$bg"
  cat "$tmp/badinput.out"
  [ "$(cat "$tmp/badinput.rc" 2>/dev/null)" = 0 ] || failed="$failed badinput"
fi
[ -z "$failed" ] && exit 0
echo "check: FAILED:$failed"
exit 1
