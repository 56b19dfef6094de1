"""luna_ref.py - the PyTorch reference of lunaserve's bidirectional Luna encoder classifier.

This is the ground truth that tests/golden is generated from. It follows, line for line:
  - shared/LUNA.md (the math of the authors' fairseq-apollo code: LunarMultiheadAttention,
    LunaSentenceEncoderLayer, LunaSentenceEncoder, luna_lra/model.py), sections
    "Bidirectional Luna attention", "Encoder layer" and "Encoder stack and the classifier";
  - docs/model-format.md for the config fields, their defaults, the tensor names and the input
    side (bytes -> tokens, input_transform).
It runs one unpadded sequence (batch 1), so there are no padding masks: with batch 1 the
reference's masks are all false (dynamic projection keeps l' = min(n, l) <= n rows of P).
Dropout, layerdrop, quant-noise and segment embeddings do not exist at inference and are left
out. Run it in float64 (`model.double()`, which load() does) for golden outputs.

The parameter names are the model format's tensor names, so model.state_dict().keys() is
exactly the set of tensors in model.safetensors. The classes mirror the reference modules:
    LunaAttention     - LunarMultiheadAttention (pack, then unpack)
    LunaEncoderLayer  - LunaSentenceEncoderLayer (post-norm or pre-norm)
    LunaEncoder       - LunaSentenceEncoder (embeddings, P, layers, final norms)
    LunaClassifier    - LunaEncoder + the luna_lra classification head

Usage:
    import luna_ref
    model = luna_ref.load("models/spam")             # float64
    out = model.forward(b"raw request bytes")        # hidden, pfinal, pooled, logits, probs
    luna_ref.save(model, "/tmp/m", dtype="F32")      # config.json + model.safetensors
"""

import copy
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_io  # noqa: E402

LN_EPS = 1e-5
SUBJECT_MAX = 998  # RFC 5322's line limit; the subject is truncated to this many bytes

# ---- config.json -----------------------------------------------------------------------------

# The defaults of docs/model-format.md; None means "derived" (Hp = H, classifier_dim = d,
# embed_scale = sqrt(d) with sinusoidal positions else 1). COMMON fields apply to both tasks;
# the others apply to one task only, and a config that sets a field of the other task is
# refused (the engine's loader does the same).
COMMON = {
    "activation": "relu",
    "tie_kv": True,
    "normalize_before": False,
    "positions": "sinusoidal",
    "max_positions": 0,
    "embed_scale": None,
    "ngram_embed": 1,
    "hash_ngrams": 1,
    "hash_buckets": 4096,
    "hash_dim": 32,
    "layernorm_embedding": False,
    "vocab_size": 260,
    "byte_offset": 4,
    "pad_id": 1,
    "bos_id": 0,
    "eos_id": 2,
}
CLASSIFY_ONLY = {
    "Hp": None,
    "dynamic_projection": True,
    "append_eos": False,
    "input_transform": "none",
    "pooling": "cls",
    "classifier_layers": 1,
    "classifier_dim": None,
    "classifier_activation": "relu",
}
CAUSAL_ONLY = {
    "causal_phi": "softplus_ln2",
    "causal_pc_proj": True,
    "tie_embeddings": True,
}
DEFAULTS = dict(COMMON, **CLASSIFY_ONLY, **CAUSAL_ONLY)
REQUIRED = ("format", "format_version", "task", "d", "H", "l", "layers", "ffn")
FIELDS = set(REQUIRED) | set(DEFAULTS) | {"labels"}
TASK_FIELDS = {
    "classification": set(REQUIRED) | set(COMMON) | set(CLASSIFY_ONLY) | {"labels"},
    "causal-lm": set(REQUIRED) | set(COMMON) | set(CAUSAL_ONLY),
}

_INT_RANGES = {
    "d": (2, 4096),
    "H": (1, 64),
    "Hp": (1, 64),
    "l": (1, 1024),
    "layers": (1, 64),
    "ffn": (1, 65536),
    "max_positions": (0, 16777216),
    "ngram_embed": (1, 32),
    "hash_ngrams": (1, 32),
    "hash_buckets": (2, 1 << 24),
    "hash_dim": (1, 4096),
    "vocab_size": (1, 1 << 31),
    "byte_offset": (0, 1 << 31),
    "pad_id": (0, 1 << 31),
    "bos_id": (0, 1 << 31),
    "eos_id": (0, 1 << 31),
    "classifier_layers": (0, 8),
    "classifier_dim": (1, 65536),
}
_BOOLS = ("tie_kv", "normalize_before", "dynamic_projection", "layernorm_embedding", "append_eos",
          "causal_pc_proj", "tie_embeddings")
