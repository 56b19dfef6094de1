"""lm_ngram.py - byte n-gram language model with interpolated modified Kneser-Ney smoothing.

    /usr/bin/python3 tools/baselines/lm_ngram.py      # after tools/data/austen.py

Trained on data/austen/train.txt; the order k (2..MAX_ORDER) is chosen by bits per byte on
valid.txt; reports bits/byte on valid, test (Persuasion), valid_renamed (valid.txt with the
training novels' own names replaced: lm_data.renamed_valid(), the stand-in for a new novel that
model selection uses) and, if present, ood_mobydick.txt.

Smoothing (Chen & Goodman 1998, "interpolated modified Kneser-Ney"), over the 256 byte values:
  p_n(w|h) = max(c_n(h w) - D_n(c_n(h w)), 0) / c_n(h)  +  gamma_n(h) * p_{n-1}(w|h')
  gamma_n(h) = (D_n1 N1(h.) + D_n2 N2(h.) + D_n3+ N3+(h.)) / c_n(h)
  h' = h without its first byte; p_0(w) = 1/256; if c_n(h) = 0 then p_n(w|h) = p_{n-1}(w|h').
  c_k = raw counts at the top order k; c_n for n < k = continuation counts, the number of
  distinct bytes x with "x h w" seen in training. Discounts from the count-of-counts n1..n4 of
  each order's counts: Y = n1/(n1+2 n2), D1 = 1-2Y n2/n1, D2 = 2-3Y n3/n2, D3+ = 3-4Y n4/n3
  (D = 0.75 for all three when n1, n2 or n3 is 0, which happens only for tiny count tables).
Each evaluation file is scored as one stream from an empty context (the first k-1 bytes use the
lower orders); bits/byte = -mean log2 p over all its bytes. For the test novel, the chosen
order's total bits in each chapter (lm_data.chapter_spans) are kept too, so that
tools/train_lm.py can compare a model with the n-gram chapter by chapter. The probabilities
are checked to sum to 1 over the 256 bytes for a sample of contexts. Deterministic; no
randomness.
Writes data/austen/baseline_ngram.json.
"""

import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import lm_data  # noqa: E402  (tools/lm_data.py: the renamed validation chapters, chapter_spans)

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
DATA = os.path.join(ROOT, "data", "austen")
MIN_ORDER, MAX_ORDER = 2, 8  # n-gram keys are packed into uint64, so at most 8


def read(name):
    with open(os.path.join(DATA, name), "rb") as f:
        return np.frombuffer(f.read(), np.uint8)


def ngram_keys(b, n):
    """uint64 keys of the n-grams ending at positions n-1 .. len(b)-1 (first byte highest)."""
    t = len(b) - n + 1
    k = np.zeros(max(t, 0), np.uint64)
    for j in range(n):
        k = (k << np.uint64(8)) | b[j : j + t].astype(np.uint64)
    return k


def mask(n):
    return np.uint64((1 << (8 * n)) - 1) if n < 8 else np.uint64(0xFFFFFFFFFFFFFFFF)


class Table:
    """One order's n-gram counts (sorted keys) and per-context statistics."""

    def __init__(self, keys, counts, n):
        self.keys, self.counts = keys, counts.astype(np.float64)
        cc = [int((counts == i).sum()) for i in (1, 2, 3, 4)]
        if min(cc[:3]) > 0:
            y = cc[0] / (cc[0] + 2 * cc[1])
            d = [1 - 2 * y * cc[1] / cc[0], 2 - 3 * y * cc[2] / cc[1], 3 - 4 * y * cc[3] / cc[2]]
        else:  # too few small counts to estimate (e.g. unigrams): the classic D = 0.75
            d = [0.75, 0.75, 0.75]
        self.D = np.array([0.0] + [max(x, 0.0) for x in d])  # indexed by min(count, 3)
        ctx = keys >> np.uint64(8) if n > 1 else np.zeros_like(keys)
        self.ctx, start = np.unique(ctx, return_index=True)  # keys sorted -> ctx sorted
        self.total = np.add.reduceat(self.counts, start)
        dc = self.D[np.minimum(counts, 3)]
        self.gamma_num = np.add.reduceat(dc, start)

    def lookup(self, q):
        """(count of n-gram q, context index, context found) for uint64 keys q."""
        i = np.minimum(np.searchsorted(self.keys, q), len(self.keys) - 1)
        c = np.where(self.keys[i] == q, self.counts[i], 0.0)
        qc = q >> np.uint64(8)
        j = np.minimum(np.searchsorted(self.ctx, qc), len(self.ctx) - 1)
        return c, j, self.ctx[j] == qc


class Counts:
    """Raw and continuation n-gram tables of a training byte string, shared by all orders."""

    def __init__(self, b, max_order):
        self.raw, self.cont = {}, {}
        uniq = {}
        for n in range(1, max_order + 1):
            keys, counts = np.unique(ngram_keys(b, n), return_counts=True)
            uniq[n] = keys
            self.raw[n] = Table(keys, counts, n)
        for n in range(1, max_order):
            # continuation count of g (n bytes) = number of distinct (n+1)-grams "x g"
            keys, counts = np.unique(uniq[n + 1] & mask(n), return_counts=True)
            self.cont[n] = Table(keys, counts, n)

    def model(self, k):
        return [self.cont[n] for n in range(1, k)] + [self.raw[k]]


