#!/usr/bin/python3
"""train_lm.py - train the causal byte-level Luna LM on Jane Austen and write models/austen-lm/.

    /usr/bin/python3 tools/train_lm.py --selftest          # float64 check against luna_ref (~20 s)
    /usr/bin/python3 tools/train_lm.py --minutes 3 --out /tmp/austen-smoke   # smoke run
    /usr/bin/python3 tools/train_lm.py --minutes 55      # -> models/austen-lm/ (2 threads, ctx 2048)
    (on a CPU without bf16 instructions, --procs 2 --threads 1 trains ~30% faster)

The model is luna_ref.LunaCausalLM itself (same modules, same parameter names, so luna_ref.save()
writes model.safetensors and luna_ref.load() reads it back), but it is run by lm_forward() below
instead of the reference's forward: a batched, chunked form of LUNA.md's causal attention with
no Python loop over time and no (n, k, l) cumulative tensor. For one head, with the sequence cut
into chunks of c tokens and S_K = sum k_i^T w_i (k x l), S_V = sum w_i^T v_i (l x k) over every
token before the chunk (engine/decoder.c's header comment):
    W = phi(C Pq^T)                                 (c, l)
    a = (Q S_K + tril(Q K^T) W) / t                 (c, l); alpha = softmax(a) over l
    o = (alpha S_V + tril(alpha W^T) V) / t         (c, k)
where tril keeps j <= i and t is each row's 1-based position. The per-chunk sums K^T W and W^T V
of all chunks are computed at once and an exclusive cumsum over the chunk axis gives every
chunk's S_K, S_V, so a whole (batch, n) block runs as a few batched matmuls. An initial state
(the sums and the token count t0 of what came before) can be passed in and the final one comes
back, which is how the streaming evaluation and generation carry the context (sums in float64,
as the engine keeps them). Tied K/V: S_V = S_K^T.

--selftest compares lm_forward with luna_ref.LunaCausalLM.forward in float64 on random weights
(tie_kv true and false, pre- and post-norm, the three phi, with and without pc_proj, several
chunk sizes, and split into segments carrying the state): relative error must be < 1e-6.

Data (tools/lm_data.py, docs/data.md): random windows of data/austen/train.txt, each bos + ctx-1
bytes (token = 4 + byte) predicting ctx bytes. Loss = next-byte cross entropy (mean nats);
bits/byte = nats / ln 2. The final evaluation scores valid.txt and test.txt (Persuasion) two ways:
  stream:  the whole file as ONE sequence (bos + every byte), processed in segments that carry
           the running sums and the position, exactly as the engine's prefill/generation does;
  windows: consecutive non-overlapping windows of --eval-window bytes, each bos + window.
Every byte of the file is predicted once either way. It also streams the validation chapters with
the training novels' own names renamed (lm_data.renamed_valid: a stand-in for a new novel, which
model selection uses). The periodic validation during training uses the first --quick-valid
bytes of valid.txt in windows (it is cheaper). The test stream is also compared with the n-gram
chapter by chapter (paired_chapters: chapters won, a sign test, a bootstrap interval of the
margin over the chapters); --chapters redoes that for a saved model.

Time: --minutes is the budget of the WHOLE run (self-test, training, final evaluation, saving).
Training stops when the remaining time is what the final evaluation needs (1.5 x its estimate
from the mean measured evaluation speed, plus 60 s). The learning-rate schedule (linear warmup
over --warmup steps, then cosine to --min-lr-ratio) runs on wall-clock time up to the training
end planned after the first speed measurement, so it completes whatever the machine's speed
(a shared machine makes the step count vary from run to run). Seeds are fixed; float32 weights;
bf16 autocast (CPU) for the Linear layers in training (--bf16; the default only where the CPU
has bf16 instructions, avx512_bf16 or amx_bf16: elsewhere it is emulated and ~20x slower),
while the attention recurrence itself always runs in float32; evaluation is float32 throughout.

--procs N trains with N data-parallel processes (torch.distributed, gloo, a file rendezvous:
no network), each on batch / N windows with --threads threads; their gradients are averaged
before every step, and --selftest checks that 2 processes give the weights 1 process gives.
On a 2-core machine, --procs 2 --threads 1 is ~30% faster than 1 process with 2 threads.

--rename F replaces, in a random fraction F of the training windows, every novel-specific name
(lm_data.Renamer: a capitalised word of one training novel only, never written in lower case)
by a generated one, the same throughout the window. Persuasion's people and places are spelled
nowhere in the training novels; a model that learnt Emma's and Darcy's names by heart meets them
confidently wrong. --selftest checks the renamer on a made-up corpus.
"""

import argparse
import json
import math
import os
import platform
import random
import re
import shlex
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn as nn
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

TOOLS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TOOLS)
sys.path.insert(0, TOOLS)
import lm_data  # noqa: E402
import luna_ref  # noqa: E402

LN2 = math.log(2.0)
# tools/baselines/lm_ngram.py, order 8 (docs/data.md)
NGRAM = {"valid": 1.6646, "test": 1.8395, "valid_renamed": 1.7623}
CLEAR_MARGIN = 0.01  # bits/byte below the n-gram on both Persuasion rows: "clearly better"
NGRAM_JSON = os.path.join(ROOT, "data", "austen", "baseline_ngram.json")
# The first bundled LM, without n-gram embeddings (its metrics.json, git 96f1122):
# d 256, 4 layers, l 32, ctx 4096, 40 min of training on a shared machine.
PREVIOUS = {"minutes": 40, "test_stream_bpb": 3.5532, "order2_bpb": 3.54}

# ---- the model ---------------------------------------------------------------------------------


def make_config(a):
    """config.json of the model (every field explicit, so the file documents itself)."""
    return {
        "format": "luna",
        "format_version": 1,
        "task": "causal-lm",
        "d": a.d,
        "H": a.heads,
        "l": a.l,
        "layers": a.layers,
        "ffn": a.ffn,
        "activation": "gelu",
        "normalize_before": True,
        "positions": a.positions,
        "tie_kv": a.tie_kv,
        "causal_phi": "softplus_ln2",
        "causal_pc_proj": True,
        "tie_embeddings": True,
        "ngram_embed": a.ngram,
        **({"hash_ngrams": a.hash_ngrams, "hash_buckets": a.hash_buckets, "hash_dim": a.hash_dim}
           if a.hash_ngrams > 1 else {}),
        "vocab_size": 260,
        "byte_offset": 4,
        "pad_id": 1,
        "bos_id": 0,
        "eos_id": 2,
    }


def pos_rows(start, count, d, dtype):
    """Rows start .. start+count-1 of luna_ref.sinusoid_table (same formula, same float64 ops);
    start >= 1 here, so the zero pad row never occurs."""
    half = d // 2
    freq = torch.exp(torch.arange(half, dtype=torch.float64) * -(math.log(10000.0) / (half - 1)))
    ang = torch.arange(start, start + count, dtype=torch.float64).unsqueeze(1) * freq.unsqueeze(0)
    return torch.cat([torch.sin(ang), torch.cos(ang)], dim=1).to(dtype)


_POS_CACHE = {}


def positions(start, count, d, dtype):
    key = (start, count, d, dtype)
    if key not in _POS_CACHE:
        if len(_POS_CACHE) > 8:
            _POS_CACHE.clear()
        _POS_CACHE[key] = pos_rows(start, count, d, dtype)
    return _POS_CACHE[key]


def causal_attn(attn, c, x, p, state=None, t0=0, chunk=64, state_dtype=None):
    """LUNA.md's causal Luna attention of module `attn` (a luna_ref.LunaCausalAttention) on a
    batch x (B, n, d), chunked as in the module docstring. state: None (the sequence starts at
    token 1) or (S_K (B, H, k, l), S_V (B, H, l, k) or None when tied) of the t0 tokens before
    x. Returns (out (B, n, d), new state). state_dtype: the dtype of the carried sums (float64
    for evaluation; None = x's dtype)."""
    B, n, d = x.shape
    H = c["H"]
    k = d // H
    lp = p.shape[0]
    s = k**-0.5

    def heads(y):
        return y.view(B, n, H, k).transpose(1, 2)  # (B, H, n, k)

    # The projections may run under bf16 autocast; everything after them runs in x's dtype
    # (the weights' dtype: float32 in training): the sums over thousands of tokens, divided by t, carry each
    # token's contribution at 1/t of their size, which bf16's 8-bit mantissa would round away.
    wdt = p.dtype
    pq = (attn.pq_proj(p) * s).to(wdt).view(lp, H, k).transpose(0, 1)  # (H, l, k)
    cin = attn.pc_proj(x) if attn.has_pc else x
    q = heads((attn.q_proj(x) * s).to(wdt))
    if attn.tie_kv:
        key = val = heads(attn.c_proj(x).to(wdt))
    else:
        key, val = heads(attn.k_proj(x).to(wdt)), heads(attn.v_proj(x).to(wdt))
    with torch.autocast("cpu", enabled=False):
        o, new_state = _luna_core(attn, heads(cin.to(wdt)), pq, q, key, val, state, t0, chunk,
                                  state_dtype)
    return attn.out_proj(o.reshape(B, H, n, k).transpose(1, 2).reshape(B, n, d)), new_state


