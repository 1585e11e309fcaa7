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
# The static queries are checked at compile time against the committed
# `.sqlx/` (scripts/sqlx-prepare.sh); SQLX_OFFLINE=true keeps the build from
# ever reaching for a database.
# Stripped release binaries: the image ships no debug symbols.
ENV SQLX_OFFLINE=true \
    CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0 \
    CARGO_PROFILE_RELEASE_STRIP=symbols

# ------------------------------------------------------------- dependencies --
# Build every dependency against placeholder sources, so that this layer is
# reused for as long as the manifests do not change. `--no-default-features`:
# the image embeds with TEI, never with the in-process (candle) model.
FROM chef AS deps
COPY Cargo.toml Cargo.lock ./
# The workspace's other member (the TEI stand-in) must be present for cargo to
# read the workspace; it is small and never built here.
COPY crates ./crates
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
COPY .sqlx ./.sqlx
COPY assets ./assets
RUN --mount=type=cache,id=context-api-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=context-api-cargo-git,target=/usr/local/cargo/git \
    cargo build --release --locked --no-default-features \
    && install -D -m 0755 -s target/release/context-api /out/context-api \
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
# distroless/cc: glibc, libgcc, CA certificates, tzdata and /etc/passwd, and
# no shell or package manager. The healthcheck is the binary itself.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="context-api" \
      org.opencontainers.image.description="Context management service: per-user LLM memory in PostgreSQL + pgvector, cached in Redis, embedded by TEI" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"

COPY --from=builder /out/context-api /usr/local/bin/context-api

# 65532 is distroless's `nonroot` user; numeric so that runtimes can verify
# runAsNonRoot without reading /etc/passwd.
USER 65532:65532
ENV BIND_ADDRESS=0.0.0.0:8000 \
    LOG_FORMAT=json
EXPOSE 8000
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["/usr/local/bin/context-api", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/context-api"]
CMD ["serve"]
