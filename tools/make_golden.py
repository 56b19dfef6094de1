"""make_golden.py - write the golden test cases of tests/golden with the PyTorch reference.

Usage: /usr/bin/python3 tools/make_golden.py [OUT_DIR]     (default tests/golden; `make golden`)

Each case is a tiny random Luna classifier (tools/luna_ref.py) chosen so that the cases
together cover every switch of docs/model-format.md. For each case this writes
OUT_DIR/<case>/config.json, model.safetensors and golden.safetensors (layout in
tests/golden/README.md). The golden outputs are computed in float64 from the weights AS STORED
(rounded to F32, F16 or BF16), by reloading the model directory just written, so the engine
and the reference see identical weights.

Everything is seeded (numpy PCG64, seed = crc32 of the case name) and the torch forward runs
on one thread, so re-running reproduces every file byte for byte. Case directories under
OUT_DIR that hold a golden.safetensors but are no longer in CASES are removed.
"""

import os
import shutil
import sys
import zlib

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import luna_ref  # noqa: E402
import safetensors_io  # noqa: E402

BASE = {"format": "luna", "format_version": 1, "task": "classification"}
LM_BASE = {"format": "luna", "format_version": 1, "task": "causal-lm"}


def case(name, dtype="F32", inputs="random", **cfg):
    return {"name": name, "dtype": dtype, "inputs": inputs, "config": dict(BASE, **cfg)}


def lm_case(name, dtype="F32", **cfg):
    return {"name": name, "dtype": dtype, "inputs": "lm", "config": dict(LM_BASE, **cfg)}


# The switches each case covers are listed in tests/golden/README.md; keep the two in step.
CASES = [
    # Minimal config: every default (Hp = H, relu, tied, post-norm, sinusoidal, embed_scale
    # null -> sqrt(d), dynamic projection, cls pooling, 1 relu classifier layer of width d).
    case("defaults", d=16, H=2, l=8, layers=2, ffn=32, labels=["ham", "spam"]),
    case("untied_prenorm_learned_mean", d=24, H=4, l=12, layers=3, ffn=48, activation="gelu",
         tie_kv=False, normalize_before=True, positions="learned", max_positions=512,
         pooling="mean", classifier_layers=2, classifier_dim=20, classifier_activation="tanh",
         labels=["neg", "neu", "pos"]),
    case("hp1_h4_nopos_ppool", d=32, H=4, Hp=1, l=16, layers=2, ffn=64, positions="none",
         embed_scale=0.75, pooling="p", classifier_layers=0, labels=["a", "b", "c", "d"]),
    case("h1_hp2_prenorm_gelu_head", d=16, H=1, Hp=2, l=6, layers=3, ffn=24, activation="gelu",
         normalize_before=True, positions="sinusoidal", max_positions=400, classifier_layers=1,
         classifier_dim=12, classifier_activation="gelu", labels=["no", "yes"]),
    case("static_projection_ids", d=16, H=2, Hp=4, l=16, layers=2, ffn=32, tie_kv=False,
         dynamic_projection=False, vocab_size=270, byte_offset=10, pad_id=3, bos_id=7, eos_id=9,
         append_eos=True, pooling="p", labels=["x", "y"]),
    case("layernorm_embedding", d=24, H=2, l=10, layers=2, ffn=40, embed_scale=2.0,
         layernorm_embedding=True, pooling="mean", classifier_layers=2, labels=["left", "right"]),
    # The paper-era LRA text model (LUNA.md), tiny: every field written out as a converter would.
    case("lra_paper", d=16, H=4, Hp=4, l=8, layers=2, ffn=64, activation="gelu", tie_kv=False,
         normalize_before=False, positions="learned", max_positions=302, embed_scale=None,
         dynamic_projection=True, layernorm_embedding=True, vocab_size=260, byte_offset=4,
         pad_id=1, bos_id=0, eos_id=2, append_eos=True, input_transform="none", pooling="cls",
         classifier_layers=1, classifier_dim=64, classifier_activation="relu",
         labels=["0", "1"]),
    case("f16_weights", dtype="F16", d=16, H=2, l=4, layers=2, ffn=32, normalize_before=True,
         append_eos=True, pooling="mean", classifier_layers=2, labels=["p", "q", "r"]),
    case("bf16_weights", dtype="BF16", d=32, H=1, l=12, layers=1, ffn=64, activation="gelu",
         tie_kv=False, positions="none", classifier_activation="tanh", labels=["off", "on"]),
    case("email_subject_body", inputs="email", d=16, H=2, l=16, layers=2, ffn=32,
         append_eos=True, input_transform="email_subject_body", labels=["ham", "spam"]),
    # Causal language models (task causal-lm). Defaults: softplus_ln2 with pc_proj (the final
    # reference version), tied K/V, tied output embeddings, post-norm, sinusoidal positions.
    lm_case("lm_defaults", d=16, H=2, l=8, layers=2, ffn=32),
    # The older lunar_attention.py: elu+1 over the raw layer input; every other switch flipped.
    lm_case("lm_legacy_untied_prenorm_learned", d=24, H=4, l=12, layers=3, ffn=48,
            activation="gelu", causal_phi="elu_plus_1", causal_pc_proj=False, tie_kv=False,
            normalize_before=True, positions="learned", max_positions=512, tie_embeddings=False),
    lm_case("lm_softplus_nopos_lnemb", d=32, H=4, l=16, layers=2, ffn=64, causal_phi="softplus",
            positions="none", embed_scale=0.5, layernorm_embedding=True, vocab_size=270,
            byte_offset=10, pad_id=3, bos_id=7, eos_id=9),
    lm_case("lm_f16_h1", dtype="F16", d=16, H=1, l=4, layers=2, ffn=32, normalize_before=True),
    # n-gram embeddings (ngram_embed K: each token adds a table row for each of the K-1 tokens
    # before it). Appended last so that the seeds of the cases above do not change.
    case("ngram_embed_mean", d=16, H=2, l=8, layers=2, ffn=32, ngram_embed=4, embed_scale=1.5,
         normalize_before=True, pooling="mean", labels=["ham", "spam"]),
    lm_case("lm_ngram_embed", d=16, H=2, l=8, layers=2, ffn=32, ngram_embed=5,
            normalize_before=True, positions="learned", max_positions=600),
    # hashed n-gram embeddings (hash_ngrams M: each token adds a hashed row for each n-gram of
    # 2..M tokens ending at it, projected to d). Few buckets, so that n-grams collide.
    case("hash_ngrams_cls", d=16, H=2, l=8, layers=2, ffn=32, ngram_embed=3, hash_ngrams=4,
         hash_buckets=16, hash_dim=3, labels=["ham", "spam"]),
    lm_case("lm_hash_ngrams", d=16, H=2, l=8, layers=2, ffn=32, ngram_embed=2, hash_ngrams=7,
            hash_buckets=32, hash_dim=4, normalize_before=True, positions="none"),
]


