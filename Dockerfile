# syntax=docker/dockerfile:1
# scoregate container image: a release build on Debian 12 (bookworm), run from distroless as a
# non-root user.
#
#   docker build -t scoregate .
#   docker run --rm -p 8443:8443 -p 127.0.0.1:9901:9901 \
#     -v "$PWD/deploy:/etc/scoregate:ro" scoregate
#
# /etc/scoregate (mounted, read-only) holds the configuration as scoregate.toml plus the TLS files
# it names. Relative paths in the config resolve against /etc/scoregate, so start from
# config/sidecar.toml with
#     listen = "0.0.0.0:8443", admin_listen = "0.0.0.0:9901",
#     state_dir = "/var/lib/scoregate", cert = "certs/server.crt", key = "certs/server.key"
# (inside a container, 127.0.0.1 is the container's own loopback, unreachable from outside).
# The key file must be readable by uid 65532: `chown 65532 deploy/certs/server.key` for
# `docker run`; in Kubernetes set `securityContext.fsGroup: 65532` and the Secret's
# `defaultMode: 0440`. Check a config without serving:
#     docker run --rm -v "$PWD/deploy:/etc/scoregate:ro" scoregate check-config --config /etc/scoregate/scoregate.toml
#
# Health: the runtime image has no shell and no curl, so there is no HEALTHCHECK here. Let the
# orchestrator probe the admin port instead: GET :9901/healthz (liveness) and GET :9901/readyz
# (readiness; 503 until the scoring container answers, and while draining).
#
# Shutdown: `docker stop` sends SIGTERM; scoregate drains for up to
# pre_drain_delay_ms + drain_timeout_ms, so give `docker stop -t` / terminationGracePeriodSeconds
# more than that.

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

# ---------------------------------------------------------------------------- build
FROM ${RUST_IMAGE} AS build
WORKDIR /src

# Dependency layer: compile every dependency against stub sources, so this layer is reused until
# Cargo.toml or Cargo.lock change. Then remove the stub's own artifacts so the real build below
# cannot mistake them for up to date (COPY keeps the sources' older timestamps).
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src \
 && echo 'fn main() {}' > src/main.rs \
 && : > src/lib.rs \
 && cargo build --release --locked \
 && rm -rf src target/release/scoregate target/release/.fingerprint/scoregate-* \
           target/release/deps/scoregate-* target/release/deps/libscoregate-*

COPY src ./src
RUN cargo build --release --locked \
 && install -D -m 0755 target/release/scoregate /out/usr/local/bin/scoregate \
 && install -d -m 0700 /out/var/lib/scoregate

# ---------------------------------------------------------------------------- runtime
# distroless/cc: glibc and libgcc only (TLS is aws-lc, linked statically). Same Debian release
# as the builder, so the glibc the binary was linked against is the one it runs with.
FROM ${RUNTIME_IMAGE}
COPY --from=build /out/usr/local/bin/scoregate /usr/local/bin/scoregate
# State directory, mode 0700, owned by the runtime user ("nonroot", 65532 in distroless).
COPY --from=build --chown=65532:65532 /out/var/lib/scoregate /var/lib/scoregate
USER 65532:65532
WORKDIR /var/lib/scoregate
# 8443: scoring listener (TLS). 9901: admin listener (/healthz, /readyz).
EXPOSE 8443 9901
ENTRYPOINT ["scoregate"]
CMD ["run", "--config", "/etc/scoregate/scoregate.toml"]
