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
for cmd in classify bench sgemm generate bench-gen bench-batch bench-pack; do
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
# plans (engine/luna.h): every plan classifies the same; the file is mapped, not read
head -c 5000 /dev/urandom > "$tmp/long"
for plan in resident streaming partial:1k auto; do
  expect "classify --plan $plan" 0 "$luna" classify --model "$model" --plan $plan "$tmp/long"
  sed 's/, "plan".*//' "$tmp/out" > "$tmp/plan.$plan"
done
grep_out "auto without a limit is resident" '"plan": "resident"' out
for plan in streaming partial:1k auto; do
  if cmp -s "$tmp/plan.resident" "$tmp/plan.$plan"; then pass=$((pass + 1)); else
    fail=$((fail + 1)); echo "FAIL plan $plan differs from resident"; diff "$tmp/plan.resident" "$tmp/plan.$plan" | head -4; fi
done
# the bundled spam model (2 layers, pooled from P): keeping rows saves no work, so auto streams
expect "spam auto plan" 0 "$luna" classify --model models/spam "$tmp/long"
grep_out "spam streams" '"plan": "streaming", "plan_rows": 0, "workspace_bytes": 0' out
expect "classify streaming" 0 "$luna" classify --model "$model" --plan streaming "$tmp/long"
grep_out "streaming keeps no row" '"plan": "streaming", "plan_rows": 0, "workspace_bytes": 0' out
expect "classify --max-workspace" 0 "$luna" classify --model "$model" --max-workspace 100K "$tmp/long"
# d 16: 100 KiB hold 1,600 rows of X; the plan keeps 1,536, on the 256-row boundary below
grep_out "a small limit gives a partial plan" '"plan": "partial", "plan_rows": 1536, "workspace_bytes": 98304' out
expect "classify --max-workspace 0" 0 "$luna" classify --model "$model" --max-workspace 0 "$tmp/long"
grep_out "no room: streaming" '"plan": "streaming"' out
: > "$tmp/empty"
expect "classify empty file" 0 "$luna" classify --model "$model" --plan streaming "$tmp/empty"
grep_out "empty file" '"input_bytes": 0' out
expect "classify a directory" 2 "$luna" classify --model "$model" "$tmp"
expect "classify bad plan" 2 "$luna" classify --model "$model" --plan sometimes "$tmp/long"
grep_out "bad plan named" "sometimes" err
expect "classify bad partial" 2 "$luna" classify --model "$model" --plan partial:x "$tmp/long"
expect "classify bad max-workspace" 2 "$luna" classify --model "$model" --max-workspace 12Q "$tmp/long"
expect "bench --plan streaming" 0 "$luna" bench --model "$model" --lengths 600 --plan streaming --json
grep_out "bench streaming row" '"plan": "streaming", "plan_rows": 0' out
expect "bench bad lengths" 2 "$luna" bench --model "$model" --lengths 12,x
expect "bench bad attention" 2 "$luna" bench --model "$model" --lengths 16 --attention quadratic
expect "bench runs" 0 "$luna" bench --model "$model" --lengths 16,64 --attention luna --threads 1
grep_out "bench table header" "rss_mb" out
expect "bench json softmax" 0 "$luna" bench --model "$model" --lengths 40 --attention softmax --json
grep_out "bench json row" '"attention": "softmax"' out
expect "sgemm bad size" 2 "$luna" sgemm --size 0

