#!/usr/bin/python3
"""report_gen.py - turns bench/gen.sh's JSON lines (bin/luna bench-gen) into the generation
benchmark report: a CSV, a Markdown table with issue 3's targets checked, and a gnuplot PNG.

The KV cache's bytes at contexts its quadratic prefill cannot reach in the run are computed
from its layout, layers x t x d floats (tied K/V), and marked "formula"; the rows it did reach
check that formula against the measured size. The files are named after the CPU and the BLAS
kernel the run used (bench/blasinfo.py): OUT/generate-<cpu>-<core>.{csv,md,png}, and the table's
header says both."""
import argparse
import csv
import json
import os
import subprocess

import blasinfo


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.startswith("{")]


def human(n):
    return "%dM" % (n >> 20) if n >= 1 << 20 and n % (1 << 20) == 0 else "%dk" % (n >> 10) if n % 1024 == 0 else str(n)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sgemm", required=True)
    ap.add_argument("--results", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--machine", default="", help="how the run used the cores")
    ap.add_argument("--name", default=None, help="the files' stem (default: <cpu slug>-<core>)")
    ap.add_argument("--date", default=None)
    a = ap.parse_args()
    sg = load(a.sgemm)[0]
    sgemm = sg["gflops"]
    m = blasinfo.machine(sg.get("blas"))
    rows = load(a.results)
    os.makedirs(a.out, exist_ok=True)
    stem = os.path.join(a.out, "generate-" + blasinfo.run_name(m, a.name))
    luna = {r["n"]: r for r in rows if r["attention"] == "luna"}
    kv = {r["n"]: r for r in rows if r["attention"] == "softmax"}
    any_row = rows[0]
    d, layers = any_row["d"], any_row["layers"]

    def kv_bytes(n):
        return layers * n * d * 4

    with open(stem + ".csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["attention", "n", "prefill_s", "prefill_tok_s", "gflops", "step_ms", "state_bytes", "rss_mb",
                    "blas_core"])
        for r in rows:
            w.writerow([r["attention"], r["n"], r["prefill_s"], r["prefill_tok_s"], r["gflops"],
                        r["step_ms"], r["state_bytes"], r["rss_mb"], r.get("blas_core", "")])

    ns = sorted(set(luna) | set(kv))
    lines = ["# Generation benchmark: %s, %s kernels" % (m["cpu"], m["core"]), ""] + blasinfo.header(m) + [
             "",
             "Run%s: %s. sgemm (1024³) in the same run, same kernel: %.1f GFLOP/s. Model: random weights, "
             "d %d, %d layers, 4 heads, FFN 1024, l %d, pre-norm, tied K/V. Produced by "
             "`sh bench/gen.sh`; method in docs/benchmarks.md." % (
                 " of " + a.date if a.date else "", a.machine, sgemm, d, layers, any_row["l"])] + \
        blasinfo.check_cores(m, rows, "benchmark") + [
             "",
             "| context | Luna ms/token (÷ at ref, alternated) | KV-cache ms/token (÷ at ref) | Luna state | KV-cache state | Luna prefill tok/s | Luna prefill GFLOP/s (% of the sgemm rate sampled along it) | Luna peak RSS MB | KV peak RSS MB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for n in ns:
        L, K = luna.get(n), kv.get(n)
        kv_state = "%.1f MB" % (K["state_bytes"] / 2**20) if K else "%.1f MB (formula)" % (kv_bytes(n) / 2**20)
        lines.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            human(n),
            "%.4f (%.3f)" % (L["step_ms"], L["step_ms"] / L["ref_step_ms"]) if L else "–",
            "%.4f (%.2f)" % (K["step_ms"], K["step_ms"] / K["ref_step_ms"]) if K else "not run",
            "%.1f KB" % (L["state_bytes"] / 1024) if L else "–",
            kv_state,
            "%.0f" % L["prefill_tok_s"] if L else "–",
            "%.1f (%.0f%% of %.0f)" % (L["gflops"], 100 * L["gflops"] / L["sgemm_gflops"], L["sgemm_gflops"]) if L else "–",
            "%.1f" % L["rss_mb"] if L else "–",
            "%.1f" % K["rss_mb"] if K else "–"))
    lines.append("")
    first, last = min(luna), max(luna)
    # each context's steps alternate with steps at ref_n in the same process: their ratio is
    # the fair comparison on a shared machine; the ratio across processes is shown beside it
    ratio = luna[last]["step_ms"] / luna[last]["ref_step_ms"]
    across = luna[last]["step_ms"] / luna[first]["step_ms"]
    # each row's prefill against the sgemm rate its own child sampled before each piece of it
    share = min(r["gflops"] / r["sgemm_gflops"] for r in luna.values())
    states = {r["state_bytes"] for r in luna.values()}
    kv_ok = all(abs(r["state_bytes"] - kv_bytes(n)) <= 0.5 * kv_bytes(n) + 65536 for n, r in kv.items())
    lines += ["## Targets (issue 3)", "",
              "| target | measured | met |", "|---|---|---|",
              "| time per token at %s ÷ at %s ≤ 1.1 (steps alternated in one process) | %.3f (across processes: %.3f) | %s |" % (
                  human(last), human(luna[last]["ref_n"]), ratio, across, "yes" if ratio <= 1.1 else "**no**"),
              "| Luna state constant over the contexts | %s | %s |" % (", ".join("%d B" % s for s in sorted(states)), "yes" if len(states) == 1 else "**no**"),
              "| prefill GFLOP/s ≥ 40%% of sgemm, each measured side by side (worst context) | %.1f%% | %s |" % (100 * share, "yes" if share >= 0.4 else "**no**"),
              "| decode tokens/s, d 256, 4 layers (no target) | %.0f at %s, %.0f at %s | – |" % (
                  1e3 / luna[first]["step_ms"], human(first), 1e3 / luna[last]["step_ms"], human(last)),
              "| KV cache measured within its formula (layers·t·d·4 B, rounded up to 1.5× growth) | %s | %s |" % (
                  ", ".join("%s: %.1f MB" % (human(n), r["state_bytes"] / 2**20) for n, r in sorted(kv.items())), "yes" if kv_ok else "**no**"),
              ""]
    if kv:
        top = max(kv)
        lines.append("At %s the KV cache takes %.1f× the time per token of Luna and %.0f× its state; "
                     "at %s its state would be %.0f× Luna's." % (
                         human(top), kv[top]["step_ms"] / luna[top]["step_ms"] if top in luna else float("nan"),
                         kv[top]["state_bytes"] / luna[first]["state_bytes"], human(last),
                         kv_bytes(last) / luna[first]["state_bytes"]))
        lines.append("")
    with open(stem + ".md", "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))

    dat = stem + ".dat"
    with open(dat, "w") as f:
        for kind, table in (("luna", luna), ("kv", kv)):
            f.write("# %s\n" % kind)
            for n in sorted(table):
                f.write("%d %g %g\n" % (n, table[n]["step_ms"], table[n]["state_bytes"]))
            f.write("\n\n")
        f.write("# kv formula\n")
        for n in ns:
            f.write("%d 0 %g\n" % (n, kv_bytes(n)))
    png = stem + ".png"
    gp = """set terminal pngcairo size 1200,480 font ",10"
set output "%s"
set multiplot layout 1,2 title "%s, %s kernels"
set logscale x 2
set xtics ("1k" 1024, "4k" 4096, "16k" 16384, "64k" 65536, "256k" 262144, "1M" 1048576)
set xlabel "context (tokens)"
set grid
set key top left
set ylabel "ms per generated token"
plot "%s" index 0 using 1:2 with linespoints lw 2 title "Luna (fixed state)", \\
     "%s" index 1 using 1:2 with linespoints lw 2 title "softmax + KV cache"
set logscale y 10
set format y "%%g"
set ylabel "state (MiB)"
plot "%s" index 0 using 1:($3/1048576) with linespoints lw 2 title "Luna state", \\
     "%s" index 1 using 1:($3/1048576) with points pt 7 ps 1.5 title "KV cache (measured)", \\
     "%s" index 2 using 1:($3/1048576) with lines dt 2 title "KV cache (layers·t·d·4 B)"
unset multiplot
""" % (png, m["cpu"], m["core"], dat, dat, dat, dat, dat)
    try:
        subprocess.run(["gnuplot"], input=gp.encode(), check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        print("report: gnuplot failed (%s); no PNG written" % e)
    os.remove(dat)


if __name__ == "__main__":
    main()
