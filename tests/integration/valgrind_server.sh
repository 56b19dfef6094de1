#!/bin/sh
# valgrind_server.sh - lunaserve under valgrind's memcheck: start it on an ephemeral loopback
# port, send classify requests (text, list, base64, malformed, too large), generate requests
# (plain, streamed, sampled with stop sequences, malformed, a client that leaves mid-stream) and
# the GET endpoints, then SIGTERM. Fails on any memcheck error or definite leak, or a non-zero exit after the drain.
# Bounded: about 20 s. Uses $LUNA_BIN_DIR/lunaserve (default build/bin).
# Timing: memcheck runs the server some 50 times slower, more on a loaded machine: the waits are
# bounds that only catch a hang (120 s to start, 120 s a request), and the client that leaves
# mid-stream leaves after its first events, not after a fixed time.
set -u
cd "$(dirname "$0")/../.."
bin=${LUNA_BIN_DIR:-build/bin}/lunaserve
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# --fair-sched=yes: valgrind runs one thread at a time, and its default lock can leave a busy
# worker holding the CPU for minutes while MHD's thread waits (a /health took >30 s in CI).
valgrind -q --fair-sched=yes --leak-check=full --errors-for-leak-kinds=definite,indirect --error-exitcode=9 \
  --log-file="$tmp/vg.log" "$bin" --port 0 --classify-model tests/golden/email_subject_body \
  --generate-model tests/golden/lm_defaults --max-new-tokens 100000 --max-body-bytes 4096 --state-cache-interval 256 2>"$tmp/err" &
pid=$!
port=""
for _ in $(seq 1 480); do
  port=$(grep -o '"port":[0-9]*' "$tmp/err" | head -1 | cut -d: -f2)
  [ -n "$port" ] && break
  sleep 0.25
done
[ -n "$port" ] || { echo "valgrind_server: lunaserve did not start"; cat "$tmp/err"; kill $pid; exit 1; }
u="http://127.0.0.1:$port"
j='Content-Type: application/json'
ok=0 bad=0
check() { # check WANT_STATUS curl-args...
  want=$1; shift
  got=$(curl -s -o /dev/null -w '%{http_code}' --max-time 120 "$@")
  if [ "$got" = "$want" ]; then ok=$((ok + 1)); else bad=$((bad + 1)); echo "FAIL: $* -> $got, wanted $want"; fi
}
check 200 -XPOST "$u/classify" -H "$j" -d '{"inputs":"Subject: hi\n\nbody"}'
check 200 -XPOST "$u/classify" -H "$j" -d '{"inputs":["a","b","c"],"raw_scores":true}'
check 200 -XPOST "$u/predict" -H "$j" -d '{"inputs_base64":"AP8KAEE="}'
check 400 -XPOST "$u/classify" -H "$j" -d '{bad'
check 422 -XPOST "$u/classify" -H "$j" -d '{"inputs":7}'
check 413 -XPOST "$u/classify" -H "$j" --data-binary "{\"inputs\":\"$(head -c 6000 /dev/zero | tr '\0' x)\"}"
check 404 "$u/nope"
check 200 -XPOST "$u/generate" -H "$j" -d '{"inputs":"Hi","parameters":{"max_new_tokens":20,"details":true}}'
check 200 -XPOST "$u/generate_stream" -H "$j" -d '{"inputs":"Hi","parameters":{"max_new_tokens":20,"do_sample":true,"seed":1,"stop":["ab","\n"],"return_raw_bytes":true}}'
check 422 -XPOST "$u/generate" -H "$j" -d '{"inputs":"Hi","parameters":{"top_p":2}}'
# the prefix state cache: 1,500 bytes stored (256, 512, ..., 1280 and the end), then the same
# prompt (its end), a longer one (its last boundary) and one that parts early (256)
long=$(printf 'Norland%.0s' $(seq 1 214))
check 200 -XPOST "$u/generate" -H "$j" -d "{\"inputs\":\"$long\",\"parameters\":{\"max_new_tokens\":3}}"
check 200 -XPOST "$u/generate" -H "$j" -d "{\"inputs\":\"$long\",\"parameters\":{\"max_new_tokens\":3}}"
check 200 -XPOST "$u/v1/completions" -H "$j" -d "{\"prompt\":\"${long}more\",\"max_tokens\":3}"
short=$(printf 'Norland%.0s' $(seq 1 40))x
check 200 -XPOST "$u/generate" -H "$j" -d "{\"inputs\":\"$short\",\"parameters\":{\"max_new_tokens\":3}}"
hits=$(curl -s --max-time 120 "$u/metrics" | awk '/^luna_state_cache_hits_total / {print $2}')
if [ "${hits:-0}" -ge 3 ]; then ok=$((ok + 1)); else bad=$((bad + 1)); echo "FAIL: state cache hits: ${hits:-none}, wanted 3"; fi
# a client that leaves mid-stream: head takes the first 300 bytes of a long generation's events
# and exits, and curl, writing into the closed pipe, leaves
first=$(curl -sN --max-time 120 -XPOST "$u/generate_stream" -H "$j" \
  -d '{"inputs":"Hi","parameters":{"max_new_tokens":100000}}' | head -c 300)
case $first in
  *data:*) ok=$((ok + 1)) ;;  # keep-alive comments may come first: legal
  *) bad=$((bad + 1)); echo "FAIL: the long stream sent no event before the client left: $first" ;;
esac
check 200 -XPOST "$u/generate" -H "$j" -d '{"inputs":"after","parameters":{"max_new_tokens":5}}'
for p in health ready info metrics; do check 200 "$u/$p"; done
kill -TERM $pid
wait $pid
rc=$?
if [ -s "$tmp/vg.log" ]; then echo "valgrind_server: memcheck reports:"; cat "$tmp/vg.log"; bad=$((bad + 1)); fi
[ "$rc" = 0 ] || { echo "valgrind_server: exit status $rc after SIGTERM"; bad=$((bad + 1)); }
echo "$ok passed, $bad failed"
[ "$bad" = 0 ]