# ---- the BLAS kernel (engine/blas.h): named, switched by re-execution, checked, fallen back ----
expect "sgemm names the kernel" 0 "$luna" sgemm --size 64
grep_out "sgemm line" "GFLOP/s" out
grep_out "sgemm kernel line" "^# OpenBLAS [0-9.]*, core [A-Za-z0-9_]* (" out
# OpenBLAS's own choice for this CPU, without the environment's OPENBLAS_CORETYPE (if any)
expect "sgemm json" 0 env -u OPENBLAS_CORETYPE "$luna" --blas-core default sgemm --size 64 --json
default_core=$(/usr/bin/python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["blas"]["core"])' "$tmp/out")
grep_out "sgemm json blas" '"selection": "default"' out
# a named core is switched to (a re-execution with OPENBLAS_CORETYPE), whatever the environment says
expect "blas-core Prescott" 0 "$luna" --blas-core Prescott sgemm --size 64 --json
grep_out "runs on Prescott" '"core": "Prescott", "selection": "setting"' out
expect "blas-core= form" 0 "$luna" --blas-core=prescott sgemm --size 64 --json
grep_out "case-insensitive" '"core": "Prescott"' out
expect "LUNA_BLAS_CORE" 0 env LUNA_BLAS_CORE=Prescott "$luna" sgemm --size 64 --json
grep_out "env selects" '"core": "Prescott", "selection": "setting"' out
# the environment of the re-executed program is not left with the marker
expect "bench-gen under a switch" 0 "$luna" --blas-core Prescott bench-gen --model tests/golden/lm_defaults --contexts 64 --steps 4
grep_out "bench-gen header names the kernel" "^# OpenBLAS .*core Prescott (setting)" out
expect "bench header names the kernel" 0 "$luna" --blas-core Prescott bench --model "$model" --lengths 16 --threads 1
grep_out "bench header" "^# OpenBLAS .*core Prescott (setting)" out
expect "bench json names the core" 0 "$luna" --blas-core Prescott bench --model "$model" --lengths 16 --json
grep_out "bench json core" '"blas_core": "Prescott"' out
# a kernel that fails the self-check (injected) falls back to OpenBLAS's default, and says so
expect "self-check fallback" 0 env -u OPENBLAS_CORETYPE LUNA_BLAS_SELFCHECK_FAIL_ON=Prescott "$luna" --blas-core Prescott sgemm --size 64 --json
grep_out "fallback core" "\"core\": \"$default_core\", \"selection\": \"fallback\"" out
grep_out "fallback warning" "self-check failed on Prescott (error too large)" err
expect "self-check crash fallback" 0 env -u OPENBLAS_CORETYPE LUNA_BLAS_SELFCHECK_FAIL_ON=crash:Prescott "$luna" --blas-core Prescott sgemm --size 64 --json
grep_out "crash fallback warning" "self-check failed on Prescott (it crashed or hung)" err
# after a switch, the fallback restores the environment's OPENBLAS_CORETYPE
expect "fallback restores env" 0 env OPENBLAS_CORETYPE=Sandybridge LUNA_BLAS_SELFCHECK_FAIL_ON=Prescott "$luna" --blas-core Prescott sgemm --size 64 --json
grep_out "env restored" '"core": "Sandybridge", "selection": "fallback"' out
# a core set in the environment that fails goes back to OpenBLAS's own detection
expect "env core fails" 0 env OPENBLAS_CORETYPE=Prescott LUNA_BLAS_SELFCHECK_FAIL_ON=Prescott "$luna" sgemm --size 64 --json
grep_out "env core fallback" "\"core\": \"$default_core\", \"selection\": \"fallback\"" out
# OpenBLAS's own core failing: refuse to compute (exit 1) rather than give wrong numbers
expect "self-check default fails" 1 env -u OPENBLAS_CORETYPE LUNA_BLAS_SELFCHECK_FAIL_ON=$default_core "$luna" --blas-core default sgemm --size 64
grep_out "default failure says so" "self-check failed on OpenBLAS's own core $default_core" err
expect "blas-core bad name" 2 "$luna" --blas-core fast sgemm
grep_out "bad name named" "'fast'" err
expect "blas-core core not in library" 2 "$luna" --blas-core Sapphirerapids sgemm
grep_out "not in library" "no such core" err
expect "blas-core without value" 2 "$luna" --blas-core
expect "blas-core without command" 2 "$luna" --blas-core auto

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
expect "bench-batch runs" 0 "$luna" bench-batch --model "$lm" --batch 1,3 --context 40 --steps 3
grep_out "bench-batch names the kernel" "^# OpenBLAS" out
grep_out "bench-batch row" "^ *3 " out
expect "bench-batch json" 0 "$luna" bench-batch --model "$lm" --batch 2 --context 8 --steps 2 --json
grep_out "bench-batch json row" '"batch": 2' out
expect "bench-batch bad batch" 2 "$luna" bench-batch --model "$lm" --batch 0
expect "bench-batch classifier" 1 "$luna" bench-batch --model "$model"
expect "bench-pack runs" 0 "$luna" bench-pack --model "$model" --lengths 8,300 --rounds 1
grep_out "bench-pack names the kernel" "^# OpenBLAS" out
grep_out "bench-pack row: 8 bytes, several documents a pack" "^ *8 *[0-9]* *[0-9][0-9]* " out
grep_out "bench-pack says what does not fit" "300 bytes .* do not fit a pack" err
expect "bench-pack json" 0 "$luna" bench-pack --model "$model" --lengths 16 --rounds 2 --lanes 2 --json
if /usr/bin/python3 - "$tmp/out" <<'PY'
import json, sys
r = json.loads(open(sys.argv[1]).read())
assert r["bytes"] == 16 and r["docs"] > 1 and r["alone_ms"] > 0 and r["pack_ms"] > 0, r
assert r["max_rel_diff"] < 1e-4 and r["blas_core"] and r["lanes"] == 2, r
PY
then pass=$((pass + 1)); else fail=$((fail + 1)); echo "FAIL bench-pack json"; fi
expect "bench-pack bad rounds" 2 "$luna" bench-pack --model "$model" --rounds 0
expect "bench-pack bad lanes" 2 "$luna" bench-pack --model "$model" --lanes 0
expect "bench-pack language model" 1 "$luna" bench-pack --model "$lm"
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