def _luna_core(attn, cin, pq, q, key, val, state, t0, chunk, state_dtype):
    """The chunked recurrence of causal_attn on per-head tensors (B, H, n, k); returns
    (o (B, H, n, k), (S_K, S_V) after the last token)."""
    B, H, n, k = q.shape
    lp = pq.shape[1]
    sd = state_dtype or q.dtype
    w = attn.phi(cin @ pq.transpose(1, 2).unsqueeze(0))  # (B, H, n, l)

    cs = max(1, min(chunk, n))
    nc = -(-n // cs)
    pad = nc * cs - n
    if pad:  # zero rows after the end: w = 0 adds nothing to the sums, and causality hides them
        q, key, w = (F.pad(y, (0, 0, 0, pad)) for y in (q, key, w))
        val = key if attn.tie_kv else F.pad(val, (0, 0, 0, pad))
    Qc = q.reshape(B, H, nc, cs, k)
    Kc = key.reshape(B, H, nc, cs, k)
    Vc = Kc if attn.tie_kv else val.reshape(B, H, nc, cs, k)
    Wc = w.reshape(B, H, nc, cs, lp)

    def prefix(chunk_sums, init):
        """Exclusive cumsum over the chunk axis (+ the initial state) in dtype sd, and the total."""
        cs_ = chunk_sums.to(sd)
        ex = torch.zeros_like(cs_)
        if nc > 1:  # the sum of the chunks before each chunk (no subtraction, so exact)
            ex = torch.cat([ex[:, :, :1], torch.cumsum(cs_[:, :, :-1], dim=2)], dim=2)
        if init is not None:
            ex = ex + init.to(sd).unsqueeze(2)
        return ex, ex[:, :, -1] + cs_[:, :, -1]

    kw = Kc.transpose(-1, -2) @ Wc  # (B, H, nc, k, l): sum over each chunk of k_i^T w_i
    SK, SK_end = prefix(kw, None if state is None else state[0])
    SK = SK.to(q.dtype)
    if attn.tie_kv:
        SV, SV_end = SK.transpose(-1, -2), None
    else:
        wv = Wc.transpose(-1, -2) @ Vc  # (B, H, nc, l, k)
        SV, SV_end = prefix(wv, None if state is None else state[1])
        SV = SV.to(q.dtype)

    t = (torch.arange(1, nc * cs + 1, dtype=torch.float64) + t0).to(q.dtype).view(nc, cs, 1)
    mask = torch.ones(cs, cs, dtype=torch.bool).tril()
    qk = (Qc @ Kc.transpose(-1, -2)).masked_fill(~mask, 0.0)  # (B, H, nc, c, c), j <= i
    a = (Qc @ SK + qk @ Wc) / t
    alpha = torch.softmax(a, dim=-1)  # over l
    aw = (alpha @ Wc.transpose(-1, -2)).masked_fill(~mask, 0.0)  # (B, H, nc, c, c)
    o = (alpha @ SV + aw @ Vc) / t  # (B, H, nc, c, k)
    return o.reshape(B, H, nc * cs, k)[:, :, :n], (SK_end, SV_end)


def prev_tokens(model, seq, a):
    """The tokens of seq (..., n) that n-gram embeddings need before position a: the last
    luna_ref.history_len() = max(ngram_embed, hash_ngrams) - 1 of seq[..., :a] (an empty
    slice without n-gram embeddings)."""
    return seq[..., max(0, a - luna_ref.history_len(model.cfg)) : a]


def lm_forward(model, tokens, states=None, t0=0, chunk=64, state_dtype=None, dropout=0.0,
               prev=None):
    """The causal LM on a batch of token ids (B, n) that follow t0 tokens whose per-layer
    attention state is `states` (None when t0 = 0) and whose last tokens are `prev` (B, m)
    (prev_tokens(); only n-gram embeddings read them). Returns (logits (B, n, vocab), states).
    dropout > 0 (training only) drops units of the attention and FFN outputs before each
    residual add; it does not exist at inference, so the saved weights are used as they are."""
    c = model.cfg
    B, n = tokens.shape
    d = c["d"]
    dtype = model.projected_embeddings.dtype
    if prev is not None and prev.shape[-1] > 0 and luna_ref.history_len(c) > 0:
        m = prev.shape[-1]
        x = luna_ref.token_embeddings(model, torch.cat([prev, tokens], dim=-1))[:, m:]
    else:
        x = luna_ref.token_embeddings(model, tokens)
    first = c["pad_id"] + 1
    if c["positions"] == "learned":
        x = x + model.embed_positions(torch.arange(first + t0, first + t0 + n))
    elif c["positions"] == "sinusoidal":
        x = x + positions(first + t0, n, d, dtype)
    if c["layernorm_embedding"]:
        x = model.emb_layer_norm(x)
    p = model.projected_embeddings * c["embed_scale"]

    def drop(y):
        return F.dropout(y, dropout, training=True) if dropout > 0 else y

    new_states = []
    for i, layer in enumerate(model.layers):
        st = None if states is None else states[i]
        if c["normalize_before"]:
            y, ns = causal_attn(layer.self_attn, c, layer.self_attn_layer_norm(x), p, st, t0,
                                chunk, state_dtype)
            x1 = x + drop(y)
            x = x1 + drop(layer.fc2(layer.act(layer.fc1(layer.final_layer_norm(x1)))))
        else:
            y, ns = causal_attn(layer.self_attn, c, x, p, st, t0, chunk, state_dtype)
            x1 = layer.self_attn_layer_norm(x + drop(y))
            x = layer.final_layer_norm(x1 + drop(layer.fc2(layer.act(layer.fc1(x1)))))
        new_states.append(ns)
    if c["normalize_before"]:
        x = model.layer_norm(x)
    if c["tie_embeddings"]:
        logits = x @ model.embed_tokens.weight.t()
    else:
        logits = model.output_projection(x)
    return logits, new_states


def init_weights(model, seed):
    """fairseq-like init: Linear weights xavier-uniform (out_proj and fc2 scaled by
    1/sqrt(2 layers), GPT-2 style), biases 0, LayerNorm 1/0, embed_tokens and
    projected_embeddings N(0, 1/d) (times embed_scale = sqrt(d) that is unit variance). The
    pad row is drawn like the others: the LM never reads pad (it only gives the pad logit of
    the tied output)."""
    g = torch.Generator().manual_seed(seed)
    c = model.cfg
    norms = {name for name, m in model.named_modules() if isinstance(m, nn.LayerNorm)}
    with torch.no_grad():
        for name, prm in sorted(model.named_parameters()):
            module, _, leaf = name.rpartition(".")
            if module in norms:
                prm.fill_(1.0 if leaf == "weight" else 0.0)
            elif leaf == "bias":
                prm.zero_()
            elif name in ("embed_tokens.weight", "projected_embeddings", "embed_hash.weight"):
                prm.copy_(torch.randn(prm.shape, generator=g) * c["d"] ** -0.5)
            elif name == "embed_ngrams.weight":  # K - 1 tables: together as much as embed_tokens
                prm.copy_(torch.randn(prm.shape, generator=g) * (c["d"] * (c["ngram_embed"] - 1)) ** -0.5)
            else:
                fan_out, fan_in = prm.shape
                bound = math.sqrt(6.0 / (fan_in + fan_out))
                if module.endswith("out_proj") or module.endswith("fc2"):
                    bound /= math.sqrt(2 * c["layers"])
                prm.copy_((torch.rand(prm.shape, generator=g) * 2 - 1) * bound)


# ---- self-test ---------------------------------------------------------------------------------


def selftest(log=print):
    """lm_forward vs luna_ref.LunaCausalLM.forward, float64, random weights (luna_ref.randomize_).
    Returns a list of result dicts; raises AssertionError if any relative error is >= 1e-6."""
    small = dict(format="luna", format_version=1, task="causal-lm", d=32, H=4, l=8, layers=2,
                 ffn=48, activation="gelu", normalize_before=True)
    cases = [
        ("small tied pre-norm", dict(small, tie_kv=True), 0.4),
        ("small untied pre-norm", dict(small, tie_kv=False), 0.4),
        ("small untied post-norm elu_plus_1 no pc_proj",
         dict(small, tie_kv=False, normalize_before=False, causal_phi="elu_plus_1",
              causal_pc_proj=False, activation="relu"), 0.4),
        ("small tied post-norm softplus, untied embeddings",
         dict(small, tie_kv=True, normalize_before=False, causal_phi="softplus",
              tie_embeddings=False), 0.4),
        ("small tied pre-norm, ngram_embed 5, learned positions",
         dict(small, tie_kv=True, ngram_embed=5, positions="learned", max_positions=300), 0.4),
        ("small tied pre-norm, hash_ngrams 4 (8 buckets: collisions), ngram_embed 3",
         dict(small, tie_kv=True, ngram_embed=3, hash_ngrams=4, hash_buckets=8, hash_dim=5), 0.4),
        ("small untied post-norm, hash_ngrams 6, no ngram_embed",
         dict(small, tie_kv=False, normalize_before=False, hash_ngrams=6, hash_buckets=64,
              hash_dim=3), 0.4),
        ("small untied post-norm, ngram_embed 2", dict(small, tie_kv=False, ngram_embed=2,
                                                       normalize_before=False), 0.4),
        ("austen-lm shape, tied", dict(small, d=256, H=4, l=32, layers=4, ffn=1024,
                                       tie_kv=True), 0.06),
        ("austen-lm shape, untied", dict(small, d=256, H=4, l=32, layers=4, ffn=1024,
                                         tie_kv=False), 0.06),
    ]
    results = []
    n = 203  # not a multiple of any chunk size tried
    for i, (name, cfg, std) in enumerate(cases):
        ref = luna_ref.LunaCausalLM(cfg).double()
        luna_ref.randomize_(ref, seed=100 + i, std=std, bias_std=std / 2)
        rng = np.random.default_rng(i)
        toks = [0] + list(rng.integers(4, 260, size=n - 1))
        want = ref.forward(toks)["logits"]
        x = torch.tensor(toks).unsqueeze(0)
        worst = 0.0
        with torch.no_grad():
            for chunk in (1, 7, 64, 256):
                got, _ = lm_forward(ref, x, chunk=chunk)
                worst = max(worst, float((got[0] - want).norm() / want.norm()))
            # the same sequence as 3 segments carrying the state (the streaming evaluation)
            parts, states, t0 = [], None, 0
            for a, b in ((0, 50), (50, 131), (131, n)):
                got, states = lm_forward(ref, x[:, a:b], states, t0, chunk=16,
                                         state_dtype=torch.float64, prev=prev_tokens(ref, x, a))
                parts.append(got[0])
                t0 = b
            stream = float((torch.cat(parts) - want).norm() / want.norm())
            # a batch of 2 different sequences must give each one's own logits
            x2 = torch.tensor([toks, [0] + list(rng.integers(4, 260, size=n - 1))])
            got2, _ = lm_forward(ref, x2, chunk=64)
            want2 = ref.forward(x2[1].tolist())["logits"]
            batch = max(float((got2[0] - want).norm() / want.norm()),
                        float((got2[1] - want2).norm() / want2.norm()))
        r = {"case": name, "rel_err_chunks_1_7_64_256": worst, "rel_err_stream_3_segments": stream,
             "rel_err_batch2": batch, "n": n, "ok": max(worst, stream, batch) < 1e-6}
        log(f"selftest {name:48s} rel err: chunks {worst:.2e}  stream {stream:.2e}  "
            f"batch {batch:.2e}  {'OK' if r['ok'] else 'FAIL'}")
        results.append(r)
    bad = [r["case"] for r in results if not r["ok"]]
    if bad:
        raise AssertionError(f"selftest failed: {bad}")
    # gradients flow through the chunked form (finite, non-zero) in float32
    m = luna_ref.LunaCausalLM(cases[0][1])
    init_weights(m, 0)
    logits, _ = lm_forward(m, torch.tensor([toks[:64]]), chunk=16)
    F.cross_entropy(logits[0, :-1], torch.tensor(toks[1:64])).backward()
    gn = [float(p_.grad.norm()) for p_ in m.parameters() if p_.grad is not None]
    assert len(gn) == len(list(m.parameters())) and all(math.isfinite(v) for v in gn)
    log("selftest: all cases < 1e-6 relative error; float32 backward gives finite gradients")
    return results


# ---- evaluation --------------------------------------------------------------------------------


BUCKETS = (0, 16, 256, 1024, 4096, 16384, 65536, 262144)


@torch.no_grad()
def eval_stream(model, data, seg=4096, chunk=64, buckets=None, spans=None):
    """Bits/byte of `data` (np.uint8) scored as ONE sequence bos + all bytes, processed in
    segments of seg tokens that carry the float64 running sums and the position (the engine's
    way). Returns (bpb, bytes, seconds); with buckets=dict(), also fills it with the bits/byte
    of the bytes at offsets [BUCKETS[i], BUCKETS[i+1]) of the file; with spans, a list of
    (start, end) byte offsets, it replaces each by its total bits (end - start bytes)."""
    t_start = time.time()
    toks = torch.from_numpy(lm_data.to_tokens(data))
    n = len(toks) - 1  # predictions: token i+1 from tokens <= i
    per = torch.empty(n, dtype=torch.float64)
    states = None
    for a in range(0, n, seg):
        b = min(a + seg, n)
        logits, states = lm_forward(model, toks[a:b].unsqueeze(0), states, a, chunk,
                                    state_dtype=torch.float64,
                                    prev=prev_tokens(model, toks, a).unsqueeze(0))
        per[a:b] = F.cross_entropy(logits[0].float(), toks[a + 1 : b + 1], reduction="none")
    if spans is not None:
        spans[:] = [float(per[a:e].sum()) / LN2 for a, e in spans]
    if buckets is not None:
        edges = list(BUCKETS) + [n]
        for lo, hi in zip(edges, edges[1:]):
            if lo < min(hi, n):
                buckets[f"{lo}-{min(hi, n)}"] = float(per[lo : min(hi, n)].mean()) / LN2
    return float(per.sum()) / n / LN2, n, time.time() - t_start


def paired_chapters(model_bits, ngram_bits, nbytes, resamples=10000, seed=0):
    """The model against the n-gram chapter by chapter on one novel: lists of each chapter's
    total bits under each and its byte count. The margin is the n-gram's bits/byte minus the
    model's over a set of chapters (positive: the model is better), so over all chapters it is
    the margin of the whole-file rows. Returns the chapters the model wins, the one-sided sign
    test p-value of that many wins or more if each chapter were a coin toss, and a bootstrap
    95% interval of the margin (chapters drawn with replacement, `resamples` times, seeded):
    how much the margin depends on which chapters the novel happens to have."""
    m, g, b = (np.asarray(v, np.float64) for v in (model_bits, ngram_bits, nbytes))
    per = (g - m) / b
    c = len(b)
    wins = int((per > 0).sum())
    p = sum(math.comb(c, k) for k in range(wins, c + 1)) / 2.0 ** c
    idx = np.random.default_rng(seed).integers(0, c, (resamples, c))
    boot = (g[idx].sum(1) - m[idx].sum(1)) / b[idx].sum(1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {"chapters": c, "model_wins": wins, "sign_test_p": p,
            "margin_bpb": float((g.sum() - m.sum()) / b.sum()),
            "bootstrap_95": [float(lo), float(hi)], "resamples": resamples, "seed": seed,
            "chapter_margin_bpb": [float(x) for x in per]}


def ngram_chapters(test, log):
    """(spans, bits): Persuasion's chapters (lm_data.chapter_spans) and the n-gram's total bits
    in each, from data/austen/baseline_ngram.json (tools/baselines/lm_ngram.py); None, said in
    the log, if that file predates the chapter scores."""
    nj = json.load(open(NGRAM_JSON)) if os.path.exists(NGRAM_JSON) else {}
    ch = nj.get("test_chapters")
    if not ch:
        log(f"no test_chapters in {os.path.relpath(NGRAM_JSON, ROOT)}: run "
            "tools/baselines/lm_ngram.py for the chapter-by-chapter comparison")
        return None
    spans = lm_data.chapter_spans(test)
    if [tuple(x) for x in ch["spans"]] != spans:
        raise SystemExit(f"{NGRAM_JSON}: its chapters are not lm_data.chapter_spans(test.txt)")
    return spans, ch["bits"]


def chapter_comparison(bits, spans, ngram_bits, log):
    """paired_chapters() of the model's stream against the n-gram, logged; bits: the model's
    total bits in each chapter (eval_stream(..., spans=))."""
    r = paired_chapters(bits, ngram_bits, [e - a for a, e in spans])
    r["model_chapter_bits"] = list(bits)
    log(f"test by chapter: the model wins {r['model_wins']} of {r['chapters']} against the "
        f"n-gram (sign test p = {r['sign_test_p']:.1e}); margin {r['margin_bpb']:.4f} bits/byte, "
        f"bootstrap 95% [{r['bootstrap_95'][0]:.4f}, {r['bootstrap_95'][1]:.4f}]")
    return r


def rescore_chapters(model_dir, m, log):
    """--chapters: the saved model's Persuasion stream again, chapter by chapter against the
    n-gram; the stream must match the one its metrics.json `m` records."""
    test = lm_data.read_split("test")
    chapters = ngram_chapters(test, log)
    if chapters is None:
        raise SystemExit("no chapter scores of the n-gram: run tools/baselines/lm_ngram.py")
    model = luna_ref.load(model_dir).float()
    model.eval()
    bits = list(chapters[0])
    bpb, _, sec = eval_stream(model, test, spans=bits)
    want = m["eval"]["test"]["stream_bpb"]
    log(f"test stream {bpb:.6f} bpb ({sec:.0f} s); metrics.json has {want:.6f}")
    if abs(bpb - want) > 1e-5 * want:
        raise SystemExit(f"the model in {model_dir} is not the one its metrics.json describes")
    return chapter_comparison(bits, *chapters, log)


@torch.no_grad()
def eval_windows(model, data, window=4096, batch=4, chunk=64):
    """Bits/byte of `data` in consecutive non-overlapping windows of `window` bytes, each scored
    as its own sequence bos + window (every byte predicted once). Returns (bpb, bytes, seconds)."""
    t_start = time.time()
    wins = lm_data.windows(data, window)
    nats, count = 0.0, 0
    full = [w for w in wins if len(w) == window + 1]
    rest = [w for w in wins if len(w) != window + 1]
    for i in range(0, len(full), batch):
        x = torch.from_numpy(np.stack(full[i : i + batch]))
        logits, _ = lm_forward(model, x[:, :-1], chunk=chunk)
        nats += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                      x[:, 1:].reshape(-1), reduction="sum"))
        count += x[:, 1:].numel()
    for w in rest:
        x = torch.from_numpy(w).unsqueeze(0)
        logits, _ = lm_forward(model, x[:, :-1], chunk=chunk)
        nats += float(F.cross_entropy(logits[0].float(), x[0, 1:], reduction="sum"))
        count += len(w) - 1
    assert count == len(data)
    return nats / count / LN2, count, time.time() - t_start


