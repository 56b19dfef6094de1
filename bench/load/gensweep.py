#!/usr/bin/python3
"""gensweep.py - the generation sweep of issue 25: concurrent /generate_stream clients against
two lunaserve processes on the bundled LM, one with continuous batching (--max-batch 64) and one
with --max-batch 1 (each generation alone on a worker, start to end: the server before batching),
measured in one run, alternately. bench/load/gensweep.sh runs it, then gensweep_report.py.

    gensweep.py --bin build/bin/lunaserve --luna build/bin/luna --model models/austen-lm \
                --out build/gensweep/full/raw.json [--quick] [--only lone-prefill]
                [--before-bin OLD/lunaserve --before-commit 82482f3]

What it measures, in this order:
  1. sgemm on all the cores (`luna sgemm --json`): the machine's rate, for the ceiling.
  2. The sweep. For 1, 4, 16 and 64 concurrent streams, each mode in turn (the order flips at
     every step, so that neither mode always follows the other): a closed loop, each client
     sending its next request when its stream ends (max_new_tokens 200, a short prompt, seeded
     sampling). After WARM seconds, a window of DURATION seconds: the token events that arrive in
     it give the aggregate tokens/s and the time per output token (TPOT, the gaps between
     successive token events of a stream, all streams pooled: what vLLM calls the inter-token
     latency); the streams that end in it, vLLM's TPOT (each request's decode time over its
     tokens after the first, one value a request); the requests sent in it give the
     time to first token (TTFT: from the request's connect to its first token event; the loop
     goes on past the window until each of them has its first token, so that a slow first token
     is counted, not cut off). Per window also the server's CPU time (/proc/PID/stat), this
     client's (getrusage), the whole machine's (/proc/stat), the server's luna_batch_size and
     the cores its steps took (luna_batch_step_lanes_total).
  3. A long prompt among decoding streams (batch mode): 16 streams in a closed loop; after
     WARM + LONG_WINDOW seconds a 204,800-byte prompt (max_new_tokens 1) arrives on a
     connection of its own. The 16 streams' TPOT is taken in three windows: LONG_WINDOW seconds
     before it arrives, from its arrival to its first token (its prefill), and LONG_WINDOW
     seconds after.
  4. A lone long prefill: the same prompt alone, TTFT, on each server in turn, ROUNDS rounds, with
     the server's CPU time over it (the cores its prefill used) and the load average. With
     --before-bin also on an older build (e.g. the server when issue 25 was filed, before any
     batching: its target compares against that), started with the same flags where its --help
     lists them, between the two modes so that it and batch mode alternate ABBA. With --wait-quiet,
     each one first waits (up to that many seconds) for a second in which the machine is quiet.
  5. sgemm again.
With --only lone-prefill, steps 2 and 3 are left out (a few minutes instead of about ten).

The client is one thread with non-blocking sockets (selectors): each read is timestamped as it
returns and split into SSE events; only a stream's last event (or one that is not a plain token)
is parsed as JSON. It shares the machine with the server: its CPU time is recorded per window.
Every server started is stopped with SIGTERM (then SIGKILL after 10 s) on every exit path; a
SIGALRM bounds the whole run (--max-seconds). Loopback only. Standard library only."""
import argparse
import json
import math
import os
import re
import resource
import selectors
import signal
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests"))
import lunaserve_proc  # noqa: E402

CONCURRENCY = [1, 4, 16, 64]
MODES = [("batch", 64), ("alone", 1)]  # name, --max-batch
NEW_TOKENS = 200
LONG_BYTES = 204800
QUIET_CORES = 0.25  # --wait-quiet: a second of the machine is quiet when it used at most this
HOST = "127.0.0.1"


# ---- the text ------------------------------------------------------------------------------------

def austen_text():
    """(text, where from): Persuasion from data/austen (tools/data/austen.py) when it is there,
    else the 4 KiB of it that the repository keeps for its tests."""
    for path in ("data/austen/test.txt", "tests/models/persuasion.txt"):
        full = os.path.join(ROOT, path)
        if os.path.exists(full):
            with open(full, encoding="utf-8") as f:
                return f.read(), path
    raise SystemExit("gensweep: no Austen text (tests/models/persuasion.txt is missing)")


