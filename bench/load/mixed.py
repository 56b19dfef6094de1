#!/usr/bin/python3
"""mixed.py - mixed traffic against a running lunaserve for a bounded time, for bench/soak.sh.

Client threads loop over a weighted mix until the time is up, each request on a new connection:
/classify (short, long up to 64 kB, batches, base64), /generate, /generate_stream read to the
end, streams and requests whose client leaves early, OpenAI completions and chat (streamed or
not), deadlines that expire (504), and bad requests (400, 404, 405, 413, 415, 422). Every answer
is checked against the statuses its kind may get; anything else counts as unexpected. Meanwhile
the server's RSS is sampled from /proc/PID/status every second.

    mixed.py --port P --pid PID --seconds 120 [--threads 6] [--out build/soak/report.json]

Prints a summary; exits 1 when an answer was unexpected or the server died. Standard library
only."""
import argparse
import base64
import http.client
import json
import os
import random
import socket
import statistics
import sys
import threading
import time


def rss_kb(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def text(rng, n):
    words = ["the", "offer", "meeting", "free", "money", "tomorrow", "caf\u00e9", "click", "here", "Elizabeth",
             "Darcy", "unsubscribe", "report", "\u2603", "price", "now"]
    out, size = [], 0
    while size < n:
        w = rng.choice(words)
        out.append(w)
        size += len(w) + 1
    return " ".join(out)[:n]


class Client:
    def __init__(self, port, rng):
        self.port, self.rng = port, rng

    def conn(self, timeout=180):  # past the server's deadline (bench/soak.sh: 120 s): it answers first
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def call(self, method, path, body=None, headers=None, ctype="application/json"):
        c = self.conn()
        try:
            h = dict(headers or {})
            if body is not None:
                if not isinstance(body, (bytes, str)):
                    body = json.dumps(body)
                h.setdefault("Content-Type", ctype)
            c.request(method, path, body=body, headers=h)
            r = c.getresponse()
            data = r.read()
            return r.status, data
        finally:
            c.close()

    def stream(self, path, body, leave_after=None):
        """Reads an event stream; with leave_after, closes after that many events."""
        c = self.conn()
        try:
            c.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
            r = c.getresponse()
            if r.status != 200:
                r.read()
                return r.status, 0
            events = 0
            while True:
                line = r.readline()
                if not line:
                    break
                if line.startswith(b"data:"):
                    events += 1
                    if leave_after is not None and events >= leave_after:
                        return "left", events
            return r.status, events
        finally:
            c.close()

    def leave_early(self, path, body):
        """Sends a whole request and closes without reading the answer."""
        s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        b = json.dumps(body).encode()
        s.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                  % (path.encode(), len(b)) + b)
        s.close()
        return "left"


def model_names(port):
    """The served models' names, as OpenAI's and vLLM's routes want them: their directories'."""
    import json
    import urllib.request
    with urllib.request.urlopen("http://127.0.0.1:%d/info" % port, timeout=60) as r:
        models = json.loads(r.read())["models"]
    name = lambda k: os.path.basename(models[k]["path"].rstrip("/")) if k in models else "none"  # noqa: E731
    return name("classify"), name("generate")


