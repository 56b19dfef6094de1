"""lunaserve_proc.py - starts lunaserve for a test: the process, run from the repository root,
its port read from the "listening" log line, and its stderr collected by a background thread
(the tests read the log to check what the server logged).

    from lunaserve_proc import start
    proc, port, log = start([binary, "--port", "0", ...])

LUNASERVE_WRAP, when set, is a command that prefixes the server's (split like a shell's words,
e.g. "taskset -c 0"): `make check-slow` runs the suites with the server pinned to one core that
way. The wrapper must exec the server (taskset, nice, chrt do), so that the process the tests
signal is the server itself.

LUNA_OPENAPI_PROXY, when set, is Prism's command (tests/openapi/run.sh sets it): proxy(port)
then starts Prism's validation proxy in front of a server, and Proxy.check reads its verdict on
each exchange, so that a test client sending through it has every request and every answer
checked against api/openapi.yaml.
"""
import atexit
import json
import os
import re
import shlex
import subprocess
import threading

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def wrap(argv):
    """argv prefixed with $LUNASERVE_WRAP's words (none when it is unset or empty)."""
    return shlex.split(os.environ.get("LUNASERVE_WRAP", "")) + list(argv)


class Log(list):
    """The server's stderr lines, appended by a reader thread while the server runs. The last
    lines (a sanitizer's report at exit among them) are read some time after the process has
    exited: wait_end() waits until the reader has seen the end of the stream."""

    def __init__(self):
        super().__init__()
        self.ended = threading.Event()

    def wait_end(self, timeout=30):
        """True once every line the server wrote is in the list (at most `timeout` seconds)."""
        return self.ended.wait(timeout)


def start(argv, env=None, timeout=60):
    """Runs argv (lunaserve and its flags, --port 0 among them) from the repository root and
    waits for its "listening" line. Returns (proc, port, log): log is a list (a Log) of the
    server's stderr lines that keeps growing while it runs. A server that exits, or logs no "listening"
    line within `timeout` seconds, is killed, and RuntimeError carries its log."""
    proc = subprocess.Popen(wrap(argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    log, found, listening = Log(), [], threading.Event()

    def drain():
        for raw in proc.stderr:
            line = raw.decode(errors="replace")
            log.append(line)
            if not found and '"msg":"listening"' in line:
                found.append(json.loads(line)["port"])
                listening.set()
        log.ended.set()
        listening.set()  # the server exited: stop waiting

    threading.Thread(target=drain, daemon=True).start()
    listening.wait(timeout)
    if not found:
        proc.kill()
        proc.wait()
        log.wait_end(5)
        raise RuntimeError("lunaserve did not start: " + "".join(log))
    return proc, found[0], log


class Proxy:
    """Prism's validation proxy in front of 127.0.0.1:upstream, on a port of its own (.port).

    It runs without --errors: Prism then forwards every request as it came, even one outside
    the spec, and lists what it found in the answer's sl-violations header, about the request
    and about the answer. With --errors it would answer an off-spec request itself (422), so the
    tests that send one on purpose could not see the server's answer, nor have it checked.
    check() turns the header into a failure."""

    def __init__(self, upstream, timeout=60):
        spec = os.path.join(ROOT, "api/openapi.yaml")
        # --cors=false: Prism would add its own Access-Control-* headers to every answer, and
        # the tests check the server's
        argv = shlex.split(os.environ["LUNA_OPENAPI_PROXY"]) + [
            "proxy", "--cors=false", "-h", "127.0.0.1", "-p", "0", spec, "http://127.0.0.1:%d" % upstream]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     cwd=ROOT)
        _running.add(self.proc)
        self.log, found, listening = Log(), [], threading.Event()

        def drain():  # Prism logs each request: read on, or it blocks once the pipe is full
            for raw in self.proc.stdout:
                line = raw.decode(errors="replace")
                self.log.append(line)
                m = re.search(r"Prism is listening on http://127\.0\.0\.1:(\d+)", line)
                if m and not found:
                    found.append(int(m.group(1)))
                    listening.set()
            self.log.ended.set()
            listening.set()

        threading.Thread(target=drain, daemon=True).start()
        listening.wait(timeout)
        if not found:
            self.stop()
            raise RuntimeError("the OpenAPI proxy did not start: " + "".join(self.log[-20:]))
        self.port = found[0]

    def check(self, method, path, headers, off_spec=False):
        """Fails (AssertionError) on what Prism found in one exchange; headers are the answer's,
        with lower-case names. off_spec: the test sends a request outside the spec on purpose
        (a wrong type, an unknown route), so findings about the request are expected; findings
        about the answer never are. An answer without X-Request-Id came from Prism itself (the
        server sends one on every answer), which happens when Prism could not forward the request:
        such a request must go to the server directly."""
        what = "%s %s" % (method, path)
        assert "x-request-id" in headers, "%s: answered by the OpenAPI proxy, not the server: %r" % (what, headers)
        found = json.loads(headers.get("sl-violations", "[]"))
        bad = [v for v in found if not off_spec or v.get("location", [""])[0] != "request"]
        assert not bad, "%s: the answer or the request does not match api/openapi.yaml: %s" % (what, json.dumps(bad))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        _running.discard(self.proc)


_running = set()


@atexit.register
def _stop_proxies():
    """A test that failed before its server's stop() leaves no proxy behind."""
    for p in list(_running):
        p.kill()


def proxy(upstream):
    """A Proxy in front of the server on 127.0.0.1:upstream when LUNA_OPENAPI_PROXY is set, else
    None."""
    return Proxy(upstream) if os.environ.get("LUNA_OPENAPI_PROXY") else None
