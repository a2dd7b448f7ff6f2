# syntax=docker/dockerfile:1
#
# herald node image: a cached release build, then the binary alone on distroless as a
# non-root user.
#
#   docker build -t herald .
#   # demo node (in-process bus, demo credentials, loud warning):
#   docker run --rm -p 8080:8080 herald
#   # real config file plus HERALD__SECTION__KEY overrides:
#   docker run --rm -p 8080:8080 -p 9090:9090 \
#     -v "$PWD/herald.yaml:/etc/herald/herald.yaml:ro" \
#     -e HERALD__BUS__NATS__PASSWORD=… herald --config /etc/herald/herald.yaml
#   # validate a config file without starting:
#   docker run --rm -v "$PWD/herald.yaml:/etc/herald/herald.yaml:ro" \
#     --entrypoint /usr/local/bin/herald herald config check --config /etc/herald/herald.yaml
#
# Dependencies are compiled in their own layer (cargo-chef), which is reused until a
# Cargo.toml or Cargo.lock changes; editing herald's sources only rebuilds herald.

ARG RUST_VERSION=1.95
ARG CARGO_CHEF_VERSION=0.1.77

# Debian 12 for the build, like the distroless runtime below, so glibc matches.
FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS chef
ARG CARGO_CHEF_VERSION
RUN cargo install cargo-chef --locked --version "${CARGO_CHEF_VERSION}"
WORKDIR /src

# The recipe: every manifest of the workspace and Cargo.lock, nothing else.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
# Build herald's dependencies only (this layer is the cache).
RUN cargo chef cook --release -p herald --recipe-path recipe.json
# Then herald itself, against the committed Cargo.lock.
COPY . .
RUN cargo build --release -p herald --locked \
 && install -D -m 0755 target/release/herald /out/herald

# glibc, libgcc, CA certificates and tzdata; no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
LABEL org.opencontainers.image.title="herald" \
      org.opencontainers.image.description="Clustered real-time notification service: NATS JetStream to WebSocket clients" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/herald /usr/local/bin/herald
# Listen on every interface inside the container (herald's own default is loopback).
# The Helm chart sets both listeners explicitly; /metrics goes on :9090 there.
ENV HERALD__SERVER__LISTEN=0.0.0.0:8080
EXPOSE 8080 9090
# distroless "nonroot": uid/gid 65532. Kubernetes' runAsNonRoot needs the numeric form.
USER 65532:65532
# SIGTERM starts herald's drain: /readyz turns 503, sessions close with 1001, exit 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/herald", "serve"]
