#!/usr/bin/python3
"""tests/cluster/routing.py - the prefix state cache's hit rate across 3 replicas, with the
cache-aware routing of deploy/haproxy.cfg and with round robin (issue 26), on loopback only.

Each replica keeps the states of the prompts it has prefilled; a prompt that begins like one it
has seen is prefilled only from where they part. So the hit rate of a cluster depends on the
routing: backend lunaserve_gen hashes each generation request on its X-Session-Id header or on
its prompt's first bytes (deploy/haproxy.cfg), round robin sends it to the next replica.

The workload: DOCS documents of 20 to 50 KB (generated text), each asked QUESTIONS questions in
order by one client, CLIENTS clients at once (each with DOCS / CLIENTS documents, in a shuffled
order). Document i is asked, by i % 4:
  0  /v1/chat/completions: a system message, then the document and one question (a new chat each time)
  1  /generate: "Read the document ... " + document + question
  2  /v1/completions: the same prompt
  3  one chat that grows turn by turn (document + question, the answer, the next question, ...),
     every other one sent with an X-Session-Id header, the others keyed by their messages.
Every answer is 8 tokens. The first request of a document finds nothing cached on any replica:
DOCS of the DOCS x QUESTIONS requests are misses whatever the routing, so the best possible hit
rate is 1 - 1/QUESTIONS (93.75% with 16 questions); with round robin, a document is prefilled
on each replica it reaches, up to 3 misses per document.

Each mode runs on 3 fresh replicas (empty caches; deploy/lunaserve.env, the state cache's
defaults) behind HAProxy on deploy/haproxy.cfg (the @cluster-test lines rewritten as in
cluster.py; round robin: lunaserve_gen's "balance hash" line replaced by "balance roundrobin").
Afterwards, the replicas' /metrics: hit rate = hits / (hits + misses), the share of prompt tokens
the cache supplied, the tokens prefilled. Then, with cache-aware routing only: r3 is disabled
(HAProxy's stats socket) and each document asked once more: documents that were on r1 or r2
must stay there (consistent hashing moves only r3's share).

Checks: every request 200; one cache lookup per request; with cache-aware routing each document
stays on one replica and the hit rate is >= 90%, above round robin's. Prints a table and
"N passed, N failed"; exit 1 on a failure. Bounded: about 10 s here with the tiny model.

Env: LUNA_BIN_DIR (build/bin), ROUTING_MODEL (tests/golden/lm_defaults, a tiny LM: the hit rate
does not depend on the model; with models/austen-lm a first prefill of 50 KB takes ~10 s per
replica core, several minutes in all, and past the replicas' 60 s deadline on a busy machine),
ROUTING_DOCS (12), ROUTING_QUESTIONS (16), ROUTING_CLIENTS (4).
"""
import http.client
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))
import cluster  # noqa: E402
from lunaserve_proc import wrap  # noqa: E402

BIN = os.path.join(ROOT, os.environ.get("LUNA_BIN_DIR", "build/bin"), "lunaserve")
MODEL = os.path.join(ROOT, os.environ.get("ROUTING_MODEL", "tests/golden/lm_defaults"))
DOCS = int(os.environ.get("ROUTING_DOCS", "12"))
QUESTIONS = int(os.environ.get("ROUTING_QUESTIONS", "16"))
CLIENTS = int(os.environ.get("ROUTING_CLIENTS", "4"))
CLIENT_TIMEOUT = 90.0  # past HAProxy's timeout queue + timeout server: a hang bound only
UP_TIMEOUT = 60
TARGET = 0.90
NEW_TOKENS = 8
SYSTEM = "You answer questions about the document the user gives you, briefly."
PREAMBLE = "Read the document below and answer the question after it.\n\n"
WORDS = ("it is a truth universally acknowledged that a single man in possession of a good fortune must "
         "be in want of a wife however little known the feelings or views of such a man may be on his "
         "first entering neighbourhood this truth is so well fixed in the minds of the surrounding "
         "families that he is considered as the rightful property of some one or other their daughters").split()
QWORDS = "who what when where why how did does the letter ball estate sister visit mean say".split()

check = cluster.check