@torch.no_grad()
def sample(model, prompt, max_new=200, temperature=0.8, seed=1):
    """Python-side generation with the carried state (prompt prefill, then one token a step)."""
    g = torch.Generator().manual_seed(seed)
    c = model.cfg
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one-token steps: a second thread only adds synchronisation
    toks = lm_data.to_tokens(prompt.encode())
    logits, states = lm_forward(model, torch.from_numpy(toks).unsqueeze(0), None, 0,
                                state_dtype=torch.float64)
    hist = torch.from_numpy(toks).long()
    t, out = len(toks), bytearray()
    last = logits[0, -1]
    for _ in range(max_new):
        if temperature == 0:  # greedy, as the engine's --temperature 0
            tok = int(torch.argmax(last))
        else:
            probs = torch.softmax(last.double() / temperature, dim=-1)
            tok = int(torch.multinomial(probs, 1, generator=g))
        if tok == c["eos_id"]:
            break
        if tok >= c["byte_offset"]:
            out.append(tok - c["byte_offset"])
        logits, states = lm_forward(model, torch.tensor([[tok]]), states, t,
                                    state_dtype=torch.float64,
                                    prev=prev_tokens(model, hist, t).unsqueeze(0))
        hist = torch.cat([hist, torch.tensor([tok])])
        t += 1
        last = logits[0, -1]
    torch.set_num_threads(threads)
    return bytes(out).decode("utf-8", errors="replace")


