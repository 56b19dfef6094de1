#!/usr/bin/python3
"""longdoc_report.py - the report of the load kit's long-document scenario (bench/load/longdoc.sh):
reads the answers, headers, RSS samples, /metrics and /info from --work and writes to --out
    load-longdoc-NAME.md    the table and the targets, under a header naming the CPU and the BLAS kernel
    load-longdoc-NAME.json  everything, raw
    load-longdoc-NAME.png   the server's RSS over the run against the budget + overhead
(NAME: --name, default <cpu slug>-<core>, bench/blasinfo.py). Exits 1 when a document was not
answered 200, the server did not exit 0, or the RSS went above the bound. Standard library only."""
import argparse
import glob
import json
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import blasinfo  # noqa: E402

MiB = 1 << 20


def parse_bytes(s):
    s = s.strip().upper().rstrip("B")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(s[-1:], 1)
    return int(float(s[:-1] if s[-1:] in "KMGT" else s) * mult)


def main():
    ap = argparse.ArgumentParser()
    for k in ("work", "out", "budget", "size", "model", "model-dir", "info"):
        ap.add_argument("--" + k, required=True)
    for k in ("idle-kb", "hwm-kb", "n", "workers", "server-exit"):
        ap.add_argument("--" + k, type=int, required=True)
    ap.add_argument("--t0", type=float, required=True)
    ap.add_argument("--t1", type=float, required=True)
    ap.add_argument("--name", default=None)
    ap.add_argument("--date", default=None)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    w = a.work
    try:
        info = json.load(open(a.info))
    except (OSError, ValueError):
        info = {}
    m = blasinfo.machine(info.get("blas"))
    os.makedirs(a.out, exist_ok=True)
    stem = os.path.join(a.out, "load-longdoc-" + blasinfo.run_name(m, a.name))

    answers = []
    for p in sorted(glob.glob(os.path.join(w, "curl-*.json")), key=lambda p: int(re.findall(r"\d+", p)[-1])):
        i = int(re.findall(r"\d+", p)[-1])
        try:
            r = json.loads(open(p).read().strip().splitlines()[-1])
        except (ValueError, IndexError):
            r = {"i": i, "http_code": 0, "time_total": 0}
        plan = ""
        try:
            for line in open(os.path.join(w, "headers-%d.txt" % i), encoding="latin-1"):
                if line.lower().startswith("x-luna-plan:"):
                    plan = line.split(":", 1)[1].strip()
        except OSError:
            pass
        try:
            body = json.load(open(os.path.join(w, "answer-%d.json" % i)))
            label = body[0]["label"] if isinstance(body, list) else body.get("error", {}).get("type", str(body)[:60])
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            label = "?"
        r.update(plan=plan, label=label)
        answers.append(r)
    rss = []
    for line in open(os.path.join(w, "rss.txt")):
        p = line.split()
        if len(p) == 2 and p[1].isdigit():
            rss.append((float(p[0]) - a.t0, int(p[1])))
    metrics = {}
    try:
        for line in open(os.path.join(w, "metrics.txt")):
            if line.startswith("luna_"):
                k, _, v = line.rpartition(" ")
                try:
                    metrics[k] = float(v)
                except ValueError:
                    pass
    except OSError:
        pass

    budget = parse_bytes(a.budget)
    weights = os.path.getsize(os.path.join(a.model_dir, "model.safetensors"))
    slack = 32 * MiB
    overhead = a.idle_kb * 1024 + weights + slack
    bound = budget + overhead
    max_kb = max((kb for _, kb in rss), default=0)
    peak = max(max_kb, a.hwm_kb) * 1024  # VmHWM catches a peak between two samples
    ok200 = sum(1 for r in answers if r.get("http_code") == 200)
    plans = {}
    for r in answers:
        plans[r["plan"] or "-"] = plans.get(r["plan"] or "-", 0) + 1
    times = sorted(r.get("time_total", 0) for r in answers)
    reserved = metrics.get("luna_memory_reserved_peak_bytes")
    size = parse_bytes(a.size)

    L = ["# Load test, long documents: %d concurrent %s documents under a %s budget: %s, %s kernels" % (
        a.n, a.size, a.budget, m["cpu"], m["core"]), ""]
    L += blasinfo.header(m)
    L += ["", "%s run%s (`%s`), %.0f s. Server: `bin/lunaserve --classify-model %s --generate-model '' --workers %d "
          "--blas-threads 1 --memory-budget %s`; %d clients at once, each `curl --data-binary @FILE -H "
          "'Content-Type: application/octet-stream' /classify` with the same %d-byte e-mail (the held-out "
          "messages of tests/models/spam.jsonl back to back). A resident workspace of one document would be "
          "%.0f MiB: every one has to run under the streaming plan. The server's VmRSS sampled from /proc "
          "every 0.25 s; VmHWM read after the last answer." % (
              "A quick (smoke)" if a.quick else "A full", " of " + a.date if a.date else "",
              "sh bench/load/longdoc.sh" + (" --quick" if a.quick else ""), a.t1 - a.t0, a.model, a.workers,
              a.budget, a.n, size, size * 128 * 4 / MiB if "spam" in a.model else 0), "",
          "| documents | answered 200 | X-Luna-Plan | labels | first answer s | median s | last answer s "
          "| idle RSS MiB | max sampled RSS MiB | VmHWM MiB | peak reserved MiB | budget + overhead MiB |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    labels = {}
    for r in answers:
        labels[r["label"]] = labels.get(r["label"], 0) + 1
    L.append("| %d x %s | %d | %s | %s | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f |" % (
        a.n, a.size, ok200, ", ".join("%s: %d" % kv for kv in sorted(plans.items())),
        ", ".join("%s: %d" % kv for kv in sorted(labels.items())), times[0] if times else 0,
        times[len(times) // 2] if times else 0, times[-1] if times else 0, a.idle_kb / 1024, max_kb / 1024,
        a.hwm_kb / 1024, reserved / MiB if reserved is not None else float("nan"), bound / MiB))
    targets = [
        ("all %d documents answered 200" % a.n, ok200 == a.n,
         "%d of %d (statuses: %s)" % (ok200, a.n, ", ".join(str(r.get("http_code")) for r in answers))),
        ("RSS never above the budget + the documented overhead", peak <= bound,
         "max %.1f MiB (the larger of the sampled VmRSS and VmHWM) <= %.1f MiB = budget %.1f + overhead %.1f "
         "(idle RSS %.1f + model file %.1f + 32 slack)" % (peak / MiB, bound / MiB, budget / MiB, overhead / MiB,
                                                           a.idle_kb / 1024, weights / MiB)),
        ("the server exits 0 on SIGTERM", a.server_exit == 0, "exit %d" % a.server_exit),
    ]
    L += ["", "| target | result | measured |", "|---|---|---|"]
    for name, ok, detail in targets:
        L.append("| %s | %s | %s |" % (name, "PASS" if ok else "**MISS**", detail))
    L += ["", "![RSS](%s.png)" % os.path.basename(stem), ""]
    with open(stem + ".md", "w") as f:
        f.write("\n".join(L))
    with open(stem + ".json", "w") as f:
        json.dump({"machine": m, "answers": answers, "rss": rss, "idle_kb": a.idle_kb, "hwm_kb": a.hwm_kb,
                   "budget": budget, "overhead": overhead, "bound": bound, "metrics": metrics,
                   "targets": targets}, f, indent=1)
    dat = os.path.join(w, "rss.dat")
    with open(dat, "w") as f:
        for t, kb in rss:
            f.write("%.2f %.2f\n" % (t, kb / 1024))
    gp = """set terminal pngcairo size 1000,450 font ",10"
set output "%s"
set title "lunaserve: %d concurrent %s documents, budget %s (%s, %s kernels)"
set xlabel "seconds"
set ylabel "MiB"
set grid
set key top left
set yrange [0:%.1f]
plot "%s" using 1:2 with lines lw 2 title "server VmRSS", %.2f with lines dt 2 lw 2 title "budget + overhead", \\
     %.2f with lines dt 3 title "budget", %.2f with lines dt 4 title "idle"
""" % (stem + ".png", a.n, a.size, a.budget, m["cpu"], m["core"], bound / MiB * 1.15, dat, bound / MiB,
       budget / MiB, a.idle_kb / 1024)
    r = subprocess.run(["gnuplot"], input=gp.encode(), capture_output=True)
    if r.returncode:
        print("longdoc: gnuplot failed: " + r.stderr.decode())
    os.remove(dat)
    print("\n".join(L))
    return 0 if all(ok for _, ok, _ in targets) else 1


if __name__ == "__main__":
    sys.exit(main())