def short_prompts(text, n=64):
    """Sentences of 40 to 200 bytes, whitespace folded: the short prompts, used in turn."""
    flat = re.sub(r"\s+", " ", text)
    out = [s.strip() for s in re.split(r"(?<=[.;!?])\s+", flat)]
    out = [s for s in out if 40 <= len(s.encode()) <= 200]
    if not out:
        raise SystemExit("gensweep: no sentence of 40 to 200 bytes in the text")
    return out[:n]


def long_prompt(text, size):
    """Exactly `size` bytes of the text (repeated when it is shorter), cut on an ASCII byte."""
    b = text.encode()
    b = (b * (size // len(b) + 1))[:size]
    return b.decode("utf-8", errors="ignore").ljust(size)[:size]


def request_bytes(prompt, new_tokens, seed, timeout_s=None):
    body = json.dumps({"inputs": prompt, "parameters": {"max_new_tokens": new_tokens, "do_sample": True,
                                                        "seed": seed}}).encode()
    head = ("POST /generate_stream HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
            "Content-Length: %d\r\nConnection: close\r\n%s\r\n" % (
                HOST, len(body), "X-Request-Timeout: %d\r\n" % timeout_s if timeout_s else "")).encode()
    return head + body


# ---- one stream ----------------------------------------------------------------------------------

class Chunked:
    """The chunked transfer coding, undone incrementally: feed() returns the payload bytes that
    `data` completes; eof is set at the last chunk."""

    def __init__(self):
        self.raw, self.left, self.skip, self.eof = b"", 0, 0, False

    def feed(self, data):
        raw, out, pos = self.raw + data, [], 0
        while pos < len(raw) and not self.eof:
            if self.left:
                take = raw[pos:pos + self.left]
                out.append(take)
                pos += len(take)
                self.left -= len(take)
                if not self.left:
                    self.skip = 2  # the CRLF after the chunk
                continue
            if self.skip:
                n = min(self.skip, len(raw) - pos)
                pos += n
                self.skip -= n
                continue
            i = raw.find(b"\r\n", pos)
            if i < 0:
                break
            size = int(raw[pos:i].split(b";")[0], 16)
            pos = i + 2
            if size == 0:
                self.eof = True
            self.left = size
        self.raw = raw[pos:]
        return b"".join(out)


class Stream:
    """One request on a connection of its own: sends it, reads the answer, and keeps the arrival
    time of every token event (times). start is taken before the connect. Ends with done set and,
    when the answer was not a complete 200 stream, error set (cut: closed by us, not an error)."""

    def __init__(self, port, data, tag):
        self.tag, self.start = tag, time.monotonic()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        self.sock.connect_ex((HOST, port))
        self.out, self.sent = memoryview(data), 0
        self.times = []
        self.status, self.head = None, b""
        self.payload, self.body, self.eof = b"", None, False
        self.final, self.error, self.done, self.cut, self.end = None, None, False, False, None

    def write(self):
        """Sends what the socket takes; True once the whole request is out."""
        try:
            self.sent += self.sock.send(self.out[self.sent:])
        except (BlockingIOError, InterruptedError):
            return False
        return self.sent == len(self.out)

    def read(self):
        """Reads what is there; the events it completes get this read's time."""
        try:
            data = self.sock.recv(32768)  # not more: a larger buffer costs an mmap per call
        except (BlockingIOError, InterruptedError):
            return
        t = time.monotonic()
        if not data:
            self.eof = True
            return
        if self.status is None:
            self.head += data
            i = self.head.find(b"\r\n\r\n")
            if i < 0:
                return
            head, data = self.head[:i].decode("latin-1"), self.head[i + 4:]
            self.status = int(head.split(" ", 2)[1])
            self.body = Chunked() if "transfer-encoding: chunked" in head.lower() else None
        if self.body:
            data = self.body.feed(data)
            self.eof = self.body.eof
        self.payload += data
        if self.status != 200:
            return  # the whole body is the error: read to the end
        while True:
            i = self.payload.find(b"\n\n")
            if i < 0:
                break
            ev, self.payload = self.payload[:i], self.payload[i + 2:]
            if ev.startswith(b"data:"):
                self.event(ev, t)

    def event(self, ev, t):
        if b'"details":null' in ev:  # a token, not the last: no JSON parsing
            self.times.append(t)
            return
        try:
            obj = json.loads(ev[5:])
        except ValueError:
            self.error = "unparsable event: %r" % ev[:120]
            return
        if "token" in obj:
            self.times.append(t)
        if obj.get("details") is not None:
            self.final = obj["details"]
        if "error" in obj:
            self.error = "error event: %s" % json.dumps(obj)[:200]

    def finish(self, cut=False):
        """Closes the connection and says how the answer ended."""
        self.done, self.cut, self.end = True, cut, time.monotonic()
        try:
            self.sock.close()
        except OSError:
            pass
        if cut or self.error:
            return
        if self.status is None:
            self.error = "no answer (connection closed)"
        elif self.status != 200:
            self.error = "HTTP %d: %s" % (self.status, self.payload[:200].decode("utf-8", "replace"))
        elif self.final is None:
            self.error = "stream ended without its last event (%d tokens)" % len(self.times)
        elif self.final.get("generated_tokens") != len(self.times):
            self.error = "%s tokens announced, %d events received" % (self.final.get("generated_tokens"),
                                                                      len(self.times))


# ---- the client: closed-loop streams and one-off requests, one thread ---------------------------

class Client:
    """Runs streams against one server: `loop(n)` starts n closed-loop clients (each sends its next
    request the moment its stream ends), `once(data)` one request; poll() drives them all."""

    def __init__(self, port, prompts, new_tokens, seed0=1):
        self.port, self.prompts, self.new_tokens = port, prompts, new_tokens
        self.sel = selectors.DefaultSelector()
        self.streams, self.open, self.looping = [], set(), True
        self.k = seed0

    def _add(self, data, tag):
        s = Stream(self.port, data, tag)
        self.streams.append(s)
        self.open.add(s)
        self.sel.register(s.sock, selectors.EVENT_WRITE, s)
        return s

    def _next(self, client, new_tokens=None):
        self.k += 1
        prompt = self.prompts[self.k % len(self.prompts)]
        return self._add(request_bytes(prompt, new_tokens or self.new_tokens, self.k), client)

    def loop(self, n):
        """n closed-loop clients. Client c's first request asks for (c + 1) / n of the tokens, so
        that the streams end at evenly spread times, as in a steady state, instead of all at once
        (in a batch, streams started together would keep ending together)."""
        for c in range(n):
            self._next(c, max(1, round(self.new_tokens * (c + 1) / n)))

    def once(self, data, tag="once"):
        return self._add(data, tag)

    def _end(self, s, cut=False):
        self.sel.unregister(s.sock)
        self.open.discard(s)
        s.finish(cut)
        if not cut and self.looping and isinstance(s.tag, int):
            self._next(s.tag)

    def poll(self, until, done=None):
        """Serves the sockets until time `until` or until done() is true."""
        while True:
            now = time.monotonic()
            if now >= until or (done and done()):
                return
            for key, ev in self.sel.select(min(until - now, 0.05)):
                s = key.data
                if ev & selectors.EVENT_WRITE:
                    try:
                        if s.write():
                            self.sel.modify(s.sock, selectors.EVENT_READ, s)
                    except OSError as e:
                        s.error = "send: %s" % e
                        self._end(s)
                    continue
                try:
                    s.read()
                except OSError as e:
                    s.error = s.error or "recv: %s" % e
                    s.eof = True
                if s.eof:
                    self._end(s)

    def stop(self):
        """Closes every open stream (the server sees its clients leave)."""
        self.looping = False
        for s in list(self.open):
            self._end(s, cut=True)
        self.sel.close()


# ---- statistics ----------------------------------------------------------------------------------

def pct(xs, p):
    """Nearest-rank percentile of xs (None when empty)."""
    if not xs:
        return None
    xs = sorted(xs)
    return xs[max(0, min(len(xs) - 1, int(math.ceil(p / 100.0 * len(xs))) - 1))]


def gaps_in(streams, t0, t1, tags=None):
    """The gaps between successive token events of each stream whose later event is in [t0, t1)."""
    out = []
    for s in streams:
        if tags is not None and s.tag not in tags:
            continue
        ts = s.times
        for i in range(1, len(ts)):
            if t0 <= ts[i] < t1:
                out.append(ts[i] - ts[i - 1])
    return out


def tokens_in(streams, t0, t1, tags=None):
    return sum(1 for s in streams if tags is None or s.tag in tags for t in s.times if t0 <= t < t1)


def ms(x):
    return None if x is None else round(1000.0 * x, 3)


def request_tpot(streams, t0, t1):
    """vLLM's TPOT of each stream that ended in [t0, t1) with 2 tokens or more: its decode time
    over its tokens after the first, (last - first) / (n - 1)."""
    return [(s.times[-1] - s.times[0]) / (len(s.times) - 1) for s in streams
            if s.done and not s.cut and not s.error and t0 <= s.end < t1 and len(s.times) > 1]


def summary(gaps, prefix="tpot"):
    return {prefix + "_p50_ms": ms(pct(gaps, 50)), prefix + "_p99_ms": ms(pct(gaps, 99)),
            prefix + "_max_ms": ms(max(gaps) if gaps else None), prefix + "_n": len(gaps)}


# ---- the server ----------------------------------------------------------------------------------

def known_flags(binary):
    """The flags a lunaserve binary lists in its --help: an older build lacks the later ones."""
    r = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=30)
    return set(re.findall(r"^\s+(--[a-z0-9-]+)", r.stdout + r.stderr, re.M))


class Server:
    """One lunaserve on 127.0.0.1, port 0 (tests/lunaserve_proc.py starts it and reads the port).
    With `known` (known_flags()), a flag of ours that is not in it is left out, with its value, and
    listed in .dropped: the same flags for an older build, where it has them (`extra`, the
    --server-arg flags, are passed as they are)."""

    def __init__(self, binary, model, max_batch, workers, extra, known=None):
        flags = ["--host", HOST, "--port", "0", "--generate-model", model, "--workers", str(workers),
                 "--blas-threads", "1", "--max-batch", str(max_batch), "--max-new-tokens", "256",
                 "--max-queue", "256", "--request-timeout", "300", "--max-request-timeout", "600",
                 "--drain-timeout", "5",
                 # no prefix state cache: the same long prompt comes back round after round, and
                 # what is measured is its prefill, not a lookup
                 "--state-cache-bytes", "0"]
        pairs = list(zip(flags[0::2], flags[1::2]))
        self.dropped = [f for f, _ in pairs if known is not None and f not in known]
        argv = [binary] + [x for f, v in pairs if f not in self.dropped for x in (f, v)] + extra
        self.argv, self.max_batch = argv, max_batch
        self.proc, self.port, self.log = lunaserve_proc.start(argv)

    def get(self, path, timeout=10):
        with socket.create_connection((HOST, self.port), timeout=timeout) as c:
            c.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (path, HOST)).encode())
            data = b""
            while True:
                b = c.recv(1 << 16)
                if not b:
                    break
                data += b
        head, _, body = data.partition(b"\r\n\r\n")
        if b"chunked" in head.lower():
            body = Chunked().feed(body)
        return body.decode("utf-8", "replace")

    def metrics(self):
        """The /metrics samples without labels, name -> value (and requests_total by code)."""
        out = {}
        for line in self.get("/metrics").splitlines():
            if not line or line[0] == "#":
                continue
            name, _, v = line.rpartition(" ")
            try:
                out[name] = float(v)
            except ValueError:
                pass
        return out

    def cpu_s(self):
        with open("/proc/%d/stat" % self.proc.pid) as f:
            p = f.read().rsplit(")", 1)[1].split()
        return (int(p[11]) + int(p[12])) / os.sysconf("SC_CLK_TCK")

    def wait_idle(self, cap=30.0):
        """Waits until the server has no request in flight; the seconds it took (cap if never)."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < cap:
            if self.metrics().get("luna_inflight_requests", 1) == 0:
                return time.monotonic() - t0
            time.sleep(0.05)
        return cap

    def stop(self):
        """SIGTERM, 10 s, then SIGKILL; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def machine_busy_s():
    with open("/proc/stat") as f:
        p = f.readline().split()
    return sum(int(x) for x in (p[1], p[2], p[3], p[6], p[7], p[8])) / os.sysconf("SC_CLK_TCK")


