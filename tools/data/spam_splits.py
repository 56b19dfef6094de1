"""spam_splits.py - deduplicated train/valid/test splits of the SpamAssassin corpus, as JSONL.

    tools/data/spamassassin.sh                       # once: data/spamassassin/raw/<folder>/*.txt
    /usr/bin/python3 tools/data/spam_splits.py       # writes data/spamassassin/*.jsonl

Rules (docs/data.md has the full description):
  * Messages are read as raw bytes. Labels by folder: easy-ham-1, easy-ham-2, hard-ham-1 = ham;
    spam-1, spam-2 = spam.
  * Dedup: body = the bytes after the first empty header line, exactly as the model's
    input_transform defines it (tools/data/email_transform.py). Walking the files in sorted
    "<folder>/<file>" order, a message whose sha1(body) was already seen is dropped.
  * h = int(sha1(body)[:8], 16).
  * main split: h % 10 in 0..7 -> train, 8 -> valid, 9 -> test.
  * period split: "earlier" folders easy-ham-1, spam-1 and the hard-ham-1 messages with h even
    form the training side; easy-ham-2, spam-2 and hard-ham-1 with h odd are period_test. Of the
    training side, h % 10 == 8 -> period_valid (~10%), the rest -> period_train.
  * Each line: {"label": "ham"|"spam", "text": raw bytes decoded as latin-1, "source":
    "<folder>/<file>"}, written with json.dumps (ASCII only, non-ASCII as \\u00XX), so
    text.encode("latin-1") == the original bytes.
"""

import glob
import hashlib
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from email_transform import body, subject_body  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
DATA = os.path.join(ROOT, "data", "spamassassin")
RAW = os.path.join(DATA, "raw")
LABELS = {"easy-ham-1": "ham", "easy-ham-2": "ham", "hard-ham-1": "ham",
          "spam-1": "spam", "spam-2": "spam"}
SPLITS = ["train", "valid", "test", "period_train", "period_valid", "period_test"]


def load_messages():
    """[(source, label, raw bytes, body sha1)] after dedup, in sorted source order."""
    paths = sorted(glob.glob(os.path.join(RAW, "*", "*.txt")))
    if not paths:
        sys.exit(f"no messages under {RAW}: run tools/data/spamassassin.sh first")
    seen = {}
    kept, dropped, cross = [], 0, 0
    for p in paths:
        folder, name = p.split(os.sep)[-2:]
        if folder not in LABELS:
            sys.exit(f"unexpected folder {folder}")
        src = f"{folder}/{name}"
        with open(p, "rb") as f:
            raw = f.read()
        h = hashlib.sha1(body(raw)).hexdigest()
        if h in seen:
            dropped += 1
            cross += LABELS[seen[h]] != LABELS[folder]
            continue
        seen[h] = folder
        kept.append((src, LABELS[folder], raw, h))
    print(f"read {len(paths)} messages; dropped {dropped} with an already-seen body "
          f"({cross} of them had the other label); {len(kept)} left")
    return kept, len(paths), dropped, cross


def assign(src, h):
    """(main split, period split) of a message with body sha1 hex h."""
    v = int(h[:8], 16)
    main = "train" if v % 10 < 8 else ("valid" if v % 10 == 8 else "test")
    folder = src.split("/")[0]
    early = folder in ("easy-ham-1", "spam-1") or (folder == "hard-ham-1" and v % 2 == 0)
    period = ("period_valid" if v % 10 == 8 else "period_train") if early else "period_test"
    return main, period


def main():
    msgs, n_read, n_dropped, n_cross = load_messages()
    out = {s: [] for s in SPLITS}
    for src, label, raw, h in msgs:
        for s in assign(src, h):
            out[s].append((src, label, raw))

    os.makedirs(DATA, exist_ok=True)
    summary = {"read": n_read, "dropped_duplicate_body": n_dropped,
               "dropped_with_other_label": n_cross, "kept": len(msgs), "splits": {}}
    pct = [5, 25, 50, 75, 95, 99]
    print(f"\n{'split':<13}{'ham':>6}{'spam':>6}{'total':>7}   raw bytes p5/p25/p50/p75/p95/p99"
          f"   (model input = subject_body)")
    for s in SPLITS:
        path = os.path.join(DATA, f"{s}.jsonl")
        with open(path + ".part", "w", encoding="ascii") as f:
            for src, label, raw in out[s]:
                text = raw.decode("latin-1")
                assert text.encode("latin-1") == raw
                f.write(json.dumps({"label": label, "text": text, "source": src}) + "\n")
        os.replace(path + ".part", path)
        lab = [m[1] for m in out[s]]
        raw_len = np.array([len(m[2]) for m in out[s]])
        in_len = np.array([len(subject_body(m[2])) for m in out[s]])
        rp = np.percentile(raw_len, pct).astype(int).tolist()
        ip = np.percentile(in_len, pct).astype(int).tolist()
        summary["splits"][s] = {"ham": lab.count("ham"), "spam": lab.count("spam"),
                                "total": len(lab), "file": os.path.relpath(path, ROOT),
                                "bytes": os.path.getsize(path),
                                "raw_len_percentiles": dict(zip(map(str, pct), rp)),
                                "model_input_len_percentiles": dict(zip(map(str, pct), ip))}
        print(f"{s:<13}{lab.count('ham'):>6}{lab.count('spam'):>6}{len(lab):>7}   "
              f"{'/'.join(map(str, rp)):<36}({'/'.join(map(str, ip))})")
    with open(os.path.join(DATA, "splits_summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
        f.write("\n")
    print(f"\nwrote {', '.join(s + '.jsonl' for s in SPLITS)} and splits_summary.json in "
          f"{os.path.relpath(DATA, ROOT)}/")


if __name__ == "__main__":
    main()
