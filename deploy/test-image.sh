#!/bin/sh
# deploy/test-image.sh - build the Dockerfile and prove that the image serves: run it with host
# networking on a free loopback port, check its configuration (non-root user, EXPOSE, HEALTHCHECK,
# STOPSIGNAL, LUNASERVE_HOST=0.0.0.0), curl /health, /ready, /classify and /generate, run its
# healthcheck, stop it with SIGTERM and check that it drained and exited 0. Prints
# "N passed, N failed"; exits 1 on any failure.
#
# Engine: docker when a Docker engine answers (`docker info`), else podman, which it installs
# (with buildah, debootstrap and runc, from Debian's archive) when missing. ENGINE=podman|docker
# forces one. With podman no registry is needed (the CI machines reach none): the recipe of
# CONTAINERS.md (/work/shared) - a private storage.conf and containers.conf (runc, cgroupfs), a
# Debian bookworm minbase made by debootstrap, trimmed as bookworm-slim is, and imported as
# localhost/debian:bookworm-minbase-v2 (the base of both stages), chroot isolation for the
# build, and --format docker so that HEALTHCHECK is kept.
#
# State is cached under $LUNASERVE_CI_DIR (default /var/tmp/lunaserve-ci): the container storage
# with its layer cache (pruned past 2 GB), and the debootstrap tarball; a re-run rebuilds only
# what changed.
# Bounded: debootstrap 10 min, build 30 min (here: first run ~2 min in all, later ones ~30 s),
# the rest ~1 min.
# Env: IMAGE (default lunaserve:ci), SKIP_BUILD=1 tests an existing IMAGE, BUILD_ONLY=1 stops
# after the build, DEPS_ONLY=1 after installing the engine's packages (.ci/run: the build runs in
# the background while the tests do, the test after them), KEEP_IMAGE=0 removes
# it at the end (default: kept, so the layer cache stays warm).
set -u
cd "$(dirname "$0")/.." || exit 1
image=${IMAGE:-lunaserve:ci}
name=lunaserve-ci-$$
state=${LUNASERVE_CI_DIR:-/var/tmp/lunaserve-ci}
sudo=""
[ "$(id -u)" = 0 ] || sudo=sudo
pass=0 fail=0
t_start=$(date +%s)