def own_cpu_s():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Meter:
    """CPU seconds of the server, this client and the machine, and the server's counters, over a span."""

    def __init__(self, srv):
        self.srv = srv
        self.m0 = srv.metrics()
        self.c0, self.o0, self.b0, self.t0 = srv.cpu_s(), own_cpu_s(), machine_busy_s(), time.monotonic()

    def end(self):
        m1, wall = self.srv.metrics(), time.monotonic() - self.t0
        d = {k: m1.get(k, 0) - self.m0.get(k, 0) for k in m1}
        server, client, busy = self.srv.cpu_s() - self.c0, own_cpu_s() - self.o0, machine_busy_s() - self.b0
        bs_n = d.get("luna_batch_size_count", 0)
        return {"wall_s": round(wall, 3), "server_cpu_s": round(server, 3), "client_cpu_s": round(client, 3),
                "machine_busy_s": round(busy, 3),
                "others_cores": round(max(0.0, busy - server - client) / wall, 3) if wall else None,
                "batch_steps": int(bs_n),
                "batch_size_mean": round(d.get("luna_batch_size_sum", 0) / bs_n, 2) if bs_n else None,
                # the cores a step took (an older build has no such counter: None)
                "step_lanes_mean": round(d["luna_batch_step_lanes_total"] / bs_n, 2)
                if bs_n and "luna_batch_step_lanes_total" in d else None,
                "server_tokens": int(d.get("luna_generated_tokens_total", 0)),
                "prompt_tokens": int(d.get("luna_prompt_tokens_total", 0)),
                "prefill_slices": int(d.get("luna_batch_prefill_tokens_count", 0))}