_ENUMS = {
    "activation": ("relu", "gelu"),
    "positions": ("learned", "sinusoidal", "none"),
    "input_transform": ("none", "email_subject_body"),
    "pooling": ("cls", "mean", "p"),
    "classifier_activation": ("relu", "gelu", "tanh"),
    "causal_phi": ("softplus_ln2", "elu_plus_1", "softplus"),
}


def resolve_config(cfg):
    """Validate a config.json dict and return a copy with every default filled in and every
    derived value (Hp, classifier_dim, embed_scale) resolved. Raises ValueError naming the field.
    Idempotent: resolve_config(resolve_config(c)) == resolve_config(c)."""
    unknown = sorted(set(cfg) - FIELDS)
    if unknown:
        raise ValueError(f"unknown config field {unknown[0]!r}")
    for k in REQUIRED:
        if k not in cfg:
            raise ValueError(f"missing config field {k!r}")
    for k, v in cfg.items():
        if v is None and k != "embed_scale":
            raise ValueError(f"{k} may not be null")
    if cfg["format"] != "luna" or cfg["format_version"] != 1:
        raise ValueError("format must be \"luna\" and format_version 1")
    if cfg["task"] not in TASK_FIELDS:
        raise ValueError(f"task must be \"classification\" or \"causal-lm\", got {cfg['task']!r}")
    fields = TASK_FIELDS[cfg["task"]]
    other = sorted(set(cfg) - fields)
    if other:
        raise ValueError(f"field {other[0]!r} does not apply to task {cfg['task']!r}")
    c = {k: v for k, v in DEFAULTS.items() if k in fields}  # only this task's fields
    c.update(copy.deepcopy(cfg))
    if c.get("Hp", 0) is None:
        c["Hp"] = c["H"]
    if c.get("classifier_dim", 0) is None:
        c["classifier_dim"] = c["d"]
    for k, (lo, hi) in _INT_RANGES.items():
        if k not in c:
            continue
        v = c[k]
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise ValueError(f"{k} must be an integer in {lo}..{hi}, got {v!r}")
    for k in _BOOLS:
        if k in c and not isinstance(c[k], bool):
            raise ValueError(f"{k} must be true or false, got {c[k]!r}")
    for k, values in _ENUMS.items():
        if k in c and c[k] not in values:
            raise ValueError(f"{k} must be one of {values}, got {c[k]!r}")
    d = c["d"]
    if d % 2:
        raise ValueError("d must be even")
    if d % c["H"]:
        raise ValueError("H must divide d")
    if d % c.get("Hp", c["H"]):
        raise ValueError("Hp must divide d")
    if c["positions"] == "learned" and c["max_positions"] < 1:
        raise ValueError("max_positions is required (>= 1) with learned positions")
    if c["embed_scale"] is None:
        c["embed_scale"] = math.sqrt(d) if c["positions"] == "sinusoidal" else 1.0
    es = c["embed_scale"]
    if not isinstance(es, (int, float)) or isinstance(es, bool) or not (es > 0 and math.isfinite(es)):
        raise ValueError(f"embed_scale must be a number > 0 or null, got {es!r}")
    c["embed_scale"] = float(es)
    if c["vocab_size"] < c["byte_offset"] + 256:
        raise ValueError("vocab_size must be >= byte_offset + 256")
    for k in ("pad_id", "bos_id", "eos_id"):
        if c[k] >= c["vocab_size"]:
            raise ValueError(f"{k} must be < vocab_size")
    if c["hash_buckets"] & (c["hash_buckets"] - 1):
        raise ValueError("hash_buckets must be a power of two")
    if c["layernorm_embedding"] and c["normalize_before"]:
        raise ValueError("layernorm_embedding cannot be combined with normalize_before")
    if c["task"] == "causal-lm":
        return c
    labels = c.get("labels")
    if (
        not isinstance(labels, list)
        or not 2 <= len(labels) <= 1024
        or not all(isinstance(s, str) and s for s in labels)
        or len(set(labels)) != len(labels)
    ):
        raise ValueError("labels must be 2..1024 distinct non-empty strings")
    return c


# ---- input: bytes -> tokens ------------------------------------------------------------------


