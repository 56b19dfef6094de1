#!/usr/bin/python3
"""state_cache.py - the prefix state cache's benchmark (issue 26, rows 1 to 3 of its table):
two lunaserve processes on the bundled LM, started side by side on 127.0.0.1 (ephemeral ports),
one with the cache (--state-cache-bytes 256M, the default) and one without (0), measured in one
run, alternately, then stopped. `make bench-statecache` runs it.

    /usr/bin/python3 bench/state_cache.py            the full run (about 5 minutes on 2 cores)
    /usr/bin/python3 bench/state_cache.py --quick    a smoke run: small prompts, one repetition,
                                                     into build/statecache/quick

What it measures:
  1. Time to first token. A 204,800-byte prompt of Persuasion (the novel austen-lm never saw in
     training; data/austen/test.txt, which tools/data/austen.py extracts from Debian's
     r-cran-janeaustenr), max_new_tokens 1, on /generate_stream: from before the connect to the
     first token event. Then the same prompt + the next 100 bytes of the novel. Each server in
     turn (the order flips at each repetition), 3 repetitions, each from another place in the
     novel so that the cache's first request is cold; medians. Target: the second request on
     the cache's server >= 100x faster than the first.
  2. A 10-turn chat over a 51,200-byte document (the novel's first 51,200 bytes, in the system
     message), 10 questions,
     max_tokens 32, temperature 0, on /v1/chat/completions; each server keeps its own
     conversation (its replies appended), the two alternating turn by turn. Prefill tokens =
     luna_prompt_tokens_total - luna_prompt_tokens_reused_total over the 10 turns, against the
     tokens of the final conversation (the 10th prompt: target <= 1.2x with the cache); the wall
     time of the 10 turns on each; whether the two servers' replies are the same (they must be).
  3. Memory per cached prefix: /info state_cache.entry_bytes (a state, its logits, the entry),
     luna_state_cache_bytes / luna_state_cache_states after the run (the same with the keys),
     against a softmax KV cache of the same context: layers x tokens x d x 4 bytes (the engine's
     softmax decoder stores one tensor when K and V are tied, as in austen-lm), checked against
     `luna bench-gen --attention softmax` at 1k and 4k tokens, and twice that for a model whose
     K and V are separate.

Writes OUT/statecache-NAME.{md,json} (OUT: --out, env BENCH_OUT, default docs/bench; NAME:
--name, env BENCH_NAME, default <cpu>-<core>, bench/blasinfo.py) and prints the tables. The
servers pick their BLAS kernel at startup unless OPENBLAS_CORETYPE is set: run with
`env -u OPENBLAS_CORETYPE`. Exits 1 when a request fails or a server does not exit 0 on SIGTERM;
with --strict also when a target is missed or the servers' replies differ. A SIGALRM bounds the
run (--max-seconds). `--report FILE.json` rewrites the report of an earlier run (no servers).
Standard library only."""
import argparse
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "load"))
import blasinfo  # noqa: E402
from gensweep import HOST, Server, commit, own_cpu_s, sgemm  # noqa: E402

TEXT = "data/austen/test.txt"  # Persuasion, whole (tools/data/austen.py)
QUESTIONS = ["Who is Sir Walter Elliot?", "What is Kellynch Hall?", "Who is Anne?",
             "What does Lady Russell think of the debts?", "Why must they leave Kellynch?",
             "Who is Mr Shepherd?", "Who will rent the house?", "Where will Sir Walter go?",
             "Who is Mrs Clay?", "Summarise the document."]
SYSTEM = "Answer the questions about this text.\n"
TIMEOUT_S = 600  # X-Request-Timeout of every request: a 200 KB prefill under load is within it
CHAT_TOKENS = 32
KV_CHECK = "1k,4k"  # the contexts at which bench-gen's softmax KV cache is measured
CONTEXTS = [("16k", 16384), (None, None), ("1M", 1 << 20)]  # None: part 1's prompt


def novel():
    """Persuasion's text; runs tools/data/austen.py (apt-get download, no install) when missing."""
    path = os.path.join(ROOT, TEXT)
    if not os.path.exists(path):
        print("statecache: %s missing, running tools/data/austen.py" % TEXT, flush=True)
        subprocess.run(["/usr/bin/python3", os.path.join(ROOT, "tools/data/austen.py")], check=True)
    with open(path, encoding="utf-8") as f:
        return f.read()