def errors_of(streams):
    errs = [s.error for s in streams if s.error]
    kinds = {}
    for e in errs:
        k = re.sub(r"\d+", "N", e)[:80]
        kinds[k] = kinds.get(k, 0) + 1
    return {"errors": len(errs), "error_kinds": kinds, "error_examples": errs[:3]}


# ---- the scenarios -------------------------------------------------------------------------------

def sweep_point(srv, prompts, n, warm, dur, drain_cap):
    """One closed-loop point: n clients, WARM s, then the measured window of DUR s."""
    cl = Client(srv.port, prompts, NEW_TOKENS, seed0=1000 * n)
    t_start = time.monotonic()
    cl.loop(n)
    cl.poll(t_start + warm)
    meter = Meter(srv)
    w0 = time.monotonic()
    w1 = w0 + dur
    cl.poll(w1)
    res = meter.end()
    # past the window: the loop goes on until every request sent in it has its first token
    sent = [s for s in cl.streams if w0 <= s.start < w1]
    cl.poll(w1 + drain_cap, done=lambda: all(s.times or s.done for s in sent))
    late = sum(1 for s in sent if not s.times and not s.done)
    cl.stop()
    idle = srv.wait_idle()
    ttft = [s.times[0] - s.start for s in sent if s.times]
    gaps = gaps_in(cl.streams, w0, w1)
    tok = tokens_in(cl.streams, w0, w1)
    completed = [s for s in cl.streams if s.done and not s.cut and not s.error and w0 <= s.end < w1]
    res.update({"streams": n, "window_s": round(w1 - w0, 3), "tokens": tok, "tokens_per_s": round(tok / (w1 - w0), 1),
                "per_stream_tokens_per_s": round(tok / (w1 - w0) / n, 1),
                "requests_sent": len(sent), "requests_completed": len(completed),  # ended in the window
                "ttft_p50_ms": ms(pct(ttft, 50)), "ttft_p99_ms": ms(pct(ttft, 99)),
                "ttft_max_ms": ms(max(ttft) if ttft else None), "ttft_n": len(ttft),
                "no_first_token_after_drain": late, "idle_after_stop_s": round(idle, 2),
                "finish_reasons": finish_reasons(completed)})
    res.update(summary(gaps))
    res.update(summary(request_tpot(cl.streams, w0, w1), "rtpot"))
    res.update(errors_of(cl.streams))
    return res