def email_subject_body(msg):
    """input_transform "email_subject_body" (docs/model-format.md), defined exactly:

    Lines end at LF; a CR right before the LF (or at the very end of the message) is part of
    the line break and is removed. The header block ends at the first EMPTY line, i.e. a line
    that is exactly "\\n" or "\\r\\n" (so a message that starts with an empty line has no
    headers). The body is every byte after that empty line's LF, raw. With no empty line the
    whole message is header and the body is empty.
    Within the header block, the first line whose first 8 bytes are "subject:" (ASCII
    case-insensitive, no space before the colon) starts the subject: its value is the rest of
    the line with its leading spaces/tabs stripped. Each following line that starts with a space
    or a tab is a continuation: its line break and its leading run of spaces/tabs become ONE
    space. Trailing spaces are kept. No Subject -> empty subject. The subject is then truncated
    to its first 998 bytes.
    Result: subject + b"\\n" + body."""
    msg = bytes(msg)
    subject = None
    in_subject = False
    body = b""
    pos = 0
    while pos < len(msg):
        nl = msg.find(b"\n", pos)
        end = len(msg) if nl < 0 else nl
        line = msg[pos:end]
        if line.endswith(b"\r"):
            line = line[:-1]
        if nl >= 0 and line == b"":  # the empty line: the header block ends here
            body = msg[nl + 1 :]
            break
        if line[:1] in (b" ", b"\t"):
            if in_subject:
                subject += b" " + line.lstrip(b" \t")
        else:
            in_subject = False
            if subject is None and line[:8].lower() == b"subject:":
                subject = line[8:].lstrip(b" \t")
                in_subject = True
        pos = end + 1
    subject = (subject or b"")[:SUBJECT_MAX]
    return subject + b"\n" + body


def model_bytes(cfg, raw):
    """The bytes the model reads for the request bytes `raw` (after input_transform)."""
    c = resolve_config(cfg)
    raw = bytes(raw)
    if c["input_transform"] == "email_subject_body":
        return email_subject_body(raw)
    return raw


def to_tokens(cfg, raw):
    """Token ids for the request bytes `raw`: bos_id, byte_offset + b for each byte after the
    input transform, then eos_id when append_eos. n = 1 + len + append_eos."""
    c = resolve_config(cfg)
    toks = [c["bos_id"]] + [c["byte_offset"] + b for b in model_bytes(c, raw)]
    if c["append_eos"]:
        toks.append(c["eos_id"])
    return toks


# ---- helpers ---------------------------------------------------------------------------------


def sinusoid_table(rows, d, pad_row=None, dtype=torch.float64):
    """fairseq's sinusoidal table (SinusoidalPositionalEmbedding.get_embedding): row r holds
    sin(r * f_j) for j < half, then cos(r * f_j), with f_j = exp(-j * ln(10000) / (half - 1)),
    half = d / 2. Row pad_row, if given, is zero (X's table; P's table has no pad row).
    Computed in float64 (the reference computes float32)."""
    half = d // 2
    freq = torch.exp(torch.arange(half, dtype=torch.float64) * -(math.log(10000.0) / (half - 1)))
    ang = torch.arange(rows, dtype=torch.float64).unsqueeze(1) * freq.unsqueeze(0)
    table = torch.cat([torch.sin(ang), torch.cos(ang)], dim=1)
    if pad_row is not None and pad_row < rows:
        table[pad_row] = 0
    return table.to(dtype)


def activation_fn(name):
    """relu, gelu (the exact erf form, as torch's default), tanh."""
    return {"relu": F.relu, "gelu": lambda x: F.gelu(x, approximate="none"), "tanh": torch.tanh}[name]


def split_heads(x, heads):
    """(rows, d) -> (heads, rows, d / heads): head h is channels [h*k, (h+1)*k)."""
    rows, d = x.shape
    return x.reshape(rows, heads, d // heads).transpose(0, 1)


def merge_heads(x):
    """(heads, rows, k) -> (rows, heads * k)."""
    heads, rows, k = x.shape
    return x.transpose(0, 1).reshape(rows, heads * k)


# ---- the modules -----------------------------------------------------------------------------


class LunaAttention(nn.Module):
    """Bidirectional Luna attention (LUNA.md "Bidirectional Luna attention").

    pack:   Cp = concat_h softmax(Q_P K^T) V       Q_P = pq_proj(P) kp^-1/2, Hp heads of kp = d/Hp
            tied: K = V = pc_proj(X); untied: K = pk_proj(X), V = pv_proj(X). No output proj.
    unpack: Y = out_proj(concat_h softmax(Q K_U^T) V_U)   Q = q_proj(X) k^-1/2, H heads of k = d/H
            tied: K_U = V_U = c_proj(Cp); untied: K_U = k_proj(Cp), V_U = v_proj(Cp).
    Returns (Y (n, d), Cp (l', d))."""

    def __init__(self, d, H, Hp, tie_kv):
        super().__init__()
        self.d, self.H, self.Hp, self.tie_kv = d, H, Hp, tie_kv
        self.pq_proj = nn.Linear(d, d)
        self.q_proj = nn.Linear(d, d)
        if tie_kv:
            self.pc_proj = nn.Linear(d, d)
            self.c_proj = nn.Linear(d, d)
        else:
            self.pk_proj = nn.Linear(d, d)
            self.pv_proj = nn.Linear(d, d)
            self.k_proj = nn.Linear(d, d)
            self.v_proj = nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)

    def forward(self, x, p):
        # 1. pack: P attends over the n tokens; Hp heads.
        kp = self.d // self.Hp
        if self.tie_kv:
            c = self.pc_proj(x)
            k_pack = v_pack = c
        else:
            k_pack, v_pack = self.pk_proj(x), self.pv_proj(x)
        q_pack = self.pq_proj(p) * kp**-0.5
        a_pack = torch.softmax(
            split_heads(q_pack, self.Hp) @ split_heads(k_pack, self.Hp).transpose(1, 2), dim=-1
        )  # (Hp, l', n)
        cp = merge_heads(a_pack @ split_heads(v_pack, self.Hp))  # (l', d)

        # 2. unpack: the tokens attend over the l' packed rows; H heads.
        k = self.d // self.H
        q = self.q_proj(x) * k**-0.5
        if self.tie_kv:
            k_unpack = v_unpack = self.c_proj(cp)
        else:
            k_unpack, v_unpack = self.k_proj(cp), self.v_proj(cp)
        a_unpack = torch.softmax(
            split_heads(q, self.H) @ split_heads(k_unpack, self.H).transpose(1, 2), dim=-1
        )  # (H, n, l')
        y = self.out_proj(merge_heads(a_unpack @ split_heads(v_unpack, self.H)))  # (n, d)
        return y, cp