# ---- eval: a fixture of 8 messages and a paragraph, scored by the golden models; the expected
# numbers come from tools/luna_ref.py (tests/cli/eval_fixture/make_expected.py, stored, so this
# needs no torch) ----
fx=tests/cli/eval_fixture
clf=tests/golden/email_subject_body
expect "eval --help" 0 "$luna" eval --help;            grep_out "eval help has usage" usage out
grep_out "help lists eval" "eval" out
expect "eval without --model" 2 "$luna" eval --data "$fx/messages.jsonl"; grep_out "eval names --model" "--model" err
expect "eval without --data" 2 "$luna" eval --model "$clf"; grep_out "eval names --data" "--data" err
expect "eval unknown flag" 2 "$luna" eval --model "$clf" --data "$fx/messages.jsonl" --frob
expect "eval extra argument" 2 "$luna" eval --model "$clf" --data "$fx/messages.jsonl" extra
expect "eval bad limit" 2 "$luna" eval --model "$clf" --data "$fx/messages.jsonl" --limit 0
expect "eval bad piece" 2 "$luna" eval --model "$lm" --data "$fx/text.txt" --piece x
expect "eval missing data file" 2 "$luna" eval --model "$clf" --data "$tmp/nope.jsonl"
expect "eval bad model dir" 1 "$luna" eval --model "$tmp/nomodel" --data "$fx/messages.jsonl"
expect "eval classifier table" 0 "$luna" eval --model "$clf" --data "$fx/messages.jsonl"
grep_out "eval table accuracy" "^accuracy " out
grep_out "eval table per label" "^spam " out
expect "eval classifier json" 0 "$luna" eval --model "$clf" --data "$fx/messages.jsonl" --json
cp "$tmp/out" "$tmp/eval_clf.json"
expect "eval classifier --limit" 0 "$luna" eval --model "$clf" --data "$fx/messages.jsonl" --json --limit 3
cp "$tmp/out" "$tmp/eval_lim.json"
expect "eval lm json" 0 "$luna" eval --model "$lm" --data "$fx/text.txt" --json
cp "$tmp/out" "$tmp/eval_lm.json"
expect "eval lm small pieces" 0 "$luna" eval --model "$lm" --data "$fx/text.txt" --json --piece 7
cp "$tmp/out" "$tmp/eval_lm7.json"
expect "eval lm --limit" 0 "$luna" eval --model "$lm" --data "$fx/text.txt" --json --limit 100
cp "$tmp/out" "$tmp/eval_lm100.json"
expect "eval lm table" 0 "$luna" eval --model "$lm" --data "$fx/text.txt"
grep_out "eval lm table bpb" "^bits/byte " out
if /usr/bin/python3 - "$fx/expected.json" "$tmp" <<'PY'
import json, sys
want = json.load(open(sys.argv[1]))
d = sys.argv[2]
def load(name):
    with open(f"{d}/{name}") as f:
        text = f.read()
    assert text.count("\n") == 1, "one JSON object on one line"
    return json.loads(text)
