# syntax=docker/dockerfile:1
#
# secret-canary: one binary that is both the prober
# (`secret-canary run|once|check-config`) and the canary workload
# (`secret-canary canary`). The Helm chart's default image is this one:
#
#   docker build -t secret-canary:0.1.0 --build-arg REVISION=$(git rev-parse --short HEAD) .
#   kind load docker-image secret-canary:0.1.0        # see docs/real-cluster.md
#
# Not built in this repository's CI: its machines have no container engine.

ARG RUST_VERSION=1.95
ARG DEBIAN=bookworm

# --- build -------------------------------------------------------------------
FROM rust:${RUST_VERSION}-slim-${DEBIAN} AS build
WORKDIR /src
# The whole workspace (cargo loads every member's manifest); .dockerignore
# keeps out target/, .venv/ and what the binary does not need.
COPY . .
ARG REVISION=unknown
ENV SECRET_CANARY_REVISION=${REVISION}
# Only the product crate: the lab and the benchmarks are test equipment,
# never shipped. Cache mounts keep the registry and target/ across builds.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --locked --release --package secret-canary --bin secret-canary \
 && install -D -m 0755 target/release/secret-canary /out/secret-canary

# --- run ---------------------------------------------------------------------
# distroless/cc: glibc and libgcc (the binary links them), CA certificates,
# /etc/passwd with the `nonroot` user (65532); no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/secret-canary /usr/local/bin/secret-canary
# Numeric, so Kubernetes' runAsNonRoot can verify it without /etc/passwd.
USER 65532:65532
# 9850: the prober's /metrics, /healthz, /readyz, /probes; 8080: the canary.
EXPOSE 9850 8080
ENTRYPOINT ["/usr/local/bin/secret-canary"]
CMD ["run", "--config", "/etc/secret-canary/config.yaml", "--listen", "0.0.0.0:9850"]
