#!/usr/bin/python3
"""report.py - the load test's report (bench/load/run.sh runs it): reads the wrk results, the
engine baseline, the RSS samples, the phases and the server's /info from --work, writes to --out
    load-NAME.md     the Markdown table and the targets, under a header naming the CPU and the
                     BLAS library, version, kernel and how it was selected (from /info's "blas")
    load-NAME.png    RSS over the run against the bound, and latency percentiles at 80% load
    load-NAME.json   everything, raw
(NAME: --name, default <cpu slug>-<core>, bench/blasinfo.py) and prints the report. Exits 1 on errors other than deliberate 429s, a server that did not exit
0, or an RSS above the bound; with --strict also when a performance target is missed."""
import argparse
import glob
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import blasinfo  # noqa: E402


def parse_bytes(s):
    s = s.strip().upper().rstrip("B")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(s[-1:], 1)
    return int(float(s[:-1] if s[-1:] in "KMGT" else s) * mult)


def load(path):
    with open(path) as f:
        return json.load(f)


def mb(kb):
    return kb / 1024.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--budget", required=True)
    ap.add_argument("--idle-kb", type=int, required=True)
    ap.add_argument("--workers", type=int, required=True)
    ap.add_argument("--queue", type=int, required=True)
    ap.add_argument("--t0", type=float, required=True)
    ap.add_argument("--classify-model", required=True)
    ap.add_argument("--generate-model", required=True)
    ap.add_argument("--models", required=True, help="the copies the server loaded")
    ap.add_argument("--server-exit", type=int, required=True)
    ap.add_argument("--strict", action="store_true")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--arrivals", default="paced")
    ap.add_argument("--info", default=None, help="the server's GET /info")
    ap.add_argument("--name", default=None, help="the files' stem (default: <cpu slug>-<core>)")
    ap.add_argument("--date", default=None)
    a = ap.parse_args()
    w = a.work
    os.makedirs(a.out, exist_ok=True)
    info = {}
    if a.info:
        try:
            info = load(a.info)
        except (OSError, ValueError):
            pass
    m = blasinfo.machine(info.get("blas"))
    stem = os.path.join(a.out, "load-" + blasinfo.run_name(m, a.name))

    tokens = load(os.path.join(w, "data", "tokens.json"))
    with open(os.path.join(w, "data", "source.txt")) as f:
        source = f.read().strip()
    sizes = [s for s in ["1k", "4k", "16k", "64k"] if os.path.exists(os.path.join(w, "classify-%s-sat.json" % s))]
    runs = {os.path.basename(p)[:-5]: load(p) for p in glob.glob(os.path.join(w, "*.json"))
            if not os.path.basename(p).startswith(("report", "engine", "info"))}

    # RSS samples and phases
    rss = []
    with open(os.path.join(w, "rss.txt")) as f:
        for line in f:
            p = line.split()
            if len(p) == 2 and p[1].isdigit():
                rss.append((float(p[0]) - a.t0, int(p[1])))
    phases = []
    with open(os.path.join(w, "phases.txt")) as f:
        for line in f:
            t, name = line.split()
            phases.append((float(t) - a.t0, name))

    def phase_rss(name):
        spans = [(t, phases[i + 1][0] if i + 1 < len(phases) else 1e18) for i, (t, n) in enumerate(phases) if n == name]
        vals = [kb for t, kb in rss for s, e in spans if s <= t <= e]
        return max(vals) if vals else None

    # the server's CPU time per run (the last of a run's repeats)
    cpu, busy = {}, {}
    try:
        for line in open(os.path.join(w, "cpu.txt")):
            name, c0, c1, tck, b0, b1 = line.split()
            cpu[name] = (int(c1) - int(c0)) / float(tck)
            busy[name] = (int(b1) - int(b0)) / float(tck)  # every process's, the server's included
    except (OSError, ValueError):
        pass

    # the engine in-process (engine_tput), the same worker count, before and after the HTTP run
    eng = {}
    for tag in ("before", "after"):
        p = os.path.join(w, "engine-%s.json" % tag)
        if os.path.exists(p):
            eng[tag] = load(p)
    eng_rate = sum(e["rate"] for e in eng.values()) / len(eng) if eng else 0.0
    eng_ms = sum(e["mean_ms"] for e in eng.values()) / len(eng) if eng else 0.0
    eng_per_cpu = (sum(e["docs"] for e in eng.values()) / sum(e["cpu_s"] for e in eng.values())
                   if eng and all("cpu_s" in e for e in eng.values()) else 0.0)
    tok4 = tokens["4k"]["mean_tokens"]

    budget = parse_bytes(a.budget)
    weights = 0
    for d in (os.path.join(a.models, "classify"), os.path.join(a.models, "generate")):
        try:
            weights += os.path.getsize(os.path.join(d, "model.safetensors"))
        except OSError:
            pass
    slack = 32 << 20
    overhead_kb = a.idle_kb + (weights + slack) // 1024
    bound_kb = budget // 1024 + overhead_kb
    max_kb = max(kb for _, kb in rss) if rss else 0
    reserved_peak = None
    try:
        for line in open(os.path.join(w, "metrics.txt")):
            if line.startswith("luna_memory_reserved_peak_bytes "):
                reserved_peak = float(line.split()[1])
    except OSError:
        pass

    # ---- the table ----
    rows = []
    errors_other = {}
    for name in ["classify-%s-sat" % s for s in sizes] + ["classify-%s-80" % s for s in sizes] + \
            ["generate-sat", "generate-80", "burst-1k"]:
        r = runs.get(name)
        if not r:
            continue
        st = {k: v for k, v in r["statuses"].items()}
        bad = {k: v for k, v in st.items() if k != "200" and not (k == "429")}
        sock = {k: v for k, v in r["socket_errors"].items() if v}
        if bad or sock:
            errors_other[name] = {**bad, **{"socket " + k: v for k, v in sock.items()}}
        rows.append((name, r, st, phase_rss(name)))

    def fmt_st(st):
        return ", ".join("%s: %d" % (k, v) for k, v in sorted(st.items())) or "-"

    lines = []
    add = lines.append
    add("# Load test: lunaserve over HTTP (wrk): %s, %s kernels" % (m["cpu"], m["core"]))
    add("")
    for line in blasinfo.header(m):
        add(line)
    add("")
    eng_cores = sorted({e.get("blas_core") for e in eng.values() if e.get("blas_core")})
    if eng_cores and eng_cores != [m["core"]]:
        add("**Warning: the in-process baseline ran on another core (%s) than the server (%s).**" % (
            ", ".join(eng_cores), m["core"]))
        add("")
    add("%s run%s, %s. Server: %d workers x 1 BLAS thread, memory budget %s, queue %d; classifier `%s`, "
        "generator `%s`. Documents: %s. One wrk thread; saturation runs use %d connections back to back; the 80%% runs send on a "
        "schedule at 80%% of the saturation rate, %s, over 32 connections." % (
            "A quick (smoke)" if a.quick else "A full", " of " + a.date if a.date else "", "the same machine as the server (2 cores, shared)",
            a.workers, a.budget, a.queue, a.classify_model, a.generate_model, source, 2 * a.workers + 2,
            "evenly spaced (as wrk2's constant throughput)" if a.arrivals == "paced" else
            "exponentially spaced (Poisson)"))
    add("")
    add("| run | document | tokens (mean) | load | req/s | tokens/s | p50 ms | p90 ms | p99 ms | p99/p50 | answers | "
        "server CPU ms/req | other CPU (cores) | max RSS MB |")
    add("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r, st, prss in rows:
        L = r["latency_ms"]
        if name.startswith("classify"):
            size = name.split("-")[1]
            tok = tokens.get(size, {}).get("mean_tokens", 0)
            kind, doc = "/classify", "%s bytes" % size
            tps = r["rps"] * tok
        elif name.startswith("generate"):
            ok = r["statuses"].get("200", 0)
            tok = r.get("generated_tokens", 0) / ok if ok else 0
            kind, doc = "/generate", "max_new_tokens 64 (generated)"
            tps = r.get("generated_tokens", 0) / r["duration_s"]
        else:
            kind, doc, tok = "/classify burst", "1k bytes", tokens.get("1k", {}).get("mean_tokens", 0)
            tps = r["statuses"].get("200", 0) / r["duration_s"] * tok
        sat = runs.get(name.rsplit("-", 1)[0] + "-sat")
        if name.endswith("-sat"):
            load_s = "saturation"
        elif name.endswith("-80") and sat:
            load_s = "%.0f%% of saturation" % (100 * r["rps"] / sat["rps"])
        else:
            load_s = "%d connections, queue %d" % (a.workers + a.queue + 32, a.queue)
        cpu_req = "%.2f" % (1000 * cpu[name] / r["requests"]) if name in cpu and r["requests"] else "-"
        other = "%.2f" % ((busy[name] - cpu[name]) / r["duration_s"]) if name in busy and name in cpu else "-"
        add("| %s | %s | %.0f | %s | %.2f | %.0f | %.1f | %.1f | %.1f | %.2f | %s | %s | %s | %.1f |" % (
            kind, doc, tok, load_s, r["rps"], tps, L["p50"], L["p90"], L["p99"],
            L["p99"] / L["p50"] if L["p50"] else 0, fmt_st(st), cpu_req, other, mb(prss) if prss else 0))
    add("")
    add("*server CPU ms/req*: the server's user + system time over the run per request; *other CPU*: what "
        "every other process on the machine used meanwhile, wrk included, in cores (of %d)." % os.cpu_count())
    add("")

    # ---- targets ----
    targets = []
    http4 = runs.get("classify-4k-sat")
    if http4 and eng_rate and eng_per_cpu and cpu.get("classify-4k-sat"):
        per_cpu = http4["statuses"].get("200", 0) / cpu["classify-4k-sat"]
        ratio_cpu = per_cpu / eng_per_cpu
        ratio = http4["rps"] / eng_rate
        targets.append(("HTTP overhead: /classify at 4k >= 90%% of the in-process engine's throughput (%d workers), "
                        "per CPU second" % a.workers, ratio_cpu >= 0.9,
                        "%.2f documents per server CPU second over HTTP vs %.2f in-process: %.1f%%; by the wall clock "
                        "(the machine is shared, see docs/reliability.md): %.1f%%" % (
                            per_cpu, eng_per_cpu, 100 * ratio_cpu, 100 * ratio), False))
    if http4 and eng_rate:
        ratio = http4["rps"] / eng_rate
        targets.append(("HTTP overhead by the wall clock (informative)", ratio >= 0.9,
                        "%.2f req/s over HTTP vs %.2f documents/s in-process (engine_tput: %d threads on the same "
                        "documents, %.0f tokens each, %.1f ms per forward; before / after the HTTP run: %s): %.1f%%" % (
                            http4["rps"], eng_rate, a.workers, tok4, eng_ms,
                            " / ".join("%.2f" % eng[k]["rate"] for k in ("before", "after") if k in eng), 100 * ratio),
                        False))
    targets.append(("RSS never above the budget + overhead", max_kb <= bound_kb,
                    "max %.1f MB <= %.1f MB = budget %.1f MB + overhead %.1f MB (idle RSS %.1f MB + model files "
                    "%.1f MB + 32 MB slack); peak reserved %s" % (
                        mb(max_kb), mb(bound_kb), budget / 2**20, mb(overhead_kb), mb(a.idle_kb), weights / 2**20,
                        "%.1f MB" % (reserved_peak / 2**20) if reserved_peak is not None else "?"), True))
    for name in ["classify-%s-80" % s for s in sizes] + ["generate-80"]:
        r = runs.get(name)
        if r:
            L = r["latency_ms"]
            targets.append(("p99 <= 3 x p50 at 80%% of saturation: %s" % name.replace("-80", ""),
                            L["p99"] <= 3 * L["p50"], "p50 %.1f ms, p99 %.1f ms (%.2fx)" % (
                                L["p50"], L["p99"], L["p99"] / L["p50"] if L["p50"] else 0), False))
    burst = runs.get("burst-1k", {}).get("statuses", {})
    targets.append(("0 errors other than deliberate 429s", not errors_other,
                    "other answers: %s; the burst got %d x 429 and %d x 200" % (
                        json.dumps(errors_other) if errors_other else "none", burst.get("429", 0),
                        burst.get("200", 0)), True))
    targets.append(("the server exits 0 on SIGTERM", a.server_exit == 0, "exit %d" % a.server_exit, True))

    add("| target | result | measured |")
    add("|---|---|---|")
    for name, ok, detail, _ in targets:
        add("| %s | %s | %s |" % (name, "PASS" if ok else "MISS", detail))
    add("")
    add("RSS: idle %.1f MB, max %.1f MB, bound %.1f MB. ![RSS and latency](%s.png)" % (
        mb(a.idle_kb), mb(max_kb), mb(bound_kb), os.path.basename(stem)))
    add("")
    with open(stem + ".md", "w") as f:
        f.write("\n".join(lines))

    with open(stem + ".json", "w") as f:
        json.dump({"machine": m, "info_blas": info.get("blas"), "runs": runs, "tokens": tokens, "engine": eng, "engine_rate": eng_rate, "cpu_s": cpu,
                   "rss": rss, "phases": phases, "idle_kb": a.idle_kb, "bound_kb": bound_kb, "budget": budget,
                   "targets": [(n, ok, d) for n, ok, d, _ in targets]}, f, indent=1)

    plot(a, w, rss, phases, bound_kb, sizes, runs, stem + ".png", m)
    print("\n".join(lines))
    hard = [n for n, ok, _, h in targets if h and not ok]
    soft = [n for n, ok, _, h in targets if not h and not ok]
    if soft:
        print("load: MISSED: " + "; ".join(soft))
    if hard:
        print("load: FAILED: " + "; ".join(hard))
    return 1 if hard or (a.strict and soft) else 0


def plot(a, w, rss, phases, bound_kb, sizes, runs, png, m):
    dat = os.path.join(w, "rss.dat")
    with open(dat, "w") as f:
        for t, kb in rss:
            f.write("%.2f %.2f\n" % (t, mb(kb)))
    lat = os.path.join(w, "lat.dat")
    with open(lat, "w") as f:
        for s in sizes + ["generate"]:
            r = runs.get(("classify-%s-80" % s) if s != "generate" else "generate-80")
            if r:
                L = r["latency_ms"]
                f.write('"%s" %.3f %.3f %.3f\n' % (s if s != "generate" else "generate\\n64 tok", L["p50"], L["p90"],
                                                     L["p99"]))
    labels = []
    for t, name in phases:
        if name not in ("idle", "end") and not name.endswith("-80"):
            labels.append('set arrow from %.1f, graph 0 to %.1f, graph 1 nohead lc rgb "#bbbbbb" dt 2' % (t, t))
            labels.append('set label "%s" at %.1f, graph 0.04 rotate by 90 font ",8" tc rgb "#666666"' % (
                name.replace("classify-", "").replace("-sat", ""), t + 0.5))
    script = """
set terminal pngcairo size 1100,820 font ",10"
set output "%(png)s"
set multiplot layout 2,1 title "lunaserve under wrk: %(workers)d workers, budget %(budget)s; %(cpu)s, %(core)s kernels"
set title "server RSS (sampled from /proc every 0.25 s)"
set xlabel "seconds"
set ylabel "MB"
set key top left
set yrange [0:%(ymax).1f]
%(labels)s
plot "%(dat)s" using 1:2 with lines lw 2 lc rgb "#1f77b4" title "RSS", \\
     %(bound).2f with lines dt 2 lw 2 lc rgb "#d62728" title "budget + overhead", \\
     %(idle).2f with lines dt 3 lc rgb "#2ca02c" title "idle"
unset arrow
unset label
set title "latency at 80%% of saturation"
set xlabel "/classify document size, and /generate"
set ylabel "ms (log)"
set logscale y
set yrange [*:*]
set style data histogram
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set boxwidth 0.9
set key top left
plot "%(lat)s" using 2:xtic(1) title "p50" lc rgb "#2ca02c", "" using 3 title "p90" lc rgb "#ff7f0e", \\
     "" using 4 title "p99" lc rgb "#d62728"
unset multiplot
""" % {"png": png, "cpu": m["cpu"], "core": m["core"], "workers": a.workers, "budget": a.budget, "dat": dat,
       "bound": mb(bound_kb), "idle": mb(a.idle_kb), "lat": lat, "labels": "\n".join(labels),
       "ymax": mb(bound_kb) * 1.15}
    gp = os.path.join(w, "load.gp")
    with open(gp, "w") as f:
        f.write(script)
    r = subprocess.run(["gnuplot", gp], capture_output=True, text=True)
    if r.returncode != 0:
        print("load: gnuplot failed: " + r.stderr)


if __name__ == "__main__":
    sys.exit(main())