class LunaEncoderLayer(nn.Module):
    """LunaSentenceEncoderLayer (LUNA.md "Encoder layer").

    post-norm: (Y, Cp) = attn(X, P); X1 = LN_a(X + Y); P' = LN_p(P + Cp);
               X' = LN_f(X1 + fc2(act(fc1(X1))))
    pre-norm:  (Y, Cp) = attn(LN_a(X), LN_p(P)); X1 = X + Y; P' = P + Cp;
               X' = X1 + fc2(act(fc1(LN_f(X1))))"""

    def __init__(self, c):
        super().__init__()
        d = c["d"]
        self.normalize_before = c["normalize_before"]
        self.act = activation_fn(c["activation"])
        self.self_attn = LunaAttention(d, c["H"], c["Hp"], c["tie_kv"])
        self.self_attn_layer_norm = nn.LayerNorm(d, eps=LN_EPS)
        self.self_atten_proj_layer_norm = nn.LayerNorm(d, eps=LN_EPS)  # (sic)
        self.fc1 = nn.Linear(d, c["ffn"])
        self.fc2 = nn.Linear(c["ffn"], d)
        self.final_layer_norm = nn.LayerNorm(d, eps=LN_EPS)

    def forward(self, x, p):
        if self.normalize_before:
            y, cp = self.self_attn(self.self_attn_layer_norm(x), self.self_atten_proj_layer_norm(p))
            x1, p1 = x + y, p + cp
            return x1 + self.fc2(self.act(self.fc1(self.final_layer_norm(x1)))), p1
        y, cp = self.self_attn(x, p)
        x1 = self.self_attn_layer_norm(x + y)
        p1 = self.self_atten_proj_layer_norm(p + cp)
        return self.final_layer_norm(x1 + self.fc2(self.act(self.fc1(x1)))), p1


HASH_MOD = 2147483647  # 2^31 - 1
HASH_MUL = 263
HASH_MIX = 2654435761  # Knuth's multiplicative constant, 2^32 / golden ratio


def hash_buckets(ids, order, buckets):
    """hash_ngrams: for each position i >= order - 1 of ids (..., n), the bucket of the `order`
    tokens ids[i-order+1 .. i] (docs/model-format.md, "Hashed n-gram embeddings"):
        h = 0; for each token t, oldest first: h = (h * 263 + t + 1) mod (2^31 - 1)
        bucket = ((h * 2654435761) mod 2^32) >> (32 - log2(buckets))
    Returns a LongTensor (..., n - order + 1): entry j is the bucket of the n-gram ending at
    position j + order - 1."""
    n = ids.shape[-1]
    ids = ids.long()
    h = torch.zeros_like(ids[..., : n - order + 1])
    for j in range(order):
        h = (h * HASH_MUL + ids[..., j : n - order + 1 + j] + 1) % HASH_MOD
    shift = 32 - (buckets.bit_length() - 1)
    return ((h * HASH_MIX) % (1 << 32)) >> shift


