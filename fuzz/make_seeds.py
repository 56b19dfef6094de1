#!/usr/bin/python3
"""make_seeds.py - writes the seed corpora of the fuzz harnesses into fuzz/corpus/ (committed;
rerun only to change them). Deterministic: the same files every time.

  fuzz/corpus/fuzz_api/       request bodies: every route's shape, valid and broken
  fuzz/corpus/fuzz_model/     tiny models (every config switch, F32/F16/BF16) as
                              u16le(len(config.json)) + config.json + model.safetensors
  fuzz/corpus/fuzz_utf8_sse/  flags byte + 4 split-seed bytes + output bytes

Needs numpy (tools/make_random_model.py's tensor list, tools/safetensors_io.py's writer)."""
import io
import json
import os
import struct
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import make_random_model  # noqa: E402
import safetensors_io  # noqa: E402

OUT = os.path.join(ROOT, "fuzz", "corpus")


def write(harness, name, data):
    d = os.path.join(OUT, harness)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- fuzz_api ------------------------------------------------------------------------------

API = {
    "classify_text": {"inputs": "Subject: cheap meds\n\nbuy now"},
    "classify_list": {"inputs": ["a", "b\u00e9", ""], "raw_scores": True, "truncate": True},
    "classify_b64": {"inputs_base64": "AAEC/w==", "truncate": False},
    "classify_b64_list": {"inputs_base64": ["AAEC", "////"]},
    "classify_vllm": {"model": "spam", "input": ["x", "y"], "user": "u", "truncate_prompt_tokens": None},
    "generate": {"inputs": "It is a truth", "parameters": {
        "max_new_tokens": 20, "do_sample": True, "temperature": 0.8, "top_k": 40, "top_p": 0.95,
        "repetition_penalty": 1.1, "seed": 1, "stop": ["\n\n", "x"], "details": True,
        "return_full_text": True, "truncate": 5, "return_raw_bytes": True}},
    "generate_tgi_nulls": {"inputs": "a", "stream": False, "parameters": {
        "best_of": None, "decoder_input_details": False, "frequency_penalty": None, "grammar": None,
        "top_n_tokens": None, "typical_p": None, "watermark": False, "adapter_id": None, "seed": None}},
    "generate_b64": {"inputs_base64": "SXQgaXM=", "parameters": {"stop": "s", "temperature": 0}},
    "generate_state": {"inputs": " and", "state": "TFVOQVNUQVQBAAAA", "parameters": {"return_state": True}},
    "chat_state": {"messages": [{"role": "user", "content": "on"}], "state": {"data": "TFVOQVNUQVQ=", "tokens": 3},
                   "return_state": True},
    "completions": {"model": "austen-lm", "prompt": ["It is", "a truth"], "max_tokens": 8, "echo": True,
                    "temperature": 0.5, "top_p": 1.0, "seed": 3, "stop": "\n", "stream": True,
                    "stream_options": {"include_usage": True}, "n": 1, "logprobs": None,
                    "best_of": 1, "presence_penalty": 0, "logit_bias": {}, "suffix": "", "user": "u",
                    "top_k": 5, "repetition_penalty": 1.2},
    "chat": {"model": "austen-lm", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": " \u2603"}]}],
        "max_completion_tokens": 16, "tools": [], "tool_choice": "none", "parallel_tool_calls": False,
        "response_format": {"type": "text"}, "top_logprobs": 0, "stream": False},
    # log-probabilities and /score (issue 26)
    "generate_logprobs": {"inputs": "ab\u00e9", "parameters": {"details": True, "top_n_tokens": 3,
                                                           "decoder_input_details": True}},
    "completions_echo_logprobs": {"prompt": ["a\u0080b", "cd"], "max_tokens": 0, "echo": True, "logprobs": 2,
                                  "stream": True},
    "chat_logprobs": {"messages": [{"role": "user", "content": "x"}], "logprobs": True, "top_logprobs": 20,
                      "stream": True},
    "score": {"prefix": "It is", "candidates": [" a", " the"], "token_logprobs": True, "model": "austen-lm"},
    "score_b64": {"prefix_base64": "AP8=", "candidates_base64": ["AA==", "/w=="], "token_logprobs": False},
}
RAW_API = {
    "empty": "",
    "truncated": '{"inputs": "abc',
    "nested": "[" * 300 + "]" * 300,
    "nested_obj": '{"inputs":' + '{"a":' * 50 + "1" + "}" * 50 + "}",
    "duplicate_keys": '{"inputs": "a", "inputs": "b"}',
    "nan": '{"inputs": "a", "parameters": {"temperature": NaN, "top_p": Infinity}}',
    "huge_numbers": '{"inputs": "a", "parameters": {"max_new_tokens": 1e309, "seed": 18446744073709551617, "top_k": -0}}',
    "nul_escape": '{"inputs": "a\\u0000b"}',
    "bad_utf8": b'{"inputs": "\xff\xfe\xc0\x80 \xed\xa0\x80", "\xe9": 1}',
    "surrogates": '{"inputs": "\\ud800\\udc00 \\udfff \\ud800"}',
    "long_key": '{"' + "k\u00e9" * 40 + '": 1}',
    "not_object": '["inputs", 1]',
    "chat_bad_role": '{"messages": [{"role": "a\\nb", "content": "x"}]}',
    # issue 27: float underflow (a 500 once), nested duplicates, an escaped backslash before u0000,
    # \u0000 in a base64 request's stop, a model the server does not serve
    "float_underflow": '{"inputs": "a", "parameters": {"top_p": 1e-46, "repetition_penalty": 1e-320, "temperature": 1e-40}}',
    "float_underflow_openai": '{"prompt": "a", "top_p": 1e-320, "repetition_penalty": 1e-46, "temperature": 1e-46}',
    "duplicate_nested": '{"inputs": "a", "parameters": {"max_new_tokens": 2, "max_new_tokens": 1000}}',
    "duplicate_chat": '{"messages": [{"role": "user", "content": "a", "role": "system"}]}',
    "escaped_backslash_u0000": '{"inputs": "C:\\\\u0000x"}',
    "stop_nul_b64": '{"inputs_base64": "YWJj", "parameters": {"stop": ["a\\u0000b"]}}',
    "model_unknown": '{"model": "nonexistent", "prompt": "a"}',
}


