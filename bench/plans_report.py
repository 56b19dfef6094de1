#!/usr/bin/python3
"""bench/plans_report.py - inputs and report of the plan benchmark (bench/plans.sh).

    plans_report.py mail --out DIR --sizes 1M,4M,64M
        DIR/mail-<size>.eml: one e-mail of exactly <size> bytes, the held-out messages of
        tests/models/spam.jsonl (lines {"label", "text": latin-1-decoded bytes}) back to back,
        ham and spam alternating, each followed by a newline, repeated until the size is reached
        and cut there. The model's e-mail transform reads the first message's Subject and takes
        every byte after its header's blank line as the body: realistic mail bytes, one long body.
    plans_report.py report --work build/plans --out docs/bench ...
        OUT/plans-<cpu>-<core>.md (tables, the issue's targets checked), .csv and .png (gnuplot),
        from the JSON lines and files bench/plans.sh leaves in --work.

Standard library only (and gnuplot for the PNG)."""
import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import blasinfo  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MiB = 1 << 20


def parse_size(s):
    s = s.strip()
    mult = {"k": 1 << 10, "K": 1 << 10, "m": MiB, "M": MiB, "g": 1 << 30, "G": 1 << 30}.get(s[-1:], 1)
    return int(s[:-1] if s[-1:] in "kKmMgG" else s) * mult


