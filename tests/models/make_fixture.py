#!/usr/bin/python3
"""make_fixture.py - the bundled models' check: a slice of their real test sets and the
reference's answers on it.

    /usr/bin/python3 tests/models/make_fixture.py    # needs data/ (docs/data.md) and python3-torch

Run it again whenever models/spam or models/austen-lm is retrained: tests/models/run.sh refuses
an expected.json whose sha256 of model.safetensors is not the bundled one's.

Writes, next to this file:
  spam.jsonl      MESSAGES_PER_LABEL ham and as many spam messages of the main test split
                  (data/spamassassin/test.jsonl: never seen in training), the first ones in the
                  order of sha1(text) with at most MAX_BYTES bytes, plus the longest ham and the
                  longest spam message under LONG_BYTES; the corpus is PDDL 1.0 / CC0 1.0
  persuasion.txt  the first LM_BYTES bytes of Persuasion (data/austen/test.txt; public domain)
  expected.json   tools/luna_ref.py in float64 on models/spam and models/austen-lm: each message's
                  probabilities, accuracy and log loss over the file, and the bits per byte of
                  the excerpt (bos + every byte, as `luna eval` scores it), with the definitions
                  of tests/cli/eval_fixture/make_expected.py
"""

import hashlib
import json
import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import torch  # noqa: E402
import luna_ref  # noqa: E402

CLF, LM = "models/spam", "models/austen-lm"
MESSAGES_PER_LABEL, MAX_BYTES, LONG_BYTES, LM_BYTES = 12, 8192, 65536, 4096


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def pick_messages():
    with open(os.path.join(ROOT, "data", "spamassassin", "test.jsonl"), encoding="ascii") as f:
        rows = [json.loads(line) for line in f]
    rows.sort(key=lambda r: hashlib.sha1(r["text"].encode("latin-1")).hexdigest())
    out = []
    for label in ("ham", "spam"):
        mine = [r for r in rows if r["label"] == label]
        out += [r for r in mine if len(r["text"]) <= MAX_BYTES][:MESSAGES_PER_LABEL]
        out.append(max((r for r in mine if len(r["text"]) <= LONG_BYTES), key=lambda r: len(r["text"])))
    return [{"label": r["label"], "text": r["text"], "source": r["source"]} for r in out]


def classifier(messages):
    model = luna_ref.load(os.path.join(ROOT, CLF))
    labels = model.cfg["labels"]
    per, correct, nats = [], 0, 0.0
    for r in messages:
        out = model.forward(r["text"].encode("latin-1"))
        logits, y = out["logits"], labels.index(r["label"])
        pred = int(torch.argmax(out["probs"]))
        nats += float(torch.logsumexp(logits, 0) - logits[y])
        correct += pred == y
        per.append({"source": r["source"], "label": r["label"], "bytes": len(r["text"]),
                    "probs": {lab: float(p) for lab, p in zip(labels, out["probs"])}})
    return {"model": CLF, "sha256": sha256(os.path.join(ROOT, CLF, "model.safetensors")),
            "data": "spam.jsonl", "count": len(messages), "correct": correct,
            "accuracy": correct / len(messages), "log_loss": nats / len(messages),
            "messages": per}


def lm(data):
    model = luna_ref.load(os.path.join(ROOT, LM))
    c = model.cfg
    toks = [c["bos_id"]] + [c["byte_offset"] + b for b in data]
    with torch.no_grad():
        logits = model.forward(toks[:-1])["logits"]  # row i predicts toks[i + 1]
    nats = float(torch.nn.functional.cross_entropy(logits, torch.tensor(toks[1:]), reduction="sum"))
    return {"model": LM, "sha256": sha256(os.path.join(ROOT, LM, "model.safetensors")),
            "data": "persuasion.txt", "bytes": len(data), "nats": nats,
            "bits_per_byte": nats / len(data) / math.log(2)}


def main():
    messages = pick_messages()
    with open(os.path.join(HERE, "spam.jsonl"), "w", encoding="ascii") as f:
        for r in messages:
            f.write(json.dumps(r) + "\n")
    with open(os.path.join(ROOT, "data", "austen", "test.txt"), "rb") as f:
        text = f.read(LM_BYTES)
    with open(os.path.join(HERE, "persuasion.txt"), "wb") as f:
        f.write(text)
    res = {"classifier": classifier(messages), "lm": lm(text)}
    with open(os.path.join(HERE, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(res, f, indent=1)
        f.write("\n")
    c, g = res["classifier"], res["lm"]
    print(f"spam: {c['correct']}/{c['count']} right, log loss {c['log_loss']:.4f}; "
          f"austen-lm: {g['bits_per_byte']:.4f} bits/byte on {g['bytes']} bytes of Persuasion")


if __name__ == "__main__":
    main()
