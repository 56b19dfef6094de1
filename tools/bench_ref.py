#!/usr/bin/python3
"""bench_ref.py - time the PyTorch reference (tools/luna_ref.py) on a model, for bench/run.sh.

For each length it starts a fresh Python process that loads the model in float32, runs one
warm-up and then `--repeat` forward passes on random bytes under torch.inference_mode(), and
reports the fastest, plus the process's peak RSS (getrusage). The output lines have the same
JSON shape as `luna bench --json`, with "attention": "pytorch-ref", so that bench/report.py
puts them in the same table.

    bench_ref.py --model DIR --lengths 4096,16384 [--threads 2] [--repeat 2]
"""
import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, os, resource, sys, time
sys.path.insert(0, {tools!r})
import torch
torch.set_num_threads({threads})
import luna_ref
model = luna_ref.load({model!r}, dtype=torch.float32)
model.eval()
cfg = luna_ref.resolve_config(json.load(open(os.path.join({model!r}, "config.json"))))
special = 1 + int(cfg["append_eos"])
raw = bytes((32 + (i * 2654435761 >> 7) % 95) for i in range(max({n} - special, 0)))
best = 1e30
with torch.inference_mode():
    model.forward(raw)
    for _ in range({repeat}):
        t0 = time.perf_counter()
        model.forward(raw)
        best = min(best, time.perf_counter() - t0)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
row = {{"attention": "pytorch-ref", "l": cfg["l"], "n": {n}, "ms": best * 1e3, "rss_mb": rss,
       "threads": {threads}}}
try:  # the OpenBLAS kernel torch ran on, when it uses the system's OpenBLAS (Debian's does)
    import ctypes
    lib = ctypes.CDLL("libopenblas.so.0", mode=os.RTLD_NOLOAD | os.RTLD_NOW)
    lib.openblas_get_corename.restype = ctypes.c_char_p
    row["blas_core"] = lib.openblas_get_corename().decode()
except (OSError, AttributeError):
    pass
print(json.dumps(row))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--lengths", required=True)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args()
    tools = os.path.dirname(os.path.abspath(__file__))
    for n in (int(x) for x in a.lengths.split(",")):
        code = CHILD.format(tools=tools, model=os.path.abspath(a.model), n=n,
                            threads=a.threads, repeat=a.repeat)
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if r.returncode:
            sys.stderr.write("bench_ref: n=%d failed:\n%s" % (n, r.stderr))
            sys.exit(1)
        print(r.stdout.strip(), flush=True)


if __name__ == "__main__":
    main()
