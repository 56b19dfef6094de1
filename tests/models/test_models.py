#!/usr/bin/python3
"""test_models.py - the bundled models (models/spam, models/austen-lm) against the reference.

On a slice of their real held-out test data (tests/models/spam.jsonl, persuasion.txt) the C
engine must give what tools/luna_ref.py gave in float64 (expected.json, written by
make_fixture.py), through `luna eval` and through `lunaserve` started the way `make run` starts
it: no model flags, so the configured defaults load. Needs no torch and no data/.

    LUNA_BIN_DIR=build/bin /usr/bin/python3 tests/models/test_models.py
"""

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.dirname(HERE))
from lunaserve_proc import start  # noqa: E402
BIN = os.path.join(ROOT, os.environ.get("LUNA_BIN_DIR", "build/bin"))
TOL = 1e-4
# The bundled classifier must stay a real one: these messages were never trained on, and
# the naive Bayes baseline gets 97.5% of the whole test split right.
MIN_ACCURACY = 0.9

passed = failed = 0


def check(name, fn):
    global passed, failed
    try:
        fn()
        passed += 1
        print(f"ok   {name}")
    except Exception as e:  # noqa: BLE001 - any failure is reported with its name
        failed += 1
        print(f"FAIL {name}: {type(e).__name__}: {e}")


def ensure(cond, what):
    if not cond:
        raise AssertionError(what)


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def luna(*args):
    r = subprocess.run([os.path.join(BIN, "luna"), *args], capture_output=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, (args, r.returncode, r.stderr.decode(errors="replace"))
    return r.stdout


WANT = json.load(open(os.path.join(HERE, "expected.json"), encoding="utf-8"))
CLF, LM = WANT["classifier"], WANT["lm"]
MESSAGES = [json.loads(line) for line in open(os.path.join(HERE, "spam.jsonl"), encoding="ascii")]


def same_models():
    for w in (CLF, LM):
        got = sha256(os.path.join(ROOT, w["model"], "model.safetensors"))
        assert got == w["sha256"], (f"{w['model']} is not the model expected.json was made with: "
                                    "run /usr/bin/python3 tests/models/make_fixture.py")


def fixture_is_held_out_and_long():
    assert len(MESSAGES) == CLF["count"] and {m["label"] for m in MESSAGES} == {"ham", "spam"}
    assert max(len(m["text"]) for m in MESSAGES) > 16384, "a long message is part of the fixture"
    assert CLF["accuracy"] >= MIN_ACCURACY, CLF["accuracy"]


def eval_classifier():
    got = json.loads(luna("eval", "--model", CLF["model"], "--data", "tests/models/spam.jsonl", "--json"))
    assert got["count"] == CLF["count"] and got["correct"] == CLF["correct"], got
    assert abs(got["accuracy"] - CLF["accuracy"]) <= TOL, got
    assert abs(got["log_loss"] - CLF["log_loss"]) <= TOL * max(1.0, CLF["log_loss"]), (got, CLF["log_loss"])


def eval_plans_identical():
    # the streaming plan (no row kept) and a partial plan (the first 1,024 rows of each message
    # kept; the long message exceeds it) give the resident plan's metrics exactly
    def metrics(plan):
        got = json.loads(luna("eval", "--model", CLF["model"], "--data", "tests/models/spam.jsonl", "--plan", plan,
                              "--json"))
        return {k: v for k, v in got.items() if k not in ("seconds", "messages_per_s", "mb_per_s", "tokens_per_s")}
    resident = metrics("resident")
    assert resident["count"] == CLF["count"], resident
    for plan in ("streaming", "partial:1024"):
        assert metrics(plan) == resident, plan


def eval_lm():
    got = json.loads(luna("eval", "--model", LM["model"], "--data", "tests/models/persuasion.txt", "--json"))
    assert got["bytes"] == LM["bytes"], got
    assert abs(got["bits_per_byte"] - LM["bits_per_byte"]) <= TOL * LM["bits_per_byte"], (got, LM)


class DefaultServer:
    """lunaserve with no model flags, from the repository root, as tools/run.sh runs it."""

    def __init__(self):
        self.proc, self.port, self.log = start([os.path.join(BIN, "lunaserve"), "--host", "127.0.0.1", "--port", "0"])

    def post(self, path, body):
        # the server runs with its defaults, whose request deadline (60 s) a slow machine can pass
        # on the long message: each request asks for the client's own bound instead
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json", "X-Request-Timeout": "300"})
        with urllib.request.urlopen(req, timeout=330) as r:
            return json.loads(r.read())

    def get(self, path):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=60) as r:
            return json.loads(r.read())

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


def server_checks():
    s = DefaultServer()
    try:
        info = s.get("/info")["models"]
        check("server loads models/spam by default",
              lambda: ensure(info["classify"]["path"] == CLF["model"], info["classify"]))
        check("server loads models/austen-lm by default",
              lambda: ensure(info["generate"]["path"] == LM["model"], info["generate"]))

        def classify_each():
            for m, w in zip(MESSAGES, CLF["messages"]):
                assert m["source"] == w["source"]
                raw = m["text"].encode("latin-1")
                got = s.post("/classify", {"inputs_base64": base64.b64encode(raw).decode()})
                scores = {r["label"]: r["score"] for r in got}
                for lab, p in w["probs"].items():
                    assert abs(scores[lab] - p) <= TOL, (m["source"], lab, scores[lab], p)
                assert got[0]["label"] == max(w["probs"], key=w["probs"].get), (m["source"], got)
        check(f"POST /classify of {len(MESSAGES)} real test messages = the reference, per message", classify_each)

        def generate_greedy():
            prompt = "It was a truth"
            want = luna("generate", "--model", LM["model"], "--prompt", prompt, "--max-new-tokens", "64",
                        "--temperature", "0").decode("utf-8", errors="replace")
            got = s.post("/generate", {"inputs": prompt, "parameters": {"max_new_tokens": 64}})
            assert got["generated_text"] == want, (got, want)
            assert len(want.encode()) >= 32, want
        check("POST /generate greedy = luna generate --temperature 0", generate_greedy)
    finally:
        rc = s.stop()
    check("server drains and exits 0", lambda: ensure(rc == 0, rc))


def main():
    check("expected.json was made from the bundled models", same_models)
    check("fixture: held-out messages, one long, a real classifier", fixture_is_held_out_and_long)
    check("luna eval models/spam = reference (accuracy, log loss)", eval_classifier)
    check("luna eval models/spam: the same metrics under every plan", eval_plans_identical)
    check("luna eval models/austen-lm = reference (bits per byte)", eval_lm)
    server_checks()
    print(f"models: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
