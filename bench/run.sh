#!/usr/bin/env bash
# The API benchmark suite, in one command:
#
#   bench/run.sh [--quick|--smoke] [--rounds N] [--peer-url URL] [--peer-key KEY] [--out DIR] [--keep]
#
# Installs what is missing (wrk and redis-tools from Debian, a Python venv in
# .bench-venv/ with numpy, matplotlib and psycopg), starts Postgres+pgvector and
# Redis (scripts/services.sh), builds the release binary, then runs bench/api.py
# with every argument given here. Each phase prints its duration.
# The report lands in bench/results/ (see bench/README.md).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$REPO"
VENV="$REPO/.bench-venv"
PY_PACKAGES=(numpy matplotlib "psycopg[binary]")
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

log() { printf '[run.sh %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# phase NAME COMMAND...: runs the command and prints how long it took (and its
# exit status when not 0, which it returns).
phase() {
    local name=$1 start us rc=0
    shift
    log "$name ..."
    start=${EPOCHREALTIME//[.,]/}
    "$@" || rc=$?
    us=$((${EPOCHREALTIME//[.,]/} - start))
    log "$name: $((us / 1000000)).$((us / 100000 % 10)) s$( ((rc == 0)) || printf ' (exit %d)' "$rc")"
    return "$rc"
}

apt_install() {
    if ! apt-get install -y -q --no-install-recommends "$@" >/dev/null; then
        log "apt-get install $* failed; running apt-get update and retrying"
        apt-get update -q >/dev/null
        apt-get install -y -q --no-install-recommends "$@" >/dev/null
    fi
}

tools() {
    local missing=()
    command -v wrk >/dev/null || missing+=(wrk)
    command -v redis-benchmark >/dev/null || missing+=(redis-tools)
    if ((${#missing[@]})); then
        log "installing ${missing[*]}"
        apt_install "${missing[@]}"
    fi
}

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
build() {
    cargo build --release --no-default-features --bin context-api
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
phase "cargo build --release --no-default-features" build
phase "benchmark (bench/api.py)" "$VENV/bin/python" bench/api.py "$@"