def engine_check(a, m, log):
    """The C engine on the saved model (build/bin/luna, built from this tree): `luna eval` on the
    whole test file, which must give this script's stream bits per byte within 0.1% (the issue's
    tolerance); greedy `luna generate` against sample(temperature 0) here; and a sampled
    generation for the model card (the engine has its own sampler, so that text differs)."""
    luna = os.path.join(ROOT, "build", "bin", "luna")
    if not os.access(luna, os.X_OK):
        raise SystemExit(f"{luna} is missing: run `make` first")
    rel = os.path.relpath(a.out, ROOT)
    data = os.path.join(lm_data.DATA, "test.txt")
    ev = ["build/bin/luna", "eval", "--model", rel, "--data", os.path.relpath(data, ROOT), "--json"]
    r = subprocess.run([luna] + ev[1:], capture_output=True, text=True, cwd=ROOT, check=True)
    got = json.loads(r.stdout)
    want = m["eval"]["test"]["stream_bpb"]
    diff = abs(got["bits_per_byte"] - want) / want
    log(f"engine: `{' '.join(ev)}`: {got['bits_per_byte']:.6f} bpb vs {want:.6f} here "
        f"(relative difference {diff:.1e}), {got['tokens_per_s']:.0f} tokens/s")
    prompt, n = "It is a truth universally acknowledged", 200

    def generate(*extra):
        cmd = ["build/bin/luna", "generate", "--model", rel, "--prompt", prompt,
               "--max-new-tokens", str(n)] + list(extra)
        out = subprocess.run([luna] + cmd[1:], capture_output=True, cwd=ROOT, check=True).stdout
        return cmd, out.decode("utf-8", errors="replace")

    _, greedy_c = generate("--temperature", "0")
    model = luna_ref.load(a.out).float()
    model.eval()
    with torch.no_grad():
        greedy_py = sample(model, prompt, n, 0.0)
    cmd, sampled = generate("--temperature", "0.8", "--seed", "1")
    log(f"engine: greedy {n} tokens {'identical to' if greedy_c == greedy_py else 'DIFFER from'} "
        f"this script's; sampled: {prompt}{sampled!r}")
    return {
        "when": "tools/train_lm.py --engine-check, build/bin/luna built from this tree",
        "eval_command": " ".join(ev), "eval": got, "eval_bpb_rel_diff": diff,
        "command": " ".join(shlex.quote(s) for s in cmd), "prompt": prompt,
        "sampled_output": sampled, "greedy_tokens": n,
        "greedy_identical": greedy_c == greedy_py, "greedy_output": greedy_c,
    }


def reference_check(model_dir, data, nbytes=2000):
    """bpb of luna_ref.load(model_dir) (float64, the reference's own forward) on the first
    nbytes of data, vs this script's float32 streaming evaluation of the same bytes."""
    ref = luna_ref.load(model_dir)
    toks = lm_data.to_tokens(data[:nbytes])
    logits = ref.forward(toks.tolist())["logits"]
    nats = float(F.cross_entropy(logits[:-1], torch.from_numpy(toks[1:]), reduction="sum"))
    ref_bpb = nats / nbytes / LN2
    mine = luna_ref.LunaCausalLM(json.load(open(os.path.join(model_dir, "config.json"))))
    mine.load_state_dict({k: v.float() for k, v in ref.state_dict().items()})
    my_bpb, _, _ = eval_stream(mine, data[:nbytes], seg=512)
    my_logits, _ = lm_forward(mine, torch.from_numpy(toks).unsqueeze(0))
    rel = float((my_logits[0].double() - logits).norm() / logits.norm())
    return {"bytes": nbytes, "reference_float64_bpb": ref_bpb, "train_lm_float32_bpb": my_bpb,
            "bpb_rel_diff": abs(my_bpb - ref_bpb) / ref_bpb, "logits_rel_err": rel}


# ---- training ----------------------------------------------------------------------------------


def cpu_has_bf16():
    """True if /proc/cpuinfo lists bf16 matrix instructions (avx512_bf16 or amx_bf16): there
    bf16 autocast runs at about twice the float32 speed; without them, oneDNN emulates it and a
    training step of the default shape took 112 s instead of 5.5 s (AMD EPYC, AVX2 only)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            flags = next((ln.split(":", 1)[1].split() for ln in f if ln.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def set_seeds(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def param_groups(model, wd):
    decay, no_decay = [], []
    for name, prm in model.named_parameters():
        is_matrix = prm.dim() == 2 and name not in ("embed_tokens.weight", "embed_ngrams.weight",
                                                    "embed_hash.weight", "projected_embeddings")
        (decay if is_matrix else no_decay).append(prm)
    return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]


def count_params(model):
    return sum(p.numel() for p in model.parameters())


def world_size():
    return dist.get_world_size() if dist.is_initialized() else 1


def average_grads(model, loss):
    """Data parallelism: every process's gradients (and loss) become the mean over the processes,
    in one all-reduce of one flat buffer. Each process holds batch / procs windows, so the mean
    is the gradient of the whole batch's mean loss, and identical updates keep the replicas
    identical."""
    params = list(model.parameters())
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                      for p in params] + [torch.tensor([loss], dtype=params[0].dtype)])
    dist.all_reduce(flat)
    flat /= world_size()
    o = 0
    for p in params:
        k = p.numel()
        p.grad = flat[o : o + k].view_as(p).clone()
        o += k
    return float(flat[o])


def train_step(model, opt, batch, a):
    x = torch.from_numpy(batch)
    inp, tgt = x[:, :-1], x[:, 1:]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
        logits, _ = lm_forward(model, inp, chunk=a.chunk, dropout=a.dropout)
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), tgt.reshape(-1))
    loss.backward()
    loss = float(loss)
    if world_size() > 1:
        loss = average_grads(model, loss)
    gnorm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip))
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss, gnorm


# ---- data-parallel processes (--procs) --------------------------------------------------------
#
# On this 2-core machine one process with 2 threads trains at ~3,000 tokens/s, while two
# processes of 1 thread each reach ~2,000 each: the threads of one small matmul synchronise
# too often to scale. So --procs N starts N - 1 worker processes (spawned, not forked: OpenMP
# does not survive fork) joined by torch.distributed's gloo backend on a file rendezvous, no
# network. Rank 0 runs the loop below and decides; before every step it broadcasts
# (continue?, lr), every rank trains on its own batch / N windows (sampler seed + rank), and
# average_grads() makes the update the same everywhere.


def init_dist(rank, procs, rendezvous):
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank,
                            world_size=procs)


def new_replica(a, cfg, rank):
    """The model and optimiser every rank builds the same way (same seed), then rank 0's
    parameters are broadcast so the replicas start bit-identical."""
    set_seeds(a.seed)
    model = luna_ref.LunaCausalLM(cfg)
    init_weights(model, a.seed)
    if world_size() > 1:
        for p in model.parameters():
            dist.broadcast(p.data, 0)
    opt = torch.optim.AdamW(param_groups(model, a.wd), lr=a.lr, betas=(0.9, 0.95), eps=1e-8)
    if rank:
        set_seeds(a.seed + 1000 * rank)  # dropout masks differ between ranks
    return model, opt


def rank_sampler(a, train, rank):
    renamer = lm_data.Renamer(lm_data.train_pieces()) if a.rename > 0 else None
    return lm_data.WindowSampler(train, a.ctx, a.batch // a.procs, a.seed + 1000 * rank,
                                 renamer=renamer, rename=a.rename)


def selftest_renamer(log=print):
    """lm_data.Renamer on three made-up novels: only the names of one novel change, each the
    same way throughout a call, into generated names that are no training word; the rest of the
    text is untouched; a seed gives the same result again; the sampler renames about the asked
    fraction of its windows, with rows that stay whole."""
    pieces = [("a", "Emma met Mr Knightley in London. The Knightleys were out. Emma smiled.\n" * 40),
              ("b", "Fanny saw the Crawfords in London and Bath; Crawford bowed to Fanny.\n" * 40),
              ("c", "In Bath, Mr Darcy said nothing. The emma of it! Darcy left Bath.\n" * 40)]
    r = lm_data.Renamer(pieces)
    want = {"Knightley", "Knightleys", "Fanny", "Crawford", "Crawfords", "Darcy"}  # not Emma: "emma" in c
    assert r.names == want, f"names {sorted(r.names)}"
    text = "Fanny and the Crawfords met Darcy, Emma and Mr Crawford in Bath. Fanny left."
    out = r.apply(text, np.random.default_rng(5))
    again = r.apply(text, np.random.default_rng(5))
    assert out == again, "not reproducible from the seed"
    pat = (r"(\w+) and the (\w+)s met (\w+), Emma and Mr (\w+) in Bath\. (\w+) left\.")
    m = re.fullmatch(pat, out)
    assert m, f"the text around the names changed: {out!r}"
    fanny, craw, darcy, craw2, fanny2 = m.groups()
    assert fanny == fanny2 and craw == craw2, f"inconsistent within a call: {out!r}"
    assert len({fanny, craw, darcy}) == 3 and not ({fanny, craw, darcy} & r.known), out
    data = np.frombuffer(("".join(t for _, t in pieces) * 4).encode("latin-1"), np.uint8)
    smp = lm_data.WindowSampler(data, 256, 8, 3, renamer=r, rename=0.5)
    rows = [smp.next() for _ in range(25)]
    frac = smp.renamed / 200
    assert 0.35 < frac < 0.65, f"renamed {frac:.2f} of the windows, asked 0.5"
    assert all(b.shape == (8, 257) and (b[:, 1:] >= lm_data.BYTE_OFFSET).all() for b in rows)
    log(f"renamer self-test: names {sorted(r.names)}; {text!r} -> {out!r}; "
        f"{frac:.2f} of 200 windows renamed at --rename 0.5")
    return {"case": "renamer", "example": out, "renamed_fraction": frac, "ok": True}


def selftest_chapters(log=print):
    """lm_data.chapter_spans on a made-up novel (title page with chapter 1, headings only at the
    start of a line, every byte covered once) and paired_chapters on cases whose answers are
    known: the per-chapter margins, the whole-file margin, the wins, the exact sign test and a
    bootstrap interval that holds the margin and has width 0 when every chapter's is equal."""
    text = (b"Title\n\nChapter 1\n\nOne. See Chapter 2.\nChapter 2\n\nTwo.\n"
            b"CHAPTER XII\nEnd.\nChapter 3a\n")
    sp = lm_data.chapter_spans(np.frombuffer(text, np.uint8))
    c2, c12 = text.index(b"Chapter 2\n"), text.index(b"CHAPTER XII")
    assert sp == [(0, c2), (c2, c12), (c12, len(text))] and (c2, c12) == (38, 54), sp
    assert sp[0][0] == 0 and sp[-1][1] == len(text)
    assert all(e == a for (_, e), (a, _) in zip(sp, sp[1:]))
    assert lm_data.chapter_spans(np.frombuffer(b"no headings\n", np.uint8)) == [(0, 12)]
    nb = [100, 300, 200, 400]
    g = [250.0, 600.0, 500.0, 700.0]  # the n-gram: 2.5, 2.0, 2.5, 1.75 bits/byte
    m = [200.0, 630.0, 400.0, 600.0]  # the model: 2.0, 2.1, 2.0, 1.5
    r = paired_chapters(m, g, nb, resamples=2000, seed=3)
    assert np.allclose(r["chapter_margin_bpb"], [0.5, -0.1, 0.5, 0.25])
    assert abs(r["margin_bpb"] - (2050 - 1830) / 1000) < 1e-12
    assert r["model_wins"] == 3 and abs(r["sign_test_p"] - 5 / 16) < 1e-12, r
    lo, hi = r["bootstrap_95"]
    # the interval lies between the smallest and the largest chapter margin
    assert lo < r["margin_bpb"] < hi and -0.1 <= lo and hi <= 0.5, r
    assert paired_chapters(m, g, nb, 2000, 3) == r, "not reproducible from the seed"
    even = paired_chapters([90.0] * 24, [100.0] * 24, [50] * 24, resamples=500)
    assert even["model_wins"] == 24 and even["sign_test_p"] == 2.0 ** -24
    assert np.allclose(even["bootstrap_95"], [0.2, 0.2]) and abs(even["margin_bpb"] - 0.2) < 1e-12
    log(f"chapter self-test: spans {sp}; margin {r['margin_bpb']:.3f}, wins {r['model_wins']}/4, "
        f"sign p {r['sign_test_p']:.4f}, bootstrap [{lo:.3f}, {hi:.3f}]")
    return {"case": "chapters", "spans": sp, "paired": {k: r[k] for k in
            ("margin_bpb", "model_wins", "sign_test_p", "bootstrap_95")}, "ok": True}


