# lunaserve container image: two stages.
#
#   docker build -t lunaserve .                        (or: podman build ... , see docs/deploy.md)
#   docker run --rm -p 8080:8080 --stop-timeout 35 lunaserve
#
# Build arguments:
#   BUILD_BASE  base of the build stage    (default debian:bookworm)
#   RUN_BASE    base of the runtime stage  (default debian:bookworm-slim)
#               deploy/test-image.sh sets both to a locally imported debootstrap image, because
#               no registry is reachable on the CI machines; the file is otherwise unchanged.
#   TESTS       what the build stage tests: "unit" (default) runs the Criterion binary, the 143
#               unit and golden tests (the engine against float64 PyTorch references, the JSON
#               API, the scheduler and its memory ledger); "none" skips them. The full suite
#               (`make test`: HTTP integration, npm clients, Chromium, then all under ASan) runs
#               in CI outside the image (.ci/run) on the same sources; it needs the network and
#               some 550 MB of Chromium and Node, and about 10 minutes: too much for a build stage.
#               The image itself is then tested over HTTP by deploy/test-image.sh.
#   OPT         compiler optimisation flags (default the Makefile's: -O3 -march=x86-64-v3,
#               any x86-64 CPU since 2013); e.g. --build-arg OPT="-O3 -march=x86-64" for older CPUs.

ARG BUILD_BASE=debian:bookworm
ARG RUN_BASE=debian:bookworm-slim

# ---------------------------------------------------------------------------------------------
FROM ${BUILD_BASE} AS build
ARG TESTS=unit
ARG OPT="-O3 -march=x86-64-v3"
ENV DEBIAN_FRONTEND=noninteractive
# The -dev packages of tools/deps.sh (build), plus Criterion for the unit tests.
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends \
      gcc libc6-dev make pkg-config libopenblas-dev libmicrohttpd-dev libcjson-dev libuv1-dev \
      libcriterion-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN make -j"$(nproc)" OPT="$OPT" all
RUN case "$TESTS" in \
      unit) make -j"$(nproc)" OPT="$OPT" build/bin/unit-tests && build/bin/unit-tests --jobs 2 ;; \
      none) echo "build stage: tests skipped (TESTS=none)" ;; \
      *) echo "TESTS must be unit or none, not '$TESTS'" >&2; exit 2 ;; \
    esac
# The runtime tree: the binaries, the entrypoint and healthcheck, the annotated config and the
# two bundled models (models/spam, models/austen-lm), which the config serves by default.
RUN set -e; mkdir -p /out/bin /out/config /out/models; \
    install -m 755 bin/lunaserve bin/luna /out/bin/; \
    install -m 755 deploy/docker-entrypoint.sh /out/bin/docker-entrypoint; \
    install -m 755 deploy/healthcheck.sh /out/bin/healthcheck; \
    install -m 644 config/lunaserve.conf /out/config/; \
    cp -r models/spam models/austen-lm /out/models/

# ---------------------------------------------------------------------------------------------
FROM ${RUN_BASE}
ENV DEBIAN_FRONTEND=noninteractive
# Only the shared libraries bin/lunaserve links (ldd): OpenBLAS, libmicrohttpd, cJSON, libuv.
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends \
      libopenblas0-pthread libmicrohttpd12 libcjson1 libuv1 \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/apt/archives/*.deb \
 && useradd --system --uid 10001 --user-group --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin lunaserve
COPY --from=build /out/ /app/
WORKDIR /app
ENV PATH=/app/bin:$PATH \
    LUNASERVE_HOST=0.0.0.0 \
    LUNASERVE_PORT=8080
# Every other setting: LUNASERVE_<NAME> (see `docker run --rm IMAGE --help`), e.g.
#   LUNASERVE_MEMORY_BUDGET=1G LUNASERVE_WORKERS=2 LUNASERVE_DRAIN_TIMEOUT=30
# Numeric, so that Kubernetes' runAsNonRoot can check it.
USER 10001:10001
EXPOSE 8080
# SIGTERM starts the drain: /ready turns 503, new requests get 503 with Retry-After, running
# and queued ones have LUNASERVE_DRAIN_TIMEOUT (30 s) to finish, then the server exits 0. A
# second signal exits at once. Give the container more than the drain timeout to stop:
# `docker stop -t 35`, compose's stop_grace_period, Kubernetes' terminationGracePeriodSeconds.
STOPSIGNAL SIGTERM
# Liveness: GET /health on LUNASERVE_PORT, with bash's /dev/tcp (no curl in the image).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 CMD ["/app/bin/healthcheck"]
# lunaserve itself is PID 1 (exec'd by the entrypoint) and handles SIGTERM and SIGINT.
ENTRYPOINT ["/app/bin/docker-entrypoint"]
CMD []
