"""spam_nb.py - multinomial naive Bayes on hashed byte 4-grams: the spam baseline.

    /usr/bin/python3 tools/baselines/spam_nb.py     # after tools/data/spam_splits.py

Input: the model's input bytes, subject_body(raw) (tools/data/email_transform.py = the
"email_subject_body" transform: unfolded Subject, "\\n", raw body). Features: every byte 4-gram
(overlapping, across the subject/body newline too) as a big-endian uint32 g, hashed to
B = 2^20 buckets by (g * 2654435761 mod 2^32) >> 12. Multinomial NB with additive smoothing:
theta_c[j] = (n_c[j] + alpha) / (N_c + alpha * B); score = log P(spam)/P(ham) (class priors
from the training counts) + sum over the 4-grams of log theta_spam/theta_ham; spam iff score > 0.
alpha is chosen on the split's validation set (accuracy, ties: higher F1, then larger alpha).

Two splits (docs/data.md): main (train/valid/test) and period (period_train/_valid/_test).
Reported on each test set: accuracy, spam precision / recall / F1 at score > 0, and spam recall
at 1% false-positive rate two ways:
  * oracle: threshold = the test set's own ham scores' 1% tail (allowed FPs = floor(1% of test
    ham)), which peeks at the test labels and is an upper bound;
  * valid-calibrated: threshold from the validation set's ham the same way, applied to test
    (the honest number; its actual test FPR is reported next to it).
Deterministic (no randomness). Writes data/spamassassin/baseline_nb.json.
"""

import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data"))
from email_transform import subject_body  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
DATA = os.path.join(ROOT, "data", "spamassassin")
BITS = 20
B = 1 << BITS
ALPHAS = [10.0**-k for k in range(10, -1, -1)]  # 1e-10 ... 1 (1 = Laplace)
FPR = 0.01


def buckets(x):
    a = np.frombuffer(x, np.uint8).astype(np.uint32)
    if len(a) < 4:
        return np.zeros(0, np.int64)
    g = (a[:-3] << 24) | (a[1:-2] << 16) | (a[2:-1] << 8) | a[3:]
    return ((g * np.uint32(2654435761)) >> np.uint32(32 - BITS)).astype(np.int64)


def load(split):
    """(bucket indices of all docs, doc id of each index, labels 1=spam) of a split file."""
    path = os.path.join(DATA, f"{split}.jsonl")
    if not os.path.exists(path):
        sys.exit(f"{path} missing: run tools/data/spamassassin.sh and tools/data/spam_splits.py")
    idx, labels = [], []
    with open(path, encoding="ascii") as f:
        for line in f:
            d = json.loads(line)
            idx.append(buckets(subject_body(d["text"].encode("latin-1"))))
            labels.append(d["label"] == "spam")
    doc = np.repeat(np.arange(len(idx)), [len(i) for i in idx])
    return np.concatenate(idx), doc, np.array(labels)


class NB:
    def __init__(self, train):
        idx, doc, y = train
        spam_tok = y[doc]
        self.n_spam = np.bincount(idx[spam_tok], minlength=B).astype(np.float64)
        self.n_ham = np.bincount(idx[~spam_tok], minlength=B).astype(np.float64)
        self.prior = np.log(y.sum() / (~y).sum())

    def weights(self, alpha):
        ls = np.log(self.n_spam + alpha) - np.log(self.n_spam.sum() + alpha * B)
        lh = np.log(self.n_ham + alpha) - np.log(self.n_ham.sum() + alpha * B)
        return ls - lh

    def scores(self, data, alpha):
        idx, doc, y = data
        return self.prior + np.bincount(doc, weights=self.weights(alpha)[idx], minlength=len(y))


def metrics(score, y, thr=0.0):
    pred = score > thr
    tp, fp = int((pred & y).sum()), int((pred & ~y).sum())
    fn, tn = int((~pred & y).sum()), int((~pred & ~y).sum())
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return {"accuracy": (tp + tn) / len(y), "precision": prec, "recall": rec, "f1": f1,
            "tp": tp, "fp": fp, "fn": fn, "tn": tn}