def request(port, method, path, body=None, stream=False):
    """One request on a connection of its own: (status, seconds to the first token event or to
    the whole answer, the answer's JSON: the last event of a stream)."""
    c = http.client.HTTPConnection(HOST, port, timeout=TIMEOUT_S + 60)
    data = json.dumps(body).encode() if body is not None else None
    t0 = time.monotonic()
    c.request(method, path, data, {"Content-Type": "application/json", "X-Request-Timeout": str(TIMEOUT_S)})
    r = c.getresponse()
    if not stream or r.status != 200:
        raw = r.read()
        t = time.monotonic() - t0
        c.close()
        try:
            return r.status, t, json.loads(raw)
        except ValueError:
            return r.status, t, {"raw": raw.decode("utf-8", "replace")[:300]}
    first, last = None, None
    while True:
        line = r.readline()
        if not line:
            break
        if line.startswith(b"data:"):
            if first is None:
                first = time.monotonic() - t0
            last = line[5:].strip()
    c.close()
    return r.status, first, json.loads(last) if last else {}


def counters(srv):
    m = srv.metrics()
    keys = ("luna_prompt_tokens_total", "luna_prompt_tokens_reused_total", "luna_state_cache_hits_total",
            "luna_state_cache_misses_total", "luna_state_cache_bytes", "luna_state_cache_states",
            "luna_state_cache_entries", "luna_state_cache_evictions_total")
    return {k: int(m.get(k, 0)) for k in keys}


def delta(a, b):
    return {k: b[k] - a[k] for k in a}


def ttft_pair(srv, first, second, failures):
    """The two requests of part 1 on one server: each one's TTFT and what the counters saw."""
    out = []
    for prompt in (first, second):
        c0 = counters(srv)
        st, t, ans = request(srv.port, "POST", "/generate_stream",
                             {"inputs": prompt, "parameters": {"max_new_tokens": 1}}, stream=True)
        d = delta(c0, counters(srv))
        if st != 200 or t is None:
            failures.append({"part": "ttft", "status": st, "answer": ans})
        out.append({"ttft_s": t, "status": st, "text": ans.get("generated_text", ans.get("token", {}).get("text")),
                    "prompt_tokens": d["luna_prompt_tokens_total"], "reused": d["luna_prompt_tokens_reused_total"],
                    "hits": d["luna_state_cache_hits_total"]})
    return out


def part_ttft(servers, text, size, extra, reps, failures, log):
    """Part 1: reps repetitions, each from another place in the novel, the servers alternating."""
    res = {name: [] for name in servers}
    step = (len(text) - size - extra) // max(1, reps)
    for k in range(reps):
        at = k * step
        first = text[at:at + size]
        second = text[at:at + size + extra]
        order = list(servers) if k % 2 == 0 else list(reversed(list(servers)))
        for name in order:
            pair = ttft_pair(servers[name], first, second, failures)
            res[name].append({"offset": at, "order": order.index(name), "first": pair[0], "second": pair[1]})
            log("statecache: ttft rep %d %-8s first %.3f s, +%d bytes %.4f s (reused %d of %d tokens)" % (
                k + 1, name, pair[0]["ttft_s"] or -1, extra, pair[1]["ttft_s"] or -1, pair[1]["reused"],
                pair[1]["prompt_tokens"]))
    summary = {}
    for name, rows in res.items():
        f = statistics.median(r["first"]["ttft_s"] for r in rows if r["first"]["ttft_s"] is not None)
        s = statistics.median(r["second"]["ttft_s"] for r in rows if r["second"]["ttft_s"] is not None)
        summary[name] = {"first_s": f, "second_s": s, "ratio": f / s if s else None}
    same = all(a["first"]["text"] == b["first"]["text"] and a["second"]["text"] == b["second"]["text"]
               for a, b in zip(res["cache"], res["no-cache"]))
    return {"prompt_bytes": size, "extra_bytes": extra, "reps": reps, "runs": res, "median": summary,
            "same_tokens": same}