def token_embeddings(model, ids):
    """(embed_tokens(ids) + sum over b = 1 .. K-1 of embed_ngrams row (b-1)*vocab + ids[t-b],
    where t-b >= 0, + embed_hash_proj(concat over o = 2 .. M of embed_hash row
    (o-2)*buckets + hash_buckets(ids[t-o+1 .. t]), zeros where t-o+1 < 0)) * embed_scale,
    K = ngram_embed, M = hash_ngrams: the token's embedding plus one table per earlier
    position of a window of K tokens (a convolution of width K over one-hot tokens; no term
    for the positions before the first token), plus a hashed embedding of each n-gram of
    2 .. M tokens that ends at the token. ids: LongTensor (..., n); the last axis is time, so
    right padding never reaches a real token."""
    c = model.cfg
    x = model.embed_tokens(ids)
    V = c["vocab_size"]
    for b in range(1, min(c["ngram_embed"], ids.shape[-1] + 1)):
        g = model.embed_ngrams(ids[..., :-b] + (b - 1) * V)
        x = torch.cat([x[..., :b, :], x[..., b:, :] + g], dim=-2)
    M = c["hash_ngrams"]
    if M > 1:
        B, r, n = c["hash_buckets"], c["hash_dim"], ids.shape[-1]
        parts = []
        for o in range(2, M + 1):
            g = x.new_zeros(ids.shape + (r,))
            if n >= o:
                rows = model.embed_hash(hash_buckets(ids, o, B) + (o - 2) * B)
                g = torch.cat([g[..., : o - 1, :], rows], dim=-2)
            parts.append(g)
        x = x + model.embed_hash_proj(torch.cat(parts, dim=-1))
    return x * c["embed_scale"]


def add_ngram_embeddings(module, c):
    if c["ngram_embed"] > 1:
        module.embed_ngrams = nn.Embedding((c["ngram_embed"] - 1) * c["vocab_size"], c["d"])
    if c["hash_ngrams"] > 1:
        M = c["hash_ngrams"]
        module.embed_hash = nn.Embedding((M - 1) * c["hash_buckets"], c["hash_dim"])
        module.embed_hash_proj = nn.Linear((M - 1) * c["hash_dim"], c["d"], bias=False)


def history_len(c):
    """The tokens before a position that its embedding reads: max(ngram_embed, hash_ngrams) - 1."""
    return max(c["ngram_embed"], c["hash_ngrams"]) - 1


class LunaEncoder(nn.Module):
    """LunaSentenceEncoder (LUNA.md "Encoder stack"; model-format.md "The computation" 1-5).

    X0 = token_embeddings(tokens) + positions (token i: row/position pad_id + 1 + i)
    P0 = projected_embeddings[:l'] * embed_scale (+ sinusoid rows 0..l'-1 if sinusoidal),
         l' = min(n, l) with dynamic_projection, else l
    layernorm_embedding: X0 = emb_layer_norm(X0), P0 = proj_emb_layer_norm(P0)
    layers, then with normalize_before: X = layer_norm(X), P = proj_layer_norm(P)."""

    def __init__(self, cfg):
        super().__init__()
        c = resolve_config(cfg)
        self.cfg = c
        d = c["d"]
        self.embed_tokens = nn.Embedding(c["vocab_size"], d)
        add_ngram_embeddings(self, c)
        if c["positions"] == "learned":
            self.embed_positions = nn.Embedding(c["max_positions"] + c["pad_id"] + 1, d)
        self.projected_embeddings = nn.Parameter(torch.zeros(c["l"], d))
        if c["layernorm_embedding"]:
            self.emb_layer_norm = nn.LayerNorm(d, eps=LN_EPS)
            self.proj_emb_layer_norm = nn.LayerNorm(d, eps=LN_EPS)
        self.layers = nn.ModuleList([LunaEncoderLayer(c) for _ in range(c["layers"])])
        if c["normalize_before"]:
            self.layer_norm = nn.LayerNorm(d, eps=LN_EPS)
            self.proj_layer_norm = nn.LayerNorm(d, eps=LN_EPS)

    def encode(self, tokens):
        """tokens: list of ids (one unpadded sequence). Returns (X (n, d), P (l', d))."""
        c = self.cfg
        n = len(tokens)
        if c["max_positions"] and n > c["max_positions"]:
            raise ValueError(f"{n} tokens > max_positions {c['max_positions']}")
        dtype = self.projected_embeddings.dtype
        ids = torch.tensor(tokens, dtype=torch.long)
        scale = c["embed_scale"]

        x = token_embeddings(self, ids)
        first = c["pad_id"] + 1  # fairseq numbers positions from padding_idx + 1
        if c["positions"] == "learned":
            x = x + self.embed_positions(torch.arange(first, first + n))
        elif c["positions"] == "sinusoidal":
            x = x + sinusoid_table(first + n, c["d"], pad_row=c["pad_id"], dtype=dtype)[first:]

        lp = min(n, c["l"]) if c["dynamic_projection"] else c["l"]
        p = self.projected_embeddings[:lp] * scale
        if c["positions"] == "sinusoidal":
            p = p + sinusoid_table(lp, c["d"], dtype=dtype)

        if c["layernorm_embedding"]:
            x = self.emb_layer_norm(x)
            p = self.proj_emb_layer_norm(p)
        for layer in self.layers:
            x, p = layer(x, p)
        if c["normalize_before"]:
            x = self.layer_norm(x)
            p = self.proj_layer_norm(p)
        return x, p


