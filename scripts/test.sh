#!/usr/bin/env bash
# The project's one test command:  ./scripts/test.sh [extra test args...]
#
# Starts (or reuses) the local PostgreSQL+pgvector and Redis test services
# (scripts/services.sh), fetches the embedding model once (scripts/model.sh),
# exports TEST_DATABASE_URL / TEST_REDIS_URL / TEST_MODEL_DIR, then runs
#   cargo nextest run --all-targets "$@"   if cargo-nextest is installed,
#   cargo test --all-targets "$@"          otherwise,
# then the integration suite a second time on a 3-master Redis Cluster
# (scripts/services.sh start-redis-cluster; SKIP_REDIS_CLUSTER=1 skips it).
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

# The integration suite again, on a 3-master Redis Cluster instead of one
# Redis. One test is left out: it checks the in-process cache tier, which is
# off with a cluster by design (docs/deployment.md, How it scales out), and a test of its own
# checks that it is off.
if [[ "${SKIP_REDIS_CLUSTER:-0}" != "1" ]]; then
    scripts/services.sh start-redis-cluster
    echo "test.sh: the integration suite on a Redis Cluster (TEST_REDIS_URL=$TEST_REDIS_CLUSTER_URL)" >&2
    filter='not test(=cache::reads_are_served_in_process_and_writes_elsewhere_invalidate_them)'
    if cargo nextest --version >/dev/null 2>&1; then
        TEST_REDIS_URL="$TEST_REDIS_CLUSTER_URL" TEST_REDIS_CLUSTER=1 \
            cargo nextest run --test api -E "$filter" "$@"
    else
        TEST_REDIS_URL="$TEST_REDIS_CLUSTER_URL" TEST_REDIS_CLUSTER=1 \
            cargo test --test api "$@" -- --skip cache::reads_are_served_in_process_and_writes_elsewhere_invalidate_them
    fi
fi