def broadcast_control(go, lr):
    """Rank 0: tell the workers whether to take another step and at which lr. Workers: learn it."""
    ctl = torch.tensor([1.0 if go else 0.0, lr], dtype=torch.float64)
    dist.broadcast(ctl, 0)
    return bool(ctl[0] > 0.5), float(ctl[1])


def worker_main(rank, a, cfg, rendezvous, batches=None):
    """A worker rank: build the replica, then train while rank 0 says so. `batches` (tests
    only) replaces the random sampler with a fixed list of this rank's batches."""
    torch.set_num_threads(a.threads)
    init_dist(rank, a.procs, rendezvous)
    model, opt = new_replica(a, cfg, rank)
    sampler = None if batches is not None else rank_sampler(a, lm_data.read_split("train"), rank)
    i = 0
    while True:
        go, lr = broadcast_control(False, 0.0)
        if not go:
            break
        for g in opt.param_groups:
            g["lr"] = lr
        train_step(model, opt, batches[i] if batches is not None else sampler.next(), a)
        i += 1
    dist.destroy_process_group()


def start_workers(a, cfg, batches=None):
    """Rank 0: spawn ranks 1 .. procs-1 and join the group. Returns (processes, rendezvous dir)."""
    tmp = tempfile.mkdtemp(prefix="train_lm_dist.")
    rendezvous = os.path.join(tmp, "rendezvous")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=worker_main, daemon=True,
                         args=(r, a, cfg, rendezvous, None if batches is None else batches[r]))
             for r in range(1, a.procs)]
    for p in procs:
        p.start()
    init_dist(0, a.procs, rendezvous)
    return procs, tmp


def stop_workers(procs, tmp):
    broadcast_control(False, 0.0)
    dist.destroy_process_group()
    for p in procs:
        p.join(60)
        if p.exitcode != 0:
            raise SystemExit(f"a training worker process failed (exit code {p.exitcode})")
    for f in os.listdir(tmp):
        os.unlink(os.path.join(tmp, f))
    os.rmdir(tmp)


def selftest_data_parallel(log=print):
    """Two steps with --procs 2 (each rank half of each batch) must give the same weights as two
    steps of one process on the whole batches (dropout 0, float32): relative error < 1e-5."""
    cfg = dict(format="luna", format_version=1, task="causal-lm", d=32, H=4, l=8, layers=2,
               ffn=48, activation="gelu", normalize_before=True, ngram_embed=3, hash_ngrams=3,
               hash_buckets=64, hash_dim=4)
    a = argparse.Namespace(seed=3, wd=0.1, lr=3e-3, bf16=False, chunk=16, dropout=0.0, clip=1.0,
                           procs=2, threads=1)
    rng = np.random.default_rng(5)
    full = [np.concatenate([[[0]] * 4, rng.integers(4, 260, size=(4, 40))], axis=1)
            for _ in range(2)]
    solo, opt = new_replica(a, cfg, 0)
    for b in full:
        train_step(solo, opt, b, a)
    procs, tmp = start_workers(a, cfg, batches=[None, [b[2:] for b in full]])
    try:
        model, opt = new_replica(a, cfg, 0)
        for b in full:
            broadcast_control(True, a.lr)
            train_step(model, opt, b[:2], a)
    finally:
        stop_workers(procs, tmp)
    num = sum(float((p - q).norm()) ** 2 for p, q in zip(model.parameters(), solo.parameters()))
    den = sum(float(q.norm()) ** 2 for q in solo.parameters())
    moved = sum(float((p - q).norm()) ** 2 for p, q in
                zip(solo.parameters(), new_replica(a, cfg, 0)[0].parameters()))
    err = (num / den) ** 0.5
    log(f"selftest data parallel (2 processes vs 1, 2 steps): weights rel err {err:.2e}, "
        f"moved {(moved / den) ** 0.5:.2e}  {'OK' if err < 1e-5 and moved > 0 else 'FAIL'}")
    if not (err < 1e-5 and moved > 0):
        raise AssertionError("selftest failed: data-parallel training differs from one process")
    return {"case": "data parallel 2 vs 1 processes", "weights_rel_err": err}


def lr_at(a, step, frac):
    warm = min(1.0, (step + 1) / a.warmup)
    cos = 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, frac))))
    return a.lr * warm * (a.min_lr_ratio + (1 - a.min_lr_ratio) * cos)


def bench(a):
    """--bench: seconds per step and tokens/s of a few steps at the given shape."""
    set_seeds(a.seed)
    model = luna_ref.LunaCausalLM(make_config(a))
    init_weights(model, a.seed)
    opt = torch.optim.AdamW(param_groups(model, a.wd), lr=a.lr, betas=(0.9, 0.95))
    sampler = lm_data.WindowSampler(lm_data.read_split("train"), a.ctx, a.batch, a.seed)
    train_step(model, opt, sampler.next(), a)
    t = time.time()
    for _ in range(a.bench):
        loss, _ = train_step(model, opt, sampler.next(), a)
    dt = (time.time() - t) / a.bench
    tok = a.batch * a.ctx
    print(f"bench d={a.d} H={a.heads} layers={a.layers} ffn={a.ffn} l={a.l} tie_kv={a.tie_kv} "
          f"batch={a.batch} ctx={a.ctx} chunk={a.chunk} bf16={a.bf16}: {dt:.3f} s/step, "
          f"{tok / dt:.0f} tokens/s (loss {loss:.3f})", flush=True)
    ev = lm_data.read_split("valid")[:16384]
    bpb, nb, sec = eval_windows(model, ev, a.eval_window)
    print(f"bench eval: {nb / sec:.0f} tokens/s (windows of {a.eval_window})", flush=True)


def why_section(m):
    """The model card's reading of the score when the model does not beat the n-gram: the gap,
    how much training it got and whether its loss was still falling, all from metrics.json."""
    ev, ng = m["eval"], m["ngram_baseline_bpb"]
    best = min(ev["test"]["stream_bpb"], ev["test"]["windows_bpb"])
    if max(ev["test"]["stream_bpb"], ev["test"]["windows_bpb"]) <= ng["test"] - CLEAR_MARGIN:
        return []
    tr = m["training"]
    hist = [h for h in m.get("history", []) if "train_bpb" in h]
    lines = [
        "## Why it does not clearly beat the n-gram",
        "",
        f"On Persuasion its better row is {best:.3f} bits/byte against the 8-gram's "
        f"{ng['test']:.3f} ({best - ng['test']:+.3f}); on the validation chapters "
        f"{min(ev['valid']['stream_bpb'], ev['valid']['windows_bpb']):.3f} against "
        f"{ng['valid']:.3f}.",
    ]
    if hist and m.get("train_bytes"):
        end = hist[-1]
        ref = min(hist, key=lambda h: abs(h["t"] - 0.8 * end["t"]))
        falling = ref["train_bpb"] - end["train_bpb"] > 0.02
        lines[-1] += (
            f" The run saw {tr['tokens'] / 1e6:.1f}M tokens ({tr['tokens'] / m['train_bytes']:.1f} "
            f"passes over the {m['train_bytes']:,}-byte training text) at "
            f"{tr['tokens_per_s']:,.0f} tokens/s; its training loss was "
            f"{ref['train_bpb']:.3f} bits/byte at {ref['t'] / 60:.0f} minutes and "
            f"{end['train_bpb']:.3f} at {end['t'] / 60:.0f}"
            + (", still falling when the time ran out. " if falling else
               ", nearly level at the end of the learning-rate schedule. ")
            + "A larger model or more passes might close the gap; we have not shown it within "
            "the hour this machine's CPU allows. The n-gram reads the training text once and "
            "counts.")
    if ev["test"]["stream_bpb"] > ev["test"]["windows_bpb"] + 0.01:
        lines.append("")
        lines.append(
            f"Streaming scores {ev['test']['stream_bpb'] - ev['test']['windows_bpb']:.3f} "
            f"bits/byte worse than restarting every {m['args']['eval_window']} bytes: "
            f"the model was trained on {m['args']['ctx']}-byte windows only, and the breakdown "
            "by offset above shows where the stream loses.")
    return lines + [""]


def ngram_section(m, cfg):
    """Why the model has n-gram embeddings: the measured score of the same architecture
    without them (PREVIOUS, the first bundled LM)."""
    if cfg.get("ngram_embed", 1) <= 1:
        return []
    return [
        "## What the n-gram embeddings are for",
        "",
        "In causal Luna attention (LUNA.md) the only path from earlier bytes is the per-head "
        "state, the running sums of k_i^T w_i and w_i^T v_i divided by the position t: each "
        "earlier byte is 1/t of an average, and nothing singles out the last few bytes, which "
        "carry most of what predicts the next one. The first bundled LM (git 96f1122) had this "
        f"shape without n-gram embeddings; trained the same way for {PREVIOUS['minutes']} "
        f"minutes it scored {PREVIOUS['test_stream_bpb']:.3f} bits/byte on Persuasion "
        f"(streaming), about what an order-2 byte model gets ({PREVIOUS['order2_bpb']:.2f}), "
        "and its loss went flat early. The n-gram embeddings give every position the last "
        f"{cfg['ngram_embed']} bytes, exactly, at the cost of "
        f"{cfg['ngram_embed'] - 1} table rows added per token and as many token ids in the "
        "state; the attention still carries everything further back.",
        "",
    ]