ok()   { pass=$((pass + 1)); echo "ok   $1"; }
bad()  { fail=$((fail + 1)); echo "FAIL $1"; [ $# -lt 2 ] || printf '%s\n' "$2" | head -15 | sed 's/^/  | /'; }
# check NAME CMD...: the command succeeds
check() { n=$1; shift; if out=$("$@" 2>&1); then ok "$n"; else bad "$n" "$out"; fi; }
finish() {
  echo "$pass passed, $fail failed ($(($(date +%s) - t_start)) s)"
  [ "$fail" = 0 ]
  exit $?
}

# --- engine ---------------------------------------------------------------------------------
engine=${ENGINE:-}
if [ -z "$engine" ]; then
  if command -v docker >/dev/null && timeout 20 docker info >/dev/null 2>&1; then engine=docker; else engine=podman; fi
fi
echo "engine: $engine"
[ "$engine" != podman ] && [ "${DEPS_ONLY:-0}" = 1 ] && { echo "deps only: $engine needs none"; exit 0; }
if [ "$engine" = podman ]; then
  missing=""
  for c in podman:podman buildah:buildah debootstrap:debootstrap runc:runc; do
    command -v "${c%%:*}" >/dev/null || missing="$missing ${c#*:}"
  done
  if [ -n "$missing" ]; then
    echo "installing$missing"
    # shellcheck disable=SC2086
    if ! { $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive \
             apt-get install -y -qq --no-install-recommends $missing >/dev/null; }; then
      bad "install$missing"; finish
    fi
  fi
  [ "${DEPS_ONLY:-0}" = 1 ] && { echo "deps only: $engine and its tools are installed"; exit 0; }
  mkdir -p "$state"
  cat >"$state/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$state/graph"
runroot = "$state/runroot"
EOF
  cat >"$state/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
  export CONTAINERS_STORAGE_CONF="$state/storage.conf" CONTAINERS_CONF="$state/containers.conf"
  # one run at a time per state dir (the base image and the cache are shared)
  exec 9>"$state/lock"
  flock -w 1800 9 || { bad "lock $state/lock"; finish; }
fi
E() { "$engine" "$@"; }

# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
  E rm -f -t 0 "$name" >/dev/null 2>&1 || E rm -f "$name" >/dev/null 2>&1
  [ "${KEEP_IMAGE:-1}" = 1 ] || E rmi -f "$image" >/dev/null 2>&1
  # bounded disk: each source change leaves an untagged build stage behind; past 2 GB, drop
  # them all (the next build then fetches its apt packages again, ~40 s)
  if [ "$engine" = podman ] && [ "$(du -sm "$state/graph" 2>/dev/null | cut -f1)" -gt 2048 ] 2>/dev/null; then
    E image prune -f >/dev/null 2>&1
  fi
  rm -rf "$tmp"
}
tmp=$(mktemp -d)
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- base image (podman only) ----------------------------------------------------------------
build_args=""
if [ "$engine" = podman ]; then
  # A Debian bookworm minbase, trimmed as the official bookworm-slim is: no apt lists or caches,
  # no docs but the copyrights, no man pages or locales, and dpkg and apt configured to keep it
  # so. Bump the version when this recipe changes, so that an older cached base is not reused.
  base=localhost/debian:bookworm-minbase-v2
  if ! E image exists "$base"; then
    tarball=$state/bookworm-minbase-v2.tar
    if [ ! -s "$tarball" ]; then
      mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null)
      mirror=${mirror:-http://deb.debian.org/debian}
      echo "debootstrap bookworm minbase from $mirror"
      t0=$(date +%s)
      r=$state/rootfs
      rm -rf "$r"
      if ! timeout 600 debootstrap --variant=minbase bookworm "$r" "$mirror" >"$tmp/debootstrap.log" 2>&1; then
        bad "debootstrap" "$(tail -15 "$tmp/debootstrap.log")"; finish
      fi
      # the same apt sources as the official image: bookworm, -updates and -security
      if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        cp /etc/apt/sources.list.d/debian.sources "$r/etc/apt/sources.list.d/"
        rm -f "$r/etc/apt/sources.list"
      fi
      rm -rf "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/*.bin "$r"/var/cache/apt/archives/*.deb \
             "$r"/usr/share/man/* "$r"/usr/share/info/* "$r"/usr/share/locale/*
      find "$r/usr/share/doc" -type f ! -name copyright -delete
      find "$r/usr/share/doc" -type d -empty -delete
      printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
        'path-exclude /usr/share/man/*' 'path-exclude /usr/share/info/*' 'path-exclude /usr/share/locale/*' \
        >"$r/etc/dpkg/dpkg.cfg.d/slim"
      printf '%s\n' 'Dir::Cache::pkgcache "";' 'Dir::Cache::srcpkgcache "";' \
        'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };' \
        >"$r/etc/apt/apt.conf.d/slim-clean"
      tar -C "$r" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
      rm -rf "$r"
      echo "debootstrap: $(($(date +%s) - t0)) s"
    fi
    E import -q "$tarball" "$base" >/dev/null || { bad "import $base"; finish; }
  fi
  build_args="--pull=never --isolation chroot --format docker --build-arg BUILD_BASE=$base --build-arg RUN_BASE=$base"
fi

# --- build ------------------------------------------------------------------------------------
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  t0=$(date +%s)
  # shellcheck disable=SC2086
  if timeout 1800 "$engine" build $build_args -t "$image" . >"$tmp/build.log" 2>&1; then
    ok "build $image ($(($(date +%s) - t0)) s)"
    grep -E '^bundled model|Synthesis' "$tmp/build.log" | sed 's/^/  | /'
  else
    bad "build $image" "$(tail -25 "$tmp/build.log")"; finish
  fi
fi
[ "${BUILD_ONLY:-0}" = 1 ] && finish

# --- the image's configuration ----------------------------------------------------------------
E image inspect "$image" >"$tmp/inspect.json" 2>&1 || { bad "inspect $image" "$(cat "$tmp/inspect.json")"; finish; }
check "image config: user 10001, EXPOSE 8080, HEALTHCHECK /app/bin/healthcheck, STOPSIGNAL SIGTERM, LUNASERVE_HOST=0.0.0.0" \
  /usr/bin/python3 - "$tmp/inspect.json" <<'PY'
import json, sys
img = json.load(open(sys.argv[1]))[0]
cfg = img.get("Config") or {}
hc = cfg.get("Healthcheck") or img.get("Healthcheck") or {}
errs = []
if cfg.get("User") not in ("10001:10001", "10001"): errs.append(f"user {cfg.get('User')!r}")
if "8080/tcp" not in (cfg.get("ExposedPorts") or {}): errs.append(f"ports {cfg.get('ExposedPorts')}")
if "/app/bin/healthcheck" not in (hc.get("Test") or []): errs.append(f"healthcheck {hc}")
if cfg.get("StopSignal") not in ("SIGTERM", "15"): errs.append(f"stopsignal {cfg.get('StopSignal')!r}")
if "LUNASERVE_HOST=0.0.0.0" not in (cfg.get("Env") or []): errs.append(f"env {cfg.get('Env')}")
print(f"size {img.get('Size', 0) / 1e6:.0f} MB", file=sys.stderr)
sys.exit("; ".join(errs) if errs else 0)
PY
size=$(/usr/bin/python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))[0].get("Size",0)/1e6))' "$tmp/inspect.json")
echo "  | image size: ${size} MB"

