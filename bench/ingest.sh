#!/usr/bin/env bash
# The ingest benchmark, in one command (see bench/ingest.py and bench/README.md):
#
#   bench/ingest.sh [--rows N] [--clients C] [--batch B] [--vector-index vector,halfvec,bit] [--smoke]
#
# Installs what is missing (the .bench-venv of bench/run.sh, with numpy and psycopg),
# starts Postgres and Redis (scripts/services.sh), builds the release binary as the
# image does and the TEI stand-in, then runs bench/ingest.py. Each phase prints its
# duration.
set -euo pipefail
SCRIPT_NAME=ingest
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib/common.sh"
cd "$REPO"
# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"

phase "python venv (.bench-venv)" bench_venv
phase "postgres and redis" scripts/services.sh start
eval "$(scripts/services.sh env)"
export TEST_DATABASE_URL TEST_REDIS_URL
phase "cargo build --release (context-api --no-default-features, tei-stub)" bench_build
phase "ingest benchmark (bench/ingest.py)" "$VENV/bin/python" bench/ingest.py "$@"