def engine_section(m):
    """The engine check, when one was recorded in metrics.json (`--engine-check`, run after
    training: the training run itself does not build or run bin/luna)."""
    e = m.get("engine_check")
    if not e:
        return []
    ev = []
    if "eval" in e:
        g = e["eval"]
        ev = [f"The C engine scores Persuasion with `{e['eval_command']}`: "
              f"{g['bits_per_byte']:.4f} bits/byte against this script's stream "
              f"{m['eval']['test']['stream_bpb']:.4f} (relative difference "
              f"{e['eval_bpb_rel_diff']:.1e}; the limit is 1e-3), at {g['tokens_per_s']:,.0f} "
              "tokens/s on this machine.", ""]
    return ev + [
        f"Output of that command ({e['when']}; the engine samples with its own generator, so "
        "the text differs from the Python sample):",
        "",
        "```text",
        e["prompt"] + e["sampled_output"],
        "```",
        "",
        f"Greedy decoding (`--temperature 0`), {e['greedy_tokens']} tokens: the engine's "
        f"output and this script's (lm_forward with the carried float64 state) are "
        f"{'identical' if e['greedy_identical'] else 'DIFFERENT'}.",
        "",
    ]


def notes_section(m):
    notes = m.get("notes") or []
    return (["## Notes on this run", ""] + [f"- {n}" for n in notes] + [""]) if notes else []


def read_metrics(out):
    with open(os.path.join(out, "metrics.json"), encoding="utf-8") as f:
        return json.load(f)


def save_metrics(out, m):
    """Writes OUT/metrics.json and the model card rendered from it."""
    with open(os.path.join(out, "metrics.json"), "w", encoding="utf-8") as f:
        json.dump(m, f, indent=1)
        f.write("\n")
    write_card(out, argparse.Namespace(**m["args"]), m["config"], m, m["command"])


def chapter_lines(r):
    """The model card's paragraph on the chapter-by-chapter comparison (chapter_comparison)."""
    if not r:
        return []
    lo, hi = r["bootstrap_95"]
    worst = int(np.argmin(r["chapter_margin_bpb"]))
    return [
        f"Chapter by chapter (Persuasion's {r['chapters']} chapters, `lm_data.chapter_spans`; "
        f"the stream against the 8-gram): the model is better in {r['model_wins']} of "
        f"{r['chapters']} (a one-sided sign test gives p = {r['sign_test_p']:.2g} if each "
        f"chapter were a coin toss). Drawing the chapters with replacement "
        f"({r['resamples']:,} bootstrap samples, seed {r['seed']}) puts the stream's margin of "
        f"{r['margin_bpb']:.4f} bits/byte between {lo:.4f} and {hi:.4f} (95%): that is how "
        "much the margin depends on which chapters the novel happens to have. Its worst "
        f"chapter is number {worst + 1} ({r['chapter_margin_bpb'][worst]:+.4f}; positive "
        "means the model is better). `tools/train_lm.py --chapters --out DIR` recomputes it.",
        "",
    ]


