#!/usr/bin/python3
"""convert_fairseq.py - turn an authors' fairseq-apollo Luna checkpoint into a lunaserve model.

    convert_fairseq.py CHECKPOINT OUT_DIR [--labels a,b | --label-dict FILE] [--dict FILE]
                       [--swap-pc-c] [--causal-phi PHI] [--no-first-token-drop] [--verify] ...

CHECKPOINT is what fairseq's train.py saves (torch.save of a dict): `model` (the state dict) and
`args` (an argparse.Namespace) or `cfg` (a dict / omegaconf config whose `model` entry holds the
same option names). OUT_DIR receives config.json and model.safetensors (docs/model-format.md),
written through tools/luna_ref.py. Two kinds of checkpoint are understood:

* the LRA classifier: model `lra` (arch luna_lra_imdb, luna_lra_listop, ...) with
  layer_type luna. These are the real key names of XuezheMax/fairseq-apollo (read from its
  history): LRAModel holds `encoder` (LRAEncoder), which holds `encoder` (LunaLRAEncoder), so the
  encoder's tensors are `encoder.encoder.<name>`; `encoder.sentence_encoder.<name>` (the name in
  luna_bert / shared/LUNA.md) is accepted too. The head went through four layouts, all handled:
      classifier.{j}.weight      ModuleList of Linear   2021-11 (13e3e3d, the paper) .. 2022-06,
                                                        and 2023-02 .. 2023-04
      classifier.{j}.0.weight    ModuleList of Sequential(Linear, Dropout)   2022-06 .. 2023-02
      pre_logits.0.weight        Sequential(Linear, GELU) with --pre-logits   2023-04 .. head
      (nothing)                  the head's single Linear                     2023-04 .. head
  followed by sentence_projection_layer.weight (no bias).
* a decoder-only Luna LM. fairseq-apollo has no decoder-only Luna model (its `luna` model is the
  encoder-decoder translation model), so this layout is DERIVED: fairseq's LunaDecoder
  (fairseq/models/luna.py: `decoder.` prefix, `layernorm_embedding`, `output_projection`,
  `version`, `layer_norm` / `proj_layer_norm`) with LunaDecoderLayer minus its encoder attention,
  plus `decoder.projected_embeddings` for P (the name the encoders use, shared/LUNA.md).
  Option names are LunaDecoder's (decoder_embed_dim, decoder_attention_heads, projection_length,
  untie_luna_kv, share_decoder_input_output_embed, no_scale_embedding, ...). The causal
  attention's three historical versions (lunar_attention.py / luna_attention.py) are told
  apart by the tensors (pc_proj or not) and --causal-phi.

How each option maps (an option the authors' model code reads and our format cannot express is
an error; options that only matter in training - dropout, layerdrop, quant noise, init - are
ignored):

  lra option / tensor                 config.json              notes
  encoder_embed_dim                   d                        checked against embed_tokens
  encoder_attention_heads             H, Hp                    LRAEncoder passes it as BOTH the
                                                               unpack and the pack heads; the
                                                               encoder_projected_attention_heads
                                                               option is never read by `lra`
  encoder_projection_length           l                        checked against projected_embeddings
  encoder_layers (+ tie_layer_weights) layers                  one shared layer is replicated
  encoder_ffn_embed_dim               ffn                      checked against fc1
  activation_fn                       activation               relu, gelu (erf); others refused
  tie_kv / pc_proj vs pk_proj keys    tie_kv                   from the tensors, checked vs args
  embed_positions.weight / sinusoid   positions                learned / sinusoidal / none, from
                                                               the tensors (13e3e3d forced learned)
  max_positions                       max_positions            learned: rows - padding_idx - 1
  emb_layer_norm, proj_emb_layer_norm layernorm_embedding      from the tensors (13e3e3d: always;
                                                               later: = encoder_normalize_before)
  layer_norm, proj_layer_norm         normalize_before         from the tensors (`lra` always
                                                               builds post-norm layers)
  (embed_scale=None in LRAEncoder)    embed_scale null         sqrt(d) iff sinusoidal; the
                                                               no_scale_embedding option is not
                                                               read by `lra`
  (dynamic_projection default)        dynamic_projection true
  use_p / sen_rep_type cls|first|mp   pooling p / cls / mean   before c5e204f (2022-03-27) use_p
                                                               (and from 3d7ae34 also mp) dropped
                                                               the first token: refused unless
                                                               --no-first-token-drop
  classifier_layers, classifier_out_dim  classifier_layers, classifier_dim
  classifier_activation_fn            classifier_activation    relu, gelu, tanh
  pre_logits                          1 layer, gelu, dim d
  classifier_in_dim != d              error                    two-input (AAN) models
  input_type image                    error                    real-valued pixel embedding
  sentence_class_num                  len(labels)              --labels / --label-dict / classN

  LM option / tensor                  config.json
  decoder_embed_dim (= input/output dim)  d                    project_in/out_dim refused
  decoder_attention_heads             H
  projection_length                   l
  decoder_layers, decoder_ffn_embed_dim   layers, ffn
  activation_fn                       activation
  untie_luna_kv / c_proj vs k,v_proj  tie_kv
  pc_proj present                     causal_pc_proj           absent: lunar_attention.py
                                                               (2021-03 .. 2021-05)
  --causal-phi                        causal_phi               default softplus_ln2 if pc_proj
                                                               (2021-08-09 on), else elu_plus_1
  decoder_learned_pos / no_token_positional_embeddings   positions
  max_target_positions / tokens_per_sample               max_positions
  no_scale_embedding                  embed_scale (1 or sqrt(d))
  layernorm_embedding                 layernorm_embedding
  decoder_normalize_before            normalize_before         proj_layer_norm dropped (it only
                                                               touches P, which is never read)
  share_decoder_input_output_embed    tie_embeddings           output_projection == embed_tokens
  add_bos_token                       bos_id 0, else 2 (</s>, fairseq LM's sequence start)
  adaptive_softmax_cutoff, adaptive_input, character_embeddings   error

Tensors that are provably unused are dropped: `version` buffers, `embed_positions._float_tensor`,
sinusoidal tables (`projected_positions`, `embed_positions.weights`, after checking that they
hold the sinusoid), the tied copy of `output_projection.weight`, the LM's `proj_layer_norm`.
Any other tensor that is not mapped is an error, and so is a missing one.

Other switches:
  --swap-pc-c      the checkpoint predates fairseq-apollo 035a360 (2021-07-09), where pack used
                   `c_proj` and unpack `pc_proj` (bidirectional and causal alike): exchange them.
  --dict FILE      the checkpoint's fairseq dict.txt. Without it the embedding rows must already
                   be in our byte layout (specials 0-3, byte b at 4 + b). With it, each symbol
                   must be one character U+0000..U+00FF (that byte); `madeupwordNNNN` fillers are
                   dropped; bytes missing from the dictionary get <unk>'s row; a row after the
                   dictionary (the <CLS> that the long_range_arena task appends) becomes bos_id.
  --verify         reload OUT_DIR with luna_ref.load and compare its logits with a float64 forward
                   pass of the ORIGINAL checkpoint, computed here from its fairseq tensor names
                   (the authors' formulas, independent of the renaming); prints the max relative
                   error ||out - ref|| / ||ref|| and fails above --tolerance (1e-4).

Exit status: 0 on success, 1 on a conversion or verification error (the message names the option
or tensor), 2 on bad command-line arguments.
"""

