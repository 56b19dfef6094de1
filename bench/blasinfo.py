"""bench/blasinfo.py - what a benchmark ran on, for the header of every table and the name of
every run's files: the CPU (/proc/cpuinfo's model name, and the cpuid vendor/family/model/brand
that `luna sgemm --json` and lunaserve's /info report in "blas"), the core count, and the BLAS
library, version, kernel ("core") and how that kernel was selected (engine/blas.h).

Runs on different CPUs or kernels write to different files: <kind>-<cpu slug>-<core>.*, e.g.
docs/bench/encoder-amd-epyc-cooperlake.md, so that a run on one machine or kernel never
overwrites another's. Standard library only."""
import os
import re

# luna_blas_info.selection, in words
SELECTION = {
    "auto": "auto: the best core this CPU runs, chosen at startup",
    "environment": "the environment's OPENBLAS_CORETYPE",
    "setting": "set by --blas-core",
    "default": "OpenBLAS's own choice",
    "fallback": "OpenBLAS's own choice after a failed self-check",
}


def cpu_model():
    """/proc/cpuinfo's model name ("" off Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def slug(text):
    """"Intel(R) Xeon(R) Platinum 8480+ CPU @ 2.00GHz" -> "intel-xeon-platinum-8480" """
    t = text.lower()
    t = re.sub(r"\((r|tm)\)", " ", t)
    t = re.sub(r"@.*$", " ", t)
    t = re.sub(r"\b(cpu|processor|\d+-core)\b", " ", t)
    return re.sub(r"[^a-z0-9]+", "-", t).strip("-") or "unknown-cpu"


def machine(blas):
    """The facts of one run: blas is the "blas" object of `luna sgemm --json` or of /info
    (None when the binary predates it)."""
    blas = blas or {}
    model = cpu_model() or blas.get("cpu", "").split(": ", 1)[-1] or "unknown CPU"
    return {
        "cpu": model,
        "cpuid": blas.get("cpu", ""),
        "cores": os.cpu_count(),
        "library": blas.get("library", "BLAS"),
        "version": blas.get("version", "?"),
        "core": blas.get("core", "unknown"),
        "selection": blas.get("selection", "unknown"),
    }


def run_name(m, override=None):
    """The stem of a run's files: "<cpu slug>-<core>" (override: BENCH_NAME / LOAD_NAME)."""
    return override or "%s-%s" % (slug(m["cpu"]), slug(m["core"]))


def cpu_line(m):
    """ "AMD EPYC, 2 cores (cpuid: AuthenticAMD family 26 model 2: ...)" """
    s = "%s, %d cores" % (m["cpu"], m["cores"])
    if m["cpuid"] and m["cpuid"] != m["cpu"]:
        s += " (cpuid: %s)" % m["cpuid"]
    return s


def blas_line(m):
    """ "OpenBLAS 0.3.21, core Cooperlake (auto: the best core this CPU runs, chosen at startup)" """
    return "%s %s, core %s (%s)" % (m["library"], m["version"], m["core"],
                                   SELECTION.get(m["selection"], m["selection"]))


def header(m):
    """The two lines at the top of every table: the CPU and the BLAS kernel."""
    return ["CPU: %s." % cpu_line(m), "", "BLAS: %s." % blas_line(m)]


def check_cores(m, rows, what):
    """Every row that names its kernel ("blas_core") must name the run's: returns the lines
    that say which did not (a table never mixes kernels silently)."""
    bad = sorted({"%s %s" % (r.get("attention", "?"), r["blas_core"]) for r in rows
                  if r.get("blas_core") and r["blas_core"] != m["core"]})
    return ["**Warning: %s rows ran on another core than the sgemm measurement (%s): %s.**"
            % (what, m["core"], ", ".join(bad))] if bad else []
