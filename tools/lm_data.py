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

import os
import subprocess
import sys

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
DATA = os.path.join(ROOT, "data", "austen")
SPLITS = ("train", "valid", "test")

# docs/model-format.md defaults (vocab 260)
BOS_ID, PAD_ID, EOS_ID, BYTE_OFFSET = 0, 1, 2, 4


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

    def __init__(self, data, ctx, batch, seed, bos_id=BOS_ID, byte_offset=BYTE_OFFSET):
        if len(data) <= ctx:
            raise ValueError(f"the text ({len(data)} bytes) is shorter than a window ({ctx})")
        self.data = data.astype(np.int64) + byte_offset
        self.ctx, self.batch, self.bos_id = ctx, batch, bos_id
        self.rng = np.random.default_rng(seed)
        self.span = np.arange(ctx, dtype=np.int64)

    def next(self):
        starts = self.rng.integers(0, len(self.data) - self.ctx + 1, size=self.batch)
        out = np.empty((self.batch, self.ctx + 1), np.int64)
        out[:, 0] = self.bos_id
        out[:, 1:] = self.data[starts[:, None] + self.span[None, :]]
        return out
