#!/usr/bin/python3
"""test_convert_fairseq.py - tools/convert_fairseq.py on fairseq-style checkpoints built here.

Each test takes one of our reference models (tools/luna_ref.py) with random weights, so that its
outputs are known, writes it out as the authors' fairseq-apollo code would have saved it (their
tensor names - `encoder.encoder.layers.0.self_attn.pq_proj.weight`, `classifier.0.weight`,
`decoder.layers.0.self_attn.pc_proj.weight`, ... - the buffers they carry, and an options
Namespace or cfg dict with their option names), converts it, and checks that
  - the C engine (`luna classify`, `luna generate`; $LUNA_BIN_DIR or build/bin) and
    luna_ref.load give the reference model's outputs, relative error below 1e-4;
  - the converter's --verify passes and reports the error;
  - options and tensors that the model format cannot express are refused, with a message
    naming them and a non-zero exit, and nothing is written.
The inverse mapping (our names -> fairseq names) is written here independently of the converter.

Run: /usr/bin/python3 tests/tools/test_convert_fairseq.py   (prints "N passed, N failed")
"""

import argparse
import contextlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import traceback

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import convert_fairseq  # noqa: E402
import luna_ref  # noqa: E402

LUNA = os.path.join(os.environ.get("LUNA_BIN_DIR", os.path.join(ROOT, "build", "bin")), "luna")
CONVERTER = os.path.join(ROOT, "tools", "convert_fairseq.py")
TOL = 1e-4
INPUTS = [b"", b"x", b"hello, luna!", bytes(range(200, 240)), b"The quick brown fox " * 2]

passed = failed = 0
TMP = tempfile.mkdtemp(prefix="convert_fairseq_test.")