class LunaClassifier(LunaEncoder):
    """The luna_lra classification model: the encoder, a pooled sentence representation, then
    classifier_layers x (Linear, activation) and sentence_projection_layer (no bias).
    Subclasses LunaEncoder so that the state-dict names carry no "encoder." prefix."""

    def __init__(self, cfg):
        super().__init__(cfg)
        c = self.cfg
        dims = [c["d"]] + [c["classifier_dim"]] * c["classifier_layers"]
        self.classifier = nn.ModuleList([nn.Linear(i, o) for i, o in zip(dims, dims[1:])])
        self.classifier_act = activation_fn(c["classifier_activation"])
        self.sentence_projection_layer = nn.Linear(dims[-1], len(c["labels"]), bias=False)
        self.raw_config = copy.deepcopy(cfg)  # what save() writes back to config.json

    @torch.no_grad()
    def forward(self, raw):
        """raw: the request bytes (before input_transform). Returns a dict of tensors:
        hidden (n, d), pfinal (l', d), pooled (d), logits (C), probs (C)."""
        x, p = self.encode(to_tokens(self.cfg, raw))
        pooling = self.cfg["pooling"]
        if pooling == "cls":
            pooled = x[0]
        elif pooling == "mean":
            pooled = x.mean(dim=0)
        else:
            pooled = p.mean(dim=0)
        h = pooled
        for lin in self.classifier:
            h = self.classifier_act(lin(h))
        logits = self.sentence_projection_layer(h)
        return {
            "hidden": x,
            "pfinal": p,
            "pooled": pooled,
            "logits": logits,
            "probs": torch.softmax(logits, dim=-1),
        }


# ---- the causal language model (task "causal-lm") -------------------------------------------


def phi_fn(name):
    """The feature map of the causal attention (LUNA.md "Causal Luna attention"):
    softplus_ln2: softplus with beta = ln 2, log2(1 + 2^z), so phi(0) = 1 (the final version);
    elu_plus_1:   elu(z) + 1 (the older lunar_attention.py);
    softplus:     log(1 + e^z) (named in the paper)."""
    ln2 = math.log(2.0)
    return {
        "softplus_ln2": lambda z: F.softplus(z, beta=ln2),
        "elu_plus_1": lambda z: F.elu(z) + 1.0,
        "softplus": F.softplus,
    }[name]


class LunaCausalAttention(nn.Module):
    """LunarCausalAttention (LUNA.md "Causal Luna attention"), in the reference's parallel form:
    it materialises the cumulative (n, k, l) tensors per head, which the engine must not.

    For each head, with s = k^-1/2 and t = 1..n:
      Pq  = pq_proj(P) s                              (l, k)
      w_t = phi(c_t Pq^T)                             c_t = pc_proj(x)_t, or x_t without pc_proj
      q_t = q_proj(x)_t s;  k_t = v_t = c_proj(x)_t (tied), or k_proj(x)_t, v_proj(x)_t
      a_t = q_t (sum_{i<=t} k_i^T w_i) / t;  alpha_t = softmax(a_t) over l
      o_t = alpha_t (sum_{i<=t} w_i^T v_i) / t
    The output is out_proj(concat_heads(o))."""

    def __init__(self, d, H, tie_kv, pc_proj, phi):
        super().__init__()
        self.d, self.H, self.tie_kv = d, H, tie_kv
        self.phi = phi_fn(phi)
        self.pq_proj = nn.Linear(d, d)
        self.q_proj = nn.Linear(d, d)
        if pc_proj:
            self.pc_proj = nn.Linear(d, d)
        if tie_kv:
            self.c_proj = nn.Linear(d, d)
        else:
            self.k_proj = nn.Linear(d, d)
            self.v_proj = nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)
        self.has_pc = pc_proj

    def forward(self, x, p, softmax=False):
        n = x.shape[0]
        k = self.d // self.H
        s = k**-0.5
        if softmax:
            return self.softmax_forward(x, s)
        pq = split_heads(self.pq_proj(p) * s, self.H)  # (H, l, k)
        c = self.pc_proj(x) if self.has_pc else x
        w = self.phi(split_heads(c, self.H) @ pq.transpose(1, 2))  # (H, n, l)
        q = split_heads(self.q_proj(x) * s, self.H)  # (H, n, k)
        if self.tie_kv:
            key = val = split_heads(self.c_proj(x), self.H)
        else:
            key, val = split_heads(self.k_proj(x), self.H), split_heads(self.v_proj(x), self.H)
        t = torch.arange(1, n + 1, dtype=x.dtype).view(1, n, 1)
        ksum = torch.cumsum(key.unsqueeze(3) * w.unsqueeze(2), dim=1)  # (H, n, k, l)
        a = (q.unsqueeze(2) @ ksum).squeeze(2) / t  # (H, n, l)
        alpha = torch.softmax(a, dim=-1)
        vsum = torch.cumsum(w.unsqueeze(3) * val.unsqueeze(2), dim=1)  # (H, n, l, k)
        o = (alpha.unsqueeze(2) @ vsum).squeeze(2) / t  # (H, n, k)
        return self.out_proj(merge_heads(o))

    def softmax_forward(self, x, s):
        """The engine's softmax baseline decoder (a KV cache) on the same weights: causal
        softmax attention with q = q_proj(x) s and the keys and values of the Luna layer
        (c_proj, or k_proj and v_proj); pq_proj and pc_proj are unused."""
        n = x.shape[0]
        q = split_heads(self.q_proj(x) * s, self.H)  # (H, n, k)
        if self.tie_kv:
            key = val = split_heads(self.c_proj(x), self.H)
        else:
            key, val = split_heads(self.k_proj(x), self.H), split_heads(self.v_proj(x), self.H)
        scores = q @ key.transpose(1, 2)  # (H, n, n)
        future = torch.ones(n, n, dtype=torch.bool).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
        return self.out_proj(merge_heads(torch.softmax(scores, dim=-1) @ val))