def threshold_at_fpr(ham_scores, fpr):
    """Smallest threshold t with at most floor(fpr * n_ham) ham scores > t."""
    s = np.sort(ham_scores)[::-1]
    k = int(np.floor(fpr * len(s)))
    return float(s[k]) if k < len(s) else -np.inf


def run(name, tr, va, te):
    t0 = time.time()
    train, valid, test = load(tr), load(va), load(te)
    nb = NB(train)
    sweep = []
    for a in ALPHAS:
        m = metrics(nb.scores(valid, a), valid[2])
        sweep.append({"alpha": a, "valid_accuracy": m["accuracy"], "valid_f1": m["f1"]})
    best = max(sweep, key=lambda r: (r["valid_accuracy"], r["valid_f1"], r["alpha"]))
    print(f"\n[{name}] valid accuracy by alpha ({va}):\n  " +
          "  ".join(f"{r['alpha']:g}:{100 * r['valid_accuracy']:.2f}%" for r in sweep) +
          f"\n  -> alpha = {best['alpha']:g}")
    n_train = int(len(train[2]))
    return [evaluate(nb, name, tr, va, te, n_train, valid, test, best["alpha"], sweep, t0),
            evaluate(nb, name + " a=1", tr, va, te, n_train, valid, test, 1.0, sweep, t0)]


def evaluate(nb, name, tr, va, te, n_train, valid, test, alpha, sweep, t0):
    """Test metrics at one alpha (the valid-chosen one, and Laplace alpha = 1 for reference)."""
    sv, st = nb.scores(valid, alpha), nb.scores(test, alpha)
    yv, yt = valid[2], test[2]
    res = metrics(st, yt)
    t_or = threshold_at_fpr(st[~yt], FPR)
    t_va = threshold_at_fpr(sv[~yv], FPR)
    at_or, at_va = metrics(st, yt, t_or), metrics(st, yt, t_va)
    res.update({
        "split": name, "train": tr, "valid": va, "test": te, "alpha": alpha,
        "n_train": n_train, "n_valid": int(len(yv)), "n_test": int(len(yt)),
        "test_ham": int((~yt).sum()), "test_spam": int(yt.sum()),
        "recall_at_1pct_fpr_oracle": at_or["recall"], "fpr_oracle": at_or["fp"] / (~yt).sum(),
        "recall_at_1pct_fpr_valid_threshold": at_va["recall"],
        "test_fpr_at_valid_threshold": at_va["fp"] / (~yt).sum(),
        "alpha_sweep": sweep, "seconds": round(time.time() - t0, 1)})
    return res


def main():
    t0 = time.time()
    results = run("main", "train", "valid", "test") + \
        run("period", "period_train", "period_valid", "period_test")
    print(f"\nmultinomial NB, hashed byte 4-grams (2^{BITS} buckets), input = subject_body(raw)")
    hdr = (f"{'split':<12}{'alpha':>7}{'n_test':>8}{'acc':>8}{'prec':>8}{'rec':>8}{'F1':>8}"
           f"{'R@1%FPR':>10}{'R@1%FPR':>10}{'(FPR)':>8}")
    print(hdr)
    print(f"{'':<59}{'oracle':>10}{'valid-thr':>10}")
    for r in results:
        print(f"{r['split']:<12}{r['alpha']:>7g}{r['n_test']:>8}{100 * r['accuracy']:>7.2f}%"
              f"{100 * r['precision']:>7.2f}%{100 * r['recall']:>7.2f}%{100 * r['f1']:>7.2f}%"
              f"{100 * r['recall_at_1pct_fpr_oracle']:>9.2f}%"
              f"{100 * r['recall_at_1pct_fpr_valid_threshold']:>9.2f}%"
              f"{100 * r['test_fpr_at_valid_threshold']:>7.2f}%")
    out = os.path.join(DATA, "baseline_nb.json")
    with open(out, "w") as f:
        json.dump({"model": "multinomial naive Bayes", "features": f"hashed byte 4-grams, "
                   f"2^{BITS} buckets, (g*2654435761 mod 2^32)>>{32 - BITS}",
                   "input": "subject_body(raw)", "results": results}, f, indent=1)
        f.write("\n")
    print(f"\nwrote {os.path.relpath(out, ROOT)}  ({time.time() - t0:.1f} s)")


if __name__ == "__main__":
    main()