def part_chat(servers, doc, turns, failures, log):
    """Part 2: a chat of `turns` questions over doc, each server with its own conversation, the
    servers alternating turn by turn."""
    conv = {name: [{"role": "system", "content": SYSTEM + doc}] for name in servers}
    c0 = {name: counters(s) for name, s in servers.items()}
    wall = {name: 0.0 for name in servers}
    rows, differ = [], []
    for n, q in enumerate(QUESTIONS[:turns]):
        order = list(servers) if n % 2 == 0 else list(reversed(list(servers)))
        row = {"turn": n + 1, "question": q}
        for name in order:
            conv[name].append({"role": "user", "content": q})
            body = {"messages": conv[name], "max_tokens": CHAT_TOKENS, "temperature": 0}
            before = counters(servers[name])
            st, t, ans = request(servers[name].port, "POST", "/v1/chat/completions", body)
            d = delta(before, counters(servers[name]))
            wall[name] += t
            if st != 200:
                failures.append({"part": "chat", "turn": n + 1, "server": name, "status": st, "answer": ans})
                reply, usage = "", {}
            else:
                reply, usage = ans["choices"][0]["message"]["content"], ans.get("usage", {})
            conv[name].append({"role": "assistant", "content": reply})
            row[name] = {"s": t, "reply": reply, "prompt_tokens": usage.get("prompt_tokens"),
                         "cached_tokens": usage.get("prompt_tokens_details", {}).get("cached_tokens"),
                         "completion_tokens": usage.get("completion_tokens"),
                         "prefilled": d["luna_prompt_tokens_total"] - d["luna_prompt_tokens_reused_total"]}
        if row["cache"]["reply"] != row["no-cache"]["reply"] and not differ:
            # the first turn at which they part: the request as the cache's server got it
            differ.append({"turn": n + 1, "request": {"messages": conv["cache"][:-1], "max_tokens": CHAT_TOKENS,
                                                      "temperature": 0},
                           "cache": row["cache"]["reply"], "no-cache": row["no-cache"]["reply"]})
        rows.append(row)
        log("statecache: chat turn %2d: cache %.2f s (prompt %s, cached %s), no-cache %.2f s, same reply: %s" % (
            n + 1, row["cache"]["s"], row["cache"]["prompt_tokens"], row["cache"]["cached_tokens"],
            row["no-cache"]["s"], row["cache"]["reply"] == row["no-cache"]["reply"]))
    out = {"doc_bytes": len(doc.encode()), "turns": turns, "max_tokens": CHAT_TOKENS, "rows": rows,
           "same_replies": not differ, "first_difference": differ[0] if differ else None}
    for name, s in servers.items():
        d = delta(c0[name], counters(s))
        out[name] = {"prompt_tokens_total": d["luna_prompt_tokens_total"],
                     "reused_tokens": d["luna_prompt_tokens_reused_total"],
                     "hits": d["luna_state_cache_hits_total"], "misses": d["luna_state_cache_misses_total"],
                     "wall_s": wall[name]}
    return summarise_chat(out)


def summarise_chat(chat):
    """The chat's figures from its counters and rows. The final conversation is the last turn's
    prompt counted as the metrics count it: usage.prompt_tokens (OpenAI's count, without bos) + 1."""
    for name in ("cache", "no-cache"):
        s, last = chat[name], chat["rows"][-1][name]
        final = (last["prompt_tokens"] or 0) + 1
        s["prefilled_tokens"] = s["prompt_tokens_total"] - s["reused_tokens"]
        s["final_prompt_tokens"] = final
        s["final_conversation_tokens"] = final + (last["completion_tokens"] or 0)
        s["ratio"] = s["prefilled_tokens"] / final
    return chat