# --- run --------------------------------------------------------------------------------------
port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# Host networking shares the host's interfaces, so the test binds loopback only (this also
# proves that LUNASERVE_* configures the server); the image's own default is 0.0.0.0 (above).
if ! E run -d --network host --name "$name" -e LUNASERVE_HOST=127.0.0.1 -e LUNASERVE_PORT="$port" \
     -e LUNASERVE_MEMORY_BUDGET=512M -e LUNASERVE_WORKERS=2 "$image" >"$tmp/run.log" 2>&1; then
  bad "run $image" "$(cat "$tmp/run.log")"; finish
fi
url=http://127.0.0.1:$port
up=0
for _ in $(seq 1 60); do
  if curl -fsS -m 2 "$url/health" >/dev/null 2>&1; then up=1; break; fi
  [ "$(E inspect -f '{{.State.Running}}' "$name" 2>/dev/null)" = true ] || break
  sleep 0.5
done
if [ "$up" = 1 ]; then ok "serving on 127.0.0.1:$port"; else bad "serving on 127.0.0.1:$port" "$(E logs "$name" 2>&1 | tail -10)"; finish; fi

# get NAME EXPECTED_STATUS PYTHON_CHECK CURL_ARGS...: the answer has the status and passes the check
get() {
  n=$1 want=$2 pycheck=$3; shift 3
  st=$(curl -sS -m 10 -o "$tmp/body" -w '%{http_code}' "$@" 2>"$tmp/curl.err")
  if [ "$st" != "$want" ]; then bad "$n: HTTP $st, wanted $want" "$(cat "$tmp/curl.err" "$tmp/body")"; return; fi
  if /usr/bin/python3 -c "import json,sys; b=json.load(open(sys.argv[1])); assert $pycheck, b" "$tmp/body" >"$tmp/py.err" 2>&1
  then ok "$n"; else bad "$n" "$(tail -3 "$tmp/py.err")"; fi
}
json='Content-Type: application/json'
get "GET /health" 200 'b == {"status": "ok"}' "$url/health"
get "GET /ready" 200 'b == {"status": "ready"}' "$url/ready"
get "POST /classify" 200 'len(b) == 2 and abs(sum(x["score"] for x in b) - 1) < 1e-5 and {x["label"] for x in b} == {"ham", "spam"}' \
  -H "$json" -d '{"inputs": "Subject: cheap meds\n\nbuy now"}' "$url/classify"
get "POST /generate" 200 'isinstance(b["generated_text"], str) and len(b["generated_text"]) > 0' \
  -H "$json" -d '{"inputs": "It is a truth", "parameters": {"max_new_tokens": 20, "seed": 1}}' "$url/generate"
get "POST /generate bad request is a JSON error" 422 'set(b["error"]) >= {"code", "type", "message", "request_id"}' \
  -H "$json" -d '{"inputs": "x", "parameters": {"best_of": 2}}' "$url/generate"
get "GET /info: the bundled models are served" 200 \
  'b["models"]["classify"]["path"] == "models/spam" and b["models"]["generate"]["path"] == "models/austen-lm"' "$url/info"
# the image's OpenBLAS and the kernel the server chose in it (engine/blas.h): a core is named
get "GET /info: the BLAS kernel is named" 200 \
  'b["blas"]["library"] == "OpenBLAS" and b["blas"]["core"] and b["blas"]["selection"] in ("auto", "environment", "setting", "default")' "$url/info"
# A real spam and a real ham of the held-out test split (tests/models/spam.jsonl), as raw bytes.
for label in spam ham; do
  /usr/bin/python3 -c 'import base64,json,sys
m = next(json.loads(l) for l in open(sys.argv[1]) if json.loads(l)["label"] == sys.argv[2])
print(json.dumps({"inputs_base64": base64.b64encode(m["text"].encode("latin-1")).decode()}))' \
    tests/models/spam.jsonl "$label" >"$tmp/$label.json"
  get "POST /classify: a held-out $label message is $label" 200 "b[0][\"label\"] == \"$label\"" \
    -H "$json" --data-binary @"$tmp/$label.json" "$url/classify"
done

if [ "$engine" = podman ]; then
  check "podman healthcheck run: healthy" E healthcheck run "$name"
else
  hs=""
  for _ in $(seq 1 40); do
    hs=$(E inspect -f '{{.State.Health.Status}}' "$name" 2>/dev/null)
    [ "$hs" = healthy ] && break
    sleep 1
  done
  if [ "$hs" = healthy ]; then ok "docker health status: healthy"; else bad "docker health status: $hs"; fi
