#!/usr/bin/python3
"""tests/cluster/protocol.py - the request-smuggling cases of the bad-input matrix, sent through
HAProxy on deploy/haproxy.cfg (issue 27), on loopback only.

One lunaserve replica (the golden test models, max-body-bytes 64 kB) behind HAProxy, configured
as cluster.py configures it (deploy/haproxy.cfg with only the @cluster-test lines rewritten).
Each case of tests/badinput's protocol_cases() goes over a raw socket to HAProxy; the answer must
be the one this table expects: refused by HAProxy's parser (400, or 422 for a coding before
chunked; HTML, since HAProxy's parser errors take no http-error), refused by the normalisation
rules of deploy/haproxy.cfg (400 in lunaserve's error shape), or normalised and served (equal
Content-Length headers merged, Content-Length dropped for chunked, obs-fold unfolded). A refusal
closes the connection and answers nothing more, and never reaches the replica (its request
counters do not move); a request HAProxy normalises reaches it exactly as many times as HAProxy
read a request. Prints "N passed, N failed"; exit 1 on any failure. About 10 s.
Env: LUNA_BIN_DIR (default build/bin)."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.join(ROOT, "tests", "badinput"))
import cluster  # noqa: E402
from lunaserve_proc import start  # noqa: E402
import test_badinput as tb  # noqa: E402

BIN = os.path.join(ROOT, os.environ.get("LUNA_BIN_DIR", "build/bin"), "lunaserve")
HAPROXY_PARSER = "haproxy's parser"
HAPROXY_RULE = "deploy/haproxy.cfg's rules"
SERVED = "normalised and served"
# case name -> (status, who, requests the replica must see)
EXPECT = {
    "two different Content-Length": (400, HAPROXY_PARSER, 0),
    "two equal Content-Length": (200, SERVED, 2),  # merged; the bytes after the body are a 2nd request
    "Content-Length and Transfer-Encoding: chunked (RFC 9112 6.1: close)": (200, SERVED, 1),
    "Transfer-Encoding before Content-Length": (400, HAPROXY_PARSER, 0),
    "Transfer-Encoding: gzip, chunked": (422, HAPROXY_PARSER, 0),
    "Transfer-Encoding: identity": (400, HAPROXY_PARSER, 0),
    "Transfer-Encoding: xchunked": (400, HAPROXY_PARSER, 0),
    "Transfer-Encoding: chunked;ext": (400, HAPROXY_PARSER, 0),
    "Transfer-Encoding: ; (a parameter without a coding)": (400, HAPROXY_PARSER, 0),
    "Transfer-Encoding: , ;q, chunked": (422, HAPROXY_PARSER, 0),
    "Transfer-Encoding: (empty)": (400, HAPROXY_PARSER, 0),
    "Transfer-Encoding: chunked, chunked": (400, HAPROXY_PARSER, 0),
    "two Transfer-Encoding headers": (400, HAPROXY_PARSER, 0),
    "Transfer-Encoding: gzip, then chunked": (422, HAPROXY_PARSER, 0),
    "HTTP/1.1 without Host": (400, HAPROXY_RULE, 0),
    "HTTP/1.1 POST without Host": (400, HAPROXY_RULE, 0),
    "two Host headers": (400, HAPROXY_PARSER, 0),
    "two Host headers on a POST": (400, HAPROXY_PARSER, 0),
    "bare CR inside a header value": (400, HAPROXY_PARSER, 0),
    "bare CR inside a header name": (400, HAPROXY_PARSER, 0),
    "bare CR before the colon on a POST": (400, HAPROXY_PARSER, 0),
    "NUL byte inside a header value": (400, HAPROXY_RULE, 0),
    "NUL byte at the end of a header value": (400, HAPROXY_RULE, 0),
    "NUL byte in Host (the last header)": (400, HAPROXY_RULE, 0),
    "NUL byte in Authorization": (400, HAPROXY_RULE, 0),
    "two Authorization headers": (400, HAPROXY_RULE, 0),
    "a folded header line (obs-fold)": (200, SERVED, 1),
    "a space inside a header name": (400, HAPROXY_PARSER, 0),
    "DEL in a header value": (400, HAPROXY_RULE, 0),
}

passed = failed = 0


def check(name, cond, detail=""):
    global passed, failed
    if cond:
        passed += 1
        print(f"ok   {name}")
    else:
        failed += 1
        print(f"FAIL {name}" + (f"\n  | {detail}" if detail else ""))


def served(port):
    """Requests the replica has answered, but for /metrics itself and HAProxy's checks (/ready)."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(int(m.group(2)) for m in re.finditer(r'^luna_requests_total\{endpoint="([a-z_]+)",code="\d+"\} (\d+)$',
                                                    body, re.M) if m.group(1) not in ("metrics", "ready"))