def finish_reasons(streams):
    out = {}
    for s in streams:
        r = (s.final or {}).get("finish_reason", "?")
        out[r] = out.get(r, 0) + 1
    return out


def long_among_streams(srv, prompts, long_text, n, warm, window, cap):
    """n streams decode; a long prompt arrives; their TPOT before, during its prefill, after."""
    cl = Client(srv.port, prompts, NEW_TOKENS, seed0=777)
    cl.loop(n)
    t_arrive = time.monotonic() + warm + window
    cl.poll(t_arrive)
    meter = Meter(srv)
    lp = cl.once(request_bytes(long_text, 1, 4242, timeout_s=600), tag="long")
    t_arrive = lp.start
    cl.poll(t_arrive + cap, done=lambda: bool(lp.times) or lp.done)
    t_first = lp.times[0] if lp.times else None
    during = meter.end()
    t_end = (t_first or time.monotonic()) + window
    cl.poll(t_end)
    cl.stop()
    idle = srv.wait_idle()
    tags = set(range(n))
    w = {"before": (t_arrive - window, t_arrive), "during": (t_arrive, t_first or t_arrive),
         "after": (t_first or t_arrive, t_end)}
    res = {"streams": n, "long_bytes": len(long_text.encode()), "window_s": window,
           "long_ttft_ms": ms(t_first - t_arrive) if t_first else None, "long_error": lp.error,
           "server_during": during, "idle_after_stop_s": round(idle, 2)}
    for name, (a, b) in w.items():
        g = gaps_in(cl.streams, a, b, tags)
        r = {"span_s": round(b - a, 3), "tokens_per_s": round(tokens_in(cl.streams, a, b, tags) / (b - a), 1) if b > a else None}
        r.update(summary(g))
        res[name] = r
    without = gaps_in(cl.streams, *w["before"], tags) + gaps_in(cl.streams, *w["after"], tags)
    res["without"] = summary(without)
    res["timeline"] = timeline(cl.streams, tags, t_arrive - window, t_end, t_arrive)
    res.update(errors_of([s for s in cl.streams if s.tag in tags]))
    return res