def api_seeds():
    for name, body in API.items():
        write("fuzz_api", name + ".json", json.dumps(body))
    for name, body in RAW_API.items():
        write("fuzz_api", name + ".json", body)


# ---- fuzz_model ----------------------------------------------------------------------------

BASE = {"format": "luna", "format_version": 1, "d": 4, "H": 2, "l": 2, "layers": 1, "ffn": 4,
        "vocab_size": 260, "byte_offset": 4, "pad_id": 1, "bos_id": 0, "eos_id": 2}
CLASSIFY = dict(BASE, task="classification", Hp=2, activation="relu", tie_kv=True, normalize_before=False,
                positions="sinusoidal", max_positions=0, embed_scale=None, dynamic_projection=True,
                layernorm_embedding=False, append_eos=False, input_transform="none", pooling="cls",
                classifier_layers=1, classifier_dim=4, classifier_activation="relu", labels=["ham", "spam"])
CAUSAL = dict(BASE, task="causal-lm", activation="gelu", tie_kv=True, normalize_before=True,
              positions="sinusoidal", max_positions=0, embed_scale=1.0, layernorm_embedding=False,
              causal_phi="softplus_ln2", causal_pc_proj=True, tie_embeddings=True)

MODELS = {
    "cls_f16": (CLASSIFY, "F16"),
    "cls_untied_prenorm_learned_mean_f32": (dict(CLASSIFY, tie_kv=False, normalize_before=True, positions="learned",
                                                 max_positions=40, pooling="mean", activation="gelu",
                                                 classifier_layers=2, classifier_activation="tanh",
                                                 labels=["a", "b", "c"]), "F32"),
    "cls_email_ppool_lnemb_bf16": (dict(CLASSIFY, input_transform="email_subject_body", pooling="p",
                                        layernorm_embedding=True, append_eos=True, Hp=1,
                                        dynamic_projection=False, classifier_layers=0), "BF16"),
    "cls_nopos_h1": (dict(CLASSIFY, H=1, Hp=1, positions="none", embed_scale=0.5), "F16"),
    "lm_f16": (CAUSAL, "F16"),
    "lm_untied_elu_learned_f32": (dict(CAUSAL, tie_kv=False, causal_phi="elu_plus_1", causal_pc_proj=False,
                                       tie_embeddings=False, positions="learned", max_positions=24,
                                       normalize_before=False), "F32"),
    "lm_softplus_nopos_lnemb": (dict(CAUSAL, causal_phi="softplus", positions="none", layernorm_embedding=True,
                                     normalize_before=False), "F16"),
}


