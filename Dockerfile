# One image for every leadflow binary; a Deployment picks one with its `command`, e.g.
# ["capture", "serve"] or ["capture", "migrate"].
#   docker build -t leadflow:dev .

FROM rust:1.95-bookworm AS builder
WORKDIR /src
# No query!-style macros need a live database at build time.
ENV SQLX_OFFLINE=true
COPY . .
# target/ is a cache mount, not part of the layer: copy the binaries out of it.
RUN --mount=type=cache,id=leadflow-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=leadflow-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=leadflow-target,target=/src/target,sharing=locked \
    cargo build --release --locked --workspace --bins \
    && mkdir -p /out \
    && cp target/release/capture target/release/qualification target/release/messaging \
          target/release/analytics target/release/leadctl /out/

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 leadflow \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin leadflow \
    && install -d -o 10001 -g 10001 /var/lib/leadflow/sink
COPY --from=builder /out/ /usr/local/bin/
USER 10001:10001
CMD ["leadctl", "--help"]