def write_card(out, a, cfg, m, cmd):
    """models/austen-lm/README.md, the model card."""
    ev, ng = m["eval"], m["ngram_baseline_bpb"]
    stream, windows = ev["test"]["stream_bpb"], ev["test"]["windows_bpb"]
    best_test, worst_test = min(stream, windows), max(stream, windows)
    if worst_test <= ng["test"] - CLEAR_MARGIN:
        verdict = (f"**Yes**, both rows by at least {CLEAR_MARGIN} bits/byte: streaming "
                   f"{stream:.4f}, windows {windows:.4f}, the n-gram {ng['test']:.4f}.")
    elif best_test < ng["test"]:
        verdict = (f"**Not clearly.** On Persuasion the windows score {windows:.4f} and the "
                   f"stream {stream:.4f} bits/byte against the order-8 Kneser-Ney n-gram's "
                   f"{ng['test']:.4f}: {best_test - ng['test']:+.4f} at best, less than the "
                   f"{CLEAR_MARGIN} bits/byte we count as a clear win, and the stream, the way "
                   f"a generator reads, is {stream - ng['test']:+.4f}.")
    else:
        verdict = (f"**No.** Its best Persuasion score, {best_test:.4f} bits/byte, is "
                   f"{best_test - ng['test']:.4f} above the order-8 Kneser-Ney n-gram's "
                   f"{ng['test']:.4f}.")
    tr = m["training"]
    rc = m["reference_check"]
    lines = [
        "# austen-lm: a causal byte-level Luna language model trained on Jane Austen",
        "",
        "A small decoder-only Luna LM (`task: causal-lm`, docs/model-format.md) that reads and "
        "writes raw bytes, trained on five of Jane Austen's novels. It is a demo model for "
        "`luna generate` and the server; the sample below shows what it writes. It is far too "
        "small to know facts or follow instructions.",
        "",
        "## Does it beat the n-gram baseline?",
        "",
        verdict,
        "",
        *([f"**WARNING: scored on the first {a.eval_limit} bytes only (--eval-limit), not the "
           "whole files; these are not the model's real metrics.**", ""] if a.eval_limit else []),
        f"| bits/byte (lower is better) | valid ({ev['valid']['bytes']:,} B) | test = "
        f"Persuasion ({ev['test']['bytes']:,} B) |",
        "|---|---|---|",
        f"| this model, streaming (whole file as one sequence, running sums carried) | "
        f"{ev['valid']['stream_bpb']:.4f} | {ev['test']['stream_bpb']:.4f} |",
        f"| this model, consecutive {a.eval_window}-byte windows (each bos + window) | "
        f"{ev['valid']['windows_bpb']:.4f} | {ev['test']['windows_bpb']:.4f} |",
        f"| byte 8-gram, interpolated modified Kneser-Ney (`tools/baselines/lm_ngram.py`) | "
        f"{ng['valid']:.4f} | {ng['test']:.4f} |",
        "",
        *([f"Validation chapters with the training novels' own names renamed "
           f"(`lm_data.renamed_valid()`, {ev['valid_renamed']['bytes']:,} B, docs/data.md), "
           "the test-free stand-in for a new novel that model selection uses: this model "
           f"{ev['valid_renamed']['stream_bpb']:.4f} streaming, the n-gram "
           f"{ng.get('valid_renamed', NGRAM['valid_renamed']):.4f}.", ""]
          if "valid_renamed" in ev else []),
        *chapter_lines(ev["test"].get("by_chapter")),
        "Streaming bits/byte of Persuasion by byte offset (how the score changes as the "
        "context grows): "
        + ", ".join(f"{k}: {v:.3f}" for k, v in ev["test"]["stream_bpb_by_offset"].items())
        + ".",
        "",
        "Every byte of each file is predicted exactly once in each row. *Streaming* scores the "
        "file as one sequence, bos then all its bytes, as `luna generate` would run it: the "
        "per-layer running sums (float64) and the position are carried from one 4096-token "
        "segment to the next, so the last bytes of Persuasion are predicted at position "
        "~467,000. *Windows* restarts from bos every "
        f"{a.eval_window} bytes, so positions stay in 1..{a.eval_window}.",
        "",
        "## Data and licence",
        "",
        "- Source: the six novels of the CRAN package **janeaustenr** 1.0.0 (Julia Silge, MIT "
        "licence), as shipped by Debian 12's `r-cran-janeaustenr` 1.0.0-1; the texts come from "
        "Project Gutenberg and are in the **public domain**. Extracted by "
        "`tools/data/austen.py` (sha256-pinned; see docs/data.md).",
        "- Split (docs/data.md): **train** = Emma, Mansfield Park, Northanger Abbey, Pride and "
        "Prejudice, Sense and Sensibility, each minus its last ceil(5%) chapters (3,328,977 "
        "bytes); **valid** = those last chapters (229,198 bytes); **test** = the whole of "
        "*Persuasion* (466,854 bytes), never seen in training. Model selection uses the validation "
        "chapters (since --rename, also with their names renamed); the per-byte study of "
        "Persuasion that led to --rename is in the notes, so its score is not entirely untouched.",
        "- Bytes, not characters: UTF-8 text, token = 4 + byte, preceded by bos (id 0). The "
        "training text is ASCII except one `£`.",
        "- The weights are a derivative of public-domain text; the model files may be used "
        "like the rest of this repository.",
        "",
        "## Model",
        "",
        f"- d {cfg['d']}, {cfg['H']} heads, {cfg['layers']} layers, FFN {cfg['ffn']} (GELU), "
        f"l = {cfg['l']} projected rows (P), pre-norm, tied K/V = {cfg['tie_kv']}, tied "
        f"input/output embeddings, "
        f"{'no position embeddings' if cfg['positions'] == 'none' else cfg['positions'] + ' positions'}, phi = softplus_ln2 with pc_proj; "
        f"vocab 260 (bos 0, pad 1, eos 2, byte b = 4 + b).",
        *([f"- n-gram embeddings, `ngram_embed` = {cfg.get('ngram_embed', 1)} "
           "(docs/model-format.md): each byte's embedding adds one learned table row for each "
           f"of the {cfg.get('ngram_embed', 1) - 1} bytes before it, so every layer sees the "
           "last few bytes exactly, which the causal attention's running means cannot show "
           "(see \"What the n-gram embeddings are for\" below)."] if cfg.get("ngram_embed", 1) > 1 else []),
        *([f"- Hashed n-gram embeddings, `hash_ngrams` = {cfg['hash_ngrams']}, "
           f"`hash_buckets` = {cfg['hash_buckets']}, `hash_dim` = {cfg['hash_dim']} "
           "(docs/model-format.md): each byte's embedding also adds a learned vector for each "
           f"n-gram of 2..{cfg['hash_ngrams']} bytes ending at it, looked up by hash in one "
           f"table of {cfg['hash_buckets']} rows per order and projected to d, so the model "
           "holds n-gram statistics in tables that cost no matrix product."]
          if cfg.get("hash_ngrams", 1) > 1 else []),
        f"- {m['params']:,} parameters, stored as F32 (`model.safetensors`, "
        f"{m['model_bytes']:,} bytes). Generation state: {cfg['layers']} x "
        f"{1 if cfg['tie_kv'] else 2} x d x l doubles = "
        f"{cfg['layers'] * (1 if cfg['tie_kv'] else 2) * cfg['d'] * cfg['l'] * 8:,} bytes"
        + (f" plus the {luna_ref.history_len(luna_ref.resolve_config(cfg))} latest token ids"
           if luna_ref.history_len(luna_ref.resolve_config(cfg)) > 0 else "")
        + ", whatever the context length.",
        "",
        "## Training",
        "",
        "```sh",
        cmd,
        "```",
        "",
        f"- `tools/train_lm.py` (chunked causal Luna attention, chunk {a.chunk}, checked "
        "against `tools/luna_ref.py` in float64 by `--selftest`: relative error "
        f"{m['selftest_max_rel_err']:.1e}, limit 1e-6).",
        f"- Random windows of train.txt: bos + {a.ctx - 1} bytes, {a.ctx} predictions each; "
        f"batch {a.batch} windows = {a.batch * a.ctx:,} tokens per step. Loss: next-byte "
        "cross entropy.",
        f"- AdamW (betas 0.9/0.95, weight decay {a.wd} on matrices), peak lr {a.lr}, linear "
        f"warmup {a.warmup} steps, cosine to {a.min_lr_ratio} x peak over the training time, "
        f"gradient clipping at {a.clip}, residual dropout {a.dropout}; float32 weights, "
        + ("bf16 autocast for the Linear layers (the attention recurrence runs in float32); "
           if a.bf16 else "float32 throughout; ")
        + f"seed {a.seed}; torch.set_num_threads({a.threads})"
        + (f" in each of {a.procs} data-parallel processes (gloo all-reduce of the gradients; "
           f"{a.batch // a.procs} windows per process per step)."
           if getattr(a, "procs", 1) > 1 else "."),
        *([f"- Renamed windows (`--rename {a.rename}`): in that fraction of the training "
           "windows, drawn at random, every novel-specific name (a capitalised word of one "
           "training novel only whose lower-case form is no word of the training text: Emma, "
           "Darcy, Highbury; not London, Bath or Anne, which several novels share) is replaced "
           "by a name generated from a letter model of order 2, the same one throughout the "
           "window (`lm_data.Renamer`). A new novel brings names no training novel spells; "
           "renamed windows teach the model to spell such names from letter statistics and "
           "from their earlier use in the text instead of answering with the training novels' "
           "names."] if getattr(a, "rename", 0) > 0 else []),
        f"- {tr['steps']} steps, {tr['tokens']:,} tokens ({tr['tokens'] / m['train_bytes']:.2f} "
        f"passes over train.txt) in {tr['seconds'] / 60:.1f} min of training "
        f"({tr['tokens_per_s']:.0f} tokens/s) on {m['machine']}; whole run "
        f"{m['total_seconds'] / 60:.1f} min including evaluation. Final train loss (mean of the "
        f"last 20 steps) {tr['final_train_bpb']:.4f} bits/byte.",
        "",
        "## Checks",
        "",
        f"- `luna_ref.load()` of the written files, float64, on the first {rc['bytes']} bytes "
        f"of Persuasion: {rc['reference_float64_bpb']:.5f} bits/byte; this script's float32 "
        f"streaming evaluation: {rc['train_lm_float32_bpb']:.5f} (relative difference "
        f"{rc['bpb_rel_diff']:.1e}; logits relative error {rc['logits_rel_err']:.1e}).",
        "",
        "## Sample",
        "",
        "Python-side sampling of the trained weights (temperature 0.8, seed 1), prompt "
        "\"It is a truth universally acknowledged\":",
        "",
        "```text",
        m["sample"]["text"],
        "```",
        "",
        "With the engine:",
        "",
        "```sh",
        "make -j2 bin/luna",
        "bin/luna generate --model models/austen-lm --prompt \"It is a truth universally "
        "acknowledged\" --max-new-tokens 200 --temperature 0.8 --seed 1",
        "```",
        "",
        *engine_section(m),
        "## Intended use and limits",
        "",
        "- Intended: demonstrating and testing lunaserve's causal decoder (constant-memory "
        "generation) with a real, trained model instead of random weights.",
        "- Trained for under an hour on 2 CPU cores on 3.3 MB of text; the sample above shows "
        "what to expect. It has no notion of plot or facts. Do not present its output as text "
        "by Austen.",
        "- Long contexts: causal Luna attention averages over the whole context (LUNA.md), and "
        + (f"the model saw positions 1..{a.ctx} only in training; "
           if cfg["positions"] != "none" else
           f"the model was trained on {a.ctx}-byte windows and has no position embeddings; ")
        + "the score by offset above shows how it holds up further on.",
        "- English of 1811-1818 only; any other input (code, other languages, modern text) is "
        "out of distribution.",
        "",
        *why_section(m),
        *ngram_section(m, cfg),
        *notes_section(m),
        "Metrics: `metrics.json` (every number above).",
        "",
    ]
    with open(os.path.join(out, "README.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--selftest", action="store_true", help="only run the float64 self-test")
    ap.add_argument("--card-only", action="store_true",
                    help="only rewrite OUT/README.md from OUT/metrics.json")
    ap.add_argument("--engine-check", action="store_true",
                    help="only run build/bin/luna on the model in --out (eval on Persuasion, "
                         "greedy and sampled generation) and record it in metrics.json + README")
    ap.add_argument("--chapters", action="store_true",
                    help="only stream Persuasion through the model in --out again and compare it "
                         "with the n-gram chapter by chapter; record it in metrics.json + README")
    ap.add_argument("--bench", type=int, default=0, help="time N training steps and exit")
    ap.add_argument("--minutes", type=float, default=50.0, help="wall budget of the whole run")
    ap.add_argument("--out", default=os.path.join(ROOT, "models", "austen-lm"))
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--ffn", type=int, default=1024)
    ap.add_argument("--l", type=int, default=32)
    ap.add_argument("--hash-ngrams", type=int, default=1,
                    help="hash_ngrams M: each byte's embedding adds a hashed embedding of the n-grams "
                         "of 2..M bytes that end at it (1: none)")
    ap.add_argument("--hash-buckets", type=int, default=8192, help="hash_buckets (a power of two)")
    ap.add_argument("--hash-dim", type=int, default=20, help="hash_dim: width of a hashed row")
    ap.add_argument("--ngram", type=int, default=12,
                    help="ngram_embed: each byte's embedding adds tables for the ngram-1 bytes before")
    ap.add_argument("--positions", choices=("sinusoidal", "none"), default="none",
                    help="position embeddings added to the token embeddings")
    ap.add_argument("--tie-kv", dest="tie_kv", action="store_true", default=True)
    ap.add_argument("--no-tie-kv", dest="tie_kv", action="store_false")
    ap.add_argument("--ctx", type=int, default=2048, help="tokens per window (bos + ctx-1 bytes)")
    ap.add_argument("--batch", type=int, default=8, help="windows per step")
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--min-lr-ratio", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--dropout", type=float, default=0.1, help="residual dropout in training")
    ap.add_argument("--rename", type=float, default=0.0,
                    help="fraction of training windows whose novel-specific names are replaced "
                    "by generated ones (lm_data.Renamer)")
    ap.add_argument("--bf16", dest="bf16", action="store_true", default=None,
                    help="bf16 autocast for the Linear layers (default: only on a CPU with bf16 "
                         "instructions, avx512_bf16 or amx_bf16; without them it is emulated, ~20x slower)")
    ap.add_argument("--no-bf16", dest="bf16", action="store_false")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2, help="torch threads per process")
    ap.add_argument("--procs", type=int, default=1,
                    help="data-parallel training processes (gloo, this machine only); --batch "
                         "is split between them")
    ap.add_argument("--eval-window", type=int, default=4096)
    ap.add_argument("--quick-valid", type=int, default=65536,
                    help="bytes of valid.txt for the periodic validation")
    ap.add_argument("--eval-limit", type=int, default=0,
                    help="score only the first N bytes of valid/test at the end (0 = all; for "
                         "quick pipeline checks: the numbers are then NOT the real metrics)")
    ap.add_argument("--eval-every", type=float, default=300.0, help="seconds between validations")
    ap.add_argument("--log-every", type=float, default=30.0, help="seconds between progress lines")
    a = ap.parse_args()
    if a.bf16 is None:
        a.bf16 = cpu_has_bf16()
    if a.procs < 1 or a.batch % a.procs:
        ap.error("--procs must be >= 1 and divide --batch")

    t_start = time.time()
    torch.set_num_threads(a.threads)
    set_seeds(a.seed)

    def log(msg):
        print(f"[{time.time() - t_start:7.1f}s] {msg}", flush=True)

    if a.selftest:
        selftest(log)
        selftest_data_parallel(log)
        selftest_renamer(log)
        selftest_chapters(log)
        return
    if a.card_only:
        m = read_metrics(a.out)
        if "ngram_by_order" not in m and os.path.exists(NGRAM_JSON):
            m["ngram_by_order"] = {str(r["order"]): r["test"]
                                   for r in json.load(open(NGRAM_JSON))["by_order"]}
        write_card(a.out, argparse.Namespace(**m["args"]), m["config"], m, m["command"])
        log(f"rewrote {a.out}/README.md from metrics.json")
        return
    if a.bench:
        bench(a)
        return
    if a.chapters:
        m = read_metrics(a.out)
        m["eval"]["test"]["by_chapter"] = rescore_chapters(a.out, m, log)
        save_metrics(a.out, m)
        log(f"wrote the chapter comparison into {a.out}/metrics.json and README.md")
        return
    if a.engine_check:
        m = read_metrics(a.out)
        m["engine_check"] = engine_check(a, m, log)
        save_metrics(a.out, m)
        log(f"wrote the engine check into {a.out}/metrics.json and README.md")
        if m["engine_check"]["eval_bpb_rel_diff"] > 1e-3 or not m["engine_check"]["greedy_identical"]:
            raise SystemExit("engine check FAILED: the C engine and this script disagree")
        return

    cmd = "/usr/bin/python3 tools/train_lm.py " + " ".join(shlex.quote(s) for s in sys.argv[1:])
    log(f"command: {cmd}")
    log(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    st = selftest(log)
    st_max = max(max(r["rel_err_chunks_1_7_64_256"], r["rel_err_stream_3_segments"],
                     r["rel_err_batch2"]) for r in st)
    if a.procs > 1:
        st.append(selftest_data_parallel(log))
    if a.rename > 0:
        st.append(selftest_renamer(log))
    st.append(selftest_chapters(log))

    train, valid, test = (lm_data.read_split(s) for s in lm_data.SPLITS)
    log(f"data: train {len(train):,} B, valid {len(valid):,} B, test {len(test):,} B")
    ngram, ngram_by_order = dict(NGRAM), {}
    if os.path.exists(NGRAM_JSON):
        nj = json.load(open(NGRAM_JSON))
        ngram = {k: nj["bits_per_byte"].get(k, NGRAM[k]) for k in NGRAM}
        ngram_by_order = {str(r["order"]): r["test"] for r in nj["by_order"]}

    cfg = make_config(a)
    workers = None
    if a.procs > 1:
        workers = start_workers(a, cfg)
        log(f"data parallel: {a.procs} processes of {a.threads} thread(s), "
            f"{a.batch // a.procs} windows each per step")
    model, opt = new_replica(a, cfg, 0)
    nparams = count_params(model)
    log(f"model: {json.dumps({k: cfg[k] for k in ('d', 'H', 'l', 'layers', 'ffn', 'tie_kv')})}, "
        f"{nparams:,} parameters")
    sampler = rank_sampler(a, train, 0)
    qvalid = valid[: a.quick_valid]

    budget = a.minutes * 60.0
    ev_valid, ev_test = valid, test
    if a.eval_limit:
        ev_valid, ev_test = valid[: a.eval_limit], test[: a.eval_limit]
        log(f"--eval-limit {a.eval_limit}: the final scores use only the first {a.eval_limit} "
            "bytes of valid and test (a pipeline check, not the real metrics)")
    ev_renamed = lm_data.renamed_valid()
    if a.eval_limit:
        ev_renamed = ev_renamed[: a.eval_limit]
    # stream + windows of valid and test, the stream of the renamed validation chapters
    final_tokens = 2 * (len(ev_valid) + len(ev_test)) + len(ev_renamed)
    model.eval()  # the evaluation speed does not depend on the weights: measure it now
    _, nb1, s1 = eval_windows(model, valid[:16384], a.eval_window)
    _, nb2, s2 = eval_stream(model, valid[:8192])
    model.train()
    eval_tok_s = (nb1 + nb2) / (s1 + s2)
    ev_tokens, ev_secs = nb1 + nb2, s1 + s2  # every evaluation so far: the speed is their mean
    log(f"evaluation speed {eval_tok_s:.0f} tokens/s: the final evaluation of "
        f"{final_tokens:,} tokens needs ~{final_tokens / eval_tok_s:.0f} s")
    margin = 60.0

    def train_deadline():
        reserve = final_tokens / eval_tok_s * 1.5 + margin
        return t_start + budget - reserve

    step, tokens, hist, history = 0, 0, [], []
    t_train0 = time.time()
    deadline = train_deadline()
    # The lr schedule runs to the end planned now; the stop (deadline) follows the measured
    # evaluation speed. Stopping earlier leaves the lr a little above its minimum; later, the
    # lr stays at its minimum. Either way the lr never goes back up.
    planned_end = deadline
    last_log = last_eval = time.time()
    train_time = 0.0
    log(f"training: batch {a.batch} x ctx {a.ctx} = {a.batch * a.ctx} tokens/step, "
        f"budget {a.minutes} min (training until ~{(deadline - t_start) / 60:.1f} min)")

    def quick_eval():
        nonlocal eval_tok_s, deadline, ev_tokens, ev_secs
        model.eval()
        bpb, nb, sec = eval_windows(model, qvalid, a.eval_window)
        model.train()
        ev_tokens, ev_secs = ev_tokens + nb, ev_secs + sec
        eval_tok_s = ev_tokens / ev_secs
        deadline = train_deadline()
        return bpb, sec

    while True:
        now = time.time()
        if now >= deadline and step > 0:
            break
        frac = (now - t_train0) / max(1.0, planned_end - t_train0)
        lr = lr_at(a, step, frac)
        for g in opt.param_groups:
            g["lr"] = lr
        ts = time.time()
        if workers:
            broadcast_control(True, lr)
        loss, gnorm = train_step(model, opt, sampler.next(), a)
        train_time += time.time() - ts
        step += 1
        tokens += a.batch * a.ctx
        hist.append(loss)
        if not math.isfinite(loss):
            raise SystemExit(f"train loss is {loss} at step {step}")
        if step == 5:
            log(f"speed: {tokens / train_time:.0f} tokens/s ({train_time / step:.2f} s/step) "
                f"over the first 5 steps")
        now = time.time()
        if now - last_log >= a.log_every or step == 1:
            recent = hist[-max(1, min(len(hist), 20)):]
            tl = sum(recent) / len(recent)
            log(f"step {step:5d}  tokens {tokens / 1e6:7.2f}M  lr {lr:.2e}  train loss {tl:.4f} "
                f"({tl / LN2:.4f} bpb)  |g| {gnorm:.2f}  {tokens / train_time:.0f} tok/s")
            history.append({"t": round(now - t_start, 1), "step": step, "tokens": tokens,
                            "lr": lr, "train_bpb": tl / LN2})
            last_log = now
        if now - last_eval >= a.eval_every:
            bpb, sec = quick_eval()
            log(f"step {step:5d}  valid[:{len(qvalid)}] bpb {bpb:.4f} (windows of "
                f"{a.eval_window}, {sec:.1f} s, {eval_tok_s:.0f} tok/s; training until "
                f"{(deadline - t_start) / 60:.1f} min)")
            history.append({"t": round(time.time() - t_start, 1), "step": step,
                            "tokens": tokens, "quick_valid_bpb": bpb})
            last_eval = time.time()

    t_train = time.time() - t_train0
    if workers:
        stop_workers(*workers)
        torch.set_num_threads(a.threads * a.procs)  # the final evaluation has every core
    recent = hist[-20:]
    final_train_bpb = sum(recent) / len(recent) / LN2
    log(f"training done: {step} steps, {tokens:,} tokens in {t_train / 60:.1f} min "
        f"({tokens / train_time:.0f} tokens/s in steps); final train {final_train_bpb:.4f} bpb")

    model.eval()
    os.makedirs(a.out, exist_ok=True)
    luna_ref.save(model, a.out, dtype="F32")
    log(f"saved {a.out}/config.json and model.safetensors")

    ev = {}
    chapters = None if a.eval_limit else ngram_chapters(test, log)
    for name, data in (("valid", ev_valid), ("test", ev_test)):
        bk = {}
        bits = list(chapters[0]) if chapters and name == "test" else None
        sb, nb, s1 = eval_stream(model, data, buckets=bk, spans=bits)
        wb, _, s2 = eval_windows(model, data, a.eval_window)
        ev[name] = {"bytes": nb, "stream_bpb": sb, "windows_bpb": wb,
                    "stream_bpb_by_offset": bk,
                    "stream_seconds": round(s1, 1), "windows_seconds": round(s2, 1)}
        log(f"{name}: stream {sb:.4f} bpb ({s1:.0f} s), windows of {a.eval_window} {wb:.4f} bpb "
            f"({s2:.0f} s); n-gram {ngram[name]:.4f}")
        log(f"{name}: stream bpb by byte offset: "
            + ", ".join(f"{k}: {v:.3f}" for k, v in bk.items()))
        if bits is not None:
            ev[name]["by_chapter"] = chapter_comparison(bits, *chapters, log)
    rb, nb, s1 = eval_stream(model, ev_renamed)
    ev["valid_renamed"] = {"bytes": nb, "stream_bpb": rb, "stream_seconds": round(s1, 1)}
    log(f"valid, names renamed (lm_data.renamed_valid): stream {rb:.4f} bpb ({s1:.0f} s); "
        f"n-gram {ngram['valid_renamed']:.4f}")
    rc = reference_check(a.out, test)
    log(f"reference check (luna_ref.load, float64, first {rc['bytes']} B of Persuasion): "
        f"{rc['reference_float64_bpb']:.5f} vs {rc['train_lm_float32_bpb']:.5f} bpb, rel diff "
        f"{rc['bpb_rel_diff']:.1e}, logits rel err {rc['logits_rel_err']:.1e}")
    prompt = "It is a truth universally acknowledged"
    text = sample(model, prompt, 200, 0.8, 1)
    log(f"sample: {prompt}{text!r}")

    total = time.time() - t_start
    m = {
        "model": "austen-lm",
        "config": cfg,
        "params": nparams,
        "model_bytes": os.path.getsize(os.path.join(a.out, "model.safetensors")),
        "train_bytes": len(train),
        "command": cmd,
        "args": vars(a),
        "machine": f"{os.cpu_count()} cores, torch {torch.__version__} CPU",
        "selftest_max_rel_err": st_max,
        "selftest": st,
        "training": {"steps": step, "tokens": tokens, "seconds": round(t_train, 1),
                     "step_seconds": round(train_time, 1),
                     "tokens_per_s": tokens / train_time, "final_train_bpb": final_train_bpb},
        "eval": ev,
        "eval_limit_bytes": a.eval_limit,
        "eval_method": {
            "stream": "whole file as one sequence (bos + all bytes), segments of 4096 tokens "
                      "carrying the float64 running sums and the position",
            "windows": f"consecutive non-overlapping windows of {a.eval_window} bytes, each "
                       "bos + window",
        },
        "ngram_baseline_bpb": ngram,
        "ngram_by_order": ngram_by_order,
        "beats_ngram_test": {"stream": ev["test"]["stream_bpb"] < ngram["test"],
                             "windows": ev["test"]["windows_bpb"] < ngram["test"]},
        "reference_check": rc,
        "sample": {"prompt": prompt, "temperature": 0.8, "seed": 1, "max_new_tokens": 200,
                   "text": prompt + text},
        "history": history,
        "total_seconds": round(total, 1),
    }
    save_metrics(a.out, m)
    log(f"wrote {a.out}/metrics.json and README.md; total {total / 60:.1f} min")


if __name__ == "__main__":
    main()