def kv_check(luna, model):
    """`luna bench-gen --attention softmax` on the model at KV_CHECK: its KV cache's bytes."""
    r = subprocess.run([luna, "bench-gen", "--model", model, "--attention", "softmax", "--contexts", KV_CHECK,
                        "--steps", "5", "--json"], capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        return {"error": r.stderr.strip()[:300]}
    return [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]


def part_memory(info, config, cache_counters, prompt_bytes, prompt_tokens, kv_measured):
    """Part 3: a cached prefix's bytes against a softmax KV cache's at the same context."""
    cfg = dict(info["models"]["generate"]["config"], vocab_size=config["vocab_size"])
    sc = info["state_cache"]
    per_token = cfg["layers"] * cfg["d"] * 4  # K (= V when tied), float32, per layer
    kv_factor = 1 if cfg.get("tie_kv") else 2
    states = cache_counters["luna_state_cache_states"]
    avg = cache_counters["luna_state_cache_bytes"] / states if states else None
    interval, chunk = sc["interval_tokens"], sc["chunk_tokens"]
    rows = []
    for label, tokens in CONTEXTS:
        t = tokens or prompt_tokens
        label = label or "the %s-byte prompt" % num(prompt_bytes)
        # what one prompt of t tokens leaves in the cache: a state every interval, its last chunk
        # boundary and its end (fewer when they coincide)
        stops = {k * interval for k in range(1, t // interval + 1)} | {t // chunk * chunk, t}
        stops.discard(0)
        rows.append({"context": label, "tokens": t, "kv_bytes": kv_factor * per_token * t,
                     "kv_bytes_untied": 2 * per_token * t, "states_per_prompt": len(stops),
                     "prompt_cache_bytes": len(stops) * (avg or sc["entry_bytes"])})
    checks = []
    for r in kv_measured if isinstance(kv_measured, list) else []:
        checks.append({"n": r["n"], "state_bytes": r["state_bytes"], "formula_bytes_at_n": kv_factor * per_token * r["n"],
                       "rows_allocated": r["state_bytes"] // (kv_factor * per_token),
                       "rest_bytes": r["state_bytes"] % (kv_factor * per_token)})
    return {"state_bytes": info["models"]["generate"]["state_bytes"], "entry_bytes": sc["entry_bytes"],
            "vocab": cfg.get("vocab_size"), "avg_with_key_bytes": avg, "states": states,
            "cache_bytes": cache_counters["luna_state_cache_bytes"], "interval": interval,
            "tie_kv": bool(cfg.get("tie_kv")), "kv_bytes_per_token": kv_factor * per_token,
            "rows": rows, "bench_gen_softmax": kv_measured, "bench_gen_checks": checks}


# ---- the report ----------------------------------------------------------------------------------

def num(x, spec="{:,.0f}"):
    return "–" if x is None else spec.format(x)


def mib(b):
    if b is None:
        return "–"
    return "%.0f KiB" % (b / 2**10) if b < 2**20 else "%.1f MiB" % (b / 2**20) if b < 2**30 else "%.2f GiB" % (b / 2**30)


def report(raw, m):
    t, c, mem = raw["ttft"], raw["chat"], raw["memory"]
    L = ["# Prefix state cache (issue 26): time to first token, chat prefill, memory", ""]
    L += blasinfo.header(m)
    L += ["", "Run of %s, commit %s, %s run in %.0f s. Load average (1, 5, 15 min) %s before, %s after "
          "(the 2 cores were shared with other work). sgemm (1024³, 2 threads): %s GFLOP/s before, %s after." % (
              raw["date"], raw.get("commit"), "a quick (smoke)" if raw["quick"] else "the full", raw["run_s"],
              raw["loadavg_before"], raw["loadavg_after"], raw["sgemm_before"].get("gflops", "–"),
              raw["sgemm_after"].get("gflops", "–")),
          "",
          "Two servers started side by side (`%s`), the bundled LM `%s` (d %d, %d layers, l %d), "
          "2 workers x 1 BLAS thread each: **cache** (`--state-cache-bytes 256M`, the default, interval %d "
          "tokens) and **no-cache** (`--state-cache-bytes 0`). Text: Persuasion (`%s`, Debian's "
          "r-cran-janeaustenr via tools/data/austen.py), which the model never saw in training. Command:" % (
              " ".join(os.path.relpath(x, ROOT) if x.startswith(ROOT) else x for x in raw["argv"]["cache"][:1]),
              raw["model"], raw["config"]["d"], raw["config"]["layers"], raw["config"]["l"], mem["interval"], TEXT),
          "", "```sh", raw["command"], "```", ""]
    # 1
    L += ["## 1. Time to first token: a %s-byte prompt, then the same + %d bytes" % (
        num(t["prompt_bytes"]), t["extra_bytes"]), "",
          "`/generate_stream`, max_new_tokens 1, from before the connect to the first token event. %d repetitions, "
          "each from another offset of the novel (the cache's first request is cold), the servers alternating "
          "(the first flips each repetition); medians, every repetition in brackets." % t["reps"], ""]
    L += ["| server | first request (s) | + %d bytes (s) | first ÷ second | tokens reused by the second |" %
          t["extra_bytes"], "|---|---|---|---|---|"]
    for name in ("cache", "no-cache"):
        rows, s = t["runs"][name], t["median"][name]
        L.append("| %s | %.2f (%s) | %.4f (%s) | **%s×** | %s |" % (
            name, s["first_s"], ", ".join("%.2f" % r["first"]["ttft_s"] for r in rows), s["second_s"],
            ", ".join("%.4f" % r["second"]["ttft_s"] for r in rows), num(s["ratio"], "{:,.1f}"),
            ", ".join("%s of %s" % (num(r["second"]["reused"]), num(r["second"]["prompt_tokens"])) for r in rows)))
    L += ["", "The same first tokens on both servers: %s. Second request, no-cache ÷ cache: %.0f×." % (
        "yes" if t["same_tokens"] else "**no**", t["median"]["no-cache"]["second_s"] / t["median"]["cache"]["second_s"]),
          ""]
    # 2
    L += ["## 2. A %d-turn chat over a %s-byte document" % (c["turns"], num(c["doc_bytes"])), "",
          "`/v1/chat/completions`, the document in the system message, %d questions, max_tokens %d, "
          "temperature 0; each server continues its own conversation (its replies appended); the servers "
          "alternate turn by turn. Prefilled = `luna_prompt_tokens_total` − `luna_prompt_tokens_reused_total` "
          "over the turns; the final conversation = the last turn's prompt as the metrics count it "
          "(`usage.prompt_tokens` + 1: OpenAI's count leaves out the bos token)." % (
              c["turns"], c["max_tokens"]), "",
          "| server | prompt tokens, all turns | reused | prefilled | final conversation (tokens) | "
          "prefilled ÷ final | wall time, %d turns (s) |" % c["turns"], "|---|---|---|---|---|---|---|"]
    for name in ("cache", "no-cache"):
        s = c[name]
        L.append("| %s | %s | %s | %s | %s | **%s×** | %.1f |" % (
            name, num(s["prompt_tokens_total"]), num(s["reused_tokens"]), num(s["prefilled_tokens"]),
            num(s["final_prompt_tokens"]), num(s["ratio"], "{:.2f}"), s["wall_s"]))
    L += ["", "Wall time without ÷ with the cache: %.1f×. The same replies on both servers, every turn: %s." % (
        c["no-cache"]["wall_s"] / c["cache"]["wall_s"], "yes" if c["same_replies"] else "**no**")]
    if c["first_difference"]:
        L += ["", "They first differ at turn %d (the request is in the JSON file, `chat.first_difference`)." %
              c["first_difference"]["turn"]]
    L += ["", "Per turn (seconds; tokens the cache's server reused of its prompt):", "",
          "| turn | usage.prompt_tokens | cached_tokens | cache (s) | no-cache (s) |", "|---|---|---|---|---|"]
    for r in c["rows"]:
        L.append("| %d | %s | %s | %.2f | %.2f |" % (r["turn"], num(r["cache"]["prompt_tokens"]),
                                                     num(r["cache"]["cached_tokens"]), r["cache"]["s"],
                                                     r["no-cache"]["s"]))
    # 3
    L += ["", "## 3. Memory per cached prefix against a KV cache", "",
          "One cached state: `/info` state_cache.entry_bytes = **%s bytes** (the generation state %s bytes "
          "(`luna_gen_state_bytes`), the next-token logits %s x 4 bytes, the entry). With its key, on average "
          "over this run's cache: `luna_state_cache_bytes` ÷ `luna_state_cache_states` = %s ÷ %s = **%s bytes**. "
          "The cache stores a state every %s tokens of a prompt, at its last 256-token boundary and at its end, "
          "so a prompt of t tokens holds about t ÷ %s + 2 of them." % (
              num(mem["entry_bytes"]), num(mem["state_bytes"]), mem["vocab"], num(mem["cache_bytes"]),
              num(mem["states"]), num(mem["avg_with_key_bytes"]), num(mem["interval"]), num(mem["interval"])), "",
          "KV cache of a softmax model of the same shape: layers x tokens x d x 4 bytes = %s bytes per token "
          "(%s; a model with separate K and V stores twice that, 2 x layers x tokens x d x 4)." % (
              num(mem["kv_bytes_per_token"]),
              "K and V tied, as in austen-lm and as the engine's softmax decoder stores them" if mem["tie_kv"]
              else "separate K and V"), ""]
    L += ["| context | tokens | KV cache (K = V tied) | KV cache (K, V separate) | one cached state | KV ÷ one state | "
          "states one prompt leaves (interval %s) | their bytes | KV ÷ those |" % num(mem["interval"]),
          "|---|---|---|---|---|---|---|---|---|"]
    one = mem["avg_with_key_bytes"] or mem["entry_bytes"]
    for r in mem["rows"]:
        L.append("| %s | %s | %s | %s | %s | %s× | %d | %s | %s× |" % (
            r["context"], num(r["tokens"]), mib(r["kv_bytes"]), mib(r["kv_bytes_untied"]), mib(one),
            num(r["kv_bytes"] / one), r["states_per_prompt"], mib(r["prompt_cache_bytes"]),
            num(r["kv_bytes"] / r["prompt_cache_bytes"], "{:,.1f}")))
    if mem["bench_gen_checks"]:
        L += ["", "Checked against `luna bench-gen --model %s --attention softmax --contexts %s --steps 5`, "
              "whose state_bytes is the KV cache as allocated (it grows by 1.5x steps in 256-row multiples, "
              "so past the formula's live bytes): %s." % (raw["model"], KV_CHECK, "; ".join(
                  "n = %s: %s bytes measured = %s rows allocated x %s + %d, against %s live by the formula" % (
                      num(x["n"]), num(x["state_bytes"]), num(x["rows_allocated"]), num(mem["kv_bytes_per_token"]),
                      x["rest_bytes"], num(x["formula_bytes_at_n"]))
                  for x in mem["bench_gen_checks"])),
              "So bench-gen's KV cache is the formula's, per row; the table gives the live bytes (layers x tokens x "
              "d x 4), not the allocation, which is up to 1.5x more."]
    L += ["", "## Targets", "", "| target | result |", "|---|---|"]
    for tg in raw["targets"]:
        L.append("| %s | %s: %s |" % (tg["target"], "met" if tg["met"] else "**missed**", tg["value"]))
    if raw["failures"]:
        L += ["", "Failed requests: %d (see the JSON file)." % len(raw["failures"])]
    L += ["", "Servers' exit codes on SIGTERM: %s." % ", ".join("%s %s" % kv for kv in raw["server_exit"].items())]
    return "\n".join(L) + "\n"


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


class Alarm(Exception):
    pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(ROOT, "bin/lunaserve"))
    ap.add_argument("--luna", default=os.path.join(ROOT, "bin/luna"))
    ap.add_argument("--model", default="models/austen-lm")
    ap.add_argument("--out", default=None, help="directory (env BENCH_OUT; docs/bench; quick: build/statecache/quick)")
    ap.add_argument("--name", default=os.environ.get("BENCH_NAME"))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--strict", action="store_true")
    ap.add_argument("--max-seconds", type=int, default=900)
    ap.add_argument("--report", metavar="JSON", help="no run: rewrite the report of an earlier run's JSON file")
    a = ap.parse_args()
    os.chdir(ROOT)
    out = a.out or os.environ.get("BENCH_OUT") or ("build/statecache/quick" if a.quick else "docs/bench")
    if a.report:
        with open(a.report) as f:
            raw = json.load(f)
        summarise_chat(raw["chat"])
        return finish(raw, a.out or os.path.dirname(a.report), a.name, a.strict)
    size, extra, reps, doc_bytes, turns = (32768, 100, 1, 8192, 3) if a.quick else (204800, 100, 3, 51200, 10)

    def on_alarm(*_):
        raise Alarm("statecache: the run passed --max-seconds %d" % a.max_seconds)
    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("statecache: interrupted"))
    signal.alarm(a.max_seconds)

    def log(s):
        print(s, flush=True)

    text = novel()
    if len(text) < size + extra + doc_bytes:
        sys.exit("statecache: %s is too short" % TEXT)
    with open(os.path.join(a.model, "config.json")) as f:
        config = json.load(f)
    doc = text[:doc_bytes]  # the chat's document: the novel's first chapters (ASCII: bytes = characters)
    raw = {"quick": a.quick, "date": time.strftime("%Y-%m-%d", time.gmtime()), "model": a.model, "config": config,
           "text": TEXT, "commit": commit(), "loadavg_before": loadavg(),
           "env_openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
           "command": "env -u OPENBLAS_CORETYPE make bench-statecache   # /usr/bin/python3 bench/state_cache.py%s" % (
               " --quick" if a.quick else ""), "failures": []}
    servers, t_run = {}, time.monotonic()
    ok = False
    try:
        raw["sgemm_before"] = sgemm(a.luna, os.cpu_count())
        log("statecache: load average %s, sgemm %s GFLOP/s" % (raw["loadavg_before"], raw["sgemm_before"].get("gflops")))
        extra_args = ["--classify-model", "", "--max-body-bytes", "8M"]
        servers["cache"] = Server(a.bin, a.model, 32, os.cpu_count(), extra_args + ["--state-cache-bytes", "256M"])
        servers["no-cache"] = Server(a.bin, a.model, 32, os.cpu_count(), extra_args + ["--state-cache-bytes", "0"])
        raw["argv"] = {k: s.argv for k, s in servers.items()}
        raw["info"] = {k: json.loads(s.get("/info")) for k, s in servers.items()}
        m = blasinfo.machine(raw["info"]["cache"].get("blas"))
        log("statecache: %s; %s" % (blasinfo.cpu_line(m), blasinfo.blas_line(m)))
        raw["ttft"] = part_ttft(servers, text, size, extra, reps, raw["failures"], log)
        raw["chat"] = part_chat(servers, doc, turns, raw["failures"], log)
        cache_end = counters(servers["cache"])
        raw["counters_end"] = {k: counters(s) for k, s in servers.items()}
        prompt_tokens = raw["ttft"]["runs"]["cache"][0]["first"]["prompt_tokens"]
        raw["kv_measured"] = kv_check(a.luna, a.model)
        raw["memory"] = part_memory(raw["info"]["cache"], config, cache_end, size, prompt_tokens, raw["kv_measured"])
        raw["sgemm_after"] = sgemm(a.luna, os.cpu_count())
        ok = True
    finally:
        signal.alarm(0)
        raw["server_exit"] = {k: s.stop() for k, s in servers.items()}
        raw["server_log_errors"] = {k: [x for x in s.log if '"level":"error"' in x][-20:] for k, s in servers.items()}
        raw["run_s"] = round(time.monotonic() - t_run, 1)
        raw["client_cpu_s"] = round(own_cpu_s(), 2)
        raw["loadavg_after"] = loadavg()
        if not ok:
            os.makedirs("build/statecache", exist_ok=True)
            with open("build/statecache/partial.json", "w") as f:
                json.dump(raw, f, indent=1)
    return finish(raw, out, a.name, a.strict)


def finish(raw, out, name, strict):
    """The targets, the report and the JSON file; the exit code."""
    t, c = raw["ttft"]["median"], raw["chat"]
    raw["targets"] = [
        {"target": "time to first token: the 200 KB prompt + 100 bytes >= 100x faster than the prompt (cache)",
         "met": (t["cache"]["ratio"] or 0) >= 100,
         "value": "%.2f s, then %.4f s: %.0fx (without the cache %.2f s, then %.2f s: %.2fx)" % (
             t["cache"]["first_s"], t["cache"]["second_s"], t["cache"]["ratio"], t["no-cache"]["first_s"],
             t["no-cache"]["second_s"], t["no-cache"]["ratio"])},
        {"target": "10-turn chat: prefilled tokens <= 1.2x the final conversation (cache)",
         "met": (c["cache"]["ratio"] or 99) <= 1.2,
         "value": "%s of %s: %.2fx (without the cache %s: %.2fx); wall %.1f s with, %.1f s without" % (
             num(c["cache"]["prefilled_tokens"]), num(c["cache"]["final_prompt_tokens"]), c["cache"]["ratio"],
             num(c["no-cache"]["prefilled_tokens"]), c["no-cache"]["ratio"], c["cache"]["wall_s"],
             c["no-cache"]["wall_s"])},
        {"target": "the same output with and without the cache (parts 1 and 2)",
         "met": raw["ttft"]["same_tokens"] and c["same_replies"],
         "value": "first tokens %s, chat replies %s" % ("the same" if raw["ttft"]["same_tokens"] else "differ",
                                                       "the same" if c["same_replies"] else "differ")},
    ]
    m = blasinfo.machine(raw["info"]["cache"].get("blas"))
    name = blasinfo.run_name(m, name)
    os.makedirs(out, exist_ok=True)
    md = report(raw, m)
    with open(os.path.join(out, "statecache-%s.md" % name), "w") as f:
        f.write(md)
    with open(os.path.join(out, "statecache-%s.json" % name), "w") as f:
        json.dump(raw, f, indent=1)
    print(md)
    print("statecache: wrote %s/statecache-%s.{md,json}" % (out, name))
    bad = raw["failures"] or any(v != 0 for v in raw["server_exit"].values())
    missed = not all(tg["met"] for tg in raw["targets"])
    return 1 if bad or (strict and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