def shapes(cfg):
    if cfg["task"] == "causal-lm":
        s = make_random_model.causal_shapes(cfg)
        if not cfg["causal_pc_proj"]:
            s = {k: v for k, v in s.items() if ".pc_proj." not in k}
        if not cfg["tie_kv"]:
            for i in range(cfg["layers"]):
                s.pop("layers.%d.self_attn.c_proj.weight" % i, None)
                s.pop("layers.%d.self_attn.c_proj.bias" % i, None)
        if not cfg["tie_embeddings"]:
            s["output_projection.weight"] = (cfg["vocab_size"], cfg["d"])
        if cfg["positions"] == "learned":
            s["embed_positions.weight"] = (cfg["max_positions"] + cfg["pad_id"] + 1, cfg["d"])
        if cfg["layernorm_embedding"]:
            s["emb_layer_norm.weight"] = s["emb_layer_norm.bias"] = (cfg["d"],)
        return s
    return make_random_model.tensor_shapes(cfg)


def model_bytes(cfg, dtype, seed):
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, shape in sorted(shapes(cfg).items()):
        if name.endswith("norm.weight"):
            tensors[name] = np.ones(shape, np.float32)
        else:
            tensors[name] = (rng.standard_normal(shape) * 0.5).astype(np.float32)
    path = os.path.join(OUT, ".tmp.safetensors")
    safetensors_io.save_file(tensors, path, metadata={"format": "pt"}, float_dtype=dtype)
    with open(path, "rb") as f:
        st = f.read()
    os.unlink(path)
    c = json.dumps(cfg, separators=(",", ":")).encode()
    return struct.pack("<H", len(c)) + c + st


def model_seeds():
    for i, (name, (cfg, dtype)) in enumerate(MODELS.items()):
        write("fuzz_model", name + ".bin", model_bytes(cfg, dtype, i + 1))
    good = model_bytes(CLASSIFY, "F16", 99)
    c = json.dumps(CLASSIFY).encode()
    write("fuzz_model", "broken_config.bin", struct.pack("<H", 20) + c[:20] + good[2 + len(c):])
    write("fuzz_model", "truncated_weights.bin", good[: len(good) // 2])
    write("fuzz_model", "header_only.bin", struct.pack("<H", len(c)) + c + struct.pack("<Q", 2) + b"{}")


# ---- fuzz_utf8_sse -------------------------------------------------------------------------

UTF8 = {
    "ascii_tgi": (0x00, b"It is a truth universally acknowledged"),
    "mixed_completion_echo": (0x05, "caf\u00e9 \u2603 \U0001F600 ".encode() + b"\xf0\x9f\x98"),
    "invalid_chat_eos": (0x0a, b"\xc0\x80\xe0\x80\x80\xed\xa0\x80\xf4\x90\x80\x80\xf5\xff\x80\xbf"),
    "truncated_tail_tgi_raw": (0x14, b"ok \xe2\x82"),
    "nul_and_controls": (0x11, b"a\x00b\x01\x1f\x7f\r\n\n\"\\</script>"),
    "split_4byte_chat_usage": (0x16, "\U0010FFFF\U00010000\u0800\u0080".encode() * 3),
}


def utf8_seeds():
    for name, (flags, data) in UTF8.items():
        write("fuzz_utf8_sse", name + ".bin", bytes([flags, 0x5a, 0x13, 0x77, 0x01]) + data)


if __name__ == "__main__":
    api_seeds()
    model_seeds()
    utf8_seeds()
    for h in sorted(os.listdir(OUT)):
        files = os.listdir(os.path.join(OUT, h))
        size = sum(os.path.getsize(os.path.join(OUT, h, f)) for f in files)
        print("%-16s %3d files, %6d bytes" % (h, len(files), size))
