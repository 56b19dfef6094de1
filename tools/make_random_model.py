#!/usr/bin/python3
"""make_random_model.py - write a Luna classifier or causal LM with random weights (numpy only).

For benchmarks, where speed and memory do not depend on the weights. `--lra` gives the LRA
byte-level text shape: d 256, 4 heads, 4 layers, FFN 1024, GELU, post-norm, untied K/V,
layernorm_embedding, CLS pooling and a 1024-wide ReLU head. Sinusoidal positions are used so that
any length can run (the paper's learned table stops at 4002 tokens).

    make_random_model.py --lra --l 16 --out build/bench-models/lra-l16
    make_random_model.py --d 64 --heads 2 --layers 2 --ffn 128 --l 16 --out DIR
    make_random_model.py --causal --l 32 --out DIR    (d 256, 4 heads, 4 layers, FFN 1024)
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_io  # noqa: E402


def causal_shapes(cfg):
    """name -> shape for a causal-lm (docs/model-format.md, "Causal language models")."""
    d, ffn = cfg["d"], cfg["ffn"]
    s = {"embed_tokens.weight": (cfg["vocab_size"], d), "projected_embeddings": (cfg["l"], d)}
    norms = ["layer_norm"] if cfg["normalize_before"] else []
    for i in range(cfg["layers"]):
        p = "layers.%d." % i
        projs = ["pq_proj", "q_proj", "pc_proj", "out_proj"]
        projs += ["c_proj"] if cfg["tie_kv"] else ["k_proj", "v_proj"]
        for name in projs:
            s[p + "self_attn.%s.weight" % name] = (d, d)
            s[p + "self_attn.%s.bias" % name] = (d,)
        norms += [p + "self_attn_layer_norm", p + "final_layer_norm"]
        s[p + "fc1.weight"], s[p + "fc1.bias"] = (ffn, d), (ffn,)
        s[p + "fc2.weight"], s[p + "fc2.bias"] = (d, ffn), (d,)
    for name in norms:
        s[name + ".weight"], s[name + ".bias"] = (d,), (d,)
    return s


def tensor_shapes(cfg):
    """name -> shape for every tensor the config implies (docs/model-format.md)."""
    if cfg["task"] == "causal-lm":
        return causal_shapes(cfg)
    d, ffn = cfg["d"], cfg["ffn"]
    s = {"embed_tokens.weight": (cfg["vocab_size"], d), "projected_embeddings": (cfg["l"], d)}
    if cfg["positions"] == "learned":
        s["embed_positions.weight"] = (cfg["max_positions"] + cfg["pad_id"] + 1, d)
    norms = []
    if cfg["layernorm_embedding"]:
        norms += ["emb_layer_norm", "proj_emb_layer_norm"]
    if cfg["normalize_before"]:
        norms += ["layer_norm", "proj_layer_norm"]
    for i in range(cfg["layers"]):
        p = "layers.%d." % i
        projs = ["pq_proj", "q_proj", "out_proj"]
        projs += ["pc_proj", "c_proj"] if cfg["tie_kv"] else ["pk_proj", "pv_proj", "k_proj", "v_proj"]
        for name in projs:
            s[p + "self_attn.%s.weight" % name] = (d, d)
            s[p + "self_attn.%s.bias" % name] = (d,)
        norms += [p + "self_attn_layer_norm", p + "self_atten_proj_layer_norm", p + "final_layer_norm"]
        s[p + "fc1.weight"], s[p + "fc1.bias"] = (ffn, d), (ffn,)
        s[p + "fc2.weight"], s[p + "fc2.bias"] = (d, ffn), (d,)
    for name in norms:
        s[name + ".weight"], s[name + ".bias"] = (d,), (d,)
    width = d
    for j in range(cfg["classifier_layers"]):
        s["classifier.%d.weight" % j] = (cfg["classifier_dim"], width)
        s["classifier.%d.bias" % j] = (cfg["classifier_dim"],)
        width = cfg["classifier_dim"]
    s["sentence_projection_layer.weight"] = (len(cfg["labels"]), width)
    return s


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--lra", action="store_true", help="the LRA text shape (the other sizes default to it)")
    ap.add_argument("--causal", action="store_true", help="a causal LM (pre-norm, tied K/V and embeddings)")
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--ffn", type=int, default=1024)
    ap.add_argument("--l", type=int, default=16)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    cfg = {
        "format": "luna", "format_version": 1, "task": "classification",
        "d": a.d, "H": a.heads, "Hp": a.heads, "l": a.l, "layers": a.layers, "ffn": a.ffn,
        "activation": "gelu", "tie_kv": False, "normalize_before": False,
        "positions": "sinusoidal", "max_positions": 0, "embed_scale": 1.0,
        "dynamic_projection": True, "layernorm_embedding": True,
        "vocab_size": 260, "byte_offset": 4, "pad_id": 1, "bos_id": 0, "eos_id": 2,
        "append_eos": True, "input_transform": "none",
        "pooling": "cls", "classifier_layers": 1, "classifier_dim": 4 * a.d,
        "classifier_activation": "relu", "labels": ["negative", "positive"],
    }
    if a.causal:
        cfg = {
            "format": "luna", "format_version": 1, "task": "causal-lm",
            "d": a.d, "H": a.heads, "l": a.l, "layers": a.layers, "ffn": a.ffn,
            "activation": "gelu", "tie_kv": True, "normalize_before": True,
            "positions": "sinusoidal", "max_positions": 0, "embed_scale": 1.0,
            "layernorm_embedding": False, "vocab_size": 260, "byte_offset": 4, "pad_id": 1,
            "bos_id": 0, "eos_id": 2, "causal_phi": "softplus_ln2", "causal_pc_proj": True,
            "tie_embeddings": True,
        }
    rng = np.random.default_rng(a.seed)
    tensors = {}
    for name, shape in tensor_shapes(cfg).items():
        if name.endswith("norm.weight"):
            tensors[name] = np.ones(shape, np.float32)
        elif name.endswith(".bias") or name.endswith("norm.bias"):
            tensors[name] = np.zeros(shape, np.float32)
        else:
            tensors[name] = (rng.standard_normal(shape) * 0.02).astype(np.float32)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    safetensors_io.save_file(tensors, os.path.join(a.out, "model.safetensors"))
    print("wrote %s (%d tensors)" % (a.out, len(tensors)))


if __name__ == "__main__":
    main()