def actions(port, rng, big_doc):
    c = Client(port, rng)
    clf_name, lm_name = model_names(port)
    seed = lambda: rng.randrange(1 << 31)  # noqa: E731
    bad = [
        ("/classify", "{\"inputs\": ", 400), ("/generate", "", 400), ("/classify", {"inputs": 5}, 422),
        ("/generate", {"inputs": "a", "parameters": {"top_p": 2}}, 422),
        ("/v1/completions", {"prompt": "a", "max_tokens": 0}, 422),
        ("/v1/chat/completions", {"messages": []}, 422),
        ("/classify", {"inputs": "a" * 70000}, 413),
        # issue 27's: duplicate keys, floats that underflow, a NUL escape, an unknown model, a
        # body of more JSON values than a parse may build, a state that is not one (issue 26)
        ("/generate", '{"inputs": "a", "parameters": {"max_new_tokens": 2, "max_new_tokens": 900}}', 400),
        ("/generate", {"inputs": "a", "parameters": {"top_p": 1e-46}}, 422),
        ("/v1/completions", {"prompt": "a", "repetition_penalty": 1e-320}, 422),
        ("/generate", '{"inputs": "a\\u0000b"}', 422),
        ("/v1/completions", {"model": "nonexistent", "prompt": "a"}, 404),
        ("/classify", '{"inputs": [' + ",".join(["0"] * 70000) + ']}', 413),
        ("/generate", {"inputs": "a", "state": "TFVOQVNUQVQBAAAA"}, 422),
    ]

    def bad_request():
        path, body, want = rng.choice(bad)
        st, _ = c.call("POST", path, body)
        return ("ok" if st == want else "%s: %d, expected %d" % (path, st, want)), None

    return [
        (20, "classify", lambda: c.call("POST", "/classify", {"inputs": text(rng, rng.randrange(20, 600))}), {200}),
        (4, "classify 16-40k", lambda: c.call("POST", "/classify", {"inputs": big_doc[:rng.randrange(16384, 40000)]}),
         {200}),
        (5, "classify batch", lambda: c.call("POST", "/classify", {"inputs": [text(rng, 200) for _ in range(8)],
                                                                   "raw_scores": rng.random() < 0.5}), {200}),
        (3, "classify base64", lambda: c.call("POST", "/classify", {
            "inputs_base64": base64.b64encode(os.urandom(rng.randrange(1, 3000))).decode()}), {200}),
        (3, "classify vllm", lambda: c.call("POST", "/classify", {"model": clf_name, "input": [text(rng, 100)]}), {200}),
        (10, "generate", lambda: c.call("POST", "/generate", {"inputs": text(rng, 40), "parameters": {
            "max_new_tokens": rng.randrange(1, 48), "do_sample": True, "seed": seed(), "top_k": 20, "top_p": 0.9,
            "details": rng.random() < 0.5, "stop": ["\n\n"], "return_raw_bytes": rng.random() < 0.3}}), {200}),
        (8, "generate_stream", lambda: c.stream("/generate_stream", {"inputs": text(rng, 40), "parameters": {
            "max_new_tokens": rng.randrange(1, 48), "seed": seed(), "do_sample": True}}), {200}),
        (4, "stream, client leaves", lambda: c.stream("/generate_stream", {"inputs": text(rng, 40), "parameters": {
            "max_new_tokens": 64}}, leave_after=rng.randrange(1, 5)), {"left", 200}),
        (3, "client leaves before the answer", lambda: c.leave_early(
            rng.choice(["/classify", "/generate"]), {"inputs": big_doc[:30000]} if rng.random() < 0.5 else
            {"inputs": "x", "parameters": {"max_new_tokens": 64}}), {"left"}),
        (5, "completions", lambda: c.call("POST", "/v1/completions", {
            "model": lm_name, "prompt": [text(rng, 30), text(rng, 20)], "max_tokens": rng.randrange(1, 32),
            "seed": seed(), "echo": rng.random() < 0.5}), {200}),
        (4, "completions stream", lambda: c.stream("/v1/completions", {
            "prompt": text(rng, 30), "max_tokens": 24, "stream": True,
            "stream_options": {"include_usage": True}}), {200}),
        (5, "chat", lambda: c.call("POST", "/v1/chat/completions", {"messages": [
            {"role": "system", "content": "Be brief."}, {"role": "user", "content": text(rng, 60)}],
            "max_tokens": rng.randrange(1, 32)}), {200}),
        (3, "chat stream", lambda: c.stream("/v1/chat/completions", {"messages": [
            {"role": "user", "content": text(rng, 60)}], "max_tokens": 24, "stream": True}), {200}),
        (3, "deadline 1 us", lambda: c.call("POST", "/generate", {"inputs": big_doc[:20000], "parameters": {
            "max_new_tokens": 64}}, headers={"X-Request-Timeout": "0.000001"}), {504, 200}),
        (10, "bad request", bad_request, {"ok"}),
        (2, "415", lambda: c.call("POST", "/classify", {"inputs": "a"}, ctype="application/xml"), {415}),
        (2, "classify raw body", lambda: c.call("POST", "/classify", text(rng, rng.randrange(0, 3000)).encode(),
                                                ctype=rng.choice(["text/plain", "application/octet-stream"])), {200}),
        (2, "404/405", lambda: c.call(rng.choice(["GET", "DELETE"]), rng.choice(["/nope", "/classify"])), {404, 405}),
        (3, "health/metrics/info", lambda: c.call("GET", rng.choice(["/health", "/metrics", "/info", "/v1/models"])),
         {200}),
    ]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--threads", type=int, default=6)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=None, help="JSON report (counts, RSS samples)")
    a = ap.parse_args()

    deadline = time.monotonic() + a.seconds
    lock = threading.Lock()
    counts, unexpected = {}, []
    rss = []  # (t, kB)
    t0 = time.monotonic()
    big_rng = random.Random(a.seed)
    big_doc = text(big_rng, 70000)

    def worker(i):
        rng = random.Random(a.seed * 1000 + i)
        acts = actions(a.port, rng, big_doc)
        weights = [w for w, *_ in acts]
        while time.monotonic() < deadline:
            _, name, fn, ok = rng.choices(acts, weights)[0]
            try:
                res = fn()
                status = res[0] if isinstance(res, tuple) else res
            except Exception as e:  # a connection error is an unexpected outcome too
                status = "exception %s" % type(e).__name__
            with lock:
                key = (name, str(status))
                counts[key] = counts.get(key, 0) + 1
                if status not in ok:
                    unexpected.append((round(time.monotonic() - t0, 2), name, str(status)))

    def sampler():
        while time.monotonic() < deadline + 1:
            kb = rss_kb(a.pid)
            if kb is None:
                return
            rss.append((round(time.monotonic() - t0, 2), kb))
            time.sleep(1)

    ts = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(a.threads)]
    st = threading.Thread(target=sampler, daemon=True)
    st.start()
    for t in ts:
        t.start()
    for t in ts:
        t.join(a.seconds + 200)  # a request in flight at the end has its client timeout (180 s)
    st.join(5)
    alive = rss_kb(a.pid) is not None

    total = sum(counts.values())
    by_kind = {}
    for (name, status), n in sorted(counts.items()):
        by_kind.setdefault(name, {})[status] = n
    kb = [k for _, k in rss]
    report = {"seconds": a.seconds, "threads": a.threads, "requests": total, "by_kind": by_kind,
              "unexpected": unexpected[:50], "n_unexpected": len(unexpected), "server_alive": alive,
              "rss_samples_kb": rss}
    if kb:
        warm = max(1, len(kb) // 10)  # the first tenth is warm-up (allocator arenas, ASan quarantine)
        half = kb[len(kb) // 2:]
        xs = [t for t, _ in rss[len(kb) // 2:]]
        slope = 0.0
        if len(half) >= 3 and statistics.pvariance(xs) > 0:
            mx, my = statistics.mean(xs), statistics.mean(half)
            slope = sum((x - mx) * (y - my) for x, y in zip(xs, half)) / sum((x - mx) ** 2 for x in xs)
        report.update({"rss_start_kb": kb[0], "rss_warm_kb": kb[warm], "rss_end_kb": kb[-1], "rss_max_kb": max(kb),
                       "rss_drift_kb": kb[-1] - kb[warm], "rss_slope_kb_per_min_second_half": slope * 60})
    if a.out:
        os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(report, f, indent=1)

    print("mixed load: %d requests in %.0f s from %d threads (%.0f/s)" % (total, a.seconds, a.threads,
                                                                         total / a.seconds))
    for name, st_ in by_kind.items():
        print("  %-32s %s" % (name, ", ".join("%s: %d" % kv for kv in st_.items())))
    if kb:
        print("RSS: start %.1f MB, after warm-up %.1f MB, end %.1f MB, max %.1f MB; drift since warm-up %+.1f MB; "
              "second-half slope %+.2f MB/min" % (report["rss_start_kb"] / 1024, report["rss_warm_kb"] / 1024,
                                                 report["rss_end_kb"] / 1024, report["rss_max_kb"] / 1024,
                                                 report["rss_drift_kb"] / 1024,
                                                 report["rss_slope_kb_per_min_second_half"] / 1024))
    if unexpected:
        print("UNEXPECTED answers: %d, first: %s" % (len(unexpected), unexpected[:10]))
    if not alive:
        print("the server is gone")
    return 1 if unexpected or not alive else 0


if __name__ == "__main__":
    sys.exit(main())