fi
uid=$(E exec "$name" id -u 2>&1)
if [ "$uid" = 10001 ]; then ok "runs as uid $uid (non-root)"; else bad "runs as non-root: id -u = $uid"; fi
pid1=$(E exec "$name" cat /proc/1/comm 2>&1)
if [ "$pid1" = lunaserve ]; then ok "lunaserve is PID 1 (signals reach it)"; else bad "PID 1 is $pid1"; fi

# --- stop: SIGTERM, drain, exit 0 ---------------------------------------------------------------
# A long request is running when the stop comes: the drain must let it finish (200), while /ready
# and new requests get 503 with Retry-After. Its document is sized from a timed 100 KB one to run
# for about 3 s on the bundled classifier, within the 30 s drain.
doc() { /usr/bin/python3 -c 'import json,sys; print(json.dumps({"inputs": "Subject: long\n\n" + "spam and eggs " * (int(sys.argv[1]) // 14)}))' "$1"; }
doc 100000 >"$tmp/small.json"
t100=$(curl -sS -m 30 -o /dev/null -w '%{time_total}' -H "$json" --data-binary @"$tmp/small.json" "$url/classify" 2>/dev/null)
bytes=$(/usr/bin/python3 -c 'import sys; t=float(sys.argv[1] or 1); print(int(min(7e6, max(2e5, 1e5 * 3.0 / max(t, 1e-4)))))' "$t100")
doc "$bytes" >"$tmp/long.json"
curl -sS -m 60 -o "$tmp/long.out" -w '%{http_code}' -H "$json" --data-binary @"$tmp/long.json" "$url/classify" >"$tmp/long.status" 2>&1 &
longpid=$!
for _ in $(seq 1 100); do
  curl -s -m 2 "$url/metrics" 2>/dev/null | grep -q '^luna_inflight_requests [1-9]' && break
  sleep 0.1
done
t0=$(date +%s)
E stop -t 30 "$name" >"$tmp/stop.log" 2>&1 &
stoppid=$!
for _ in $(seq 1 50); do E logs "$name" 2>&1 | grep -q '"msg":"draining"' && break; sleep 0.1; done
st=$(curl -sS -m 5 -o "$tmp/body" -D "$tmp/hdrs" -w '%{http_code}' -H "$json" -d '{"inputs": "Subject: late\n\nhello"}' "$url/classify" 2>&1)
if [ "$st" = 503 ] && grep -qi '^retry-after: 1' "$tmp/hdrs" && grep -q '"type":"shutting_down"' "$tmp/body"; then
  ok "POST while draining: 503 shutting_down with Retry-After"
else bad "POST while draining: HTTP $st" "$(cat "$tmp/hdrs" "$tmp/body" 2>/dev/null)"; fi
st=$(curl -sS -m 5 -o "$tmp/body" -D "$tmp/hdrs" -w '%{http_code}' "$url/ready" 2>&1)
if [ "$st" = 503 ] && grep -qi '^retry-after: 1' "$tmp/hdrs"; then ok "GET /ready while draining: 503 with Retry-After"
else bad "GET /ready while draining: HTTP $st" "$(cat "$tmp/body" 2>/dev/null)"; fi
wait "$stoppid"
took=$(($(date +%s) - t0))
wait "$longpid"
st=$(cat "$tmp/long.status")
if [ "$st" = 200 ]; then ok "the request running at SIGTERM ($((bytes / 1000)) KB document) finished: 200"
else bad "the request running at SIGTERM: HTTP $st" "$(head -c 300 "$tmp/long.out" 2>/dev/null)"; fi
code=$(E inspect -f '{{.State.ExitCode}}' "$name" 2>&1)
E logs "$name" >"$tmp/logs" 2>&1
if [ "$code" = 0 ]; then ok "stop -t 30: exit code 0 after ${took} s"; else bad "stop -t 30: exit code $code after ${took} s" "$(tail -5 "$tmp/logs")"; fi
if grep -q '"msg":"draining","signal":15' "$tmp/logs" && grep -q '"msg":"drained; exiting"' "$tmp/logs"; then
  ok "logs: draining on signal 15, then drained; exiting"
else
  bad "logs: draining/drained lines" "$(tail -5 "$tmp/logs")"
fi
if [ "$took" -lt 30 ]; then ok "drained before the stop timeout (not killed)"; else bad "stop took ${took} s: killed at the timeout?"; fi
if grep -q "\"msg\":\"listening\",\"host\":\"127.0.0.1\",\"port\":$port" "$tmp/logs"; then
  ok "LUNASERVE_HOST/LUNASERVE_PORT honoured"
else bad "listening line" "$(grep listening "$tmp/logs")"; fi
grep '"msg":"listening"' "$tmp/logs" | sed 's/^/  | /'
grep '"msg":"bundled' "$tmp/logs" | sed 's/^/  | /'
finish
