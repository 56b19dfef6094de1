#!/bin/sh
# valgrind.sh - run a Criterion test binary under valgrind's memcheck and fail on any error or
# leak in ANY process. Criterion runs each test in a forked child, so valgrind must follow
# children (--trace-children=yes) and each child writes its own log; a plain --error-exitcode
# would only see the parent, which runs no test. Tests run VALGRIND_JOBS (2) at a time: the
# machine's two cores, which halves the wall time of the slowest step of CI.
#
# LUNA_TEST_UNDER_VALGRIND=1 is set for the tests: the few whose loops make most of memcheck's
# time (sampler::large_vocab, sampler::rng_uses_all_24_bits_of_u, the golden classifiers' long
# inputs at chunk lengths 1 and 7, one row at every position in kernels, a prompt of three
# prefill pieces) run a smaller count there, with the same lines and branches of engine/ taken
# (gcov, full against reduced); make check and make asan run the full sizes.
#
# Criterion starts libgit2 (for its diffs) in every process, and libgit2 parses the system's CA
# bundle (mbedTLS, some 140 certificates) as it starts: 0.6 s of every test process under
# memcheck, about 150 s of CPU over the 250 of them. No test makes a TLS connection, so where it
# can (root, a private mount namespace) the run sees /dev/null in the bundle's place; elsewhere
# it runs as it is. Nothing outside the run sees the change.
# Usage: tools/valgrind.sh BINARY [criterion args]
set -u
ca=/etc/ssl/certs/ca-certificates.crt
if [ -z "${LUNA_VALGRIND_NS:-}" ] && [ "$(id -u)" = 0 ] && [ -f "$ca" ] && unshare -m true 2>/dev/null; then
  LUNA_VALGRIND_NS=1 exec unshare -m sh -c 'mount --bind /dev/null "$1" 2>/dev/null; shift; exec sh "$@"' \
    sh "$ca" "$0" "$@"
fi
export LUNA_TEST_UNDER_VALGRIND=1
bin=$1; shift
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
valgrind -q --trace-children=yes --child-silent-after-fork=no --leak-check=full \
  --errors-for-leak-kinds=definite,indirect --error-exitcode=1 \
  --log-file="$logs/vg.%p.log" "$bin" --jobs "${VALGRIND_JOBS:-2}" "$@"
rc=$?
n=$(ls "$logs" | wc -l)
bad=0
for f in "$logs"/vg.*.log; do
  if [ -s "$f" ]; then
    echo "valgrind: errors in $(basename "$f"):"; cat "$f"; bad=1
  fi
done
echo "valgrind: $n processes checked"
[ "$rc" = 0 ] && [ "$bad" = 0 ] && [ "$n" -gt 1 ]
