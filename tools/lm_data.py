"""lm_data.py - the Jane Austen byte-LM data for tools/train_lm.py (numpy only).

The splits are docs/data.md's (tools/data/austen.py writes them): data/austen/train.txt (five
novels minus the last ceil(5%) chapters each), valid.txt (those chapters), test.txt (the whole
of Persuasion). Text is handled as raw bytes. A sequence of the model is bos_id, then each byte b
as the token byte_offset + b (docs/model-format.md, "Causal language models").

    import lm_data
    train = lm_data.read_split("train")                   # np.uint8 array of the file's bytes
    toks = lm_data.to_tokens(train[:100])                 # np.int64: [bos, 4 + b0, 4 + b1, ...]
    sampler = lm_data.WindowSampler(train, ctx=1024, batch=16, seed=1)
    batch = sampler.next()                                # (16, 1025) int64: bos + 1024 bytes
"""

import json
import os
import re
import subprocess
import sys

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
DATA = os.path.join(ROOT, "data", "austen")
SPLITS = ("train", "valid", "test")

# docs/model-format.md defaults (vocab 260)
BOS_ID, PAD_ID, EOS_ID, BYTE_OFFSET = 0, 1, 2, 4

sys.path.insert(0, os.path.join(ROOT, "tools", "data"))
from austen import CHAPTER_RE as HEADING_LINE_RE  # noqa: E402  (the line that starts a chapter)

# tools/data/austen.py's chapter heading line, matched against every line of a novel's bytes
CHAPTER_RE = re.compile(HEADING_LINE_RE.pattern.encode("ascii"), re.M)


def ensure_data():
    """Runs tools/data/austen.py if any split file is missing (it is idempotent and cheap)."""
    if all(os.path.exists(os.path.join(DATA, s + ".txt")) for s in SPLITS):
        return
    script = os.path.join(ROOT, "tools", "data", "austen.py")
    print(f"lm_data: data/austen splits missing, running {script}", flush=True)
    subprocess.run([sys.executable, script], check=True)


def read_split(name):
    """The bytes of data/austen/<name>.txt as a read-only np.uint8 array."""
    ensure_data()
    with open(os.path.join(DATA, name + ".txt"), "rb") as f:
        return np.frombuffer(f.read(), np.uint8)


def to_tokens(b, bos_id=BOS_ID, byte_offset=BYTE_OFFSET):
    """bytes (np.uint8 array or bytes) -> np.int64 token ids: bos_id, then byte_offset + b."""
    b = np.frombuffer(bytes(b), np.uint8) if isinstance(b, (bytes, bytearray)) else b
    out = np.empty(len(b) + 1, np.int64)
    out[0] = bos_id
    out[1:] = b.astype(np.int64) + byte_offset
    return out


def windows(b, size, bos_id=BOS_ID, byte_offset=BYTE_OFFSET):
    """Consecutive, non-overlapping windows of `size` bytes covering all of b (the last one may
    be shorter), each as its own token sequence bos + bytes. Every byte of b is predicted once."""
    return [to_tokens(b[i : i + size], bos_id, byte_offset) for i in range(0, len(b), size)]


