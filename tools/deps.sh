#!/bin/sh
# deps.sh - install the Debian packages that lunaserve needs, and only those that are missing.
# `make run` and `make test` call it first, so that two commands set up a fresh Debian 12 machine.
# Usage: tools/deps.sh [build|test|bench|all|ci]   (default: all). Uses sudo when not root.
# ci: all, and what the rest of .ci/run installs as it goes (Chromium for the browser test,
# podman and its tools for the image, clang and libFuzzer, wrk and gnuplot for the load kit,
# valgrind), at once at the start: .ci/run runs builds in the background beside the tests, and
# two apt-gets must not run at the same time.
set -eu
want="gcc make pkg-config libopenblas-dev libmicrohttpd-dev libcjson-dev libuv1-dev"
case "${1:-all}" in
  build) ;;
  test|all) want="$want libcriterion-dev curl python3 python3-numpy python3-yaml python3-torch" ;; # + node, below
  ci) want="$want libcriterion-dev curl python3 python3-numpy python3-yaml python3-torch chromium valgrind
            podman buildah debootstrap runc clang libclang-rt-dev wrk gnuplot-nox" ;;
  bench) want="$want python3 python3-numpy gnuplot-nox" ;;
  *) echo "usage: $0 [build|test|bench|all|ci]" >&2; exit 2 ;;
esac
missing=""
for p in $want; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
# The client tests (tests/clients) and the API description's checks (tests/openapi: Redocly,
# Prism) run on Node.js and npm: the machine's own when it has them (Node 20 here), else Debian's.
case "${1:-all}" in test|all|ci) command -v node >/dev/null && command -v npm >/dev/null || missing="$missing nodejs npm" ;; esac
[ -z "$missing" ] && exit 0
echo "deps.sh: installing$missing" >&2
if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends $missing