import argparse
import collections.abc
import math
import os
import pickle
import re
import sys
import types

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import luna_ref  # noqa: E402

PROG = "convert_fairseq"
NSPECIAL = 4  # fairseq's Dictionary: <s> 0, <pad> 1, </s> 2, <unk> 3
BOS, PAD, EOS, UNK = 0, 1, 2, 3
BYTE_OFFSET = 4
LRA_ARCH_HINT = "lra"
SEQ2SEQ_ARCHS = ("luna", "luna_base", "luna_base_tied", "luna_base_untied")


class ConvertError(Exception):
    """A checkpoint that cannot be converted; the message names the option or tensor."""


def fail(msg):
    raise ConvertError(msg)


# ---- loading the checkpoint ----------------------------------------------------------------


class _Stub:
    """Stands in for a pickled class whose module is not installed here (fairseq's meters,
    omegaconf's nodes, ...). It keeps whatever state the pickle gives it."""

    def __init__(self, *args, **kwargs):
        self.__dict__["_stub_args"] = args

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2:
            for part in state:
                if isinstance(part, dict):
                    self.__dict__.update(part)
        elif isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.__dict__["_stub_state"] = state

    def __setitem__(self, key, value):  # dict subclasses
        self.__dict__.setdefault("_stub_items", {})[key] = value

    def append(self, value):  # list subclasses
        self.__dict__.setdefault("_stub_list", []).append(value)

    def extend(self, values):
        self.__dict__.setdefault("_stub_list", []).extend(values)


_STUBS = {}
STUBBED = set()


def _stub_class(module, name):
    key = (module, name)
    if key not in _STUBS:
        _STUBS[key] = type(name, (_Stub,), {"__module__": module, "__qualname__": name})
    STUBBED.add(f"{module}.{name}")
    return _STUBS[key]


class _LenientUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return _stub_class(module, name)


def _lenient_load(f, **kwargs):
    return _LenientUnpickler(f, **kwargs).load()


_LENIENT_PICKLE = types.SimpleNamespace(
    __name__="lenient_pickle", Unpickler=_LenientUnpickler, load=_lenient_load
)


def load_checkpoint(path):
    """torch.load(map_location="cpu"); classes of modules that are not installed (fairseq,
    omegaconf) load as stubs, which is enough to read the options and the tensors."""
    # Some torch builds (Debian's 1.13) ignore pickle_module and always subclass
    # pickle.Unpickler, so that name is swapped for the lenient one while loading.
    saved = pickle.Unpickler
    pickle.Unpickler = _LenientUnpickler
    try:
        return torch.load(path, map_location="cpu", pickle_module=_LENIENT_PICKLE)
    except FileNotFoundError:
        fail(f"{path}: no such file")
    except Exception as e:  # noqa: BLE001 - any unpickling failure is reported the same way
        fail(f"{path}: cannot be read by torch.load: {type(e).__name__}: {e}")
    finally:
        pickle.Unpickler = saved