def document(i):
    rng = random.Random(1000 + i)
    size = 20000 + (30000 * i) // max(1, DOCS - 1)
    text = f"Chapter {i + 1}. " + " ".join(rng.choice(WORDS) for _ in range(size // 4))
    return text[:size]


def question(i, j):
    rng = random.Random(i * 1000 + j)
    return " ".join(rng.choice(QWORDS) for _ in range(rng.randint(4, 12))) + "?"


class Conversation:
    """Document i's requests, one after the other: next() gives (path, body, headers)."""

    def __init__(self, i):
        self.i, self.j, self.kind, self.doc = i, 0, i % 4, document(i)
        self.messages = [{"role": "system", "content": SYSTEM}]
        self.headers = {"Content-Type": "application/json"}
        if self.kind == 3 and (i // 4) % 2 == 0:
            self.headers["X-Session-Id"] = f"conversation-{i}"

    def next(self):
        path, body = self.request()
        return path, body, self.headers

    def request(self):
        q = question(self.i, self.j)
        self.j += 1
        if self.kind == 0:
            msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"{self.doc}\n\n{q}"}]
            return "/v1/chat/completions", {"messages": msgs, "max_tokens": NEW_TOKENS, "seed": self.j}
        if self.kind == 1:
            return "/generate", {"inputs": f"{PREAMBLE}{self.doc}\n\nQuestion: {q}\nAnswer:",
                                 "parameters": {"max_new_tokens": NEW_TOKENS, "seed": self.j}}
        if self.kind == 2:
            return "/v1/completions", {"prompt": f"{PREAMBLE}{self.doc}\n\nQuestion: {q}\nAnswer:",
                                       "max_tokens": NEW_TOKENS, "seed": self.j}
        self.messages.append({"role": "user", "content": f"{self.doc}\n\n{q}" if self.j == 1 else q})
        return "/v1/chat/completions", {"messages": list(self.messages), "max_tokens": NEW_TOKENS, "seed": self.j}

    def answered(self, body):
        if self.kind == 3:
            self.messages.append({"role": "assistant", "content": body["choices"][0]["message"]["content"]})


def metrics(port):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    c.close()
    out = {}
    for name in ("luna_state_cache_hits_total", "luna_state_cache_misses_total", "luna_prompt_tokens_total",
                 "luna_prompt_tokens_reused_total"):
        m = re.search(rf"^{name} (\S+)$", text, re.M)
        out[name] = float(m.group(1)) if m else 0.0
    return out


def send(port, path, body, headers):
    """(status, parsed body or None, replica name from X-Lunaserve-Replica)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=CLIENT_TIMEOUT)
    try:
        c.request("POST", path, body=json.dumps(body).encode(), headers=headers)
        r = c.getresponse()
        data = r.read()
        try:
            parsed = json.loads(data)
        except ValueError:
            parsed = None
        return r.status, parsed, r.headers.get("X-Lunaserve-Replica", "?")
    except OSError as e:
        return f"{type(e).__name__}", None, "?"
    finally:
        c.close()


class Cluster:
    """3 replicas and HAProxy; routing "cache-aware" (deploy/haproxy.cfg) or "round robin"."""

    def __init__(self, tmp, routing):
        self.tmp, self.routing, self.procs, self.reps = tmp, routing, [], []
        self.sock = os.path.join(tmp, f"haproxy-{routing.replace(' ', '-')}.sock")

    def start(self):
        env = dict(os.environ)
        env.update(cluster.read_env_file(os.path.join(ROOT, "deploy/lunaserve.env")))
        env.update(LUNASERVE_HOST="127.0.0.1", LUNASERVE_PORT="0", LUNASERVE_HEALTH_PORT="0",
                   LUNASERVE_CLASSIFY_MODEL=os.path.join(ROOT, "models", "spam"), LUNASERVE_GENERATE_MODEL=MODEL)
        for i in range(3):
            log = os.path.join(self.tmp, f"{self.routing.replace(' ', '-')}-r{i + 1}.log")
            p = subprocess.Popen(wrap([BIN]), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=open(log, "w"))
            self.procs.append(p)
            self.reps.append({"log": log, "port": None, "health_port": None, "proc": p})
        deadline = time.monotonic() + UP_TIMEOUT
        while time.monotonic() < deadline and not all(r["port"] for r in self.reps):
            for r in self.reps:
                m = re.search(r'"msg":"listening".*?"port":(\d+),"health_port":(\d+)', open(r["log"]).read())
                if m:
                    r["port"], r["health_port"] = int(m.group(1)), int(m.group(2))
            if any(p.poll() is not None for p in self.procs):
                break
            time.sleep(0.05)
        if not check(f"{self.routing}: 3 replicas listening", all(r["port"] for r in self.reps),
                     " / ".join(open(r["log"]).read()[-300:] for r in self.reps)):
            return False
        self.fe = cluster.free_port()
        cfg = cluster.haproxy_config(os.path.join(ROOT, "deploy/haproxy.cfg"), self.fe,
                                     [(r["port"], r["health_port"]) for r in self.reps], self.sock)
        # which replica served a request, for the test's own accounting
        cfg = cfg.replace("\nbackend lunaserve_gen\n",
                          "\nbackend lunaserve_gen\n    http-response set-header X-Lunaserve-Replica %s\n")
        if self.routing == "round robin":
            cfg, n = re.subn(r"(?m)^(\s*)balance hash .*$", r"\1balance roundrobin", cfg)
            if not check("round robin: lunaserve_gen's balance hash line replaced", n == 1, f"{n} lines"):
                return False
        path = os.path.join(self.tmp, f"haproxy-{self.routing.replace(' ', '-')}.cfg")
        open(path, "w").write(cfg)
        c = subprocess.run(["haproxy", "-c", "-q", "-f", path], capture_output=True, text=True)
        if not check(f"{self.routing}: haproxy -c accepts the config", c.returncode == 0, c.stderr.strip()[-400:]):
            return False
        self.procs.append(subprocess.Popen(["haproxy", "-db", "-f", path], stdout=open(path + ".log", "w"),
                                           stderr=subprocess.STDOUT))
        deadline = time.monotonic() + UP_TIMEOUT
        st = {}
        while time.monotonic() < deadline:
            st = cluster.haproxy_stats(self.sock, ("lunaserve_gen",))
            if all(st.get(f"r{i}", {}).get("status") == "UP" for i in (1, 2, 3)):
                break
            time.sleep(0.1)
        return check(f"{self.routing}: HAProxy sees r1 r2 r3 UP", all(st.get(f"r{i}", {}).get("status") == "UP" for i in (1, 2, 3)),
                     str({k: v.get("status") for k, v in st.items()}))

    def metrics(self):
        per = [metrics(r["health_port"]) for r in self.reps]
        return per, {k: sum(m[k] for m in per) for k in per[0]}

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def workload(port):
    """Runs every conversation; returns (results, wall seconds): results[(doc)] = [(status, replica)]."""
    convs = [Conversation(i) for i in range(DOCS)]
    results = {i: [] for i in range(DOCS)}
    lock = threading.Lock()

    def client(k):
        mine = [c for c in convs if c.i % CLIENTS == k]
        rng = random.Random(k)
        for _ in range(QUESTIONS):
            rng.shuffle(mine)
            for conv in mine:
                try:
                    path, body, headers = conv.next()
                    status, parsed, rep = send(port, path, body, headers)
                    if status == 200 and parsed is not None:
                        conv.answered(parsed)
                except Exception as e:  # noqa: BLE001 (counted as a failed request, not lost)
                    status, rep = f"{type(e).__name__}: {e}", "?"
                with lock:
                    results[conv.i].append((status, rep))

    t0 = time.monotonic()
    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DOCS * QUESTIONS * CLIENT_TIMEOUT)
    return results, time.monotonic() - t0


def run_mode(tmp, routing):
    cl = Cluster(tmp, routing)
    try:
        if not cl.start():
            return None
        results, wall = workload(cl.fe)
        per, tot = cl.metrics()
        n = sum(len(v) for v in results.values())
        bad = [(i, s) for i, v in results.items() for s, _ in v if s != 200]
        check(f"{routing}: every request answered 200 ({n - len(bad)} of {DOCS * QUESTIONS})",
              n == DOCS * QUESTIONS and not bad, str(bad[:8]))
        lookups = tot["luna_state_cache_hits_total"] + tot["luna_state_cache_misses_total"]
        check(f"{routing}: one cache lookup per request ({lookups:.0f})", lookups == n)
        spread = {i: {rep for _, rep in v} for i, v in results.items()}
        out = {"routing": routing, "wall": wall, "per": per, "tot": tot, "requests": n,
               "replicas_per_doc": sum(len(s) for s in spread.values()) / DOCS}
        if routing == "cache-aware":
            check("cache-aware: every document's requests went to one replica",
                  all(len(s) == 1 for s in spread.values()), str({i: sorted(s) for i, s in spread.items() if len(s) != 1}))
            out["consistent"] = consistency(cl, spread)
        return out
    finally:
        cl.stop()


def consistency(cl, spread):
    """r3 disabled: documents of r1 and r2 stay where they were, r3's move. True when so."""
    cluster.haproxy_command(cl.sock, "disable server lunaserve_gen/r3")
    moved = {}
    for i in range(DOCS):
        path, body, headers = Conversation(i).next()  # its first request again: the same key
        status, _, rep = send(cl.fe, path, body, headers)
        moved[i] = (next(iter(spread[i])), rep, status)
    ok = all(st == 200 and (new == old if old != "r3" else new in ("r1", "r2")) for old, new, st in moved.values())
    n3 = sum(1 for old, _, _ in moved.values() if old == "r3")
    check(f"consistent hashing: with r3 out, r1's and r2's {DOCS - n3} documents stay, r3's {n3} move to r1/r2",
          ok, str(moved))
    return ok


def main():
    if not check(f"lunaserve binary {os.path.relpath(BIN, ROOT)}", os.access(BIN, os.X_OK), "run make first"):
        return 1
    sizes = [len(document(i)) for i in range(DOCS)]
    print(f"model: {os.path.relpath(MODEL, ROOT)}; {DOCS} documents of {min(sizes) // 1000}-{max(sizes) // 1000} KB, "
          f"{QUESTIONS} questions each, {CLIENTS} clients; best possible hit rate {1 - 1 / QUESTIONS:.1%}")
    tmp = tempfile.mkdtemp(prefix="lunaserve-routing-")
    try:
        t0 = time.monotonic()
        runs = [run_mode(tmp, r) for r in ("cache-aware", "round robin")]
        if None in runs:
            return 1
        print(f"\n{'routing':<12} {'requests':>8} {'hits':>5} {'misses':>6} {'hit rate':>8} {'prompt tok':>11} "
              f"{'reused':>11} {'reused %':>8} {'prefilled':>10} {'replicas/doc':>12} {'requests r1/r2/r3':>18} {'wall s':>7}")
        rate = {}
        for r in runs:
            t = r["tot"]
            h, m = t["luna_state_cache_hits_total"], t["luna_state_cache_misses_total"]
            pt, ru = t["luna_prompt_tokens_total"], t["luna_prompt_tokens_reused_total"]
            rate[r["routing"]] = h / (h + m) if h + m else 0.0
            dist = "/".join(f"{p['luna_state_cache_hits_total'] + p['luna_state_cache_misses_total']:.0f}" for p in r["per"])
            print(f"{r['routing']:<12} {r['requests']:>8} {h:>5.0f} {m:>6.0f} {rate[r['routing']]:>8.1%} {pt:>11.0f} "
                  f"{ru:>11.0f} {ru / pt if pt else 0:>8.1%} {pt - ru:>10.0f} {r['replicas_per_doc']:>12.2f} {dist:>18} {r['wall']:>7.1f}")
        print()
        check(f"cache-aware hit rate {rate['cache-aware']:.1%} >= {TARGET:.0%}", rate["cache-aware"] >= TARGET)
        check(f"cache-aware hit rate {rate['cache-aware']:.1%} > round robin's {rate['round robin']:.1%}",
              rate["cache-aware"] > rate["round robin"])
        print(f"{cluster.passed} passed, {cluster.failed} failed ({time.monotonic() - t0:.0f} s)")
        return 0 if cluster.failed == 0 else 1
    finally:
        if os.environ.get("CLUSTER_KEEP") == "1":
            print(f"scratch kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
