#!/bin/sh
# tests/cli/run.sh - the `luna` command line, end to end: help, usage errors (exit 2), engine
# errors (exit 1), classify on a golden model (JSON that parses, probabilities that sum to 1)
# and a small bench; generate (seeded, stop sequences, prompt files) and bench-gen on a golden LM. Uses $LUNA_BIN_DIR/luna (default build/bin). Prints "N passed, N failed".
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
for cmd in classify bench sgemm generate bench-gen; do
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

# ---- generate and bench-gen on a golden causal LM ----
lm=tests/golden/lm_defaults
expect "generate without --model" 2 "$luna" generate --prompt hi
expect "generate without a prompt" 2 "$luna" generate --model "$lm"
expect "generate with two prompts" 2 "$luna" generate --model "$lm" --prompt a --prompt-file /dev/null
expect "generate bad temperature" 2 "$luna" generate --model "$lm" --prompt a --temperature -1
expect "generate bad top-p" 2 "$luna" generate --model "$lm" --prompt a --top-p 0
expect "generate empty stop" 2 "$luna" generate --model "$lm" --prompt a --stop ""
expect "generate bad seed" 2 "$luna" generate --model "$lm" --prompt a --seed -3
expect "generate on a classifier" 1 "$luna" generate --model "$model" --prompt a
grep_out "names the task" "not a causal-lm" err
expect "generate seeded" 0 "$luna" generate --model "$lm" --prompt "Once" --max-new-tokens 64 --seed 5 --top-k 50 --top-p 0.9
cp "$tmp/out" "$tmp/gen1"
grep_out "generate reports speeds" "prefill: 5 tokens in .* tokens/s); decode: 64 tokens" err
grep_out "generate reports the finish" "finish: length; seed: 5" err
expect "generate same seed" 0 "$luna" generate --model "$lm" --prompt "Once" --max-new-tokens 64 --seed 5 --top-k 50 --top-p 0.9
if cmp -s "$tmp/out" "$tmp/gen1" && [ "$(wc -c < "$tmp/gen1")" = 64 ]; then pass=$((pass + 1)); else
  fail=$((fail + 1)); echo "FAIL generate: the same seed gave other bytes (or not 64)"; fi
expect "generate other seed" 0 "$luna" generate --model "$lm" --prompt "Once" --max-new-tokens 64 --seed 6 --top-k 50 --top-p 0.9
if ! cmp -s "$tmp/out" "$tmp/gen1"; then pass=$((pass + 1)); else
  fail=$((fail + 1)); echo "FAIL generate: another seed gave the same bytes"; fi
printf 'Once' > "$tmp/prompt"
expect "generate prompt from stdin" 0 sh -c "\"$luna\" generate --model \"$lm\" --prompt-file - --max-new-tokens 64 --seed 5 --top-k 50 --top-p 0.9 < \"$tmp/prompt\""
if cmp -s "$tmp/out" "$tmp/gen1"; then pass=$((pass + 1)); else
  fail=$((fail + 1)); echo "FAIL generate: --prompt-file - differs from --prompt"; fi
# a stop sequence cut from the greedy output: the text ends before its first occurrence
if /usr/bin/python3 - "$luna" "$lm" <<'PY'
import subprocess, sys
luna, lm = sys.argv[1], sys.argv[2]
base = [luna, "generate", "--model", lm, "--prompt", "abc", "--max-new-tokens", "120", "--temperature", "0.7", "--seed", "9"]
full = subprocess.run(base, capture_output=True, check=True).stdout
assert len(full) == 120, len(full)
for at, n in ((0, 1), (30, 3), (100, 5)):
    stop = full[at:at + n]
    if b"\0" in stop:
        continue
    first = full.find(stop)
    r = subprocess.run(base + ["--stop", stop, "--stop", b"\xff\xfe\xfd\xfc\xfb"], capture_output=True, check=True)
    assert r.stdout == full[:first], (at, n, r.stdout, full[:first])
    assert b"finish: stop_sequence" in r.stderr, r.stderr
PY
then pass=$((pass + 1)); else fail=$((fail + 1)); echo "FAIL generate --stop"; fi
expect "generate softmax baseline" 0 "$luna" generate --model "$lm" --prompt "Once" --max-new-tokens 8 --temperature 0 --attention softmax
expect "bench-gen bad attention" 2 "$luna" bench-gen --model "$lm" --contexts 64 --attention softmax-stream
expect "bench-gen bad contexts" 2 "$luna" bench-gen --model "$lm" --contexts 64,x
expect "bench-gen luna" 0 "$luna" bench-gen --model "$lm" --contexts 64,2k --steps 20 --json
cp "$tmp/out" "$tmp/bg"
expect "bench-gen softmax" 0 "$luna" bench-gen --model "$lm" --contexts 64,2k --steps 20 --attention softmax --json
cat "$tmp/out" >> "$tmp/bg"
if /usr/bin/python3 - "$tmp/bg" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
luna = [r for r in rows if r["attention"] == "luna"]
kv = [r for r in rows if r["attention"] == "softmax"]
assert [r["n"] for r in luna] == [64, 2048] and [r["n"] for r in kv] == [64, 2048], rows
assert luna[0]["state_bytes"] == luna[1]["state_bytes"], luna      # a fixed-size state
assert kv[1]["state_bytes"] > 10 * kv[0]["state_bytes"], kv         # a cache that grows
assert all(r["step_ms"] > 0 and r["prefill_tok_s"] > 0 for r in rows), rows
PY
then pass=$((pass + 1)); else fail=$((fail + 1)); echo "FAIL bench-gen rows"; fi

echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