def plain(o):
    """Options as plain Python: argparse.Namespace, dicts, omegaconf DictConfig (real, or stubbed:
    its `_content` dict of nodes whose value is `_val`), lists."""
    if o is None or isinstance(o, (bool, int, float, str)):
        return None if o == "???" else o  # "???" is omegaconf's MISSING
    if isinstance(o, argparse.Namespace):
        return {k: plain(v) for k, v in vars(o).items()}
    if isinstance(o, collections.abc.Mapping):
        return {str(k): plain(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [plain(v) for v in o]
    if isinstance(o, _Stub):
        d = o.__dict__
        if "_content" in d:
            return plain(d["_content"])
        if "_val" in d:
            return plain(d["_val"])
        if "_stub_items" in d:
            return plain(d["_stub_items"])
        return o
    items = getattr(o, "items", None)
    if callable(items):
        try:
            return {str(k): plain(v) for k, v in items()}
        except Exception:  # noqa: BLE001
            return o
    if hasattr(o, "__dict__") and type(o).__name__ == "Namespace":
        return {k: plain(v) for k, v in vars(o).items()}
    return o


def read_options(ckpt):
    """(options dict, where they came from). `args` (fairseq < 0.10, or when not None) wins over
    `cfg`; with `cfg`, the model section is used and the task section fills in task options
    (add_bos_token, tokens_per_sample) that the model section lacks."""
    if not isinstance(ckpt, collections.abc.Mapping):
        fail(f"the checkpoint is a {type(ckpt).__name__}, expected the dict fairseq saves")
    args = ckpt.get("args")
    if args is not None:
        a = plain(args)
        if not isinstance(a, dict):
            fail(f"checkpoint['args'] is a {type(args).__name__}, expected an argparse.Namespace")
        return a, "args"
    cfg = ckpt.get("cfg")
    if cfg is None:
        fail("the checkpoint has neither `args` nor `cfg`: the model's options are unknown")
    c = plain(cfg)
    if not isinstance(c, dict) or not isinstance(c.get("model"), dict):
        fail("checkpoint['cfg'] has no `model` section with the model's options")
    a = dict(c["model"])
    task = c.get("task")
    if isinstance(task, dict):
        for k, v in task.items():
            a.setdefault(k, v)
    return a, "cfg['model']"


def state_dict_of(ckpt):
    sd = ckpt.get("model")
    if not isinstance(sd, collections.abc.Mapping):
        fail("the checkpoint has no `model` state dict")
    out = {}
    for k, v in sd.items():
        if not torch.is_tensor(v):
            fail(f"state dict entry {k!r} is a {type(v).__name__}, not a tensor")
        out[str(k)] = v
    return out


# ---- dictionaries ----------------------------------------------------------------------------


def read_fairseq_dict(path):
    """Symbols of a fairseq dict.txt, in order (ids NSPECIAL, NSPECIAL + 1, ...): each line is
    `SYMBOL COUNT` (optionally followed by `#fairseq:overwrite`)."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
    except OSError as e:
        fail(f"{path}: {e.strerror}")
    except UnicodeDecodeError:
        fail(f"{path}: not UTF-8")
    symbols = []
    for no, line in enumerate(lines, 1):
        if line == "":
            continue
        line = line.rstrip("\r")
        if line.endswith(" #fairseq:overwrite"):
            line = line[: -len(" #fairseq:overwrite")]
        sym, sep, count = line.rpartition(" ")
        if not sep or not count.lstrip("-").isdigit():
            fail(f"{path}:{no}: expected 'SYMBOL COUNT', got {line!r}")
        symbols.append(sym)
    return symbols


def vocab_mapping(rows, dict_path, kind, notes):
    """The embedding layout. Returns (orig_ids, bos_from_cls) where orig_ids[our_id] is the
    checkpoint's row for each row of our table and bos_from_cls is our id of the <CLS> row (or
    None)."""
    if dict_path is None:
        if rows < BYTE_OFFSET + 256:
            fail(
                f"embed_tokens has {rows} rows; without --dict the checkpoint must use the byte "
                f"layout (specials 0-3, byte b at row 4 + b, so >= 260 rows): pass --dict dict.txt"
            )
        if rows != BYTE_OFFSET + 256:
            notes.append(
                f"embed_tokens has {rows} rows, not 260: assuming rows 4..259 are bytes 0..255 "
                "in order (pass --dict if the checkpoint's dictionary is ordered otherwise)"
            )
        return list(range(rows)), None
    symbols = read_fairseq_dict(dict_path)
    byte_row = {}
    bad = []
    for i, sym in enumerate(symbols):
        rid = NSPECIAL + i
        if re.fullmatch(r"madeupword\d{4}", sym):
            continue
        if len(sym) == 1 and ord(sym) < 256:
            if ord(sym) in byte_row:
                fail(f"{dict_path}: byte {ord(sym)} appears twice")
            byte_row[ord(sym)] = rid
        else:
            bad.append(sym)
    if bad:
        fail(
            f"{dict_path}: {len(bad)} symbol(s) are not single bytes (e.g. {bad[0]!r}); the model "
            "format reads bytes, so a word- or token-level vocabulary cannot be expressed"
        )
    ndict = NSPECIAL + len(symbols)
    cls = None
    if rows == ndict + 1 and kind == "classification":
        cls = ndict  # long_range_arena: cls_idx = data_dict.add_symbol('<CLS>')
    elif rows != ndict:
        fail(f"embed_tokens has {rows} rows but {dict_path} defines {ndict} (+1 for <CLS>)")
    missing = [b for b in range(256) if b not in byte_row]
    if missing:
        notes.append(f"{len(missing)} byte value(s) are not in the dictionary; they read as <unk>")
    orig = [BOS, PAD, EOS, UNK] + [byte_row.get(b, UNK) for b in range(256)]
    bos = None
    if cls is not None:
        bos = len(orig)
        orig.append(cls)
        notes.append(f"row {cls} is <CLS> (added by the long_range_arena task): bos_id {bos}")
    return orig, bos


# ---- option helpers --------------------------------------------------------------------------


class Opts:
    """The checkpoint's options, with the names of those that were read (for the report)."""

    def __init__(self, a, source):
        self.a, self.source = a, source

    def get(self, name, default=None):
        v = self.a.get(name)
        return default if v is None else v

    def has(self, name):
        return self.a.get(name) is not None

    def int(self, name, required=False):
        v = self.a.get(name)
        if v is None:
            if required:
                fail(f"{self.source} has no {name}: it cannot be inferred from the tensors")
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            fail(f"{self.source}.{name} is {v!r}, expected an integer")
        return v

    def check(self, name, actual, what):
        """An option that the tensors also determine must agree with them."""
        v = self.a.get(name)
        if v is not None and v != actual:
            fail(f"{self.source}.{name} is {v!r} but {what} says {actual!r}")


def map_activation(name, opt, allowed):
    table = {"relu": "relu", "gelu": "gelu", "tanh": "tanh"}
    if name not in table or table[name] not in allowed:
        fail(
            f"{opt} {name!r} is not supported: the model format has {', '.join(allowed)} "
            "(gelu is the exact erf form, fairseq's `gelu`; gelu_accurate/gelu_fast are the tanh "
            "approximation)"
        )
    return table[name]


class Tensors:
    """The checkpoint's tensors; take() consumes them so that leftovers can be refused."""

    def __init__(self, sd):
        self.sd = sd
        self.rest = dict(sd)
        self.dropped = []

    def has(self, name):
        return name in self.rest

    def take(self, name, why=""):
        if name not in self.rest:
            if name in self.sd:
                return self.sd[name]  # a shared layer read twice (tie_layer_weights)
            fail(f"missing tensor {name}" + (f" ({why})" if why else ""))
        return self.rest.pop(name)

    def drop(self, name, why):
        if name in self.rest:
            self.rest.pop(name)
            self.dropped.append(f"{name} ({why})")

    def leftovers(self):
        if self.rest:
            names = sorted(self.rest)
            more = f" and {len(names) - 1} more" if len(names) > 1 else ""
            fail(
                f"unknown tensor {names[0]}{more}: it has no place in the converted model "
                f"(all: {', '.join(names[:8])}{' ...' if len(names) > 8 else ''})"
            )


def fs_sinusoid(rows, d, pad_row=None):
    """fairseq's SinusoidalPositionalEmbedding.get_embedding / get_sinusoidal_positional_embedding
    (float64 here; fairseq computes float32)."""
    half = d // 2
    emb = math.log(10000) / (half - 1)
    freq = torch.exp(torch.arange(half, dtype=torch.float64) * -emb)
    ang = torch.arange(rows, dtype=torch.float64).unsqueeze(1) * freq.unsqueeze(0)
    table = torch.cat([torch.sin(ang), torch.cos(ang)], dim=1)
    if pad_row is not None:
        table[pad_row] = 0
    return table


def drop_sinusoid(T, name, rows, d, pad_row, why):
    """Drop a stored sinusoidal table after checking that it is the sinusoid."""
    if not T.has(name):
        return
    t = T.rest[name].double()
    want = fs_sinusoid(max(rows, t.shape[0]), d, pad_row)[: t.shape[0]]
    if t.dim() != 2 or t.shape[1] != d or not torch.allclose(t, want, atol=1e-4, rtol=0):
        fail(f"tensor {name} should be the fairseq sinusoid table ({why}) but is not")
    T.drop(name, f"the sinusoid, {why}")


def positions_kind(T, prefix):
    if T.has(prefix + "embed_positions.weight"):
        return "learned"
    if any(T.has(prefix + n) for n in ("embed_positions._float_tensor", "embed_positions.weights",
                                       "projected_positions")):
        return "sinusoidal"
    return "none"


def layer_indices(T, prefix):
    idx = set()
    pat = re.compile(re.escape(prefix) + r"layers\.(\d+)\.")
    for k in T.rest:
        m = pat.match(k)
        if m:
            idx.add(int(m.group(1)))
    if not idx:
        fail(f"no tensors {prefix}layers.N.*: the checkpoint has no layers")
    if idx != set(range(len(idx))):
        fail(f"layers are numbered {sorted(idx)}, expected 0..{len(idx) - 1}")
    return len(idx)


def label_names(count, args):
    if args.labels is not None:
        labels = [s.strip() for s in args.labels.split(",")]
        if len(labels) != count:
            fail(f"--labels gives {len(labels)} names but the model has {count} classes")
    elif args.label_dict is not None:
        syms = [s for s in read_fairseq_dict(args.label_dict)
                if not re.fullmatch(r"madeupword\d{4}", s)]
        if len(syms) < count:
            fail(f"{args.label_dict} has {len(syms)} labels but the model has {count} classes")
        labels = syms[:count]
    else:
        labels = [f"class{i}" for i in range(count)]
    if len(set(labels)) != len(labels) or not all(labels):
        fail(f"labels must be distinct and non-empty, got {labels}")
    for s in labels:
        if len(s.encode("utf-8")) > 63:
            fail(f"label {s!r} is longer than 63 bytes")
    return labels


# ---- the LRA classifier ----------------------------------------------------------------------


ATTN_TIED = ("pq_proj", "q_proj", "pc_proj", "c_proj", "out_proj")
ATTN_UNTIED = ("pq_proj", "q_proj", "pk_proj", "pv_proj", "k_proj", "v_proj", "out_proj")


def convert_classifier(sd, o, args, notes):
    """-> (config dict, {our name: tensor}, analysis for the verifying forward)."""
    T = Tensors(sd)
    lt = o.get("layer_type")
    if lt is not None and lt != "luna":
        fail(f"{o.source}.layer_type is {lt!r}: only the Luna LRA model (layer_type luna) converts")
    if o.get("input_type", "text") != "text":
        fail(f"{o.source}.input_type is {o.get('input_type')!r}: real-valued (image) inputs "
             "use a linear embedding the model format does not have")
    prefix = None
    for p in ("encoder.encoder.", "encoder.sentence_encoder."):
        if T.has(p + "embed_tokens.weight"):
            prefix = p
    if prefix is None:
        fail("missing tensor encoder.encoder.embed_tokens.weight (the LRA encoder's token "
             "embedding; encoder.sentence_encoder.embed_tokens.weight is accepted too)")
    P = prefix
    out, A = {}, {"kind": "classification", "prefix": P}

    E = T.take(P + "embed_tokens.weight")
    rows, d = E.shape
    o.check("encoder_embed_dim", d, "embed_tokens.weight")
    H = o.int("encoder_attention_heads", required=True)
    if d % H:
        fail(f"{o.source}.encoder_attention_heads {H} does not divide d = {d}")
    hp = o.get("encoder_projected_attention_heads")
    if hp is not None and hp != H:
        notes.append(f"encoder_projected_attention_heads {hp} is not read by the `lra` model; "
                     f"LRAEncoder uses encoder_attention_heads ({H}) for the pack heads too")
    Pe = T.take(P + "projected_embeddings")
    l = Pe.shape[0]
    o.check("encoder_projection_length", l, "projected_embeddings")

    pos = positions_kind(T, P)
    max_pos = o.int("max_positions") or 0
    if pos == "learned":
        W = T.take(P + "embed_positions.weight")
        learned_max = W.shape[0] - PAD - 1
        if learned_max < 1:
            fail(f"{P}embed_positions.weight has {W.shape[0]} rows, fewer than padding_idx + 2")
        if max_pos and max_pos != learned_max:
            fail(f"{o.source}.max_positions is {max_pos} but embed_positions.weight has "
                 f"{W.shape[0]} = max_positions + padding_idx + 1 rows for {learned_max}")
        max_pos = learned_max
        out["embed_positions.weight"] = W
        if T.has(P + "projected_positions"):
            fail(f"tensor {P}projected_positions (P's sinusoid) cannot go with learned positions")
    elif pos == "sinusoidal":
        T.drop(P + "embed_positions._float_tensor", "a placeholder buffer")
        drop_sinusoid(T, P + "embed_positions.weights", 0, d, PAD, "X's cached table")
        drop_sinusoid(T, P + "projected_positions", l, d, None, "P's positions, rows 0..l-1")
        if d < 4:
            fail("sinusoidal positions need d >= 4")
    else:
        fail(f"missing tensor {P}embed_positions.weight (learned) or "
             f"{P}embed_positions._float_tensor (sinusoidal): LunaLRAEncoder always has positions")
    A["positions"] = pos
    if o.has("encoder_learned_pos") and bool(o.get("encoder_learned_pos")) != (pos == "learned"):
        notes.append(f"encoder_learned_pos is {o.get('encoder_learned_pos')} but the tensors have "
                     f"{pos} positions (LunaLRAEncoder forced learned ones before 63d6079, "
                     "2022-02-09): the tensors decide")
    if o.get("no_scale_embedding", False) and pos == "sinusoidal":
        notes.append("no_scale_embedding is set, but `lra` never passes it on: with sinusoidal "
                     "positions LunaLRAEncoder scales X and P by sqrt(d) (embed_scale null)")

    lnemb = T.has(P + "emb_layer_norm.weight") or T.has(P + "proj_emb_layer_norm.weight")
    prenorm = T.has(P + "layer_norm.weight") or T.has(P + "proj_layer_norm.weight")
    if o.has("encoder_normalize_before"):
        notes.append(f"encoder_normalize_before is {o.get('encoder_normalize_before')}: the `lra` "
                     "model always builds post-norm layers (13e3e3d ignores the option and always "
                     "has the embedding layer norms; later versions use it for them), so the "
                     f"layer norms follow the tensors: layernorm_embedding {str(lnemb).lower()}, "
                     f"normalize_before {str(prenorm).lower()}")
    if lnemb and prenorm:
        fail("the checkpoint has both emb_layer_norm and layer_norm (embedding layer norm with "
             "pre-norm layers): the model format cannot combine them")
    norms = []
    if lnemb:
        norms += ["emb_layer_norm", "proj_emb_layer_norm"]
    if prenorm:
        norms += ["layer_norm", "proj_layer_norm"]
    for n in norms:
        for leaf in ("weight", "bias"):
            out[f"{n}.{leaf}"] = T.take(f"{P}{n}.{leaf}", "a LayerNorm has weight and bias")

    stored = layer_indices(T, P)
    nl = o.int("encoder_layers") or stored
    if o.get("tie_layer_weights", False):
        if stored != 1:
            fail(f"{o.source}.tie_layer_weights is set but {stored} layers are stored (expected 1)")
        notes.append(f"tie_layer_weights: the one stored layer is repeated {nl} times")
        src_layer = [0] * nl
    else:
        if nl != stored:
            fail(f"{o.source}.encoder_layers is {nl} but layers 0..{stored - 1} are stored")
        src_layer = list(range(nl))
    A["src_layer"] = src_layer

    a0 = f"{P}layers.0.self_attn."
    tied = T.has(a0 + "pc_proj.weight") or T.has(a0 + "c_proj.weight")
    if o.has("tie_kv") and bool(o.get("tie_kv")) != tied:
        fail(f"{o.source}.tie_kv is {o.get('tie_kv')} but the tensors are "
             f"{'tied (pc_proj, c_proj)' if tied else 'untied (pk_proj, pv_proj, k_proj, v_proj)'}")
    if args.swap_pc_c and not tied:
        fail("--swap-pc-c: the checkpoint has untied K/V (no pc_proj/c_proj to exchange)")
    A["tied"], A["swap"] = tied, args.swap_pc_c
    ffn = None
    for i, s in enumerate(src_layer):
        src, dst = f"{P}layers.{s}.", f"layers.{i}."
        for proj in ATTN_TIED if tied else ATTN_UNTIED:
            name = proj
            if args.swap_pc_c and proj in ("pc_proj", "c_proj"):
                name = "c_proj" if proj == "pc_proj" else "pc_proj"
            for leaf in ("weight", "bias"):
                out[f"{dst}self_attn.{proj}.{leaf}"] = T.take(f"{src}self_attn.{name}.{leaf}")
        for m in ("self_attn_layer_norm", "self_atten_proj_layer_norm", "fc1", "fc2",
                  "final_layer_norm"):
            for leaf in ("weight", "bias"):
                out[f"{dst}{m}.{leaf}"] = T.take(f"{src}{m}.{leaf}")
        ffn = out[f"{dst}fc1.weight"].shape[0]
    o.check("encoder_ffn_embed_dim", ffn, "fc1.weight")
    act = map_activation(o.get("activation_fn", "gelu"), f"{o.source}.activation_fn",
                         ("relu", "gelu"))

    # the head
    cin = o.int("classifier_in_dim")
    if cin is not None and cin != d:
        fail(f"{o.source}.classifier_in_dim is {cin}, not d = {d}: a two-input model (the "
             "sentence representations of two documents concatenated) cannot be expressed")
    layout, head = None, []
    if T.has("classifier.0.weight"):
        layout, fmt = "modulelist", "classifier.{}.{}"
    elif T.has("classifier.0.0.weight"):
        layout, fmt = "sequential", "classifier.{}.0.{}"
    elif T.has("pre_logits.0.weight"):
        layout, fmt = "pre_logits", "pre_logits.{}.{}"
    else:
        layout = "none"
    if layout in ("modulelist", "sequential"):
        j = 0
        while T.has(fmt.format(j, "weight")):
            head.append((fmt.format(j, "weight"), fmt.format(j, "bias")))
            j += 1
        o.check("classifier_layers", len(head), "the classifier.N tensors")
        cact = map_activation(o.get("classifier_activation_fn", "relu"),
                              f"{o.source}.classifier_activation_fn", ("relu", "gelu", "tanh"))
    elif layout == "pre_logits":
        if o.has("pre_logits") and not o.get("pre_logits"):
            fail(f"{o.source}.pre_logits is false but pre_logits.0.weight is present")
        head.append(("pre_logits.0.weight", "pre_logits.0.bias"))
        cact = "gelu"  # nn.GELU()
    else:
        if o.get("pre_logits", False):
            fail(f"missing tensor pre_logits.0.weight ({o.source}.pre_logits is set)")
        if (o.int("classifier_layers") or 0) > 0 and not o.has("pre_logits"):
            fail(f"missing tensor classifier.0.weight ({o.source}.classifier_layers is "
                 f"{o.int('classifier_layers')})")
        cact = "relu"
    cdim = None
    for j, (wn, bn) in enumerate(head):
        w, b = T.take(wn), T.take(bn, "the head's Linear layers have a bias")
        want_in = d if j == 0 else cdim
        if w.dim() != 2 or w.shape[1] != want_in:
            fail(f"tensor {wn} has shape {tuple(w.shape)}, expected (N, {want_in})")
        if j == 0:
            cdim = w.shape[0]
        elif w.shape[0] != cdim:
            fail(f"tensor {wn} has {w.shape[0]} outputs, expected {cdim} like classifier.0")
        out[f"classifier.{j}.weight"], out[f"classifier.{j}.bias"] = w, b
    if layout in ("modulelist", "sequential"):
        o.check("classifier_out_dim", cdim, "classifier.0.weight")
    A["head"], A["head_layout"] = head, layout
    Wp = T.take("sentence_projection_layer.weight")
    ncls = Wp.shape[0]
    o.check("sentence_class_num", ncls, "sentence_projection_layer.weight")
    out["sentence_projection_layer.weight"] = Wp

    # pooling
    use_p = bool(o.get("use_p", False))
    rep = o.get("sen_rep_type", "cls")
    if use_p:
        pooling = "p"
    elif rep in ("cls", "first"):
        pooling = "cls"
    elif rep == "mp":
        pooling = "mean"
    else:
        fail(f"{o.source}.sen_rep_type {rep!r} is not supported (cls, first or mp)")
    if pooling in ("p", "mean") and layout == "modulelist" and not args.no_first_token_drop:
        fail(f"{o.source}.{'use_p' if use_p else 'sen_rep_type mp'}: fairseq-apollo before commit "
             "c5e204f (2022-03-27) removed the first input token for use_p (and, from 3d7ae34, "
             "for sen_rep_type mp), which the model format cannot express (every sequence "
             "starts with bos_id). This head layout (classifier.N.weight) was used both before "
             "and after that commit; if the checkpoint was trained at c5e204f or later, pass "
             "--no-first-token-drop")

    # the input side
    orig_ids, cls_bos = vocab_mapping(rows, args.dict, "classification", notes)
    out["embed_tokens.weight"] = E[orig_ids]
    out["projected_embeddings"] = Pe
    bos = args.bos_id if args.bos_id is not None else (cls_bos if cls_bos is not None else BOS)
    A["orig_ids"] = orig_ids

    T.drop("encoder.version", "a version buffer")
    T.drop("version", "a version buffer")
    T.leftovers()
    A["dropped"] = T.dropped

    cfg = {
        "format": "luna", "format_version": 1, "task": "classification",
        "d": d, "H": H, "Hp": H, "l": l, "layers": nl, "ffn": ffn, "activation": act,
        "tie_kv": tied, "normalize_before": prenorm, "positions": pos,
        "max_positions": max_pos, "embed_scale": None, "dynamic_projection": True,
        "layernorm_embedding": lnemb, "vocab_size": len(orig_ids), "byte_offset": BYTE_OFFSET,
        "pad_id": PAD, "bos_id": bos, "eos_id": EOS, "append_eos": not args.no_append_eos,
        "input_transform": args.input_transform, "pooling": pooling,
        "classifier_layers": len(head),
    }
    if head:
        cfg["classifier_dim"] = cdim
        cfg["classifier_activation"] = cact
    cfg["labels"] = label_names(ncls, args)
    A.update(H=H, d=d, l=l, scale=math.sqrt(d) if pos == "sinusoidal" else None, act=act,
             cact=cact, pooling=pooling, lnemb=lnemb, prenorm=prenorm)
    return cfg, out, A


# ---- the decoder-only LM ---------------------------------------------------------------------


def convert_lm(sd, o, args, notes):
    T = Tensors(sd)
    P = "decoder."
    out, A = {}, {"kind": "causal-lm", "prefix": P}
    if any(".encoder_attn." in k or ".encoder_atten" in k for k in T.rest):
        fail("the decoder layers have encoder attention (encoder_attn): this is the seq2seq "
             "`luna` translation model; the model format's causal-lm is decoder-only")
    for opt in ("adaptive_softmax_cutoff", "adaptive_input", "character_embeddings",
                "tie_adaptive_weights"):
        v = o.get(opt)
        if v not in (None, False, ""):
            fail(f"{o.source}.{opt} is {v!r}: adaptive or character embeddings and the adaptive "
                 "softmax cannot be expressed in the model format")
    E = T.take(P + "embed_tokens.weight")
    rows, d = E.shape
    o.check("decoder_embed_dim", d, "embed_tokens.weight")
    for opt in ("decoder_input_dim", "decoder_output_dim"):
        v = o.int(opt)
        if v is not None and v != d:
            fail(f"{o.source}.{opt} is {v}, not decoder_embed_dim {d}: the project_in_dim / "
                 "project_out_dim Linear layers cannot be expressed")
    H = o.int("decoder_attention_heads", required=True)
    if d % H:
        fail(f"{o.source}.decoder_attention_heads {H} does not divide d = {d}")
    Pe = T.take(P + "projected_embeddings", "P of a decoder-only Luna LM")
    l = Pe.shape[0]
    for opt in ("projection_length", "decoder_projection_length"):
        o.check(opt, l, "projected_embeddings")

    pos = positions_kind(T, P)
    if o.get("no_token_positional_embeddings", False) and pos != "none":
        fail(f"{o.source}.no_token_positional_embeddings is set but {P}embed_positions exists")
    if o.has("decoder_learned_pos") and pos != "none":
        o.check("decoder_learned_pos", pos == "learned", "embed_positions")
    if pos == "none" and o.has("no_token_positional_embeddings") \
            and not o.get("no_token_positional_embeddings"):
        fail(f"missing tensor {P}embed_positions.weight or {P}embed_positions._float_tensor "
             f"({o.source}.no_token_positional_embeddings is false)")
    max_pos = o.int("max_target_positions") or o.int("tokens_per_sample") or 0
    if pos == "learned":
        W = T.take(P + "embed_positions.weight")
        learned_max = W.shape[0] - PAD - 1
        if max_pos and max_pos != learned_max:
            fail(f"{o.source}.max_target_positions is {max_pos} but embed_positions.weight has "
                 f"{W.shape[0]} = max_positions + padding_idx + 1 rows for {learned_max}")
        max_pos = learned_max
        out["embed_positions.weight"] = W
    elif pos == "sinusoidal":
        T.drop(P + "embed_positions._float_tensor", "a placeholder buffer")
        drop_sinusoid(T, P + "embed_positions.weights", 0, d, PAD, "X's cached table")
        if T.has(P + "projected_positions"):
            fail(f"tensor {P}projected_positions: the decoder-only P has no positions")
        if d < 4:
            fail("sinusoidal positions need d >= 4")
    A["positions"] = pos

    lnemb = T.has(P + "layernorm_embedding.weight")
    o.check("layernorm_embedding", lnemb, "layernorm_embedding.weight")
    prenorm = T.has(P + "layer_norm.weight")
    o.check("decoder_normalize_before", prenorm, "layer_norm.weight")
    if lnemb and prenorm:
        fail("layernorm_embedding with decoder_normalize_before cannot be expressed")
    if lnemb:
        out["emb_layer_norm.weight"] = T.take(P + "layernorm_embedding.weight")
        out["emb_layer_norm.bias"] = T.take(P + "layernorm_embedding.bias")
    if prenorm:
        out["layer_norm.weight"] = T.take(P + "layer_norm.weight")
        out["layer_norm.bias"] = T.take(P + "layer_norm.bias")
        for leaf in ("weight", "bias"):
            T.drop(f"{P}proj_layer_norm.{leaf}", "normalizes the final P, which a decoder-only "
                   "model never reads")

    nl = layer_indices(T, P)
    o.check("decoder_layers", nl, "the layers.N tensors")
    has_pc = T.has(f"{P}layers.0.self_attn.pc_proj.weight")
    tied = T.has(f"{P}layers.0.self_attn.c_proj.weight")
    if args.swap_pc_c and not (has_pc and tied):
        fail("--swap-pc-c needs both pc_proj and c_proj in the causal attention")
    if has_pc and not args.swap_pc_c and o.has("untie_luna_kv"):
        o.check("untie_luna_kv", not tied, "the causal attention's c_proj / k_proj, v_proj")
    phi = args.causal_phi
    if phi is None:
        if has_pc and not args.swap_pc_c:
            phi = "softplus_ln2"
            notes.append("causal_phi softplus_ln2 (fairseq-apollo 3e186df, 2021-08-09, and later); "
                         "a checkpoint from 2021-07-06 .. 2021-08-09 used elu+1: pass "
                         "--causal-phi elu_plus_1")
        else:
            phi = "elu_plus_1"
            notes.append("causal_phi elu_plus_1 (the causal attention of 2021-03 .. 2021-08)")
    projs = ["pq_proj", "q_proj"] + (["pc_proj"] if has_pc else []) + \
        (["c_proj"] if tied else ["k_proj", "v_proj"]) + ["out_proj"]
    ffn = None
    for i in range(nl):
        src = dst = f"layers.{i}."
        for proj in projs:
            name = proj
            if args.swap_pc_c and proj in ("pc_proj", "c_proj"):
                name = "c_proj" if proj == "pc_proj" else "pc_proj"
            for leaf in ("weight", "bias"):
                out[f"{dst}self_attn.{proj}.{leaf}"] = T.take(f"{P}{src}self_attn.{name}.{leaf}")
        for m in ("self_attn_layer_norm", "fc1", "fc2", "final_layer_norm"):
            for leaf in ("weight", "bias"):
                out[f"{dst}{m}.{leaf}"] = T.take(f"{P}{src}{m}.{leaf}")
        ffn = out[f"{dst}fc1.weight"].shape[0]
    o.check("decoder_ffn_embed_dim", ffn, "fc1.weight")
    act = map_activation(o.get("activation_fn", "relu"), f"{o.source}.activation_fn",
                         ("relu", "gelu"))

    # the output projection
    outw = None
    for name in (P + "output_projection.weight", P + "embed_out"):
        if T.has(name):
            if outw is not None:
                fail(f"both {P}output_projection.weight and {P}embed_out are present")
            outw = (name, T.take(name))
    share = o.get("share_decoder_input_output_embed")
    if share is None:
        share = outw is None or (outw[1].shape == E.shape and torch.equal(outw[1], E))
    if share:
        if outw is not None:
            if outw[1].shape != E.shape or not torch.equal(outw[1], E):
                fail(f"{o.source}.share_decoder_input_output_embed is set but {outw[0]} differs "
                     "from embed_tokens.weight")
            T.dropped.append(f"{outw[0]} (the same tensor as embed_tokens.weight)")
    elif outw is None:
        fail(f"missing tensor {P}output_projection.weight (share_decoder_input_output_embed is "
             "false)")
    elif tuple(outw[1].shape) != tuple(E.shape):
        fail(f"tensor {outw[0]} has shape {tuple(outw[1].shape)}, expected {tuple(E.shape)}")

    orig_ids, _ = vocab_mapping(rows, args.dict, "causal-lm", notes)
    out["embed_tokens.weight"] = E[orig_ids]
    if not share:
        out["output_projection.weight"] = outw[1][orig_ids]
    out["projected_embeddings"] = Pe
    A["orig_ids"] = orig_ids
    T.drop(P + "version", "a version buffer")
    T.drop("decoder.version", "a version buffer")
    T.leftovers()
    A["dropped"] = T.dropped

    scale = 1.0 if o.get("no_scale_embedding", False) else math.sqrt(d)
    default_scale = math.sqrt(d) if pos == "sinusoidal" else 1.0
    if args.bos_id is not None:
        bos = args.bos_id
    else:
        bos = BOS if o.get("add_bos_token", False) else EOS
    cfg = {
        "format": "luna", "format_version": 1, "task": "causal-lm",
        "d": d, "H": H, "l": l, "layers": nl, "ffn": ffn, "activation": act,
        "tie_kv": tied, "normalize_before": prenorm, "positions": pos, "max_positions": max_pos,
        "embed_scale": None if scale == default_scale else scale,
        "layernorm_embedding": lnemb, "vocab_size": len(orig_ids), "byte_offset": BYTE_OFFSET,
        "pad_id": PAD, "bos_id": bos, "eos_id": EOS,
        "causal_phi": phi, "causal_pc_proj": has_pc, "tie_embeddings": bool(share),
    }
    A.update(H=H, d=d, l=l, layers=nl, scale=scale, act=act, lnemb=lnemb, prenorm=prenorm,
             tied=tied,
             has_pc=has_pc, swap=args.swap_pc_c, phi=phi, share=bool(share),
             out_name=None if share else outw[0])
    return cfg, out, A


# ---- the original model, computed from the fairseq names (for --verify) ----------------------


def _w(sd, name):
    return sd[name].detach().to(torch.float64)


def _lin(sd, x, name, bias=True):
    return F.linear(x, _w(sd, name + ".weight"), _w(sd, name + ".bias") if bias else None)


def _ln(sd, x, name):
    return F.layer_norm(x, (x.shape[-1],), _w(sd, name + ".weight"), _w(sd, name + ".bias"), 1e-5)


def _act(name):
    return {"relu": F.relu, "gelu": lambda v: F.gelu(v), "tanh": torch.tanh}[name]


def _heads(x, h):
    n, d = x.shape
    return x.view(n, h, d // h).transpose(0, 1)


def _merge(x):
    h, n, k = x.shape
    return x.transpose(0, 1).reshape(n, h * k)


def fairseq_classify(sd, A, tokens):
    """LRAModel.forward for one unpadded sequence (batch 1), in float64: LunaLRAEncoder,
    LunaSentenceEncoderLayer, LunarMultiheadAttention and the head, read from fairseq's names."""
    P, d, H, l = A["prefix"], A["d"], A["H"], A["l"]
    n = len(tokens)
    ids = torch.tensor(tokens)
    x = _w(sd, P + "embed_tokens.weight")[ids]
    lp = min(n, l)
    px = _w(sd, P + "projected_embeddings")[:lp]
    if A["scale"] is not None:
        x, px = x * A["scale"], px * A["scale"]
    if A["positions"] == "learned":  # make_positions: padding_idx + 1, + 2, ...
        x = x + _w(sd, P + "embed_positions.weight")[PAD + 1: PAD + 1 + n]
    elif A["positions"] == "sinusoidal":
        x = x + fs_sinusoid(PAD + 1 + n, d, PAD)[PAD + 1:]
        px = px + fs_sinusoid(lp, d)
    if A["lnemb"]:
        x, px = _ln(sd, x, P + "emb_layer_norm"), _ln(sd, px, P + "proj_emb_layer_norm")
    act = _act(A["act"])
    for s in A["src_layer"]:
        L = f"{P}layers.{s}."
        a = L + "self_attn."
        xr, pr = x, px
        if A["prenorm"]:
            x = _ln(sd, x, L + "self_attn_layer_norm")
            px = _ln(sd, px, L + "self_atten_proj_layer_norm")
        # pack: P attends over X (the pack projection was `c_proj` before 035a360)
        if A["tied"]:
            pack, unpack = ("c_proj", "pc_proj") if A["swap"] else ("pc_proj", "c_proj")
            k = v = _lin(sd, x, a + pack)
        else:
            k, v = _lin(sd, x, a + "pk_proj"), _lin(sd, x, a + "pv_proj")
        pq = _lin(sd, px, a + "pq_proj") * (d // H) ** -0.5
        pc = _merge(torch.softmax(_heads(pq, H) @ _heads(k, H).transpose(1, 2), -1) @ _heads(v, H))
        q = _lin(sd, x, a + "q_proj") * (d // H) ** -0.5
        if A["tied"]:
            ku = vu = _lin(sd, pc, a + unpack)
        else:
            ku, vu = _lin(sd, pc, a + "k_proj"), _lin(sd, pc, a + "v_proj")
        y = _lin(sd, _merge(torch.softmax(_heads(q, H) @ _heads(ku, H).transpose(1, 2), -1)
                            @ _heads(vu, H)), a + "out_proj")
        x, px = xr + y, pr + pc
        if not A["prenorm"]:
            x = _ln(sd, x, L + "self_attn_layer_norm")
            px = _ln(sd, px, L + "self_atten_proj_layer_norm")
        xr = x
        if A["prenorm"]:
            x = _ln(sd, x, L + "final_layer_norm")
        x = xr + _lin(sd, act(_lin(sd, x, L + "fc1")), L + "fc2")
        if not A["prenorm"]:
            x = _ln(sd, x, L + "final_layer_norm")
    if A["prenorm"]:
        x, px = _ln(sd, x, P + "layer_norm"), _ln(sd, px, P + "proj_layer_norm")
    rep = {"cls": lambda: x[0], "mean": lambda: x.mean(0), "p": lambda: px.mean(0)}[A["pooling"]]()
    cact = _act(A["cact"])
    for wn, _bn in A["head"]:
        rep = cact(_lin(sd, rep, wn[: -len(".weight")]))
    return F.linear(rep, _w(sd, "sentence_projection_layer.weight"))


def fairseq_lm(sd, A, tokens):
    """The decoder-only LM (LunaDecoder without encoder attention), step by step as fairseq's
    incremental_causal_attention computes it, in float64. Returns (n, rows) logits."""
    P, d, H = A["prefix"], A["d"], A["H"]
    k = d // H
    n = len(tokens)
    x = _w(sd, P + "embed_tokens.weight")[torch.tensor(tokens)] * A["scale"]
    if A["positions"] == "learned":
        x = x + _w(sd, P + "embed_positions.weight")[PAD + 1: PAD + 1 + n]
    elif A["positions"] == "sinusoidal":
        x = x + fs_sinusoid(PAD + 1 + n, d, PAD)[PAD + 1:]
    if A["lnemb"]:
        x = _ln(sd, x, P + "layernorm_embedding")
    p = _w(sd, P + "projected_embeddings") * A["scale"]
    ln2 = math.log(2.0)
    phi = {"softplus_ln2": lambda z: F.softplus(z, beta=ln2), "elu_plus_1": lambda z: F.elu(z) + 1,
           "softplus": F.softplus}[A["phi"]]
    act = _act(A["act"])
    for i in range(A["layers"]):
        L = f"{P}layers.{i}."
        a = L + "self_attn."
        xr = x
        if A["prenorm"]:
            x = _ln(sd, x, L + "self_attn_layer_norm")
        pc_name, c_name = ("c_proj", "pc_proj") if A["swap"] else ("pc_proj", "c_proj")
        pq = _heads(_lin(sd, p, a + "pq_proj") * k ** -0.5, H)  # (H, l, k)
        c = _heads(_lin(sd, x, a + pc_name) if A["has_pc"] else x, H)
        q = _heads(_lin(sd, x, a + "q_proj") * k ** -0.5, H)
        if A["tied"]:
            key = val = _heads(_lin(sd, x, a + c_name), H)
        else:
            key, val = _heads(_lin(sd, x, a + "k_proj"), H), _heads(_lin(sd, x, a + "v_proj"), H)
        lp = pq.shape[1]
        kacc = torch.zeros(H, k, lp, dtype=torch.float64)
        vacc = torch.zeros(H, lp, k, dtype=torch.float64)
        outs = []
        for t in range(n):
            w = phi(c[:, t: t + 1] @ pq.transpose(1, 2))  # (H, 1, l)
            kacc = kacc + key[:, t: t + 1].transpose(1, 2) @ w
            vacc = vacc + w.transpose(1, 2) @ val[:, t: t + 1]
            alpha = torch.softmax((q[:, t: t + 1] @ kacc) / (t + 1), -1)
            outs.append((alpha @ vacc) / (t + 1))  # (H, 1, k)
        y = _lin(sd, _merge(torch.cat(outs, 1)), a + "out_proj")
        x = xr + y
        if not A["prenorm"]:
            x = _ln(sd, x, L + "self_attn_layer_norm")
        xr = x
        if A["prenorm"]:
            x = _ln(sd, x, L + "final_layer_norm")
        x = xr + _lin(sd, act(_lin(sd, x, L + "fc1")), L + "fc2")
        if not A["prenorm"]:
            x = _ln(sd, x, L + "final_layer_norm")
    if A["prenorm"]:
        x = _ln(sd, x, P + "layer_norm")
    wout = _w(sd, P + "embed_tokens.weight") if A["share"] else _w(sd, A["out_name"])
    return x @ wout.t()


def verify(out_dir, sd, A, tolerance):
    """Compare luna_ref.load(out_dir) with the original model; returns the max relative error."""
    model = luna_ref.load(out_dir)
    c = model.cfg
    orig = A["orig_ids"]
    rng = np.random.default_rng(1)
    longest = c["max_positions"] - 2 if c["max_positions"] else 10**6
    samples = [b"", b"a", b"Luna: linear unified nested attention.",
               bytes(rng.integers(0, 256, 2 * c["l"] + 7).tolist())]
    samples = [s[: max(0, longest)] for s in samples]
    worst = 0.0
    for raw in samples:
        if A["kind"] == "classification":
            ours = model.forward(raw)["logits"]
            toks = luna_ref.to_tokens(c, raw)
            ref = fairseq_classify(sd, A, [orig[t] for t in toks])
        else:
            toks = [c["bos_id"]] + [c["byte_offset"] + b for b in raw]
            ours = model.forward(toks)["logits"]
            ref = fairseq_lm(sd, A, [orig[t] for t in toks])[:, orig]
        err = (torch.linalg.norm(ours - ref) / max(torch.linalg.norm(ref).item(), 1e-30)).item()
        worst = max(worst, err)
    print(f"{PROG}: verify: max relative error {worst:.3e} over {len(samples)} inputs "
          f"(tolerance {tolerance:g})")
    if not worst <= tolerance:
        fail(f"verification failed: relative error {worst:.3e} > {tolerance:g}")
    return worst


# ---- main ------------------------------------------------------------------------------------


def detect_kind(sd, o):
    enc = any(k.startswith("encoder.") for k in sd)
    dec = any(k.startswith("decoder.") for k in sd)
    arch = o.get("arch") or o.get("_name")
    if enc and dec:
        fail("the checkpoint has encoder.* and decoder.* tensors: an encoder-decoder (seq2seq) "
             "model, which the model format cannot express")
    if isinstance(arch, str):
        if "bert" in arch:
            fail(f"{o.source}.arch {arch!r}: luna_bert (masked-LM pretraining with a RoBERTa "
                 "head) is not one of the convertible models (lra, a Luna LM)")
        if arch in SEQ2SEQ_ARCHS:
            fail(f"{o.source}.arch {arch!r} is the seq2seq translation model; the model format's "
                 "causal-lm is decoder-only")
    if enc:
        if isinstance(arch, str) and LRA_ARCH_HINT not in arch:
            fail(f"{o.source}.arch {arch!r}: encoder checkpoints convert only from the LRA model "
                 "(`lra`, e.g. luna_lra_imdb)")
        return "classification"
    if dec:
        return "causal-lm"
    fail("no encoder.* or decoder.* tensors: not a fairseq Luna checkpoint")


def build_parser():
    ap = argparse.ArgumentParser(
        prog=PROG, description="Convert a fairseq-apollo Luna checkpoint (LRA classifier or "
        "decoder-only LM) into a lunaserve model directory.",
        epilog="See the module docstring (tools/convert_fairseq.py) for the option mapping.")
    ap.add_argument("checkpoint")
    ap.add_argument("out_dir")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--labels", help="comma-separated class names, in logit order")
    g.add_argument("--label-dict", help="the label dictionary (label-bin/dict.txt)")
    ap.add_argument("--dict", help="the input dictionary (src-bin/dict.txt) of single-byte symbols")
    ap.add_argument("--swap-pc-c", action="store_true",
                    help="the checkpoint predates fairseq-apollo 035a360: exchange pc_proj/c_proj")
    ap.add_argument("--causal-phi", choices=("softplus_ln2", "elu_plus_1", "softplus"),
                    help="the causal attention's feature map (default: from the tensors)")
    ap.add_argument("--no-first-token-drop", action="store_true",
                    help="use_p / mp checkpoint trained at fairseq-apollo c5e204f or later")
    ap.add_argument("--bos-id", type=int, help="override bos_id")
    ap.add_argument("--no-append-eos", action="store_true",
                    help="classification: do not end sequences with </s>")
    ap.add_argument("--input-transform", default="none", choices=("none", "email_subject_body"))
    ap.add_argument("--dtype", default="F32", choices=("F32", "F16", "BF16"))
    ap.add_argument("--verify", action="store_true",
                    help="compare the written model with the original checkpoint's forward pass")
    ap.add_argument("--tolerance", type=float, default=1e-4)
    return ap


def convert(args):
    notes = []
    ckpt = load_checkpoint(args.checkpoint)
    sd = state_dict_of(ckpt)
    a, source = read_options(ckpt)
    o = Opts(a, source)
    kind = detect_kind(sd, o)
    if kind == "causal-lm" and (args.labels or args.label_dict or args.no_append_eos
                                or args.input_transform != "none"):
        fail("--labels, --label-dict, --no-append-eos and --input-transform apply to "
             "classifiers only")
    if kind == "classification" and args.causal_phi:
        fail("--causal-phi applies to causal LMs only")
    conv = convert_classifier if kind == "classification" else convert_lm
    cfg, tensors, A = conv(sd, o, args, notes)
    try:
        c = luna_ref.resolve_config(cfg)
    except ValueError as e:
        fail(f"the converted config is invalid: {e}")
    model = luna_ref.model_class(c)(cfg).double()
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    for name in sorted(set(want) | set(got)):
        if name not in got:
            fail(f"internal: no tensor for {name}")
        if name not in want:
            fail(f"internal: tensor {name} is not in the model format")
        if want[name] != got[name]:
            fail(f"tensor for {name} has shape {got[name]}, expected {want[name]} from the "
                 "options")
    model.load_state_dict({k: v.detach().to(torch.float64) for k, v in tensors.items()})
    model.raw_config = cfg
    os.makedirs(args.out_dir, exist_ok=True)
    luna_ref.save(model, args.out_dir, dtype=args.dtype)
    if STUBBED:
        notes.append("loaded without their modules (stubs): " + ", ".join(sorted(STUBBED)[:6]))
    for n in notes:
        print(f"{PROG}: note: {n}", file=sys.stderr)
    for n in A["dropped"]:
        print(f"{PROG}: dropped {n}", file=sys.stderr)
    print(f"{PROG}: wrote {args.out_dir} ({kind}: d {c['d']}, H {c['H']}, l {c['l']}, "
          f"{c['layers']} layers, {len(tensors)} tensors, {args.dtype})")
    if args.verify:
        verify(args.out_dir, sd, A, args.tolerance)
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    STUBBED.clear()
    try:
        return convert(args)
    except ConvertError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