def probs(tables, qs, maxorder=None):
    """p(w | h) for each position; qs[n-1] = uint64 keys of the n-gram (h's last n-1 bytes, w).
    maxorder: per position, the highest order usable (positions near the start of a stream)."""
    p = np.full(len(qs[0]), 1.0 / 256)
    for n, (t, q) in enumerate(zip(tables, qs), start=1):
        c, j, found = t.lookup(q)
        if maxorder is not None:
            found &= maxorder >= n
        pn = (np.maximum(c - t.D[np.minimum(c, 3).astype(np.int64)], 0.0)
              + t.gamma_num[j] * p) / t.total[j]
        p = np.where(found, pn, p)
    return p


def byte_bits(tables, b):
    """-log2 p of each byte of b, scored as one stream from an empty context."""
    k = len(tables)
    T = len(b)
    qs = []
    for n in range(1, k + 1):
        q = np.zeros(T, np.uint64)
        q[n - 1 :] = ngram_keys(b, n)
        qs.append(q)
    maxorder = np.minimum(np.arange(T) + 1, k)
    return -np.log2(probs(tables, qs, maxorder))


def bits_per_byte(tables, b):
    return float(byte_bits(tables, b).mean())


def check_normalised(tables, train, n_ctx=200):
    """sum_w p(w|h) == 1 for contexts h taken from training and for unseen random ones."""
    k = len(tables)
    rng = np.random.default_rng(0)
    pos = rng.integers(k, len(train), n_ctx // 2)
    ctxs = [train[i - k + 1 : i] for i in pos] + \
        [rng.integers(0, 256, k - 1).astype(np.uint8) for _ in range(n_ctx // 2)]
    worst = 0.0
    for h in ctxs:
        seqs = np.concatenate([np.repeat(h[None, :], 256, 0),
                               np.arange(256, dtype=np.uint8)[:, None]], 1)
        qs = []
        for n in range(1, k + 1):
            q = np.zeros(256, np.uint64)
            for col in range(k - n, k):
                q = (q << np.uint64(8)) | seqs[:, col].astype(np.uint64)
            qs.append(q)
        worst = max(worst, abs(probs(tables, qs).sum() - 1.0))
    if worst > 1e-9:
        sys.exit(f"order {k}: probabilities do not sum to 1 (max error {worst:g})")
    return worst


def main():
    t0 = time.time()
    for f in ("train.txt", "valid.txt", "test.txt"):
        if not os.path.exists(os.path.join(DATA, f)):
            sys.exit(f"data/austen/{f} missing: run tools/data/austen.py first")
    train = read("train.txt")
    evals = {"valid": read("valid.txt"), "test": read("test.txt"),
             "valid_renamed": lm_data.renamed_valid()}
    if os.path.exists(os.path.join(DATA, "ood_mobydick.txt")):
        evals["ood_mobydick"] = read("ood_mobydick.txt")
    counts = Counts(train, MAX_ORDER)
    t_count = time.time() - t0
    rows = []
    spans = lm_data.chapter_spans(evals["test"])
    chapter_bits = {}  # order -> total bits of each chapter of the test novel
    for k in range(MIN_ORDER, MAX_ORDER + 1):
        tables = counts.model(k)
        err = check_normalised(tables, train)
        row = {"order": k, "sum_to_one_max_error": err}
        for name, b in evals.items():
            bits = byte_bits(tables, b)
            row[name] = float(bits.mean())
            if name == "test":
                chapter_bits[k] = [float(bits[a:e].sum()) for a, e in spans]
        rows.append(row)
    best = min(rows, key=lambda r: r["valid"])
    names = list(evals)
    print(f"byte n-gram LM, interpolated modified Kneser-Ney; train = data/austen/train.txt "
          f"({len(train)} bytes)")
    print("bits per byte " + ", ".join(f"{n} = {len(b)} bytes" for n, b in evals.items()))
    print(f"{'order':>5}" + "".join(f"{n:>14}" for n in names))
    for r in rows:
        mark = "  <- chosen on valid" if r is best else ""
        print(f"{r['order']:>5}" + "".join(f"{r[n]:>14.4f}" for n in names) + mark)
    out = os.path.join(DATA, "baseline_ngram.json")
    res = {"model": "byte n-gram, interpolated modified Kneser-Ney (Chen & Goodman 1998)",
           "train": "data/austen/train.txt", "train_bytes": int(len(train)),
           "eval_bytes": {n: int(len(b)) for n, b in evals.items()},
           "chosen_order": best["order"],
           "bits_per_byte": {n: best[n] for n in names}, "by_order": rows,
           "test_chapters": {"spans": [[int(a), int(e)] for a, e in spans],
                             "bits": chapter_bits[best["order"]]},
           "seconds": round(time.time() - t0, 1), "counting_seconds": round(t_count, 1)}
    with open(out, "w") as f:
        json.dump(res, f, indent=1)
        f.write("\n")
    print(f"\nchosen order {best['order']}: " +
          ", ".join(f"{n} {best[n]:.4f}" for n in names) + " bits/byte")
    print(f"wrote {os.path.relpath(out, ROOT)}  ({time.time() - t0:.1f} s, counting "
          f"{t_count:.1f} s)")


if __name__ == "__main__":
    main()