def timeline(streams, tags, t0, t1, origin):
    """About 120 bins (0.25 s at least): (start relative to origin, tokens/s, p99 gap ms, max gap ms)."""
    step = max(0.25, (t1 - t0) / 120)
    nb = int(math.ceil((t1 - t0) / step))
    gaps, toks = [[] for _ in range(nb)], [0] * nb
    for s in streams:
        if s.tag not in tags:
            continue
        ts = s.times
        for i, t in enumerate(ts):
            if t0 <= t < t1:
                b = min(nb - 1, int((t - t0) / step))
                toks[b] += 1
                if i:
                    gaps[b].append(t - ts[i - 1])
    return [[round(t0 + i * step - origin, 3), round(toks[i] / step, 1), ms(pct(gaps[i], 99)),
             ms(max(gaps[i]) if gaps[i] else None)] for i in range(nb)]


def wait_quiet(cap, level=QUIET_CORES):
    """Waits, at most `cap` seconds, for a second in which the machine's processes took at most
    `level` cores (the servers are idle then: on a shared machine, the others'). Returns the
    seconds waited and the cores of the last second."""
    t0, busy = time.monotonic(), None
    while True:
        b0 = machine_busy_s()
        time.sleep(1.0)
        busy = machine_busy_s() - b0
        if busy <= level or time.monotonic() - t0 >= cap:
            return round(time.monotonic() - t0, 1), round(busy, 2)


def lone_prefill(srv, long_text, cap, quiet_cap=0):
    """The long prompt alone on an idle server: its TTFT in ms (None on error, with the error), and
    the server's, this client's and the other processes' CPU over the request (Meter). With
    quiet_cap, first wait_quiet(quiet_cap)."""
    srv.wait_idle()
    waited, before = wait_quiet(quiet_cap) if quiet_cap else (None, None)
    meter = Meter(srv)
    cl = Client(srv.port, [], 1)
    s = cl.once(request_bytes(long_text, 1, 99, timeout_s=600), tag="lone")
    cl.poll(time.monotonic() + cap, done=lambda: bool(s.times) or s.done)
    ttft = s.times[0] - s.start if s.times else None
    cl.poll(time.monotonic() + 5, done=lambda: s.done)
    cl.stop()
    res = meter.end()
    res.update({"ttft_ms": ms(ttft), "error": s.error, "quiet_wait_s": waited, "busy_before_cores": before})
    return res


