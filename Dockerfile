# syntax=docker/dockerfile:1
#
# tollgate container image.
#   docker build -t tollgate .                      # distroless runtime (default, last stage)
#   docker build -t tollgate:slim --target slim .   # Debian slim runtime with a Docker HEALTHCHECK
#
# Both run as a non-root user, listen on 8081 (gRPC RateLimitService) and 8080 (admin HTTP:
# /healthcheck, /metrics) and read rules from /etc/tollgate, a directory meant to be a mounted
# Kubernetes ConfigMap (tollgate follows its ..data symlink swap, so edits reload live).

FROM rust:1-bookworm AS builder
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
# The cache mounts keep the registry and compiled dependencies between builds; the binary is
# copied out of the cached target directory because cache mounts are not part of the layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin tollgate \
    && install -D -m 0755 target/release/tollgate /out/usr/local/bin/tollgate \
    && install -d /out/bin \
    && ln -s /usr/local/bin/tollgate /out/bin/ratelimit
# /bin/ratelimit is envoyproxy/ratelimit's path: Envoy Gateway starts it with no arguments and only
# variables, and tollgate run under that name with no subcommand runs `serve`. A symlink, made here
# because the distroless runtime has no shell to make it.
# Both runtimes take the same tree: the binary, its /bin/ratelimit name and the example rules.
COPY config/ /out/etc/tollgate/

# Debian slim: for runtimes without Kubernetes probes (plain Docker, Compose), where a HEALTHCHECK
# must run inside the image. No curl here either: bash's /dev/tcp sends one GET to /healthcheck.
FROM debian:bookworm-slim AS slim
RUN groupadd --system --gid 65532 tollgate \
    && useradd --system --uid 65532 --gid tollgate --no-create-home --shell /usr/sbin/nologin tollgate
COPY --from=builder /out/ /
ENV TOLLGATE_CONFIG=/etc/tollgate
USER 65532:65532
EXPOSE 8080 8081
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /healthcheck HTTP/1.0\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["/usr/local/bin/tollgate", "serve"]

# Distroless (default): glibc and libgcc only, no shell, uid 65532. It cannot run a HEALTHCHECK
# command, so none is declared: in Kubernetes the readiness and liveness probes on /healthcheck
# (see k8s/) are the health check.
FROM gcr.io/distroless/cc-debian12:nonroot AS distroless
COPY --from=builder /out/ /
ENV TOLLGATE_CONFIG=/etc/tollgate
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["/usr/local/bin/tollgate", "serve"]
