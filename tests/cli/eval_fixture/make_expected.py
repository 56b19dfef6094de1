#!/usr/bin/python3
"""make_expected.py - the numbers `luna eval` must print on this fixture, from the reference.

    /usr/bin/python3 tests/cli/eval_fixture/make_expected.py     # needs python3-torch

Reads messages.jsonl (8 short messages: "text" as latin-1-decoded bytes, or "text_base64") and
text.txt (a short UTF-8 paragraph), runs tools/luna_ref.py in float64 on the golden models
tests/golden/email_subject_body (labels ham/spam, random weights) and tests/golden/lm_defaults,
and writes expected.json. tests/cli/run.sh compares `luna eval --json` with it (tolerance 1e-4),
so the CLI test itself needs no torch. The definitions are the ones `luna eval --help` gives:
prediction = the likeliest label; log loss = mean -ln p(true label); per-label precision/recall/F1;
bits per byte = the mean -log2 p(byte) over the file scored as bos + every byte, each byte
predicted from the logits after the token before it, softmax over the whole vocabulary.
"""

import base64
import json
import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import torch  # noqa: E402
import luna_ref  # noqa: E402

CLF = "tests/golden/email_subject_body"
LM = "tests/golden/lm_defaults"


def classifier():
    model = luna_ref.load(os.path.join(ROOT, CLF))
    labels = model.cfg["labels"]
    stats = {k: {"count": 0, "predicted": 0, "correct": 0} for k in labels}
    n = nbytes = tokens = correct = 0
    nats = 0.0
    with open(os.path.join(HERE, "messages.jsonl"), encoding="ascii") as f:
        for line in f:
            r = json.loads(line)
            raw = r["text"].encode("latin-1") if "text" in r else base64.b64decode(r["text_base64"])
            out = model.forward(raw)
            logits = out["logits"]
            y = labels.index(r["label"])
            pred = int(torch.argmax(out["probs"]))
            nats += float(torch.logsumexp(logits, 0) - logits[y])
            stats[labels[y]]["count"] += 1
            stats[labels[pred]]["predicted"] += 1
            if pred == y:
                stats[labels[y]]["correct"] += 1
                correct += 1
            n += 1
            nbytes += len(raw)
            tokens += len(luna_ref.to_tokens(model.cfg, raw))
    per = {}
    for k, s in stats.items():
        p = s["correct"] / s["predicted"] if s["predicted"] else 0.0
        rc = s["correct"] / s["count"] if s["count"] else 0.0
        per[k] = {"precision": p, "recall": rc, "f1": 2 * p * rc / (p + rc) if p + rc else 0.0,
                  "count": s["count"], "predicted": s["predicted"]}
    return {"task": "classification", "model": CLF, "data": "messages.jsonl", "count": n,
            "bytes": nbytes, "tokens": tokens, "correct": correct, "accuracy": correct / n,
            "log_loss": nats / n, "labels": per}


def lm():
    model = luna_ref.load(os.path.join(ROOT, LM))
    c = model.cfg
    with open(os.path.join(HERE, "text.txt"), "rb") as f:
        data = f.read()
    toks = [c["bos_id"]] + [c["byte_offset"] + b for b in data]
    logits = model.forward(toks[:-1])["logits"]  # row i predicts toks[i + 1]
    nats = float(torch.nn.functional.cross_entropy(logits, torch.tensor(toks[1:]), reduction="sum"))
    return {"task": "causal-lm", "model": LM, "data": "text.txt", "bytes": len(data),
            "nats": nats, "bits_per_byte": nats / len(data) / math.log(2)}


def main():
    res = {"classifier": classifier(), "lm": lm()}
    with open(os.path.join(HERE, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(res, f, indent=1, sort_keys=True)
        f.write("\n")
    print(json.dumps(res, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
