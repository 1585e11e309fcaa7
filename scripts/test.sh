#!/usr/bin/env bash
# The project's one test command:  ./scripts/test.sh [extra test args...]
#
# Starts (or reuses) the local PostgreSQL+pgvector and Redis test services
# (scripts/services.sh), fetches the embedding model once (scripts/model.sh),
# exports TEST_DATABASE_URL / TEST_REDIS_URL / TEST_MODEL_DIR, then runs
#   cargo nextest run --all-targets "$@"   if cargo-nextest is installed,
#   cargo test --all-targets "$@"          otherwise.
# (nextest does not run doctests; `cargo test --doc` covers those if needed.)
#
# Services are left running for the next run unless STOP_SERVICES=1.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/services.sh start
eval "$(scripts/services.sh env)"
TEST_MODEL_DIR="$(scripts/model.sh)"
export TEST_MODEL_DIR
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"

if [[ "${STOP_SERVICES:-0}" == "1" ]]; then
    trap 'scripts/services.sh stop' EXIT
fi

echo "test.sh: TEST_DATABASE_URL=$TEST_DATABASE_URL TEST_REDIS_URL=$TEST_REDIS_URL TEST_MODEL_DIR=$TEST_MODEL_DIR" >&2
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --all-targets "$@"
else
    cargo test --all-targets "$@"
fi
