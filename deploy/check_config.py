#!/usr/bin/python3
"""deploy/check_config.py - the deployment files parse and agree with each other.

The replicas' settings live in deploy/lunaserve.env; compose.yaml reads that file, and
tests/cluster/run.sh runs it, but k8s/deployment.yaml repeats the values and the memory limits,
grace periods and timeouts elsewhere are derived from them. This checks every such link:
YAML syntax (python3-yaml; and Compose's schema when docker-compose is installed), compose's and Kubernetes' limits against the memory budget
(budget + 256 MiB), grace periods against the drain timeout, HAProxy's server timeout against
the request timeout, probes and health checks on /ready and /health, the image's STOPSIGNAL,
user and port, and `haproxy -c` when HAProxy is installed. Prints "N passed, N failed".
"""
import os
import re
import shutil
import subprocess
import sys

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
HEADROOM = 256 << 20  # bytes above the memory budget: weights, contexts, stacks, BLAS buffers
passed = failed = 0


def check(name, cond, detail=""):
    global passed, failed
    if cond:
        passed += 1
        print(f"ok   {name}")
    else:
        failed += 1
        print(f"FAIL {name}" + (f"\n  | {detail}" if detail else ""))


def nbytes(s):
    """1G (lunaserve, binary), 1280M / 1280m (Docker, binary), 1280Mi (Kubernetes)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)[Bb]?\s*", str(s), re.I)
    if not m:
        raise ValueError(f"not a size: {s!r}")
    return int(float(m.group(1)) * 1024 ** " KMGT".index(m.group(2).upper() or " "))


def seconds(s):
    m = re.fullmatch(r"(\d+)(ms|s|m)?", str(s))
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, None: 1}[m.group(2)]


def load(path):
    try:
        with open(os.path.join(HERE, path)) as f:
            docs = [d for d in yaml.safe_load_all(f) if d is not None]
        check(f"{path}: YAML parses", len(docs) >= 1)
        return docs[0] if docs else {}
    except (OSError, yaml.YAMLError) as e:
        check(f"{path}: YAML parses", False, str(e))
        return {}


env = {}
for line in open(os.path.join(HERE, "lunaserve.env")):
    line = line.strip()
    if line and not line.startswith("#"):
        k, v = line.split("=", 1)
        env[k] = v
check("lunaserve.env: every line is LUNASERVE_NAME=value", all(k.startswith("LUNASERVE_") and v and " " not in v for k, v in env.items()))
budget = nbytes(env["LUNASERVE_MEMORY_BUDGET"])
limit = budget + HEADROOM
drain = float(env["LUNASERVE_DRAIN_TIMEOUT"])
req_timeout = max(float(env["LUNASERVE_REQUEST_TIMEOUT"]), float(env["LUNASERVE_MAX_REQUEST_TIMEOUT"]))
workers = int(env["LUNASERVE_WORKERS"])

# ---- compose ------------------------------------------------------------------------------------
c = load("compose.yaml")
svc = (c.get("services") or {}).get("lunaserve", {})
hap = (c.get("services") or {}).get("haproxy", {})
res = (svc.get("deploy") or {}).get("resources") or {}
check("compose: lunaserve reads lunaserve.env", svc.get("env_file") in ("lunaserve.env", ["lunaserve.env"]))
check(f"compose: memory limit = budget + 256 MiB = {limit >> 20} MiB",
      nbytes((res.get("limits") or {}).get("memory", "0")) == limit, str(res))
check("compose: memory reservation = limit", nbytes((res.get("reservations") or {}).get("memory", "0")) == limit)
check(f"compose: cpus = LUNASERVE_WORKERS = {workers}", float((res.get("limits") or {}).get("cpus", 0)) == workers)
check("compose: stop_signal SIGTERM, stop_grace_period > drain timeout",
      svc.get("stop_signal") == "SIGTERM" and seconds(svc.get("stop_grace_period", "0")) > drain)
check("compose: several replicas", int((svc.get("deploy") or {}).get("replicas", 1)) >= 2)
health_port = env.get("LUNASERVE_HEALTH_PORT", "")
check(f"compose: exposes the health port ({health_port})", health_port.isdigit() and health_port in map(str, svc.get("expose", [])))
check("compose: haproxy mounts haproxy.cfg and waits for healthy replicas",
      any(str(v).startswith("./haproxy.cfg:") for v in hap.get("volumes", []))
      and (hap.get("depends_on") or {}).get("lunaserve", {}).get("condition") == "service_healthy")

dc = shutil.which("docker-compose")
if dc:  # Compose's own schema check, when Compose v1 is installed (Debian's docker-compose)
    r = subprocess.run([dc, "-f", os.path.join(HERE, "compose.yaml"), "config", "-q"], capture_output=True, text=True,
                       timeout=60)
    check("docker-compose config -q: compose.yaml is valid Compose", r.returncode == 0, (r.stderr or r.stdout).strip()[-300:])

# ---- haproxy ------------------------------------------------------------------------------------
cfg = open(os.path.join(HERE, "haproxy.cfg")).read()
directives = [re.sub(r"\s+#.*$", "", ln).strip() for ln in cfg.split("\n") if ln.strip() and not ln.strip().startswith("#")]


def directive(name):
    return next((d for d in directives if d == name or d.startswith(name + " ")), "")


check("haproxy: health checks GET /ready, expecting 200",
      directive("option httpchk") == "option httpchk GET /ready" and directive("http-check expect") == "http-check expect status 200")
ro = directive("retry-on").split()[1:]
check("haproxy: retry-on conn-failure empty-response response-timeout 503, with redispatch",
      {"conn-failure", "empty-response", "response-timeout", "503"} <= set(ro)
      and directive("option redispatch") and directive("option http-buffer-request"), str(ro))
ts = seconds(directive("timeout server").split()[-1] if directive("timeout server") else "0")
check(f"haproxy: checks on the health port ({health_port})",
      f" port {health_port} " in " " + directive("default-server") + " ", directive("default-server"))
check(f"haproxy: timeout server ({ts:.0f} s) > the longest request a replica allows ({req_timeout:.0f} s)", ts > req_timeout)
gen = cfg[cfg.find("\nbackend lunaserve_gen\n"):] if "\nbackend lunaserve_gen\n" in cfg else ""
gen = gen[:gen.find("\n\n")] if "\n\n" in gen else gen
check("haproxy: the generation routes go to lunaserve_gen, hashed (consistent) on X-Session-Id or the prompt",
      directive("use_backend") == "use_backend lunaserve_gen if { path /generate /generate_stream /v1/completions "
      "/v1/chat/completions }" and re.search(r"(?m)^\s*balance hash var\(txn\.route_key\)$", gen)
      and re.search(r"(?m)^\s*hash-type consistent\b", gen) and "req.hdr(x-session-id)" in gen
      and "@cluster-test: servers" in gen, gen[:200])
check("haproxy: @cluster-test markers for bind, servers, resolvers",
      all(f"@cluster-test: {k}" in cfg for k in ("bind", "servers", "resolvers")))
if shutil.which("haproxy"):
    r = subprocess.run(["haproxy", "-c", "-q", "-f", os.path.join(HERE, "haproxy.cfg")], capture_output=True, text=True)
    check("haproxy -c haproxy.cfg", r.returncode == 0, r.stderr.strip()[-300:])

# ---- Kubernetes ---------------------------------------------------------------------------------
d = load("k8s/deployment.yaml")
s = load("k8s/service.yaml")
h = load("k8s/hpa.yaml")
pod = ((d.get("spec") or {}).get("template") or {}).get("spec") or {}
ctr = (pod.get("containers") or [{}])[0]
kenv = {e["name"]: str(e.get("value")) for e in ctr.get("env", [])}
check("k8s: Deployment env = lunaserve.env", kenv == env,
      str({k: (env.get(k), kenv.get(k)) for k in set(env) | set(kenv) if env.get(k) != kenv.get(k)}))
rr = ctr.get("resources") or {}
check(f"k8s: memory requests = limits = budget + 256 MiB = {limit >> 20}Mi",
      nbytes((rr.get("requests") or {}).get("memory", "0")) == limit == nbytes((rr.get("limits") or {}).get("memory", "0")), str(rr))
check(f"k8s: cpu limit = LUNASERVE_WORKERS = {workers}", float((rr.get("limits") or {}).get("cpu", 0)) == workers)
probe = lambda p: ((ctr.get(p) or {}).get("httpGet") or {}).get("path")  # noqa: E731
check("k8s: readiness /ready, liveness /health, startup /health",
      probe("readinessProbe") == "/ready" and probe("livenessProbe") == "/health" and probe("startupProbe") == "/health")
probe_port = lambda p: ((ctr.get(p) or {}).get("httpGet") or {}).get("port")  # noqa: E731
named = {p.get("name"): str(p.get("containerPort")) for p in ctr.get("ports", [])}
check(f"k8s: every probe on the health port ({health_port}), named in the container's ports",
      all(named.get(probe_port(p)) == health_port for p in ("readinessProbe", "livenessProbe", "startupProbe")), str(named))
pre = (((ctr.get("lifecycle") or {}).get("preStop") or {}).get("exec") or {}).get("command") or []
pre_s = float(pre[1]) if len(pre) == 2 and pre[0] == "sleep" else None
grace = pod.get("terminationGracePeriodSeconds", 30)
check(f"k8s: preStop sleep, and terminationGracePeriodSeconds ({grace}) > preStop ({pre_s}) + drain timeout ({drain:.0f})",
      pre_s is not None and grace > pre_s + drain)
check("k8s: runs as non-root 10001", (pod.get("securityContext") or {}).get("runAsNonRoot") is True
      and (pod.get("securityContext") or {}).get("runAsUser") == 10001)
labels = ((d.get("spec") or {}).get("template") or {}).get("metadata", {}).get("labels", {})
ports = {p.get("name") for p in ctr.get("ports", [])}
sp = ((s.get("spec") or {}).get("ports") or [{}])[0]
check("k8s: Service selects the pods and targets their named port",
      (s.get("spec") or {}).get("selector", {}).items() <= labels.items() and sp.get("targetPort") in ports)
hs = h.get("spec") or {}
check("k8s: HPA scales the Deployment on CPU",
      hs.get("scaleTargetRef", {}).get("name") == d.get("metadata", {}).get("name")
      and any((m.get("resource") or {}).get("name") == "cpu" for m in hs.get("metrics", []))
      and 1 <= hs.get("minReplicas", 1) <= hs.get("maxReplicas", 0))

# ---- the image ----------------------------------------------------------------------------------
df = open(os.path.join(ROOT, "Dockerfile")).read()
check("Dockerfile: STOPSIGNAL SIGTERM, EXPOSE 8080, USER 10001, HEALTHCHECK, LUNASERVE_HOST=0.0.0.0",
      all(re.search(p, df, re.M) for p in (r"^STOPSIGNAL SIGTERM$", r"^EXPOSE 8080$", r"^USER 10001", r"^HEALTHCHECK ", r"LUNASERVE_HOST=0\.0\.0\.0")))

print(f"{passed} passed, {failed} failed")
sys.exit(0 if failed == 0 else 1)
