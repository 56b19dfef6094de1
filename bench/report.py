#!/usr/bin/python3
"""bench/report.py - turn the JSON lines of `luna bench` and tools/bench_ref.py into the encoder
benchmark report: a CSV, a Markdown table with the issue's targets checked, and a gnuplot PNG.

Every ratio compares rows measured in the same run of bench/run.sh. The files are named after
the CPU and the BLAS kernel the run used (bench/blasinfo.py): OUT/encoder-<cpu>-<core>.{csv,md,png},
and the table's header says both. Standard library only."""
import argparse
import json
import os
import subprocess

import blasinfo


def load(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                r = json.loads(line)
                if "skipped" not in r:
                    rows.append(r)
    return rows


def find(rows, kind, l, n):
    for r in rows:
        if r["attention"] == kind and r["n"] == n and (l is None or r["l"] == l):
            return r
    return None


def slope(points):
    """least-squares slope of y on x"""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sgemm", required=True)
    ap.add_argument("--results", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--machine", default="", help="how the contenders used the cores")
    ap.add_argument("--name", default=None, help="the files' stem (default: <cpu slug>-<core>)")
    ap.add_argument("--date", default=None)
    a = ap.parse_args()
    sg = load(a.sgemm)[0]
    sgemm = sg["gflops"]
    m = blasinfo.machine(sg.get("blas"))
    rows = load(a.results)
    os.makedirs(a.out, exist_ok=True)
    stem = os.path.join(a.out, "encoder-" + blasinfo.run_name(m, a.name))

    with open(stem + ".csv", "w") as f:
        f.write("attention,l,n,ms,rss_mb,base_mb,pred_mb,gflops,blas_core\n")
        for r in rows:
            f.write("%s,%s,%d,%.3f,%.2f,%.2f,%.2f,%.2f,%s\n" % (
                r["attention"], r.get("l", ""), r["n"], r["ms"], r["rss_mb"],
                r.get("base_mb", 0), r.get("pred_mb", 0), r.get("gflops", 0), r.get("blas_core", "")))

    ls = sorted({r["l"] for r in rows if r["attention"] == "luna"})
    ns = sorted({r["n"] for r in rows})
    kinds = [("luna", l) for l in ls] + [("softmax", None), ("softmax-stream", None), ("pytorch-ref", None)]
    md = ["# Encoder benchmark: %s, %s kernels" % (m["cpu"], m["core"]), ""] + blasinfo.header(m) + [
          "", "Run%s: %s. sgemm (1024^3, same run, same kernel): %.1f GFLOP/s." % (
              " of " + a.date if a.date else "", a.machine, sgemm)] + \
        blasinfo.check_cores(m, rows, "benchmark") + ["",
          "Model: LRA byte-level text shape (d 256, 4 heads, 4 layers, FFN 1024, GELU, untied K/V),"
          " random weights. One forward pass per cell (fastest of the repeats); RSS is the peak"
          " resident set of a fresh process. Reproduce with `make bench` (see docs/benchmarks.md).",
          "", "## Latency (ms)", "",
          "| n | " + " | ".join(k if l is None else "%s-%d" % (k, l) for k, l in kinds) + " |",
          "|---" * (len(kinds) + 1) + "|"]
    for n in ns:
        cells = []
        for k, l in kinds:
            r = find(rows, k, l, n)
            cells.append("%.1f" % r["ms"] if r else "")
        md.append("| %d | %s |" % (n, " | ".join(cells)))
    md += ["", "## Peak RSS (MB)", "",
           "| n | " + " | ".join(k if l is None else "%s-%d" % (k, l) for k, l in kinds) + " |",
           "|---" * (len(kinds) + 1) + "|"]
    for n in ns:
        cells = []
        for k, l in kinds:
            r = find(rows, k, l, n)
            cells.append("%.0f" % r["rss_mb"] if r else "")
        md.append("| %d | %s |" % (n, " | ".join(cells)))

    # the targets
    md += ["", "## Targets", "", "| target | measured | met |", "|---|---|---|"]
    l0 = ls[0] if ls else None

    def target(name, value, ok):
        md.append("| %s | %s | %s |" % (name, value, "yes" if ok else "**no**"))

    lu, sm = find(rows, "luna", l0, 4096), find(rows, "softmax", None, 4096)
    if lu and sm:
        target("n=4096: Luna-%d RSS <= 10%% of softmax" % l0, "%.1f%%" % (100 * lu["rss_mb"] / sm["rss_mb"]),
               lu["rss_mb"] <= 0.1 * sm["rss_mb"])
        target("n=4096: Luna-%d >= 5.5x faster than softmax" % l0, "%.2fx" % (sm["ms"] / lu["ms"]),
               sm["ms"] / lu["ms"] >= 5.5)
    big = max((n for n in ns if find(rows, "softmax-stream", None, n)), default=None)
    if big:
        lu, ss = find(rows, "luna", l0, big), find(rows, "softmax-stream", None, big)
        if lu:
            target("n=%d: Luna-%d >= 50x faster than softmax-stream" % (big, l0), "%.1fx" % (ss["ms"] / lu["ms"]),
                   ss["ms"] / lu["ms"] >= 50 if big >= 65536 else False)
    pts = [(r["n"], r["rss_mb"]) for r in rows if r["attention"] == "luna" and r["l"] == l0 and r["n"] >= 4096]
    pred = [(r["n"], r["pred_mb"]) for r in rows if r["attention"] == "luna" and r["l"] == l0 and r["n"] >= 4096]
    if len(pts) >= 2:
        s, p = slope(pts), slope(pred)
        target("RSS slope within 10% of luna_workspace_bytes", "%.1f vs %.1f bytes/token (%+.1f%%)"
               % (s * 1048576, p * 1048576, 100 * (s - p) / p), abs(s - p) <= 0.1 * p)
    best = max((r for r in rows if r["attention"] == "luna"), key=lambda r: r["gflops"], default=None)
    if best:
        lo = [r for r in rows if r["attention"] == "luna" and r["l"] == l0 and r["n"] >= 4096]
        med = sorted(r["gflops"] for r in lo)[len(lo) // 2] if lo else best["gflops"]
        target("Luna-%d GFLOP/s >= 50%% of sgemm (median over n >= 4096)" % l0,
               "%.1f of %.1f (%.0f%%)" % (med, sgemm, 100 * med / sgemm), med >= 0.5 * sgemm)
    for n in ns:
        pr, lu = find(rows, "pytorch-ref", None, n), find(rows, "luna", l0, n)
        if pr and lu:
            target("n=%d: >= 3x faster than PyTorch" % n, "%.2fx" % (pr["ms"] / lu["ms"]), pr["ms"] / lu["ms"] >= 3)
            target("n=%d: <= 1/4 the RSS of PyTorch" % n, "%.0f vs %.0f MB" % (lu["rss_mb"], pr["rss_mb"]),
                   lu["rss_mb"] <= pr["rss_mb"] / 4)
    with open(stem + ".md", "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))

    # plot: latency and RSS against n, log-log
    dat = stem + ".dat"
    series = []
    with open(dat, "w") as f:
        for k, l in kinds:
            pts = [(r["n"], r["ms"], r["rss_mb"]) for r in rows
                   if r["attention"] == k and (l is None or r["l"] == l)]
            if not pts:
                continue
            series.append(k if l is None else "%s-%d" % (k, l))
            f.write("# %s\n" % series[-1])
            for n, ms, rss in sorted(pts):
                f.write("%d %f %f\n" % (n, ms, rss))
            f.write("\n\n")
    png = stem + ".png"
    plots = lambda col: ", ".join('"%s" index %d using 1:%d with linespoints title "%s"' % (dat, i, col, s)
                                  for i, s in enumerate(series))
    gp = """set terminal pngcairo size 1200,500 font ",10"
set output "%s"
set multiplot layout 1,2
set logscale xy
set grid
set key left top
set xlabel "n (tokens)"
set ylabel "latency (ms)"
set title "Forward latency (%s, %s kernels)"
plot %s
set ylabel "peak RSS (MB)"
set title "Peak RSS (%s, %s kernels)"
plot %s
unset multiplot
""" % (png, m["cpu"], m["core"], plots(2), m["cpu"], m["core"], plots(3))
    try:
        subprocess.run(["gnuplot"], input=gp.encode(), check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        print("report: gnuplot failed (%s); no PNG written" % e)
    os.remove(dat)


if __name__ == "__main__":
    main()