def lone_rounds(servers, order, long_text, rounds, cap, out, quiet_cap=0):
    """The lone long prefill on each server of `order` in turn, ROUNDS rounds, the order reversed
    at every round (ABBA...): out[name] gets one lone_prefill() per round. Returns the load
    average (1, 5, 15 min) before and after."""
    load = [list(os.getloadavg())]
    for k in range(rounds):
        for name in (order if k % 2 == 0 else order[::-1]):
            r = lone_prefill(servers[name], long_text, cap, quiet_cap)
            out.setdefault(name, []).append(r)
            print("gensweep: lone %d-byte prefill, %-6s %s ms, server CPU %.2f cores, others %.2f cores%s" % (
                len(long_text.encode()), name + ":", r["ttft_ms"], r["server_cpu_s"] / r["wall_s"],
                r["others_cores"] or 0, " (%s)" % r["error"] if r["error"] else ""), flush=True)
    load.append(list(os.getloadavg()))
    return load


def commit():
    """The checkout the servers were built from: its commit, "-dirty" when it has changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (head + ("-dirty" if dirty else "")) or None


def sgemm(luna, threads):
    r = subprocess.run([luna, "sgemm", "--size", "1024", "--threads", str(threads), "--json"],
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        return {"error": r.stderr.strip()[:200]}
    return json.loads(r.stdout)


# ---- main ----------------------------------------------------------------------------------------

class Alarm(Exception):
    pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--luna", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True, help="the raw results (JSON)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--duration", type=float, default=None, help="measured seconds per point (10; quick 2.5)")
    ap.add_argument("--warm", type=float, default=None, help="warm-up seconds per point (2; quick 1)")
    ap.add_argument("--long-bytes", type=int, default=None, help="the long prompt (204800; quick 32768)")
    ap.add_argument("--rounds", type=int, default=None, help="lone-prefill rounds per mode (3; quick 1)")
    ap.add_argument("--max-seconds", type=int, default=3600, help="the whole run's bound")
    ap.add_argument("--server-arg", action="append", default=[], help="one more lunaserve flag (repeatable)")
    ap.add_argument("--before-bin", default=None,
                    help="an older lunaserve: the lone prefill is timed on it too (only the flags its --help lists)")
    ap.add_argument("--before-commit", default=None, help="the commit --before-bin was built from (for the report)")
    ap.add_argument("--wait-quiet", type=float, default=0,
                    help="before each lone prefill, wait up to this many seconds for a second of the machine "
                         "at most QUIET_CORES busy (a shared machine; default 0: no wait)")
    ap.add_argument("--only", choices=["lone-prefill"], default=None,
                    help="lone-prefill: only the lone long prefill (and sgemm before and after), not the sweep")
    a = ap.parse_args()
    dur = a.duration or (2.5 if a.quick else 10.0)
    warm = a.warm or (1.0 if a.quick else 2.0)
    rounds = a.rounds or (1 if a.quick else 3)
    long_bytes = a.long_bytes or (32768 if a.quick else LONG_BYTES)
    long_window = 2.0 if a.quick else 5.0
    cap = 300.0  # a long prompt's first token, at most
    drain_cap = 120.0  # past a window, the wait for the first tokens of the requests sent in it

    def on_alarm(*_):
        raise Alarm("gensweep: the run passed --max-seconds %d" % a.max_seconds)

    def on_term(*_):
        raise SystemExit("gensweep: interrupted")
    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGTERM, on_term)
    signal.alarm(a.max_seconds)

    text, source = austen_text()
    prompts = short_prompts(text)
    long_text = long_prompt(text, long_bytes)
    with open(os.path.join(a.model, "config.json")) as f:
        config = json.load(f)
    raw = {"quick": a.quick, "date": time.strftime("%Y-%m-%d", time.gmtime()), "model": a.model, "config": config,
           "text_source": source, "prompts": len(prompts),
           "prompt_bytes_mean": round(sum(len(p.encode()) for p in prompts) / len(prompts), 1),
           "new_tokens": NEW_TOKENS, "duration_s": dur, "warm_s": warm, "long_window_s": long_window,
           "rounds": rounds, "drain_cap_s": drain_cap, "workers": a.workers, "cores": os.cpu_count(), "concurrency": CONCURRENCY,
           "env_openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"), "commit": commit(), "sweep": {}, "lone": {},
           "only": a.only, "long_bytes": len(long_text.encode()), "before_commit": a.before_commit,
           "wait_quiet_s": a.wait_quiet, "quiet_cores": QUIET_CORES}
    servers = {}
    t_run = time.monotonic()
    try:
        raw["sgemm_before"] = sgemm(a.luna, os.cpu_count())
        print("gensweep: sgemm %s GFLOP/s" % raw["sgemm_before"].get("gflops"), flush=True)
        for name, mb in MODES:
            servers[name] = Server(a.bin, a.model, mb, a.workers, a.server_arg)
        srv0 = servers["batch"]
        raw["info"] = json.loads(srv0.get("/info"))
        raw["argv"] = {k: s.argv for k, s in servers.items()}
        # the sweep: the modes alternate, the first one flipping at each step
        for i, n in enumerate(CONCURRENCY if not a.only else []):
            order = [m for m, _ in MODES] if i % 2 == 0 else [m for m, _ in reversed(MODES)]
            for name in order:
                r = sweep_point(servers[name], prompts, n, warm, dur, drain_cap)
                raw["sweep"].setdefault(name, []).append(r)
                print("gensweep: %-5s %2d streams: %7.0f tokens/s, TPOT p50 %s p99 %s ms (per request p99 %s), "
                      "TTFT p50 %s p99 %s ms, batch %s, lanes %s, errors %d, client CPU %.2f s" % (
                          name, n, r["tokens_per_s"], r["tpot_p50_ms"], r["tpot_p99_ms"], r["rtpot_p99_ms"],
                          r["ttft_p50_ms"], r["ttft_p99_ms"], r["batch_size_mean"], r["step_lanes_mean"], r["errors"],
                          r["client_cpu_s"]), flush=True)
        # a long prompt among 16 decoding streams (batch mode)
        if not a.only:
            r = long_among_streams(servers["batch"], prompts, long_text, 16, warm, long_window, cap)
            raw["long"] = r
            print("gensweep: long prompt among 16 streams: its TTFT %s ms; their TPOT p99 without %s ms, during %s ms" % (
                r["long_ttft_ms"], r["without"]["tpot_p99_ms"], r["during"]["tpot_p99_ms"]), flush=True)
        # a lone long prefill, the servers alternating (ABBA...); the older build's between this
        # build's two modes, so that it and batch mode are next to each other in every round
        order = [m for m, _ in MODES]
        if a.before_bin:
            # its own settings file beside it (bench/load/build_before.sh puts it there): from this
            # checkout it would read today's config/lunaserve.conf, with settings it does not know
            conf = os.path.join(os.path.dirname(os.path.abspath(a.before_bin)), "lunaserve.conf")
            extra = (["--config", conf] if os.path.exists(conf) else []) + a.server_arg
            servers["before"] = Server(a.before_bin, a.model, 1, a.workers, extra, known_flags(a.before_bin))
            raw["info_before"] = json.loads(servers["before"].get("/info"))
            raw["argv"]["before"] = servers["before"].argv
            raw["before_dropped_flags"] = servers["before"].dropped
            order.insert(1, "before")
        raw["lone_loadavg"] = lone_rounds(servers, order, long_text, rounds, cap, raw["lone"], a.wait_quiet)
        raw["metrics_end"] = {k: s.metrics() for k, s in servers.items()}
        raw["sgemm_after"] = sgemm(a.luna, os.cpu_count())
        print("gensweep: sgemm %s GFLOP/s" % raw["sgemm_after"].get("gflops"), flush=True)
    finally:
        signal.alarm(0)
        raw["server_exit"] = {k: s.stop() for k, s in servers.items()}
        raw["server_log_tail"] = {k: [line for line in s.log if '"level":"error"' in line or '"level":"warn"' in line][-20:]
                                  for k, s in servers.items()}
        raw["run_s"] = round(time.monotonic() - t_run, 1)
        raw["client_cpu_s"] = round(own_cpu_s(), 2)
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(raw, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
