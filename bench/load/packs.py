"""bench/load/packs.py - classification packs over HTTP (issue 25, "Classification"): the same
stream of short one-document /classify requests against two servers side by side, packs on
(`--classify-packs 1`, the default) and off (`--classify-packs 0`: each document alone), on the
bundled classifier (models/spam) or --model.

Each round starts both servers (2 workers x 1 BLAS thread, the order flipping every round) and
drives each in turn with wrk (Debian's; bench/load/bodies.lua) for --seconds: --connections
closed-loop connections, each POSTing the next body of a file of short messages: clauses of
Persuasion of 20 to 90 bytes, each as a mail whose subject is its first three words (messages()),
one document a request. It reports, per mode, the medians over rounds
of requests/s, p50/p99 latency (wrk's, from the send), the server's CPU seconds and requests
per server CPU second, and how many documents ran packed (`luna_plan_total{plan="packed"}`).
Then, on the same idle server, one client sends lone requests of many documents each (TEI's
`"inputs": [...]`), one after another: 32 short messages, then 16 medium ones (runs of clauses of
150 to 250 bytes, over half a chunk each), and the median time per request is reported. A lone
request gets a lane per core: with packs on, its packs fill a chunk per lane and the lanes run
their shares side by side; with packs off, each document runs alone (on one lane, as a
document of one chunk does).
Every answer must be a 200 (else the run fails). The header names the CPU and BLAS kernel the
servers ran on (their /info "blas").

    /usr/bin/python3 bench/load/packs.py [--model DIR] [--connections 32] [--seconds 8]
        [--rounds 3] [--out docs/bench]

Writes OUT/packs-<cpu>-<core>.{md,json}. make bench-packs runs it."""
import argparse
import json
import os
import re
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import blasinfo  # noqa: E402
import lunaserve_proc  # noqa: E402


def messages(lo=20, hi=90, n=400):
    """Short messages, as a spam filter sees them (an SMS, a one-line mail): each clause (or
    run of clauses) of lo to hi bytes of Persuasion (data/austen/test.txt when tools/data/austen.py extracted it,
    else the 4 KiB of it in tests/models) as a mail whose subject is its first three words."""
    for path in ("data/austen/test.txt", "tests/models/persuasion.txt"):
        full = os.path.join(ROOT, path)
        if os.path.exists(full):
            text = open(full, encoding="utf-8", errors="replace").read()
            break
    flat = re.sub(r"\s+", " ", text)
    out, run = [], ""
    for s in re.split(r"(?<=[.,;!?]) ", flat):
        run = (run + " " + s).strip()  # clauses after each other, until the run is long enough
        if len(run.encode()) < lo:
            continue
        if len(run.encode()) <= hi:
            out.append("Subject: %s\r\n\r\n%s\n" % (" ".join(run.split()[:3]), run))
        run = ""
        if len(out) == n:
            break
    if not out:
        raise SystemExit("packs: no clause of %d to %d bytes in the text" % (lo, hi))
    return out


def get(port, path):
    with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=30) as r:
        return r.read().decode()


def metric(port, name):
    for line in get(port, "/metrics").splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def cpu_s(pid):
    with open("/proc/%d/stat" % pid) as f:
        p = f.read().rsplit(")", 1)[1].split()
    return (int(p[11]) + int(p[12])) / os.sysconf("SC_CLK_TCK")


def drive(port, pid, bodies, conns, seconds):
    packed0, c0 = metric(port, 'luna_plan_total{plan="packed"}'), cpu_s(pid)
    r = subprocess.run(["wrk", "-t1", "-c%d" % conns, "-d%ds" % seconds, "--timeout", "60s", "-s",
                        os.path.join(ROOT, "bench/load/bodies.lua"), "http://127.0.0.1:%d/classify" % port, "--",
                        bodies], capture_output=True, text=True, timeout=seconds + 120)
    line = next((l for l in r.stdout.splitlines() if l.startswith("LOADJSON ")), None)
    if not line:
        raise SystemExit("packs: wrk failed:\n" + r.stdout + r.stderr)
    res = json.loads(line[len("LOADJSON "):])
    res["server_cpu_s"] = cpu_s(pid) - c0
    res["packed_docs"] = metric(port, 'luna_plan_total{plan="packed"}') - packed0
    bad = {k: v for k, v in res["statuses"].items() if k != "200"}
    if bad or res["non2xx"] or any(res["socket_errors"].values()):
        raise SystemExit("packs: answers other than 200: %s" % res)
    return res