class LunaDecoderLayer(nn.Module):
    """LunaDecoderLayer without encoder attention (decoder-only); P is used unchanged.

    post-norm: x1 = LN_s(x + attn(x, P));  x' = LN_f(x1 + fc2(act(fc1(x1))))
    pre-norm:  x1 = x + attn(LN_s(x), P);  x' = x1 + fc2(act(fc1(LN_f(x1))))"""

    def __init__(self, c):
        super().__init__()
        d = c["d"]
        self.normalize_before = c["normalize_before"]
        self.act = activation_fn(c["activation"])
        self.self_attn = LunaCausalAttention(d, c["H"], c["tie_kv"], c["causal_pc_proj"],
                                             c["causal_phi"])
        self.self_attn_layer_norm = nn.LayerNorm(d, eps=LN_EPS)
        self.fc1 = nn.Linear(d, c["ffn"])
        self.fc2 = nn.Linear(c["ffn"], d)
        self.final_layer_norm = nn.LayerNorm(d, eps=LN_EPS)

    def forward(self, x, p, softmax=False):
        if self.normalize_before:
            x1 = x + self.self_attn(self.self_attn_layer_norm(x), p, softmax)
            return x1 + self.fc2(self.act(self.fc1(self.final_layer_norm(x1))))
        x1 = self.self_attn_layer_norm(x + self.self_attn(x, p, softmax))
        return self.final_layer_norm(x1 + self.fc2(self.act(self.fc1(x1))))


class LunaCausalLM(nn.Module):
    """The decoder-only byte-level Luna language model (docs/model-format.md, task causal-lm).

    X0 = token_embeddings(tokens) + positions (token i: position pad_id + 1 + i)
         (+ emb_layer_norm with layernorm_embedding)
    P  = projected_embeddings * embed_scale, shared unchanged by every layer
    layers, then layer_norm with normalize_before
    logits = X E^T, E = embed_tokens.weight (tie_embeddings) or output_projection.weight"""

    def __init__(self, cfg):
        super().__init__()
        c = resolve_config(cfg)
        if c["task"] != "causal-lm":
            raise ValueError("LunaCausalLM needs task \"causal-lm\"")
        self.cfg = c
        d = c["d"]
        self.embed_tokens = nn.Embedding(c["vocab_size"], d)
        add_ngram_embeddings(self, c)
        if c["positions"] == "learned":
            self.embed_positions = nn.Embedding(c["max_positions"] + c["pad_id"] + 1, d)
        self.projected_embeddings = nn.Parameter(torch.zeros(c["l"], d))
        if c["layernorm_embedding"]:
            self.emb_layer_norm = nn.LayerNorm(d, eps=LN_EPS)
        self.layers = nn.ModuleList([LunaDecoderLayer(c) for _ in range(c["layers"])])
        if c["normalize_before"]:
            self.layer_norm = nn.LayerNorm(d, eps=LN_EPS)
        if not c["tie_embeddings"]:
            self.output_projection = nn.Linear(d, c["vocab_size"], bias=False)
        self.raw_config = copy.deepcopy(cfg)

    @torch.no_grad()
    def forward(self, tokens, softmax=False):
        """tokens: list of ids. Returns {"hidden": (n, d), "logits": (n, vocab)}: row t is the
        distribution over the token that follows tokens[t]. softmax=True runs the engine's
        softmax baseline decoder on the same weights instead of Luna attention."""
        c = self.cfg
        n = len(tokens)
        if c["max_positions"] and n > c["max_positions"]:
            raise ValueError(f"{n} tokens > max_positions {c['max_positions']}")
        dtype = self.projected_embeddings.dtype
        x = token_embeddings(self, torch.tensor(tokens, dtype=torch.long))
        first = c["pad_id"] + 1
        if c["positions"] == "learned":
            x = x + self.embed_positions(torch.arange(first, first + n))
        elif c["positions"] == "sinusoidal":
            x = x + sinusoid_table(first + n, c["d"], pad_row=c["pad_id"], dtype=dtype)[first:]
        if c["layernorm_embedding"]:
            x = self.emb_layer_norm(x)
        p = self.projected_embeddings * c["embed_scale"]
        for layer in self.layers:
            x = layer(x, p, softmax)
        if c["normalize_before"]:
            x = self.layer_norm(x)
        if c["tie_embeddings"]:
            logits = x @ self.embed_tokens.weight.t()
        else:
            logits = self.output_projection(x)
        return {"hidden": x, "logits": logits}