class WindowSampler:
    """Random training windows: each row is bos_id followed by `ctx` consecutive bytes taken at
    a uniformly random offset in the text, so a batch is (batch, ctx + 1) token ids. Seeded
    (numpy PCG64), so the sequence of batches is reproducible."""

    def __init__(self, data, ctx, batch, seed, bos_id=BOS_ID, byte_offset=BYTE_OFFSET,
                 renamer=None, rename=0.0):
        if len(data) <= ctx:
            raise ValueError(f"the text ({len(data)} bytes) is shorter than a window ({ctx})")
        self.raw = data
        self.data = data.astype(np.int64) + byte_offset
        self.ctx, self.batch, self.bos_id, self.byte_offset = ctx, batch, bos_id, byte_offset
        self.rng = np.random.default_rng(seed)
        self.span = np.arange(ctx, dtype=np.int64)
        self.renamer, self.rename = renamer, rename
        self.renamed = 0  # windows renamed so far

    def next(self):
        starts = self.rng.integers(0, len(self.data) - self.ctx + 1, size=self.batch)
        out = np.empty((self.batch, self.ctx + 1), np.int64)
        out[:, 0] = self.bos_id
        out[:, 1:] = self.data[starts[:, None] + self.span[None, :]]
        if self.renamer is not None and self.rename > 0:
            for r, s in enumerate(starts):
                if self.rng.random() < self.rename:
                    self._rename_row(out[r], s)
        return out

    def _rename_row(self, row, start):
        """Row = bos + ctx bytes from `start` with Renamer.apply() on them (and, since names
        change length, on up to ctx / 4 more bytes to fill the row); left as it is when the text
        ends before the renamed row is full."""
        text = self.raw[start : start + self.ctx + self.ctx // 4].tobytes().decode("latin-1")
        b = np.frombuffer(self.renamer.apply(text, self.rng).encode("latin-1"), np.uint8)
        if len(b) >= self.ctx:
            row[1:] = b[: self.ctx].astype(np.int64) + self.byte_offset
            self.renamed += 1


# ---- renamed training windows (train_lm.py --rename) --------------------------------------------
#
# A held-out novel brings its own people and places (Persuasion: Elliot, Wentworth, Kellynch),
# which no training novel spells. A model that has only ever seen Emma's or Darcy's names learns
# them by heart and is confidently wrong on new ones. So, in a chosen fraction of the training
# windows, every NOVEL-SPECIFIC name is replaced by a generated one, the same replacement for
# each occurrence within that window. The model then has to treat such names as it must treat a
# new novel's: spelled from general letter statistics and from their earlier use in the text.
#
# Novel-specific name: a capitalised word (A-Z then a-z, at least 3 letters) whose lower-case
# form never occurs as a word in the training text and that occurs in the training part of only
# one novel. Names shared by several novels (London, Bath, Mr, Anne, Charles) are kept: they are
# knowledge a new novel is likely to share. "Xs" where X is such a name (the Crawfords) becomes
# the replacement of X plus "s". Replacements come from a letter model of order 2 over the
# training text's capitalised word types, and are never a word of the training text.

NAME_RE = re.compile(r"\b[A-Z][a-z]{2,}\b")
WORD_RE = re.compile(r"\b[a-z]+\b")


def train_pieces():
    """[(novel, text)] of the training novels' parts whose concatenation is train.txt, rebuilt
    from data/austen/<novel>.txt and manifest.json (valid_from_line) as tools/data/austen.py
    cut them; the concatenation is checked against train.txt."""
    ensure_data()
    with open(os.path.join(DATA, "manifest.json")) as f:
        novels = json.load(f)["novels"]
    pieces = []
    for name in sorted(novels):
        if "valid_from_line" not in novels[name]:
            continue  # the test novel
        with open(os.path.join(DATA, name + ".txt"), encoding="latin-1") as f:
            lines = f.read().split("\n")
        pieces.append((name, "\n".join(lines[: novels[name]["valid_from_line"]]) + "\n"))
    if "".join(t for _, t in pieces).encode("latin-1") != read_split("train").tobytes():
        raise RuntimeError("lm_data: the novels' training parts do not make train.txt")
    return pieces


class Renamer:
    """Novel-specific names (see above) of `pieces` [(novel, text)] and a generator of
    replacements; apply() renames one window's text."""

    def __init__(self, pieces):
        words = set()
        where = {}
        for novel, text in pieces:
            words.update(WORD_RE.findall(text))
            for w in set(NAME_RE.findall(text)):
                where.setdefault(w, set()).add(novel)
        self.known = words | set(where)
        self.names = {w for w, n in where.items() if len(n) == 1 and w.lower() not in words}
        # order-2 letter model over the capitalised types: "^^" starts, "$" ends a name
        nxt = {}
        for w in sorted(where):
            s = "^^" + w + "$"
            for i in range(2, len(s)):
                nxt.setdefault(s[i - 2 : i], []).append(s[i])
        self.model = {h: (sorted(set(c)), np.array([c.count(x) for x in sorted(set(c))], float))
                      for h, c in nxt.items()}
        for h, (cs, n) in self.model.items():
            n /= n.sum()

    def generate(self, rng, taken=()):
        """A new name of 3 to 12 letters that is no word of the training text (nor in taken)."""
        while True:
            h, out = "^^", ""
            while len(out) <= 12:
                cs, p = self.model[h]
                c = cs[rng.choice(len(cs), p=p)]
                if c == "$":
                    break
                out += c
                h = h[1] + c
            if 3 <= len(out) <= 12 and out not in self.known and out not in taken:
                return out

    def apply(self, text, rng):
        """text with each novel-specific name replaced, consistently within this call."""
        mapping = {}

        def sub(m):
            w = m.group(0)
            if w.endswith("s") and w[:-1] in self.names:
                base, suffix = w[:-1], "s"
            elif w in self.names:
                base, suffix = w, ""
            else:
                return w
            if base not in mapping:
                mapping[base] = self.generate(rng, set(mapping.values()))
            return mapping[base] + suffix

        return NAME_RE.sub(sub, text)


def chapter_spans(b):
    """[(start, end)] byte offsets of the chapters of one novel's bytes b, covering all of b:
    a chapter runs from its heading line to the next heading, and the text before the first
    heading (the title page) goes with the first chapter, as in tools/data/austen.py. Used to
    compare two models chapter by chapter on the test novel (tools/train_lm.py, lm_ngram.py)."""
    starts = [m.start() for m in CHAPTER_RE.finditer(bytes(b))] or [0]
    starts[0] = 0
    return list(zip(starts, starts[1:] + [len(b)]))


def renamed_valid(seed=0):
    """valid.txt with every novel-specific name of the training novels replaced, one mapping for
    the whole file (Renamer.apply with numpy.random.default_rng(seed)), as np.uint8: a stand-in,
    free of the test set, for a new novel whose names no training novel spells. Model selection
    scores it as one stream beside the plain validation chapters."""
    text = read_split("valid").tobytes().decode("latin-1")
    out = Renamer(train_pieces()).apply(text, np.random.default_rng(seed))
    return np.frombuffer(out.encode("latin-1"), np.uint8)
