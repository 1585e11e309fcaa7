#!/usr/bin/env bash
# The scale benchmark, in one command (see bench/scale.py and bench/README.md):
#
#   bench/scale.sh [--rows N] [--dim D] [--users U] [--smoke] [--keep]
#
# Installs what is missing (the .bench-venv of bench/run.sh, bench/lib.sh), starts Postgres and
# Redis (scripts/services.sh), builds the release binary as the image does and the
# TEI stand-in, then runs bench/scale.py. Each phase prints its duration.
# Except with --smoke, the test Postgres gets shared_buffers = $SHARED_BUFFERS
# (default 6GB: a million 768-d vectors' HNSW index is about 4 GB) and is
# restarted if it had another value; the setting stays (ALTER SYSTEM).
set -euo pipefail
SCRIPT_NAME=scale
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib/common.sh"
cd "$REPO"
# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"

phase "python venv (.bench-venv)" bench_venv
# wrk for --side-by-side's 32 connections.
phase "wrk (Debian)" apt_ensure wrk wrk
phase "postgres and redis" scripts/services.sh start
eval "$(scripts/services.sh env)"
export TEST_DATABASE_URL TEST_REDIS_URL PSQL
buffers() {
    local want="${SHARED_BUFFERS:-6GB}" have
    have="$("$PSQL" "$TEST_DATABASE_URL" -XAtc 'SHOW shared_buffers')"
    [[ "$have" == "$want" ]] && return 0
    "$PSQL" "$TEST_DATABASE_URL" -Xqc "ALTER SYSTEM SET shared_buffers = '$want'"
    scripts/services.sh stop && scripts/services.sh start
}
smoke=0
for arg in "$@"; do [[ "$arg" == --smoke ]] && smoke=1; done
if [[ $smoke == 0 ]]; then phase "shared_buffers = ${SHARED_BUFFERS:-6GB}" buffers; fi
phase "cargo build --release (context-api --no-default-features, tei-stub)" bench_build
phase "scale benchmark (bench/scale.py)" "$VENV/bin/python" bench/scale.py "$@"
