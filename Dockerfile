# syntax=docker/dockerfile:1.7
#
# context-api container image.
#
#   docker build -t context-api .                 # runtime image (default target)
#   docker build --target dev -t context-api:dev .   # builder + cargo-watch, for the
#                                                 # hot-reload loop of docker-compose.override.yml
#
# Stages: `chef` (toolchain) -> `deps` (dependencies only, cached while
# Cargo.toml/Cargo.lock are unchanged) -> `builder` (our code) -> `runtime`.
# No secrets and no secret-bearing build args: all configuration is runtime env.

# ---------------------------------------------------------------- toolchain --
FROM rust:1.95-slim-bookworm AS chef
WORKDIR /app
# The queries are built at runtime (no sqlx `query!` macros), so there is no
# `.sqlx/` directory to commit; SQLX_OFFLINE=true still guarantees that the
# build never tries to reach a database if a macro is added later.
ENV SQLX_OFFLINE=true \
    CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0

# ------------------------------------------------------------- dependencies --
# Build every dependency against placeholder sources, so that this layer is
# reused for as long as the manifests do not change. `--no-default-features`:
# the image embeds with TEI, never with the in-process (candle) model.
FROM chef AS deps
COPY Cargo.toml Cargo.lock ./
RUN --mount=type=cache,id=context-api-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=context-api-cargo-git,target=/usr/local/cargo/git \
    mkdir -p src tests/api \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs tests/api/main.rs \
    && cargo build --release --locked --no-default-features \
    && rm -rf src tests target/release/.fingerprint/context-api-* \
        target/release/deps/context_api-* target/release/deps/libcontext_api-* \
        target/release/context-api*

# ------------------------------------------------------------------ builder --
FROM deps AS builder
COPY src ./src
COPY migrations ./migrations
RUN --mount=type=cache,id=context-api-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=context-api-cargo-git,target=/usr/local/cargo/git \
    cargo build --release --locked --no-default-features \
    && install -D -m 0755 target/release/context-api /out/context-api \
    && /out/context-api --help >/dev/null

# ---------------------------------------------------------------------- dev --
# Toolchain + cargo-watch; the source is bind-mounted at /app by the compose
# override and rebuilt on change. Not used in production.
FROM chef AS dev
RUN --mount=type=cache,id=context-api-cargo-registry,target=/usr/local/cargo/registry \
    cargo install --locked cargo-watch@8.5.3
ENV CARGO_TARGET_DIR=/app/target
EXPOSE 8000
CMD ["cargo", "watch", "--why", "-w", "src", "-w", "migrations", "-w", "Cargo.toml", \
     "-x", "run --no-default-features -- serve"]

# ------------------------------------------------------------------ runtime --
FROM debian:bookworm-slim AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="context-api" \
      org.opencontainers.image.description="Context management service: per-user LLM memory in PostgreSQL + pgvector, cached in Redis, embedded by TEI" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/debian:bookworm-slim"

# CA certificates for TLS to managed Postgres/Redis/TEI; nothing else
# (the healthcheck is the binary itself, so no curl).
# DL3008 (pin apt versions): ca-certificates is left unpinned on purpose, the
# trust roots must be the current ones whenever the image is rebuilt.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/* /var/log/apt /var/log/dpkg.log \
    && groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin app

COPY --from=builder /out/context-api /usr/local/bin/context-api

USER 10001:10001
ENV BIND_ADDRESS=0.0.0.0:8000 \
    LOG_FORMAT=json
EXPOSE 8000
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["/usr/local/bin/context-api", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/context-api"]
CMD ["serve"]
