#!/usr/bin/env bash
# Builds the stand-in base images (see README.md beside this file), tagged
# with the exact names Dockerfile and docker-compose.yml use:
#
#   deploy/stand-ins/build.sh      build them all (installs podman & co. first)
#   source deploy/stand-ins/build.sh; build_standins
#                                  the same from a script that has already run
#                                  ensure_container_tools and setup_podman
#                                  (scripts/stack-test.sh)
#
# A stand-in is rebuilt only when its inputs change: their hash is the image's
# `stand-in.hash` label. Work files and build logs go to .deploy/stack/.
: "${SCRIPT_NAME:=stand-ins}"
# shellcheck source=scripts/lib/deploy-tools.sh
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib/deploy-tools.sh"

STANDINS="$REPO/deploy/stand-ins"
# The toolchain the Rust stand-in carries: Dockerfile's rust:1.95-slim-bookworm.
RUST_TOOLCHAIN="1.95.0"

inputs_hash() { cat "$@" | sha256sum | cut -c1-16; }
have_standin() { # tag hash
    have_image "$1" && [[ "$(podman image inspect --format '{{index .Labels "stand-in.hash"}}' "$1" 2>/dev/null)" == "$2" ]]
}

# podman_build_standin TAG HASH CONTEXT: builds CONTEXT/Containerfile as TAG,
# its log in .deploy/stack/build-NAME.log (NAME: CONTEXT without ctx-).
podman_build_standin() {
    local tag="$1" h="$2" ctx="$3" logf
    logf="$STACK_DIR/build-${ctx##*/ctx-}.log"
    podman build --network host --format docker --label "stand-in.hash=$h" -t "$tag" "$ctx" >"$logf" 2>&1 \
        || { tail -n 30 "$logf" >&2; die "building the $tag stand-in failed"; }
}

debian_mirror() {
    sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1
}

build_debian_slim() {
    local tag=docker.io/library/debian:bookworm-slim h
    h="$(printf 'debootstrap minbase bookworm v1' | sha256sum | cut -c1-16)"
    have_standin "$tag" "$h" && return 0
    local rootfs="$STACK_DIR/rootfs-bookworm"
    if [[ ! -x "$rootfs/usr/bin/apt-get" ]]; then
        rm -rf "$rootfs"
        log "debootstrap --variant=minbase bookworm (about 30 s)"
        debootstrap --variant=minbase bookworm "$rootfs" "$(debian_mirror)" >"$STACK_DIR/debootstrap.log" 2>&1 \
            || { tail -n 20 "$STACK_DIR/debootstrap.log" >&2; die "debootstrap failed"; }
        # What the official slim image drops: caches, docs, man pages.
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
            "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
    fi
    tar -C "$rootfs" -c . | podman import \
        --change "LABEL stand-in.hash=$h" \
        --change 'CMD ["bash"]' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        - "$tag" >/dev/null
}