def check(name, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
    else:
        failed += 1
        print(f"FAIL {name}" + (f": {detail}" if detail else ""))


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


# ---- reference models and their fairseq form --------------------------------------------------


def ref_model(cfg, seed):
    base = {"format": "luna", "format_version": 1}
    base.update(cfg)
    m = luna_ref.model_class(base)(base).double()
    luna_ref.randomize_(m, seed)
    return m.eval()


def fs_sinusoid32(rows, d):
    """fairseq's get_sinusoidal_positional_embedding (float32), P's table at rows 0..rows-1."""
    half = d // 2
    emb = math.log(10000) / (half - 1)
    emb = torch.exp(torch.arange(half, dtype=torch.float) * -emb)
    emb = torch.arange(rows, dtype=torch.float).unsqueeze(1) * emb.unsqueeze(0)
    return torch.cat([torch.sin(emb), torch.cos(emb)], dim=1)


def swap_name(name):
    name = name.replace(".pc_proj.", ".@.").replace(".c_proj.", ".pc_proj.")
    return name.replace(".@.", ".c_proj.")


def lra_state_dict(model, prefix="encoder.encoder.", head="modulelist", swap=False,
                   shared_layers=False):
    """Our classifier under LRAModel's names: LRAModel.encoder (LRAEncoder).encoder
    (LunaLRAEncoder); the head as ModuleList of Linear (13e3e3d), of Sequential(Linear, Dropout)
    (2022-06 .. 2023-02) or pre_logits (Sequential(Linear, GELU), 2023-04 ..)."""
    c = model.cfg
    sd = {}
    for k, v in model.state_dict().items():
        v = v.detach().float().clone()
        if k.startswith("classifier."):
            _, j, leaf = k.split(".")
            name = {"modulelist": f"classifier.{j}.{leaf}",
                    "sequential": f"classifier.{j}.0.{leaf}",
                    "pre_logits": f"pre_logits.{j}.{leaf}"}[head]
        elif k.startswith("sentence_projection_layer."):
            name = k
        else:
            if shared_layers and k.startswith("layers.") and not k.startswith("layers.0."):
                continue  # tie_layer_weights: only layer 0 exists
            name = prefix + (swap_name(k) if swap else k)
        sd[name] = v
    if c["positions"] == "sinusoidal":
        sd[prefix + "embed_positions._float_tensor"] = torch.FloatTensor(1)
        sd[prefix + "projected_positions"] = fs_sinusoid32(c["l"], c["d"])
    return sd


def lra_args(model, **over):
    """The options Namespace a luna_lra_imdb checkpoint carries (after the arch defaults),
    including options the converter must ignore (training only) or that `lra` never reads."""
    c = model.cfg
    a = dict(
        arch="luna_lra_imdb", task="long_range_arena", layer_type="luna",
        encoder_layers=c["layers"], encoder_embed_dim=c["d"], encoder_ffn_embed_dim=c["ffn"],
        encoder_attention_heads=c["H"], encoder_projection_length=c["l"],
        activation_fn=c["activation"], classifier_layers=c["classifier_layers"],
        classifier_out_dim=c["classifier_dim"], classifier_in_dim=c["d"],
        classifier_activation_fn=c["classifier_activation"],
        sentence_class_num=len(c["labels"]), sen_rep_type="cls", use_p=False,
        max_positions=c["max_positions"], encoder_learned_pos=c["positions"] == "learned",
        encoder_normalize_before=True,  # the arch default; 13e3e3d's LunaLRAEncoder ignores it
        no_scale_embedding=False, share_encoder_input_output_embed=False, num_segment=0,
        sent_loss=True, apply_bert_init=True, adaptive_input=False, dropout=0.3,
        attention_dropout=0.3, act_dropout=0.0, encoder_layerdrop=0.0, quant_noise_pq=0.0,
        optimizer="adam", lr=[5e-05], seed=1, fp16=True, data="/data/lra/imdb",
    )
    a.update(over)
    return argparse.Namespace(**a)


def lm_state_dict(model, tied_copy=True, swap=False):
    """Our causal LM under LunaDecoder's names (decoder-only: no encoder_attn), with the buffers
    fairseq saves: `decoder.version`, `embed_positions._float_tensor`, and the tied
    `output_projection.weight` (the same tensor as embed_tokens)."""
    c = model.cfg
    sd = {}
    for k, v in model.state_dict().items():
        v = v.detach().float().clone()
        if k.startswith("emb_layer_norm."):
            k = "layernorm_embedding." + k.split(".")[1]
        sd["decoder." + (swap_name(k) if swap else k)] = v
    sd["decoder.version"] = torch.Tensor([3])
    if c["positions"] == "sinusoidal":
        sd["decoder.embed_positions._float_tensor"] = torch.FloatTensor(1)
    if c["tie_embeddings"] and tied_copy:
        sd["decoder.output_projection.weight"] = sd["decoder.embed_tokens.weight"]
    if c["normalize_before"]:  # LunaDecoder also builds proj_layer_norm (only P's final value)
        g = torch.Generator().manual_seed(5)
        sd["decoder.proj_layer_norm.weight"] = 1 + 0.1 * torch.randn(c["d"], generator=g)
        sd["decoder.proj_layer_norm.bias"] = 0.1 * torch.randn(c["d"], generator=g)
    return sd


def lm_options(model, **over):
    c = model.cfg
    a = dict(
        arch="luna_lm", task="language_modeling", decoder_embed_dim=c["d"],
        decoder_input_dim=c["d"], decoder_output_dim=c["d"], decoder_ffn_embed_dim=c["ffn"],
        decoder_layers=c["layers"], decoder_attention_heads=c["H"], projection_length=c["l"],
        activation_fn=c["activation"], untie_luna_kv=not c["tie_kv"],
        decoder_normalize_before=c["normalize_before"],
        decoder_learned_pos=c["positions"] == "learned",
        no_token_positional_embeddings=c["positions"] == "none",
        layernorm_embedding=c["layernorm_embedding"],
        share_decoder_input_output_embed=c["tie_embeddings"],
        no_scale_embedding=c["embed_scale"] == 1.0,  # fairseq: 1 or sqrt(d)
        max_target_positions=c["max_positions"] or None, adaptive_softmax_cutoff=None,
        adaptive_input=False, tie_adaptive_weights=False, character_embeddings=False,
        dropout=0.1, attention_dropout=0.0, decoder_layerdrop=0.0, add_bos_token=False,
    )
    a.update(over)
    return a


def save_ckpt(name, sd, args=None, cfg=None, extra=None):
    path = os.path.join(TMP, name + ".pt")
    ck = {"model": sd, "args": args, "optimizer_history": [{"criterion_name": "X",
          "optimizer_name": "FairseqAdam", "num_updates": 100}],
          "extra_state": {"epoch": 3, "train_iterator": {"epoch": 3}}}
    if cfg is not None:
        ck["cfg"] = cfg
    if extra:
        ck["extra_state"].update(extra)
    torch.save(ck, path)
    return path


def run_convert(ckpt, out, *flags):
    """The converter in-process: (exit status, stdout, stderr)."""
    so, se = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(so), contextlib.redirect_stderr(se):
        try:
            rc = convert_fairseq.main([ckpt, out, *flags])
        except SystemExit as e:  # argparse
            rc = e.code
    return rc, so.getvalue(), se.getvalue()


def engine_logits(out, raw):
    path = os.path.join(TMP, "input.bin")
    with open(path, "wb") as f:
        f.write(raw)
    p = subprocess.run([LUNA, "classify", "--model", out, path], capture_output=True, timeout=60)
    if p.returncode != 0:
        raise RuntimeError(f"luna classify exit {p.returncode}: {p.stderr.decode()[:300]}")
    return json.loads(p.stdout)["logits"]


def check_engine(name, out, ref, inputs=INPUTS):
    worst = 0.0
    for raw in inputs:
        want = ref.forward(raw)["logits"].numpy()
        worst = max(worst, rel(engine_logits(out, raw), want))
    check(f"{name}: engine logits = reference (rel err {worst:.2e})", worst < TOL)
    return worst


def check_converted(name, ckpt, ref, *flags, inputs=INPUTS):
    out = os.path.join(TMP, name)
    rc, so, se = run_convert(ckpt, out, "--verify", *flags)
    check(f"{name}: converts (exit 0)", rc == 0, se.strip()[-500:])
    if rc != 0:
        return None, se
    check(f"{name}: --verify reports its error", "verify: max relative error" in so, so)
    m = luna_ref.load(out)
    worst = max(rel(m.forward(raw)["logits"], ref.forward(raw)["logits"]) for raw in inputs)
    check(f"{name}: luna_ref.load(OUT) = reference (rel err {worst:.2e})", worst < TOL)
    check_engine(name, out, ref, inputs)
    return out, se


def check_refused(name, ckpt, want, *flags):
    out = os.path.join(TMP, "refused-" + name)
    rc, so, se = run_convert(ckpt, out, *flags)
    check(f"{name}: refused with a non-zero exit", rc not in (0, None), f"exit {rc}")
    check(f"{name}: the message names {want!r}", want in se, se.strip())
    check(f"{name}: nothing written", not os.path.exists(out))


# ---- classifiers ------------------------------------------------------------------------------

PAPER = {  # the 13e3e3d LRA text model, shrunk
    "task": "classification", "d": 16, "H": 4, "l": 8, "layers": 2, "ffn": 48,
    "activation": "gelu", "tie_kv": False, "positions": "learned", "max_positions": 64,
    "layernorm_embedding": True, "append_eos": True, "pooling": "cls", "classifier_layers": 2,
    "classifier_dim": 24, "classifier_activation": "relu", "labels": ["neg", "pos"],
}


def test_paper_era():
    ref = ref_model(PAPER, 11)
    ck = save_ckpt("paper", lra_state_dict(ref), lra_args(ref, encoder_projected_attention_heads=2))
    out, se = check_converted("paper-era", ck, ref, "--labels", "neg,pos")
    if out:
        cfg = json.load(open(os.path.join(out, "config.json")))
        want = {"positions": "learned", "tie_kv": False, "layernorm_embedding": True,
                "normalize_before": False, "classifier_layers": 2, "activation": "gelu",
                "pooling": "cls", "Hp": 4, "max_positions": 64, "append_eos": True,
                "labels": ["neg", "pos"]}
        bad = {k: cfg.get(k) for k in want if cfg.get(k) != want[k]}
        check("paper-era: config fields", not bad, str(bad))
        check("paper-era: notes that encoder_projected_attention_heads is unused",
              "encoder_projected_attention_heads" in se, se)
    return ref


def test_later_version():
    cfg = {"task": "classification", "d": 32, "H": 2, "l": 6, "layers": 2, "ffn": 40,
           "activation": "gelu", "tie_kv": True, "positions": "sinusoidal", "max_positions": 300,
           "layernorm_embedding": True, "append_eos": True, "pooling": "mean",
           "classifier_layers": 0, "labels": ["class0", "class1", "class2"]}
    ref = ref_model(cfg, 12)
    a = lra_args(ref, arch="luna_lra_imdb", sen_rep_type="mp", encoder_learned_pos=False,
                 tie_kv=True, pre_logits=False, input_type="text", classifier_layers=None,
                 classifier_out_dim=None, classifier_activation_fn=None)
    ck = save_ckpt("later", lra_state_dict(ref, head="none"), a)
    out, se = check_converted("later-version", ck, ref)
    if out:
        c = json.load(open(os.path.join(out, "config.json")))
        check("later-version: sinusoidal, tied, single Linear head, mean pooling",
              (c["positions"], c["tie_kv"], c["classifier_layers"], c["pooling"], c["embed_scale"])
              == ("sinusoidal", True, 0, "mean", None), str(c))
        check("later-version: projected_positions and _float_tensor dropped",
              "projected_positions" in se and "_float_tensor" in se, se)


def test_pre_logits():
    cfg = {"task": "classification", "d": 16, "H": 2, "l": 4, "layers": 1, "ffn": 32,
           "positions": "sinusoidal", "max_positions": 128, "append_eos": True,
           "classifier_layers": 1, "classifier_activation": "gelu", "labels": ["a", "b"]}
    ref = ref_model(cfg, 13)
    a = lra_args(ref, pre_logits=True, encoder_learned_pos=False, classifier_layers=None,
                 classifier_out_dim=None, classifier_activation_fn=None, activation_fn="relu")
    ck = save_ckpt("prelogits", lra_state_dict(ref, head="pre_logits"), a)
    check_converted("pre_logits head", ck, ref, "--labels", "a,b")


def test_sequential_shared_use_p():
    """2022-06 .. 2023-02 head layout (classifier.N.0), the sentence_encoder prefix, use_p,
    a tanh head and tie_layer_weights (listops): one stored layer used 3 times."""
    cfg = {"task": "classification", "d": 16, "H": 2, "l": 5, "layers": 3, "ffn": 32,
           "positions": "learned", "max_positions": 80, "layernorm_embedding": True,
           "append_eos": True, "pooling": "p", "classifier_layers": 1, "classifier_dim": 20,
           "classifier_activation": "tanh", "labels": [str(i) for i in range(10)]}
    ref = ref_model(cfg, 14)
    sd = ref.state_dict()
    for k in list(sd):  # share layer 0's weights across the stack
        if k.startswith("layers.") and not k.startswith("layers.0."):
            sd[k] = sd["layers.0." + k.split(".", 2)[2]].clone()
    ref.load_state_dict(sd)
    a = lra_args(ref, arch="luna_lra_listop", use_p=True, tie_layer_weights=True,
                 classifier_activation_fn="tanh")
    ck = save_ckpt("listop", lra_state_dict(ref, prefix="encoder.sentence_encoder.",
                                            head="sequential", shared_layers=True), a)
    out, se = check_converted("sequential head + shared layers + use_p", ck, ref)
    if out:
        check("shared layers: notes the repetition", "tie_layer_weights" in se, se)


def test_old_swapped():
    cfg = dict(PAPER, tie_kv=True, positions="learned", layers=2)
    ref = ref_model(cfg, 15)
    ck = save_ckpt("old", lra_state_dict(ref, swap=True), lra_args(ref, tie_kv=True))
    out, _ = check_converted("pre-035a360 swapped pc_proj/c_proj", ck, ref, "--swap-pc-c",
                             "--labels", "neg,pos")
    # without the flag the model converts (the names are valid) but computes something else
    wrong = os.path.join(TMP, "old-unswapped")
    rc, _, se = run_convert(ck, wrong, "--labels", "neg,pos")
    if rc == 0:
        errs = [rel(engine_logits(wrong, raw), ref.forward(raw)["logits"]) for raw in INPUTS[1:3]]
        check("swapped: without --swap-pc-c the logits differ", min(errs) > 1e-3, str(errs))
    else:
        check("swapped: converts without the flag too", False, se)
    # --verify's forward pass really reads the fairseq names: a wrong swap setting is caught
    ckpt = convert_fairseq.load_checkpoint(ck)
    sd = convert_fairseq.state_dict_of(ckpt)
    o = convert_fairseq.Opts(*convert_fairseq.read_options(ckpt))
    flags = convert_fairseq.build_parser().parse_args([ck, out or wrong, "--swap-pc-c"])
    _, _, A = convert_fairseq.convert_classifier(sd, o, flags, [])
    A["swap"] = False
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            convert_fairseq.verify(out, sd, A, TOL)
        check("verify catches a wrong pc_proj/c_proj reading", False)
    except convert_fairseq.ConvertError as e:
        check("verify catches a wrong pc_proj/c_proj reading", "verification failed" in str(e))


def test_dict_remap():
    """A real LRA dictionary: symbols in frequency order, madeupword fillers, bytes that never
    occur (-> <unk>), and the <CLS> row that long_range_arena appends (-> bos_id)."""
    cfg = dict(PAPER, vocab_size=261, bos_id=260, max_positions=300, labels=["0", "1"])
    ref = ref_model(cfg, 16)
    missing = list(range(0, 33)) + [127]
    sd = ref.state_dict()
    E = sd["embed_tokens.weight"].clone()
    for b in missing:
        E[4 + b] = E[3]  # fairseq reads an unknown symbol as <unk>
    sd["embed_tokens.weight"] = E
    ref.load_state_dict(sd)
    present = [b for b in range(256) if b not in missing]
    order = np.random.default_rng(3).permutation(present).tolist()
    fillers = (-(4 + len(order))) % 8
    rows = [E[i] for i in range(4)] + [E[4 + b] for b in order] + \
        [torch.full((16,), 9.0, dtype=E.dtype)] * fillers + [E[260]]
    fsd = lra_state_dict(ref)
    fsd["encoder.encoder.embed_tokens.weight"] = torch.stack(rows).float()
    dpath = os.path.join(TMP, "dict.txt")
    with open(dpath, "w", encoding="utf-8") as f:
        for i, b in enumerate(order):
            f.write(f"{chr(b)} {1000 - i}\n")
        for i in range(fillers):
            f.write(f"madeupword{i:04d} 0\n")
    lpath = os.path.join(TMP, "label-dict.txt")
    with open(lpath, "w") as f:
        f.write("1 12500\n0 12500\n")
    ck = save_ckpt("dict", fsd, lra_args(ref))
    out, se = check_converted("--dict remap", ck, ref, "--dict", dpath, "--labels", "0,1",
                              inputs=INPUTS + [bytes(range(256))])
    if out:
        c = json.load(open(os.path.join(out, "config.json")))
        check("--dict: <CLS> becomes bos_id 260", (c["bos_id"], c["vocab_size"]) == (260, 261),
              str(c))
    rc, _, se = run_convert(ck, os.path.join(TMP, "dict-labels"), "--dict", dpath,
                            "--label-dict", lpath)
    c = json.load(open(os.path.join(TMP, "dict-labels", "config.json"))) if rc == 0 else {}
    check("--label-dict: labels in label-dictionary order", c.get("labels") == ["1", "0"], se)
    with open(os.path.join(TMP, "bad-dict.txt"), "w") as f:
        f.write("the 10\nof 5\n")
    check_refused("word-level dictionary", ck, "not single bytes", "--dict",
                  os.path.join(TMP, "bad-dict.txt"))


# ---- decoder-only LMs -------------------------------------------------------------------------

LM_FINAL = {"task": "causal-lm", "d": 16, "H": 2, "l": 8, "layers": 2, "ffn": 32,
            "positions": "sinusoidal", "max_positions": 64, "layernorm_embedding": True,
            "bos_id": 2}


def greedy(ref, prompt, steps):
    """The reference's greedy continuation, banning what the engine bans (non-bytes except eos);
    stops early where the top two logits are too close to call in float32."""
    c = ref.cfg
    toks = [c["bos_id"]] + [c["byte_offset"] + b for b in prompt]
    out = []
    for _ in range(steps):
        lg = ref.forward(toks)["logits"][-1].clone()
        ban = torch.ones_like(lg, dtype=torch.bool)
        ban[c["byte_offset"]: c["byte_offset"] + 256] = False
        ban[c["eos_id"]] = False
        lg[ban] = -math.inf
        top = torch.topk(lg, 2).values
        if (top[0] - top[1]).item() < 1e-3 * max(1.0, abs(top[0].item())):
            return bytes(out), False
        t = int(torch.argmax(lg))
        if t == c["eos_id"]:
            break
        out.append(t - c["byte_offset"])
        toks.append(t)
    return bytes(out), True


def check_lm(name, ckpt, ref, *flags):
    out = os.path.join(TMP, name)
    rc, so, se = run_convert(ckpt, out, "--verify", *flags)
    check(f"{name}: converts (exit 0)", rc == 0, se.strip()[-500:])
    if rc != 0:
        return None, se
    check(f"{name}: --verify reports its error", "verify: max relative error" in so, so)
    m = luna_ref.load(out)
    c = m.cfg
    worst = 0.0
    for raw in INPUTS:
        toks = [c["bos_id"]] + [c["byte_offset"] + b for b in raw]
        worst = max(worst, rel(m.forward(toks)["logits"], ref.forward(toks)["logits"]))
    check(f"{name}: luna_ref.load(OUT) logits = reference (rel err {worst:.2e})", worst < TOL)
    if os.access(LUNA, os.X_OK):
        for prompt in (b"Luna ", b""):
            want, sure = greedy(ref, prompt, 6)
            p = subprocess.run([LUNA, "generate", "--model", out, "--prompt", prompt.decode(),
                                "--max-new-tokens", "6", "--temperature", "0", "--seed", "1"],
                               capture_output=True, timeout=60)
            got = p.stdout
            ok = p.returncode == 0 and (got == want if sure else got[: len(want)] == want)
            check(f"{name}: luna generate greedy = reference argmax ({prompt!r})", ok,
                  f"exit {p.returncode}, got {got!r}, want {want!r}, {p.stderr.decode()[:200]}")
    return out, se


def test_lm_final():
    ref = ref_model(LM_FINAL, 21)
    ck = save_ckpt("lm-final", lm_state_dict(ref), argparse.Namespace(**lm_options(ref)))
    out, se = check_lm("LM (final luna_attention.py)", ck, ref)
    if out:
        c = json.load(open(os.path.join(out, "config.json")))
        check("LM final: softplus_ln2, pc_proj, tied K/V and embeddings, bos = </s>",
              (c["causal_phi"], c["causal_pc_proj"], c["tie_kv"], c["tie_embeddings"], c["bos_id"])
              == ("softplus_ln2", True, True, True, 2), str(c))
        check("LM final: version buffer and tied output_projection dropped",
              "decoder.version" in se and "output_projection.weight" in se, se)


def test_lm_old_cfg():
    """lunar_attention.py (2021-03 .. 2021-05): no pc_proj, untied k/v, elu + 1; learned positions,
    pre-norm, a separate output projection, no embedding scale; options in cfg (fairseq >= 0.10),
    and the task's add_bos_token."""
    cfg = {"task": "causal-lm", "d": 16, "H": 4, "l": 6, "layers": 2, "ffn": 24,
           "activation": "gelu", "tie_kv": False, "normalize_before": True, "positions": "learned",
           "max_positions": 48, "causal_phi": "elu_plus_1", "causal_pc_proj": False,
           "tie_embeddings": False, "bos_id": 0}
    ref = ref_model(cfg, 22)
    model_opts = lm_options(ref, _name="luna_lm", no_scale_embedding=True)
    del model_opts["add_bos_token"]
    cfgd = {"model": model_opts, "task": {"_name": "language_modeling", "add_bos_token": True,
                                          "tokens_per_sample": 48}, "common": {"fp16": True}}
    ck = save_ckpt("lm-old", lm_state_dict(ref), args=None, cfg=cfgd)
    out, se = check_lm("LM (lunar_attention.py, cfg)", ck, ref)
    if out:
        check("LM old: proj_layer_norm dropped", "proj_layer_norm" in se, se)


def test_lm_swapped():
    cfg = dict(LM_FINAL, causal_phi="elu_plus_1", positions="none", max_positions=0)
    ref = ref_model(cfg, 23)
    opts = lm_options(ref)
    ck = save_ckpt("lm-swapped", lm_state_dict(ref, swap=True), argparse.Namespace(**opts))
    check_lm("LM pre-035a360 swapped", ck, ref, "--swap-pc-c")


def test_stubbed_classes():
    """A checkpoint that pickles classes this machine lacks (fairseq's meters, omegaconf's
    DictConfig) loads through stubs; the omegaconf-like cfg is read from its nodes."""
    pkg = os.path.join(TMP, "fakemods")
    os.makedirs(os.path.join(pkg, "fakeomegaconf"), exist_ok=True)
    with open(os.path.join(pkg, "fakeomegaconf", "__init__.py"), "w") as f:
        f.write("class DictConfig:\n    def __init__(self, d):\n"
                "        self._content = {k: (v if isinstance(v, DictConfig) else AnyNode(v))"
                " for k, v in d.items()}\n        self._metadata = None\n"
                "class AnyNode:\n    def __init__(self, v):\n        self._val = v\n"
                "class StopwatchMeter:\n    def __init__(self):\n        self.sum = 1.5\n")
    sys.path.insert(0, pkg)
    try:
        import fakeomegaconf as oc
        ref = ref_model(PAPER, 31)
        model = oc.DictConfig(vars(lra_args(ref)))
        cfgd = oc.DictConfig({"model": model, "task": oc.DictConfig({"_name": "long_range_arena"})})
        ck = save_ckpt("stubbed", lra_state_dict(ref), args=None, cfg=cfgd,
                       extra={"meters": {"wall": oc.StopwatchMeter()}})
    finally:
        sys.path.remove(pkg)
        sys.modules.pop("fakeomegaconf", None)
    out = os.path.join(TMP, "stubbed")
    env = dict(os.environ, PYTHONPATH="")
    p = subprocess.run(["/usr/bin/python3", CONVERTER, ck, out, "--verify"], capture_output=True,
                       timeout=300, env=env, cwd=TMP)
    err = p.stderr.decode()
    check("unimportable classes: converts through stubs (exit 0)", p.returncode == 0, err[-500:])
    check("unimportable classes: notes the stubs", "fakeomegaconf" in err, err)
    if p.returncode == 0:
        check_engine("unimportable classes", out, ref, INPUTS[:3])


# ---- refusals ---------------------------------------------------------------------------------


def test_errors():
    ref = ref_model(PAPER, 41)
    sd = lra_state_dict(ref)

    check_refused("unsupported activation",
                  save_ckpt("e1", sd, lra_args(ref, activation_fn="gelu_accurate")),
                  "activation_fn")
    check_refused("two-input model", save_ckpt("e2", sd, lra_args(ref, classifier_in_dim=32)),
                  "classifier_in_dim")
    check_refused("not Luna", save_ckpt("e3", sd, lra_args(ref, layer_type="transformer")),
                  "layer_type")
    check_refused("image input", save_ckpt("e4", sd, lra_args(ref, input_type="image")),
                  "input_type")
    check_refused("no heads option",
                  save_ckpt("e5", sd, lra_args(ref, encoder_attention_heads=None)),
                  "encoder_attention_heads")
    check_refused("args contradict tensors",
                  save_ckpt("e6", sd, lra_args(ref, encoder_ffn_embed_dim=64)),
                  "encoder_ffn_embed_dim")
    check_refused("use_p on an ambiguous code version",
                  save_ckpt("e7", sd, lra_args(ref, use_p=True)), "--no-first-token-drop")
    extra = dict(sd)
    extra["encoder.encoder.segment_embeddings.weight"] = torch.zeros(2, 16)
    check_refused("unknown tensor", save_ckpt("e8", extra, lra_args(ref)),
                  "unknown tensor encoder.encoder.segment_embeddings.weight")
    short = dict(sd)
    del short["encoder.encoder.layers.1.fc2.bias"]
    check_refused("missing tensor", save_ckpt("e9", short, lra_args(ref)),
                  "missing tensor encoder.encoder.layers.1.fc2.bias")
    nohead = dict(sd)
    del nohead["sentence_projection_layer.weight"]
    check_refused("missing projection", save_ckpt("e10", nohead, lra_args(ref)),
                  "missing tensor sentence_projection_layer.weight")
    check_refused("wrong label count", save_ckpt("e11", sd, lra_args(ref)), "--labels",
                  "--labels", "a,b,c")

    lm = ref_model(LM_FINAL, 42)
    lsd = lm_state_dict(lm)
    check_refused("adaptive softmax", save_ckpt("e12", lsd, argparse.Namespace(
        **lm_options(lm, adaptive_softmax_cutoff="100,200"))), "adaptive_softmax_cutoff")
    s2s = dict(lsd)
    s2s["decoder.layers.0.encoder_attn.q_proj.weight"] = torch.zeros(16, 16)
    check_refused("seq2seq decoder", save_ckpt("e13", s2s, argparse.Namespace(**lm_options(lm))),
                  "encoder_attn")
    both = dict(lsd, **{"encoder.embed_tokens.weight": torch.zeros(260, 16)})
    check_refused("encoder-decoder", save_ckpt("e14", both, argparse.Namespace(**lm_options(lm))),
                  "encoder-decoder")
    untied = dict(lsd)
    untied["decoder.output_projection.weight"] = lsd["decoder.output_projection.weight"] + 1
    check_refused("tied output projection that differs", save_ckpt(
        "e15", untied, argparse.Namespace(**lm_options(lm))), "share_decoder_input_output_embed")
    check_refused("no options", save_ckpt("e16", lsd), "neither `args` nor `cfg`")

    # through the command line: exit 1 on a conversion error, 2 on a usage error
    ck = save_ckpt("e17", sd, lra_args(ref, activation_fn="swish"))
    p = subprocess.run(["/usr/bin/python3", CONVERTER, ck, os.path.join(TMP, "cli-out")],
                       capture_output=True, timeout=300)
    check("command line: conversion error exits 1 with the message",
          p.returncode == 1 and b"activation_fn 'swish'" in p.stderr, p.stderr.decode()[-300:])
    p = subprocess.run(["/usr/bin/python3", CONVERTER, ck], capture_output=True, timeout=300)
    check("command line: usage error exits 2", p.returncode == 2, p.stderr.decode()[-300:])


def main():
    if not os.access(LUNA, os.X_OK):
        print(f"FAIL: {LUNA} is not built (make -j2 build/bin/luna)")
        print("0 passed, 1 failed")
        return 1
    tests = [test_paper_era, test_later_version, test_pre_logits, test_sequential_shared_use_p,
             test_old_swapped, test_dict_remap, test_lm_final, test_lm_old_cfg, test_lm_swapped,
             test_stubbed_classes, test_errors]
    only = sys.argv[1:]
    try:
        for t in tests:
            if only and t.__name__ not in only:
                continue
            try:
                t()
            except Exception:  # noqa: BLE001 - a crash is one failure, the others still run
                check(t.__name__ + " ran without an exception", False, traceback.format_exc())
    finally:
        shutil.rmtree(TMP, ignore_errors=True)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