def mail(a):
    by = {"ham": [], "spam": []}
    with open(os.path.join(ROOT, "tests", "models", "spam.jsonl"), encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            by.setdefault(r["label"], []).append(r["text"].encode("latin-1") + b"\n")
    order = []
    for i in range(max(len(by["ham"]), len(by["spam"]))):
        order += by["ham"][i:i + 1] + by["spam"][i:i + 1]
    block = b"".join(order)
    os.makedirs(a.out, exist_ok=True)
    for s in a.sizes.split(","):
        if not s:
            continue
        size = parse_size(s)
        path = os.path.join(a.out, "mail-%s.eml" % s)
        with open(path, "wb") as f:
            left = size
            while left > 0:
                f.write(block[:left])
                left -= min(left, len(block))
        assert os.path.getsize(path) == size
    print("plans: e-mails %s from %d held-out messages (%d bytes)" % (a.sizes, len(order), len(block)))


def load_lines(path):
    rows = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line.startswith("{"):
                    rows.append(json.loads(line))
    return rows


def load_json(path, default=None):
    try:
        with open(path) as f:
            return json.loads(f.read().strip() or "null")
    except (OSError, ValueError):
        return default


def human(n):
    for unit, v in (("M", MiB), ("k", 1024)):
        if n >= v and n % v == 0:
            return "%d%s" % (n // v, unit)
    return str(n)


def plan_flops(cfg, n, rows):
    """luna_plan.flops (engine/encoder.c make_plan): the floating-point operations of a forward
    over n tokens that keeps `rows` rows, from the shapes."""
    d, ffn, L = cfg.get("d", 256), cfg.get("ffn", 1024), cfg.get("layers", 4)
    lp = n if cfg.get("dynamic_projection") and n < cfg.get("l", 16) else cfg.get("l", 16)
    pk = 2.0 * d * d * (1 if cfg.get("tie_kv") else 2) + 4.0 * lp * d
    up = 4.0 * d * d + 4.0 * lp * d + 4.0 * d * ffn
    pool = cfg.get("pooling", "cls")
    fin = 0 if pool == "p" else min(n, 256) if pool == "cls" else n
    kept, other = rows, n - rows
    fk, fo = min(fin, rows), max(fin - rows, 0)
    return (kept * L * pk + kept * (L - 1) * up + fk * up +
            other * L * pk + other * (L * (L - 1) // 2) * up + fo * L * up)


def flop_ratio(cfg, n):
    return plan_flops(cfg, n, 0) / plan_flops(cfg, n, n)


def report(a):
    w = a.work
    sg = load_json(os.path.join(w, "sgemm.json"), {})
    m = blasinfo.machine(sg.get("blas"))
    os.makedirs(a.out, exist_ok=True)
    stem = os.path.join(a.out, "plans-" + blasinfo.run_name(m, a.name))
    rows = load_lines(os.path.join(w, "plans.jsonl"))
    cfg_lra = load_json(os.path.join(a.model_lra, "config.json"), {})
    d_lra = cfg_lra.get("d", 256)
    loads = open(os.path.join(w, "loadavg.txt")).read().strip().split("\n") if os.path.exists(os.path.join(w, "loadavg.txt")) else []

    # ---- (a) LRA shape ----
    lra = [r for r in rows if r["kind"] in ("lra", "lra-big")]
    ns = sorted({r["n"] for r in lra})
    best = {}
    for r in lra:
        k = (r["n"], r["plan"])
        if k not in best or r["ms"] < best[k]["ms"]:
            best[k] = dict(r, rounds=sum(1 for x in lra if x["n"] == r["n"] and x["plan"] == r["plan"]))
    # the peak of anonymous memory: the largest over the rounds
    anon = {}
    for r in lra:
        k = (r["n"], r["plan"])
        anon[k] = max(anon.get(k, 0), r["anon_mb"])

    def input_mb(n):  # luna bench's bytes: n less the bos (and eos) tokens
        return (n - 1 - int(bool(cfg_lra.get("append_eos")))) / MiB

    # ---- (b) spam ----
    spam = [r for r in rows if r["kind"] == "spam"]
    # ---- (c), (d) ----
    ct = load_json(os.path.join(w, "classify-time.json"), {}) or {}
    cj = load_json(os.path.join(w, "classify.json"), {}) or {}
    srv = load_json(os.path.join(w, "server.json"), {}) or {}
    curl = load_json(os.path.join(w, "server-curl.json"), {}) or {}
    ans = load_json(os.path.join(w, "server-answer.json"), {}) or {}
    if isinstance(ans, list):  # /classify of one document: its labels, best first
        ans = ans[0] if ans else {}
    hdr = {}
    try:
        for line in open(os.path.join(w, "server-headers.txt"), encoding="latin-1"):
            if ":" in line:
                k, v = line.split(":", 1)
                hdr[k.strip().lower()] = v.strip()
    except OSError:
        pass
    rss = []
    try:
        for line in open(os.path.join(w, "server-rss.txt")):
            p = line.split()
            if len(p) == 2 and p[1].isdigit():
                rss.append((float(p[0]), int(p[1])))
    except OSError:
        pass
    mail_bytes = parse_size(a.mail)
    cfg_spam = load_json(os.path.join(a.model_spam, "config.json"), {})
    d_spam = cfg_spam.get("d", 128)

    # ---- CSV ----
    with open(stem + ".csv", "w") as f:
        f.write("kind,round,n_tokens,input_bytes,plan,ms,rss_mb,anon_mb,blas_core\n")
        for r in lra:
            f.write("lra,%d,%d,%d,%s,%.3f,%.2f,%.2f,%s\n" % (r["round"], r["n"], r["n"] - 1, r["plan"], r["ms"],
                                                          r["rss_mb"], r["anon_mb"], r.get("blas_core", "")))
        for r in spam:
            for i, t in enumerate(r["times_ms"]):
                f.write("spam,%d,%d,%d,%s,%.3f,,,%s\n" % (i // 2 + 1, r["tokens"], r["bytes"],
                                                         ("resident", "streaming")[i % 2], t, r.get("blas_core", "")))
        if ct:
            f.write("classify,1,%s,%d,streaming,%.0f,%.2f,,\n" % (cj.get("tokens", ""), mail_bytes,
                                                                  1000 * ct.get("wall_s", 0), ct.get("max_rss_kb", 0) / 1024))
        if srv:
            f.write("server,1,,%d,%s,%.0f,%.2f,,%s\n" % (mail_bytes, hdr.get("x-luna-plan", ""),
                                                         1000 * curl.get("time_total", 0), srv.get("hwm_kb", 0) / 1024,
                                                         m["core"]))

    md = ["# Plan benchmark (streaming vs resident): %s, %s kernels" % (m["cpu"], m["core"]), ""]
    md += blasinfo.header(m)
    md += ["", "Run%s, %d s in all: luna on %d lanes of 1 BLAS thread (`luna bench --lanes %d --threads 1`; "
           "bench/plan_time.c likewise), sgemm (1024^3, %d threads, same run): %.1f GFLOP/s. The machine was "
           "shared with other jobs (1-, 5- and 15-minute load averages: %s): absolute times move with "
           "that load, the ratios compare runs alternated in the same minutes. Reproduce with "
           "`env -u OPENBLAS_CORETYPE sh bench/plans.sh` (docs/benchmarks.md, Plans)." % (
               " of " + a.date if a.date else "", a.seconds, a.lanes, a.lanes, sg.get("threads", a.lanes),
               sg.get("gflops", 0), "; ".join("%s %s" % (w_, l_) for w_, l_ in zip(
                   ["at the start", "at phase 2", "at the end"] if len(loads) > 2 else ["at the start", "at the end"],
                   loads)) or "?")]
    md += blasinfo.check_cores(m, lra + spam, "plan")

    md += ["", "## LRA shape (d %d, %d layers, l %d, CLS pooling), random weights and bytes" % (
        d_lra, cfg_lra.get("layers", 4), cfg_lra.get("l", 16)), "",
        "`luna bench --plan resident|streaming --lengths N --lanes %d --threads 1 --json`, one fresh process per "
        "run, the plans alternated per length (resident, streaming, resident, ...); time: the best of the rounds; "
        "anon: the child's peak RSS less its mapped files (the largest of the rounds), which includes the n "
        "input bytes the benchmark holds.%s" % (a.lanes, " A length with no resident run ran the streaming plan only, "
        "in phase 2 beside two other jobs (its time is not compared); its resident bytes are predicted (n x d x 4)."
        if any(r["kind"] == "lra-big" for r in lra) else ""),
        "", "| n tokens | rounds | resident ms | streaming ms | streaming / resident | FLOP ratio (luna_plan) "
        "| every time, ms (res, str, ...) | resident anon MiB | streaming anon MiB | input MiB "
        "| streaming anon less input MiB |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    ratios_lra, over = [], []
    for n in ns:
        r, s = best.get((n, "resident")), best.get((n, "streaming"))
        if r:
            res_ms, res_anon = "%.0f" % r["ms"], "%.1f" % anon[(n, "resident")]
        else:
            res_ms, res_anon = "not run", "%.0f (predicted)" % (n * d_lra * 4 / MiB)
        ratio = ""
        if r and s:
            ratio = "%.2f" % (s["ms"] / r["ms"])
            ratios_lra.append((n, s["ms"] / r["ms"]))
        s_anon = anon.get((n, "streaming"))
        if s_anon is not None:
            over.append((n, s_anon - input_mb(n)))
        every = ", ".join("%.0f" % x["ms"] for x in sorted((x for x in lra if x["n"] == n),
                                                           key=lambda x: (x["round"], x["plan"])))
        md.append("| %s (%d) | %s | %s | %s | %s | %.2f | %s | %s | %s | %.2f | %s |" % (
            human(n), n, "%d+%d" % (r["rounds"] if r else 0, s["rounds"] if s else 0),
            res_ms, "%.0f" % s["ms"] if s else "", ratio, flop_ratio(cfg_lra, n), every, res_anon,
            "%.1f" % s_anon if s_anon is not None else "",
            input_mb(n), "%.1f" % (s_anon - input_mb(n)) if s_anon is not None else ""))

    md += ["", "## Bundled spam model (d %d, %d layers, l %d, %s pooling), e-mail bytes" % (
        d_spam, cfg_spam.get("layers", 2), cfg_spam.get("l", 16), cfg_spam.get("pooling", "p").upper()), "",
        "`bench/plan_time.c`: both plans alternated in one process on the same mapped e-mail (the held-out "
        "messages of tests/models/spam.jsonl back to back, ham and spam alternating), luna_classify_plan; "
        "the best of the rounds.", "",
        "| e-mail | tokens | rounds | resident ms | streaming ms | streaming / resident | FLOP ratio (luna_plan) "
        "| resident workspace MiB | every time, ms (res, str, ...) | max probability difference |",
        "|---|---|---|---|---|---|---|---|---|---|"]
    ratios_spam = []
    for r in spam:
        ratios_spam.append((r["bytes"], r["ratio"]))
        md.append("| %s | %d | %d | %.0f | %.0f | %.2f | %.2f | %.0f | %s | %s |" % (
            human(r["bytes"]), r["tokens"], r["rounds"], r["resident_ms"], r["streaming_ms"], r["ratio"],
            flop_ratio(cfg_spam, r["tokens"]),
            r["resident_bytes"] / MiB, ", ".join("%.0f" % t for t in r["times_ms"]), r["max_prob_diff"]))

    limit_c = 1.1 * mail_bytes + 48 * MiB
    md += ["", "## A %s e-mail (%d bytes)" % (human(mail_bytes), mail_bytes), "",
           "Phase 2, these jobs at once (their times are not compared): `/usr/bin/time -f %%M bin/luna classify --model %s --plan streaming "
           "FILE` (the file is mapped: its pages count in the peak RSS), and the same file to `bin/lunaserve "
           "--classify-model %s --generate-model '' --memory-budget 256M --workers %d --blas-threads 1` as "
           "`curl --data-binary @FILE -H 'Content-Type: application/octet-stream'` (the server's VmHWM from "
           "/proc after the answer, its VmRSS sampled every 0.25 s)." % (a.model_spam, a.model_spam, a.lanes), ""]
    tokens = cj.get("tokens")
    auto_ws = (tokens or mail_bytes) * d_spam * 4
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    md += ["| run | answer | plan | wall s | peak RSS MiB |", "|---|---|---|---|---|"]
    if ct:
        md.append("| `luna classify --plan streaming` | %s (%s %.4f), exit %s | %s (%s rows) | %.0f | %.1f |" % (
            "tokens %s" % cj.get("tokens", "?"), cj.get("label", "?"), cj.get("score", 0), ct.get("exit"),
            cj.get("plan", "?"), cj.get("plan_rows", "?"), ct.get("wall_s", 0), ct.get("max_rss_kb", 0) / 1024))
    md.append("| `luna classify` (auto, no --max-workspace: resident) | not run: its workspace would be %.1f GiB "
              "(predicted, %s tokens x %d floats)%s | resident | - | %.0f + the file "
              "(predicted) |" % (auto_ws / (1 << 30), tokens or "~%d" % mail_bytes, d_spam,
                                 ", above this machine's %.0f GiB of memory" % (mem / (1 << 30)) if auto_ws > mem else "",
                                 auto_ws / MiB))
    if curl:
        max_rss = max((kb for _, kb in rss), default=0)
        md.append("| `/classify` raw body, budget 256M | HTTP %s (%s %s) | %s | %.0f | VmHWM %.1f (idle %.1f, "
                  "max sampled VmRSS %.1f) |" % (
                      curl.get("http_code"), ans.get("label", "?"), "%.4f" % ans.get("score", 0), hdr.get("x-luna-plan", "?"),
                      curl.get("time_total", 0), srv.get("hwm_kb", 0) / 1024, srv.get("idle_kb", 0) / 1024,
                      max_rss / 1024))

    # ---- targets ----
    md += ["", "## Issue 24's targets", "", "| measure | target | measured | met |", "|---|---|---|---|"]

    def target(name, goal, value, ok):
        md.append("| %s | %s | %s | %s |" % (name, goal, value, "yes" if ok else "**no**"))

    if over:
        worst = max(v for _, v in over)
        target("LRA shape, n = %s: peak anonymous RSS of the streaming plan" % ", ".join(human(n) for n, _ in over),
               "<= 32 MiB + the input bytes, flat in n",
               "anon less input: %s MiB (spread %.1f MiB)" % (", ".join("%.1f" % v for _, v in over),
                                                              worst - min(v for _, v in over)), worst <= 32)
    big = max(ns) if ns else 0
    if big and (big, "resident") not in best:
        md.append("| LRA shape, resident at %s | (today's) 4 GiB at 4M | %.0f MiB predicted (not run) | - |" % (
            human(big), big * d_lra * 4 / MiB))
    for n, r in ratios_lra:
        target("LRA shape, n = %s: streaming time / resident time" % human(n), "<= 2.6", "%.2f" % r, r <= 2.6)
    for b, r in ratios_spam:
        target("spam model, %s e-mail: streaming time / resident time" % human(b), "<= 1.15", "%.2f" % r, r <= 1.15)
    if ct:
        peak = ct.get("max_rss_kb", 0) * 1024
        target("spam model, %s e-mail through `luna classify --plan streaming`: peak RSS" % human(mail_bytes),
               "<= 1.1 x the file + 48 MiB = %.1f MiB" % (limit_c / MiB), "%.1f MiB" % (peak / MiB),
               peak <= limit_c and ct.get("exit") == 0)
        md.append("| the same through `luna classify` (auto plan, no limit = resident) | the same | not run: "
                  "%.1f GiB workspace predicted | **no** (predicted) |" % (auto_ws / (1 << 30)))
    if curl:
        target("the same e-mail through `/classify` (raw body), `--memory-budget 256M`", "answered 200",
               "%s, X-Luna-Plan: %s, server VmHWM %.1f MiB" % (curl.get("http_code"), hdr.get("x-luna-plan", "?"),
                                                               srv.get("hwm_kb", 0) / 1024),
               curl.get("http_code") == 200)
    md += ["", "The load kit's long-document scenario (16 concurrent 4 MiB documents under a 256 MiB budget) is "
           "reported by bench/load (docs/bench/load-longdoc-<cpu>-<core>.md).", "",
           "![plans](%s.png)" % os.path.basename(stem), ""]
    with open(stem + ".md", "w") as f:
        f.write("\n".join(md))
    print("\n".join(md))
    plot(stem, m, ns, best, anon, d_lra, ratios_lra, ratios_spam, input_mb)


def plot(stem, m, ns, best, anon, d_lra, ratios_lra, ratios_spam, input_mb):
    """Two panels: the LRA shape's peak anonymous RSS against n, and the time ratios. Each series
    goes to its own data file (gnuplot's indices shift past an empty block); empty ones are left out."""
    series = {
        "resident": [(n, anon[(n, "resident")]) for n in ns if (n, "resident") in best],
        "resident (predicted, n x d x 4 + input)": [(n, n * d_lra * 4 / MiB + input_mb(n)) for n in ns
                                                     if (n, "resident") not in best],
        "streaming": [(n, anon[(n, "streaming")]) for n in ns if (n, "streaming") in anon],
        "target: 32 MiB + input": [(n, 32 + input_mb(n)) for n in ns],
        "LRA shape (x: tokens)": ratios_lra,
        "spam model (x: e-mail bytes)": ratios_spam,
    }
    style = {"resident": "linespoints lw 2 pt 7", "resident (predicted, n x d x 4 + input)": "points pt 6 ps 2",
             "streaming": "linespoints lw 2 pt 5", "target: 32 MiB + input": "lines dt 2",
             "LRA shape (x: tokens)": "linespoints lw 2 pt 7", "spam model (x: e-mail bytes)": "linespoints lw 2 pt 5"}
    files = {}
    for i, (name, pts) in enumerate(series.items()):
        if pts:
            files[name] = "%s.%d.dat" % (stem, i)
            with open(files[name], "w") as f:
                for x, y in pts:
                    f.write("%d %f\n" % (x, y))

    def plots(names, extra=""):
        p = ['"%s" using 1:2 with %s title "%s"' % (files[k], style[k], k) for k in names if k in files]
        return ", \\\n     ".join(p + ([extra] if extra else []))

    gp = """set terminal pngcairo size 1200,500 font ",10"
set output "%(png)s"
set multiplot layout 1,2 title "Plans: streaming vs resident (%(cpu)s, %(core)s kernels)"
set logscale xy
set grid
set key left top
set xlabel "n (tokens)"
set ylabel "peak anonymous RSS (MiB)"
set title "LRA shape (d 256, 4 layers): peak RssAnon"
plot %(mem)s
unset logscale y
set yrange [0:3]
set ylabel "streaming time / resident time"
set xlabel "n (tokens; bytes for the spam e-mails)"
set title "Time ratio (alternated, best of rounds)"
set key left top
plot %(ratio)s
unset multiplot
""" % {"png": stem + ".png", "cpu": m["cpu"], "core": m["core"],
       "mem": plots(["resident", "resident (predicted, n x d x 4 + input)", "streaming", "target: 32 MiB + input"]),
       "ratio": plots(["LRA shape (x: tokens)", "spam model (x: e-mail bytes)"],
                      '2.6 with lines dt 2 title "LRA target 2.6", 1.15 with lines dt 3 title "spam target 1.15"')}
    try:
        subprocess.run(["gnuplot"], input=gp.encode(), check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        print("plans: gnuplot failed (%s); no PNG written" % e)
    for f in files.values():
        os.remove(f)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("mail")
    p.add_argument("--out", required=True)
    p.add_argument("--sizes", required=True)
    p = sub.add_parser("report")
    p.add_argument("--work", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--name", default=None)
    p.add_argument("--mail", required=True)
    p.add_argument("--seconds", type=int, default=0)
    p.add_argument("--lanes", type=int, default=os.cpu_count())
    p.add_argument("--model-lra", required=True)
    p.add_argument("--model-spam", required=True)
    p.add_argument("--date", default=None)
    a = ap.parse_args()
    mail(a) if a.cmd == "mail" else report(a)


if __name__ == "__main__":
    main()