def close(a, b, what):
    assert abs(a - b) <= 1e-4, (what, a, b)
got, w = load("eval_clf.json"), want["classifier"]
for k in ("task", "count", "bytes", "tokens", "correct"):
    assert got[k] == w[k], (k, got[k], w[k])
close(got["accuracy"], w["accuracy"], "accuracy")
close(got["log_loss"], w["log_loss"], "log_loss")
assert list(got["labels"]) == ["ham", "spam"], got["labels"]
for lab, wl in w["labels"].items():
    for k in ("count", "predicted"):
        assert got["labels"][lab][k] == wl[k], (lab, k)
    for k in ("precision", "recall", "f1"):
        close(got["labels"][lab][k], wl[k], f"{lab} {k}")
assert got["messages_per_s"] > 0 and got["mb_per_s"] > 0 and got["seconds"] >= 0, got
lim = load("eval_lim.json")
assert lim["count"] == 3 and sum(v["count"] for v in lim["labels"].values()) == 3, lim
wl = want["lm"]
for name in ("eval_lm.json", "eval_lm7.json"):
    g = load(name)
    assert g["task"] == "causal-lm" and g["bytes"] == wl["bytes"], g
    close(g["bits_per_byte"], wl["bits_per_byte"], name)
    assert g["tokens_per_s"] > 0, g
assert load("eval_lm7.json")["piece"] == 7
assert load("eval_lm100.json")["bytes"] == 100
PY
then pass=$((pass + 1)); else fail=$((fail + 1)); echo "FAIL eval numbers differ from luna_ref (expected.json)"; fi
# A bad data line stops the evaluation with exit 1 and names FILE:LINE (here line 3, after two
# good lines); so does a file with no messages.
head -2 "$fx/messages.jsonl" > "$tmp/good2"
n=0
while IFS='|' read -r what line; do
  n=$((n + 1))
  { cat "$tmp/good2"; printf '%s\n' "$line"; } > "$tmp/bad$n.jsonl"
  expect "eval bad line: $what" 1 "$luna" eval --model "$clf" --data "$tmp/bad$n.jsonl"
  grep_out "eval bad line names the line: $what" "bad$n.jsonl:3: " err
done <<'EOF'
not JSON|{"label": "ham", "text": "x"
not an object|["ham", "x"]
no label|{"text": "x"}
unknown label|{"label": "eggs", "text": "x"}
no text|{"label": "ham"}
text and text_base64|{"label": "ham", "text": "x", "text_base64": "eA=="}
bad base64|{"label": "spam", "text_base64": "e*=="}
text not a string|{"label": "ham", "text": 7}
a character above U+00FF|{"label": "ham", "text": "caf\u0100"}
EOF
grep_out "eval names the bad character (the last case)" "above U+00FF" err
: > "$tmp/empty.jsonl"
expect "eval empty file" 1 "$luna" eval --model "$clf" --data "$tmp/empty.jsonl"
grep_out "eval empty file says so" "no messages" err
expect "eval lm empty file" 1 "$luna" eval --model "$lm" --data "$tmp/empty.jsonl"

echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