def model_class(cfg):
    return LunaCausalLM if cfg.get("task") == "causal-lm" else LunaClassifier


# ---- weights ---------------------------------------------------------------------------------


def expected_shapes(cfg):
    """name -> shape of every tensor the config implies (docs/model-format.md, Tensors)."""
    return {k: tuple(v.shape) for k, v in model_class(cfg)(cfg).state_dict().items()}


def randomize_(model, seed, std=0.4, bias_std=0.2, ln_std=0.1):
    """Fill every parameter with seeded random values, deterministically (numpy PCG64, in sorted
    name order). Linear weights and embeddings: N(0, std^2); Linear biases: N(0, bias_std^2);
    LayerNorm: weight 1 + N(0, ln_std^2), bias N(0, ln_std^2). As in fairseq's init, the pad row
    of embed_tokens and of embed_positions is zero (never used by an unpadded sequence)."""
    rng = np.random.default_rng(seed)
    norms = {name for name, m in model.named_modules() if isinstance(m, nn.LayerNorm)}
    sd = model.state_dict()
    new = {}
    for name in sorted(sd):
        shape = tuple(sd[name].shape)
        module, _, leaf = name.rpartition(".")
        if module in norms:
            v = rng.standard_normal(shape) * ln_std + (1.0 if leaf == "weight" else 0.0)
        elif leaf == "bias":
            v = rng.standard_normal(shape) * bias_std
        else:
            v = rng.standard_normal(shape) * std
        if name in ("embed_tokens.weight", "embed_positions.weight"):
            v[model.cfg["pad_id"]] = 0.0
        new[name] = torch.from_numpy(v).to(sd[name].dtype)
    model.load_state_dict(new)
    return model


def save(model, model_dir, dtype="F32"):
    """Write model_dir/config.json (the config as given, defaults left implicit) and
    model_dir/model.safetensors with every tensor stored as dtype (F32, F16 or BF16)."""
    if dtype not in ("F32", "F16", "BF16"):
        raise ValueError("the model format stores F32, F16 or BF16")
    os.makedirs(model_dir, exist_ok=True)
    with open(os.path.join(model_dir, "config.json"), "w", encoding="utf-8") as f:
        f.write(json.dumps(model.raw_config, indent=2, ensure_ascii=False) + "\n")
    tensors = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    safetensors_io.save_file(
        tensors, os.path.join(model_dir, "model.safetensors"), metadata={"format": "pt"},
        float_dtype=dtype,
    )


def load(model_dir, dtype=torch.float64):
    """Read model_dir (config.json + model.safetensors) into a LunaClassifier or LunaCausalLM in `dtype`
    (float64 by default). The tensor set must match the config exactly."""
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    model = model_class(cfg)(cfg).double()  # float64 first, so loading rounds nothing
    tensors, _ = safetensors_io.load_file(os.path.join(model_dir, "model.safetensors"))
    want = model.state_dict()
    missing = sorted(set(want) - set(tensors))
    extra = sorted(set(tensors) - set(want))
    if missing or extra:
        raise ValueError(f"tensors do not match the config: missing {missing}, extra {extra}")
    state = {}
    for name, ref in want.items():
        arr = tensors[name]
        if tuple(arr.shape) != tuple(ref.shape):
            raise ValueError(f"{name}: shape {tuple(arr.shape)}, expected {tuple(ref.shape)}")
        state[name] = torch.from_numpy(np.asarray(arr, dtype=np.float64))
    model.load_state_dict(state)
    return model.to(dtype).eval()


if __name__ == "__main__":
    # python3 tools/luna_ref.py MODEL_DIR FILE  -> prints the probabilities for FILE's bytes
    if len(sys.argv) != 3:
        sys.exit("usage: luna_ref.py MODEL_DIR INPUT_FILE")
    m = load(sys.argv[1])
    with open(sys.argv[2], "rb") as fin:
        out = m.forward(fin.read())
    for label, prob in zip(m.cfg["labels"], out["probs"].tolist()):
        print(f"{label}\t{prob:.6f}")
