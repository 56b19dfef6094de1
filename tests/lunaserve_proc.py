"""lunaserve_proc.py - starts lunaserve for a test: the process, run from the repository root,
its port read from the "listening" log line, and its stderr collected by a background thread
(the tests read the log to check what the server logged).

    from lunaserve_proc import start
    proc, port, log = start([binary, "--port", "0", ...])

LUNASERVE_WRAP, when set, is a command that prefixes the server's (split like a shell's words,
e.g. "taskset -c 0"): `make check-slow` runs the suites with the server pinned to one core that
way. The wrapper must exec the server (taskset, nice, chrt do), so that the process the tests
signal is the server itself.
"""
import json
import os
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