def random_inputs(rng, c, index):
    """Lengths 0, 1, l // 2 (so n < l), 37, 100 and 300, bytes uniform over 0..255. The longer
    ones are forced to hold a NUL and a 0xFF; the 1-byte input is NUL or 0xFF by case."""
    out = [b"", bytes([0x00 if index % 2 == 0 else 0xFF])]
    for length in (c["l"] // 2, 37, 100, 300):
        b = rng.integers(0, 256, size=length, dtype=np.uint8)
        if length >= 37:
            b[length // 3] = 0x00
            b[2 * length // 3] = 0xFF
        out.append(b.tobytes())
    return out


def email_inputs(rng):
    """Small synthetic RFC 822 messages for input_transform = email_subject_body."""
    words = b" ".join(b"w%03d" % i for i in range(240))  # 1199 bytes
    # Folded every 70 bytes; each chunk ends in a space, so unfolding gives double spaces.
    folded = b"\r\n\t".join(words[i : i + 70] for i in range(0, len(words), 70))
    return [
        b"",
        # LF endings, plain subject, blank line, body.
        b"From: alice@example.com\nSubject: Lunch on Friday?\nTo: bob@example.com\n\n"
        b"Hi Bob,\nare we still on for Friday?\n-- Alice\n",
        # CRLF, upper-case name, folded subject (tab and spaces), trailing spaces kept.
        b"Received: from mx.example.net by mail.example.org\r\n\tid 42; Mon, 1 Jan 2024\r\n"
        b"SUBJECT:  Re: cheap\r\n\t  meds  \r\n   now!!!\r\nFrom: \"Deals\" <deals@example.net>\r\n"
        b"Content-Type: text/plain\r\n\r\nBUY NOW\r\n\r\nhttp://example.net/?x=1\r\n",
        # No empty line: all header, empty body.
        b"Subject: headers only\nX-Mailer: test\nContent-Length: 0\n",
        # No Subject; binary body with NUL, 0xFF and CRLF.
        b"From: x@example.com\r\nTo: z@example.com\r\n\r\n" + bytes(range(0, 256, 7)) + b"\x00\xff\r\n",
        # Lower-case name with an empty value then a continuation; a non-Subject continuation;
        # a second Subject (ignored); the body starts with two empty lines.
        b"X-Spam: yes\n\tcontinued x-spam\nsubject:\n  \tfolded only\nSubject: second, ignored\n"
        b"\n\n\nbody after two blank lines\n",
        # CRLF header line, then an LF-only empty line.
        b"Subject: mixed endings\r\n\nbody\r\nmore\n",
        # A subject of 1216 bytes once unfolded: truncated to 998.
        b"From: long@example.com\r\nSubject: " + folded + b"\r\nTo: a@example.com\r\n\r\nshort body\r\n",
        # Near misses of the name; no space after the colon; a whitespace-only continuation.
        b"Subjects: no\nSubject : no\nSubject:tight\n \nTo: a\n\nx",
        # Unterminated last header line: all header.
        b"To: a@example.com\nSubject: no newline at end",
        # A ~300-byte message whose body is random bytes.
        b"Subject: =?utf-8?b?zqPPhM6xz4XPgc6/z4I=?=\r\nFrom: r@example.com\r\n\r\n"
        + rng.integers(0, 256, size=240, dtype=np.uint8).tobytes(),
        # Random bytes: almost surely no Subject and no empty line.
        rng.integers(0, 256, size=37, dtype=np.uint8).tobytes(),
        rng.integers(0, 256, size=100, dtype=np.uint8).tobytes(),
    ]


def write_case(out_dir, index, spec):
    name = spec["name"]
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    case_dir = os.path.join(out_dir, name)
    model = luna_ref.model_class(spec["config"])(spec["config"]).double()
    luna_ref.randomize_(model, seed=int(rng.integers(0, 2**63)))
    luna_ref.save(model, case_dir, dtype=spec["dtype"])

    # Golden outputs from the weights as stored, not from the float64 originals.
    stored = luna_ref.load(case_dir)
    cfg = stored.cfg
    if spec["inputs"] == "lm":
        write_lm_golden(case_dir, rng, stored)
        return
    inputs = email_inputs(rng) if spec["inputs"] == "email" else random_inputs(rng, cfg, index)
    tensors = {}
    for i, raw in enumerate(inputs):
        out = stored.forward(raw)
        tensors[f"input.{i}"] = np.frombuffer(raw, dtype=np.uint8).copy()
        for key in ("hidden", "pfinal", "pooled", "logits", "probs"):
            tensors[f"{key}.{i}"] = out[key].numpy().astype(np.float64)
    safetensors_io.save_file(
        tensors, os.path.join(case_dir, "golden.safetensors"), metadata={"inputs": str(len(inputs))}
    )
    ns = [len(luna_ref.to_tokens(cfg, raw)) for raw in inputs]
    print(f"  {name:30s} {spec['dtype']:4s} inputs={len(inputs):2d} n={ns}")


def write_lm_golden(case_dir, rng, stored):
    """A causal-lm case: token sequences [bos_id, byte_offset + b ...] for random bytes of
    lengths 0, 1, 37, 100 and 300 (the last crosses the engine's default chunk), one of them
    with eos_id tokens inside (a generated sequence may hold them). Each input i stores
    tokens.{i} (I32, [n]) and logits.{i} (F32, [n, vocab_size]),
    and logits_softmax.{i}: the softmax baseline decoder on the same weights; all computed in
    float64 and rounded."""
    cfg = stored.cfg
    tensors = {}
    lengths = (0, 1, 37, 100, 300)
    for i, length in enumerate(lengths):
        body = [cfg["byte_offset"] + int(b) for b in rng.integers(0, 256, size=length)]
        if length == 100:
            body[10] = body[60] = cfg["eos_id"]
        tokens = [cfg["bos_id"]] + body
        out = stored.forward(tokens)
        tensors[f"tokens.{i}"] = np.array(tokens, dtype=np.int32)
        # float32 is ample for a 1e-4 tolerance and halves the files
        tensors[f"logits.{i}"] = out["logits"].numpy().astype(np.float32)
        soft = stored.forward(tokens, softmax=True)
        tensors[f"logits_softmax.{i}"] = soft["logits"].numpy().astype(np.float32)
    safetensors_io.save_file(
        tensors, os.path.join(case_dir, "golden.safetensors"),
        metadata={"inputs": str(len(lengths)), "task": "causal-lm"},
    )
    print(f"  {os.path.basename(case_dir):30s} inputs={len(lengths):2d} n={[n + 1 for n in lengths]}")


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else "tests/golden"
    if len(sys.argv) > 2:
        sys.exit("usage: make_golden.py [OUT_DIR]")
    torch.set_num_threads(1)  # a fixed reduction order: byte-identical reruns
    os.makedirs(out_dir, exist_ok=True)
    names = {spec["name"] for spec in CASES}
    for entry in sorted(os.listdir(out_dir)):
        path = os.path.join(out_dir, entry)
        if entry not in names and os.path.isfile(os.path.join(path, "golden.safetensors")):
            print(f"  removing stale case {entry}")
            shutil.rmtree(path)
    print(f"make_golden: writing {len(CASES)} cases to {out_dir}")
    for index, spec in enumerate(CASES):
        write_case(out_dir, index, spec)


if __name__ == "__main__":
    main()