def one(fe, be, name, req, status, who, reaching):
    before = served(be)
    c = tb.Conn(fe, 10)
    try:
        c.send(req)
        r = c.response()
        ok = r is not None and r.status == status
        detail = repr(r)
        if ok and status >= 400:
            ok = c.closed_by_peer(5) and c.buf == b""
            detail = "not closed, or more was answered: %r" % c.buf[:200]
            if ok and who == HAPROXY_RULE:
                try:
                    e = tb.error_shape(r, status, "bad_request")
                    ok = "HAProxy" in e["message"]
                except AssertionError as ex:
                    ok, detail = False, str(ex)
        elif ok and reaching == 2:
            r2 = c.response()
            ok = r2 is not None and r2.status == 200 and tb.json.loads(r2.body) == {"status": "ok"}
            detail = "the second request: %r" % (r2,)
    finally:
        c.close()
    time.sleep(0.05)
    after = served(be)
    check(f"{name}: {status} by {who}; the replica saw {after - before} request(s), expected {reaching}",
          ok and after - before == reaching, detail)


def main():
    tmp = tempfile.mkdtemp(prefix="lunaserve-protocol-")
    procs = []
    try:
        proc, be, log = start([BIN, "--port", "0", "--classify-model", os.path.join(ROOT, "tests/golden/email_subject_body"),
                             "--generate-model", os.path.join(ROOT, "tests/golden/lm_defaults"),
                             "--max-body-bytes", "65536", "--workers", "1", "--health-port", "0"])
        procs.append(proc)
        fe = cluster.free_port()
        cfg = os.path.join(tmp, "haproxy.cfg")
        with open(cfg, "w") as f:
            hp = next(json.loads(ln) for ln in log if '"msg":"listening"' in ln)["health_port"]
            f.write(cluster.haproxy_config(os.path.join(ROOT, "deploy/haproxy.cfg"), fe, [(be, hp)], os.path.join(tmp, "sock")))
        c = subprocess.run(["haproxy", "-c", "-q", "-f", cfg], capture_output=True, text=True)
        check("haproxy -c accepts deploy/haproxy.cfg", c.returncode == 0, c.stderr[-400:])
        hap = subprocess.Popen(["haproxy", "-db", "-f", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(hap)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if cluster.haproxy_stats(os.path.join(tmp, "sock")).get("r1", {}).get("status") == "UP":
                break
            time.sleep(0.2)
        cases = tb.protocol_cases()
        check("every protocol case of the matrix has an expectation here",
              sorted(n for n, *_ in cases) == sorted(EXPECT), set(n for n, *_ in cases) ^ set(EXPECT))
        for name, req, _, _ in cases:
            if name in EXPECT:
                one(fe, be, name, req, *EXPECT[name])
        # the chunk of 2^64-1 bytes: HAProxy refuses the size at once (lunaserve alone cannot see it)
        one(fe, be, "a chunk of ffffffffffffffff bytes", tb.head(b"Transfer-Encoding: chunked\r\n") +
            b"ffffffffffffffff\r\nabc", 400, HAPROXY_PARSER, 0)
        # a header name with "_" is dropped, the request served
        one(fe, be, "X_Request_Id (a name outside [A-Za-z0-9-])", tb.head(b"X_Request_Id: evil\r\nContent-Length: %d\r\n"
                                                                           % len(tb.BODY)) + tb.BODY, 200, SERVED, 1)
        tb.classify_ok(tb.roundtrip(fe, tb.head(b"Content-Length: %d\r\nConnection: close\r\n" % len(tb.BODY)) + tb.BODY))
        check("a good request still passes, and the replica still runs", proc.poll() is None)
        proc.send_signal(signal.SIGTERM)
        check("the replica exits 0 on SIGTERM", proc.wait(30) == 0)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        subprocess.run(["rm", "-rf", tmp])
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