# distroless/cc is assembled the way distroless itself is: Debian packages
# unpacked into an empty root, plus passwd/group with the nonroot user.
build_distroless_cc() {
    local tag=gcr.io/distroless/cc-debian12:nonroot h
    h="$(printf 'distroless cc v1' | sha256sum | cut -c1-16)"
    have_standin "$tag" "$h" && return 0
    local d="$STACK_DIR/distroless" pkgs=(base-files netbase tzdata ca-certificates libc6 libgcc-s1 libgomp1 libstdc++6 libssl3)
    rm -rf "$d" && mkdir -p "$d/debs" "$d/root"
    (cd "$d/debs" && apt_retry download "${pkgs[@]}")
    local deb
    for deb in "$d"/debs/*.deb; do dpkg -x "$deb" "$d/root"; done
    local r="$d/root"
    rm -rf "$r"/usr/share/doc "$r"/usr/share/man "$r"/usr/share/lintian "$r"/usr/share/locale
    mkdir -p "$r/etc/ssl/certs" "$r/tmp" "$r/home/nonroot" "$r/root"
    cat "$r"/usr/share/ca-certificates/mozilla/*.crt >"$r/etc/ssl/certs/ca-certificates.crt"
    chmod 1777 "$r/tmp"
    printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$r/etc/passwd"
    printf 'root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n' >"$r/etc/group"
    chown 65532:65532 "$r/home/nonroot"
    tar -C "$r" -c . | podman import \
        --change "LABEL stand-in.hash=$h" \
        --change 'USER 65532' --change 'WORKDIR /home/nonroot' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
        - "$tag" >/dev/null
}

build_rust() {
    local tag=docker.io/library/rust:1.95-slim-bookworm h
    h="$(inputs_hash "$STANDINS/rust/Containerfile")"
    have_standin "$tag" "$h" && return 0
    local sysroot ctx="$STACK_DIR/ctx-rust"
    sysroot="$(rustc "+$RUST_TOOLCHAIN" --print sysroot 2>/dev/null || rustc --print sysroot)"
    [[ "$("$sysroot/bin/rustc" --version)" == "rustc $RUST_TOOLCHAIN "* ]] \
        || die "the machine's toolchain at $sysroot is not Rust $RUST_TOOLCHAIN (rustup toolchain install $RUST_TOOLCHAIN)"
    rm -rf "$ctx" && mkdir -p "$ctx/toolchain/bin" "$ctx/toolchain/lib" "$ctx/extra-ca"
    cp "$STANDINS/rust/Containerfile" "$ctx/"
    cp -a "$sysroot"/bin/{cargo,rustc,rustdoc} "$ctx/toolchain/bin/"
    # The compiler and std only: no docs, sources, or other components.
    (cd "$sysroot/lib" && tar -c --exclude='rustlib/src' --exclude='rustlib/*/analysis' . ) | tar -C "$ctx/toolchain/lib" -x
    if [[ -d /usr/local/share/ca-certificates ]]; then
        cp /usr/local/share/ca-certificates/*.crt "$ctx/extra-ca/" 2>/dev/null || true
    fi
    podman_build_standin "$tag" "$h" "$ctx"
    rm -rf "$ctx/toolchain"
}

build_postgres() {
    local tag=docker.io/pgvector/pgvector:0.8.0-pg16 h
    h="$(inputs_hash "$STANDINS/postgres/Containerfile" "$STANDINS/postgres/docker-entrypoint.sh")"
    have_standin "$tag" "$h" && return 0
    local ctx="$STACK_DIR/ctx-postgres"
    rm -rf "$ctx" && mkdir -p "$ctx"
    cp "$STANDINS/postgres/Containerfile" "$STANDINS/postgres/docker-entrypoint.sh" "$ctx/"
    pgserver_unpack "$ctx/pgserver"
    podman_build_standin "$tag" "$h" "$ctx"
}

build_simple() { # tag dir [extra files...]
    local tag="$1" dir="$2" h; shift 2
    h="$(inputs_hash "$dir/Containerfile" "$@")"
    have_standin "$tag" "$h" && return 0
    local ctx
    ctx="$STACK_DIR/ctx-$(basename "$dir")"
    rm -rf "$ctx" && mkdir -p "$ctx"
    cp "$dir/Containerfile" "$@" "$ctx/"
    podman_build_standin "$tag" "$h" "$ctx"
}

build_standins() {
    mkdir -p "$STACK_DIR"
    build_debian_slim
    build_distroless_cc
    build_rust
    build_postgres
    build_simple docker.io/library/redis:7.4.2-alpine "$STANDINS/redis"
    # The TEI stand-in runs the host-built tei-stub: the debian:bookworm-slim
    # stand-in has the host's glibc.
    local tei_stub
    tei_stub="$(ensure_tei_stub)"
    build_simple ghcr.io/huggingface/text-embeddings-inference:cpu-1.7 "$STANDINS/tei" "$tei_stub"
}

# Caddy is only in the production stack (docker-compose.prod.yml), which the
# rollout test runs.
build_caddy() {
    build_simple docker.io/library/caddy:2.8.4-alpine "$STANDINS/caddy"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    set -euo pipefail
    exec </dev/null
    ensure_container_tools
    setup_podman
    build_standins
    podman images --format '{{.Repository}}:{{.Tag}} {{.Size}}' >&2
fi
