#!/bin/sh
# tests/cli/run.sh - the `luna` command line, end to end: help, usage errors (exit 2), engine
# errors (exit 1), classify on a golden model (JSON that parses, probabilities that sum to 1)
# and a small bench. Uses $LUNA_BIN_DIR/luna (default build/bin). Prints "N passed, N failed".
set -u
cd "$(dirname "$0")/../.."
luna=${LUNA_BIN_DIR:-build/bin}/luna
model=tests/golden/defaults
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pass=0 fail=0

# expect NAME STATUS CMD...: the command exits with STATUS
expect() {
  name=$1 want=$2; shift 2
  "$@" >"$tmp/out" 2>"$tmp/err"
  got=$?
  if [ "$got" = "$want" ]; then pass=$((pass + 1)); else
    fail=$((fail + 1)); echo "FAIL $name: exit $got, wanted $want"; sed 's/^/  | /' "$tmp/err" | head -5
  fi
}
# grep_out NAME PATTERN FILE: the last command's FILE (out or err) matches PATTERN
grep_out() {
  if grep -q -- "$2" "$tmp/$3"; then pass=$((pass + 1)); else
    fail=$((fail + 1)); echo "FAIL $1: '$2' not in std$3:"; sed 's/^/  | /' "$tmp/$3" | head -5
  fi
}

expect "help" 0 "$luna" --help;                       grep_out "help lists classify" classify out
expect "no command" 2 "$luna"
expect "unknown command" 2 "$luna" frobnicate;        grep_out "unknown command named" frobnicate err
for cmd in classify bench sgemm; do
  expect "$cmd --help" 0 "$luna" $cmd --help;         grep_out "$cmd help has usage" usage out
done
expect "classify without --model" 2 "$luna" classify; grep_out "names --model" "--model" err
expect "classify unknown flag" 2 "$luna" classify --model "$model" --frob
expect "classify missing file" 2 "$luna" classify --model "$model" "$tmp/nope"
expect "classify bad model dir" 1 "$luna" classify --model "$tmp/nomodel" /dev/null
grep_out "bad model names the file" "config.json" err
printf 'hello \000 world' > "$tmp/doc"
expect "classify file" 0 "$luna" classify --model "$model" "$tmp/doc"
cp "$tmp/out" "$tmp/classify.json"
if /usr/bin/python3 - "$tmp/classify.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
assert r["input_bytes"] == 13, r
assert abs(sum(r["probabilities"].values()) - 1) < 1e-5, r
assert r["label"] == max(r["probabilities"], key=r["probabilities"].get), r
assert abs(r["score"] - r["probabilities"][r["label"]]) < 1e-6, r
PY
then pass=$((pass + 1)); else fail=$((fail + 1)); echo "FAIL classify JSON"; fi
expect "classify stdin" 0 sh -c "\"$luna\" classify --model \"$model\" - < \"$tmp/doc\""
if cmp -s "$tmp/out" "$tmp/classify.json"; then pass=$((pass + 1)); else
  fail=$((fail + 1)); echo "FAIL classify stdin differs from file"; fi
expect "bench bad lengths" 2 "$luna" bench --model "$model" --lengths 12,x
expect "bench bad attention" 2 "$luna" bench --model "$model" --lengths 16 --attention quadratic
expect "bench runs" 0 "$luna" bench --model "$model" --lengths 16,64 --attention luna --threads 1
grep_out "bench table header" "rss_mb" out
expect "bench json softmax" 0 "$luna" bench --model "$model" --lengths 40 --attention softmax --json
grep_out "bench json row" '"attention": "softmax"' out
expect "sgemm bad size" 2 "$luna" sgemm --size 0

echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