def lone_batches(port, batches, repeats):
    """The median milliseconds of a lone request of each batch (a list of documents), sent one
    after another, `repeats` times over (the first pass warms up and is not counted)."""
    times = []
    for r in range(repeats + 1):
        for docs in batches:
            body = json.dumps({"inputs": docs}).encode()
            req = urllib.request.Request("http://127.0.0.1:%d/classify" % port, data=body,
                                         headers={"Content-Type": "application/json"})
            t0 = time.perf_counter()
            with urllib.request.urlopen(req, timeout=60) as resp:
                out = json.loads(resp.read())
                if resp.status != 200 or len(out) != len(docs):
                    raise SystemExit("packs: a lone request failed: %s %s" % (resp.status, out))
            if r:
                times.append((time.perf_counter() - t0) * 1e3)
    return median(times)


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(ROOT, "bin/lunaserve"))
    ap.add_argument("--model", default=os.path.join(ROOT, "models/spam"))
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(ROOT, "docs/bench"))
    ap.add_argument("--name", default=os.environ.get("PACKS_NAME"))
    a = ap.parse_args()
    work = os.path.join(ROOT, "build/packs")
    os.makedirs(work, exist_ok=True)
    bodies = os.path.join(work, "bodies.txt")
    msgs = messages()
    with open(bodies, "w") as f:
        for m in msgs:
            f.write(json.dumps({"inputs": m}) + "\n")
    mean_bytes = sum(len(m.encode()) for m in msgs) / len(msgs)
    # four requests of each (the 4 KiB of Persuasion in tests/models has too few medium ones for
    # four requests: they repeat)
    short_batches = [(msgs * 128)[i:i + 32] for i in range(0, 128, 32)]
    mids = messages(150, 250, 64)
    mid_batches = [(mids * 64)[i:i + 16] for i in range(0, 64, 16)]
    runs = {1: [], 0: []}
    blas = None
    for rnd in range(a.rounds):
        for packs in ((1, 0) if rnd % 2 == 0 else (0, 1)):
            argv = [a.bin, "--host", "127.0.0.1", "--port", "0", "--classify-model", a.model, "--generate-model", "",
                    "--workers", "2", "--blas-threads", "1", "--max-queue", "4096", "--classify-packs", str(packs)]
            proc, port, _ = lunaserve_proc.start(argv)
            try:
                blas = json.loads(get(port, "/info")).get("blas")
                res = drive(port, proc.pid, bodies, a.connections, a.seconds)
                res["lone_short_ms"] = lone_batches(port, short_batches, 3)
                res["lone_mid_ms"] = lone_batches(port, mid_batches, 3)
            finally:
                proc.terminate()
                proc.wait(30)
            res["round"] = rnd
            runs[packs].append(res)
            print("packs: round %d, packs %d: %.0f requests/s, p50 %.2f ms, p99 %.2f ms, %d packed; lone requests "
                  "of 32 short %.2f ms, of 16 medium %.2f ms" % (
                      rnd, packs, res["rps"], res["latency_ms"]["p50"], res["latency_ms"]["p99"], res["packed_docs"],
                      res["lone_short_ms"], res["lone_mid_ms"]), flush=True)
    m = blasinfo.machine(blas)
    name = blasinfo.run_name(m, a.name)
    rows = []
    for packs in (1, 0):
        rs = runs[packs]
        rows.append({"packs": packs, "rps": median([r["rps"] for r in rs]),
                     "p50_ms": median([r["latency_ms"]["p50"] for r in rs]),
                     "p99_ms": median([r["latency_ms"]["p99"] for r in rs]),
                     "per_cpu_s": median([r["requests"] / r["server_cpu_s"] for r in rs if r["server_cpu_s"] > 0]),
                     "server_cores": median([r["server_cpu_s"] / r["duration_s"] for r in rs]),
                     "packed_share": median([r["packed_docs"] / max(1, r["requests"]) for r in rs]),
                     "lone_short_ms": median([r["lone_short_ms"] for r in rs]),
                     "lone_mid_ms": median([r["lone_mid_ms"] for r in rs])})
    on, off = rows
    lines = ["# Classification packs over HTTP: packs on against off", ""] + blasinfo.header(m) + [
        "",
        "%s. Model `%s`; two servers per round (2 workers x 1 BLAS thread, `--classify-packs 1` and `0`), "
        "each driven by wrk for %d s with %d closed-loop connections, one short message a request "
        "(%d messages: clauses of Persuasion with a subject line, %.0f bytes on average), %d rounds, "
        "the order flipping each round; medians over rounds." % (time.strftime("%Y-%m-%d"), os.path.relpath(a.model, ROOT),
                                                               a.seconds, a.connections, len(msgs), mean_bytes, a.rounds),
        "",
        "| packs | requests/s | ÷ off | p50 ms | p99 ms | requests per server CPU s | server cores | documents packed |",
        "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append("| %s | %.0f | %.2f | %.2f | %.2f | %.0f | %.2f | %.0f%% |" % (
            "on" if r["packs"] else "off", r["rps"], r["rps"] / off["rps"], r["p50_ms"], r["p99_ms"], r["per_cpu_s"],
            r["server_cores"], 100 * r["packed_share"]))
    lines += ["", "Every answer was a 200. wrk's client shares the 2-core machine with the servers.", "",
              "A lone request of many documents on the idle server (one client, one request at a time; "
              "median ms a request; medium: %d runs of clauses of 150 to 250 bytes, %.0f on average):" % (
                  len(mids), sum(len(m.encode()) for m in mids) / len(mids)), "",
              "| packs | 32 short messages, ms | ÷ off | 16 medium messages, ms | ÷ off |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append("| %s | %.2f | %.2f | %.2f | %.2f |" % (
            "on" if r["packs"] else "off", r["lone_short_ms"], off["lone_short_ms"] / r["lone_short_ms"],
            r["lone_mid_ms"], off["lone_mid_ms"] / r["lone_mid_ms"]))
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "packs-%s.md" % name), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(a.out, "packs-%s.json" % name), "w") as f:
        json.dump({"machine": m, "runs": runs, "rows": rows}, f, indent=1)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
