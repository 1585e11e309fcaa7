#!/usr/bin/env bash
# The API benchmark suite, in one command:
#
#   bench/run.sh [--quick|--smoke] [--rounds N] [--peer-url URL] [--peer-key KEY] [--out DIR] [--keep]
#
# Installs what is missing (wrk and redis-tools from Debian, a Python venv in
# .bench-venv/ with numpy, matplotlib and psycopg), starts Postgres+pgvector and
# Redis (scripts/services.sh), builds the release binary and the TEI stand-in
# (crates/tei-stub), then runs bench/api.py with every argument given here. Each phase prints its duration.
# The report lands in bench/results/ (see bench/README.md).
set -euo pipefail
SCRIPT_NAME=bench
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib/common.sh"
cd "$REPO"
VENV="$REPO/.bench-venv"
PY_PACKAGES=(numpy matplotlib "psycopg[binary]")

tools() { apt_ensure wrk wrk redis-benchmark redis-tools; }

venv() {
    local stamp="$VENV/.packages" want="${PY_PACKAGES[*]}"
    if [[ -x "$VENV/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        return 0
    fi
    [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q "${PY_PACKAGES[@]}"
    printf '%s' "$want" >"$stamp"
}

services() {
    scripts/services.sh start
}

# The production image's build (Dockerfile: --no-default-features, TEI only):
# what is measured is what is deployed. CI's deploy check builds the same.
# bench/api.py runs target/release/tei-stub as the TEI service.
build() {
    cargo build --release --no-default-features --bin context-api
    ensure_tei_stub >/dev/null
}

phase "tools (wrk, redis-tools)" tools
phase "python venv (.bench-venv)" venv
for arg in "$@"; do
    if [[ "$arg" == -h || "$arg" == --help ]]; then
        exec "$VENV/bin/python" bench/api.py --help
    fi
done
phase "postgres and redis" services
eval "$(scripts/services.sh env)"
export TEST_DATABASE_URL TEST_REDIS_URL
phase "cargo build --release (context-api --no-default-features, tei-stub)" build
phase "benchmark (bench/api.py)" "$VENV/bin/python" bench/api.py "$@"
