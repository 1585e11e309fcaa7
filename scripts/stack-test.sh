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
# Podman on these machines needs four adjustments (setup_podman in
# scripts/lib/deploy-tools.sh writes them to ~/.cache/context-api/podman/; nothing in /etc
# is changed), and a loop of `podman healthcheck run` here because no systemd
# timer drives HEALTHCHECKs. The stand-ins are built by deploy/stand-ins/build.sh. Image builds use the host's network (RUN steps only
# need the package registries; the host resolver does not answer from a
# bridge); the stack itself runs on its own compose network with container
# DNS (netavark + aardvark-dns). KEEP_STACK=1 leaves the stack up to inspect;
# STACK_ONLY=rollout runs only the rolling update under load (rollout_test).
set -euo pipefail

SCRIPT_NAME=stack-test DIE_PREFIX=FAIL
# shellcheck source=deploy/stand-ins/build.sh
source "$(dirname "${BASH_SOURCE[0]}")/../deploy/stand-ins/build.sh"
cd "$REPO"
exec </dev/null

PROJECT="${STACK_PROJECT:-ctxapi-stacktest}"
API_PORT="${STACK_API_PORT:-$(free_port)}"
IMAGE="context-api:latest"
T0=$SECONDS

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
            log "warnings and errors in the stack's logs:"
            compose logs --no-color 2>&1 | grep -E '"level":"(WARN|ERROR)"|level=(warn|error)' | tail -n 30 >&2 || true
        fi
        log "tearing the stack down"
        compose down --volumes --remove-orphans --timeout 10 >/dev/null 2>&1 || true
    fi
    if [[ -n "$HC_PID" ]]; then kill "$HC_PID" 2>/dev/null || true; fi
    if [[ -n "$SERVICE_PID" ]]; then
        kill "$SERVICE_PID" 2>/dev/null || true
        wait "$SERVICE_PID" 2>/dev/null || true
    fi
    rm -f "$STACK_DIR/stack.env" "$STACK_DIR/prod.env"
    return "$rc"
}
trap teardown EXIT

start_podman_service() {
    SOCK="$PODMAN_DIR/run/podman.sock"
    rm -f "$SOCK"
    podman system service --time=0 "unix://$SOCK" >"$STACK_DIR/podman-service.log" 2>&1 &
    SERVICE_PID=$!
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

# The production stack (docker-compose.prod.yml, without backup, Prometheus
# and Grafana, whose images have no stand-in) behind Caddy on a loopback port:
# scripts/rollout.sh moves every replica to a second image while four clients
# send creates, reads, searches and lists through Caddy. Not one request may
# fail, every acknowledged write must read back, and every replica must run
# the new image at the end.
rollout_test() {
    phase "production stack: rolling update under load (scripts/rollout.sh)"
    build_caddy
    local next="context-api:next" next_id rev
    rev="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    # The same binary under another revision label: another image, in seconds.
    # (A build argument alone is no change to podman's layer cache.)
    rm -rf "$STACK_DIR/ctx-next" && mkdir -p "$STACK_DIR/ctx-next"
    printf 'FROM %s\nLABEL org.opencontainers.image.revision="%s-next"\n' "$IMAGE" "$rev" >"$STACK_DIR/ctx-next/Containerfile"
    podman build --format docker -t "$next" "$STACK_DIR/ctx-next" >"$STACK_DIR/build-next.log" 2>&1 \
        || { tail -n 20 "$STACK_DIR/build-next.log" >&2; die "podman build of the second image failed"; }
    next_id="$(podman image inspect --format '{{.Id}}' "$next")"
    [[ "$next_id" != "$(podman image inspect --format '{{.Id}}' "$IMAGE")" ]] || die "the second image is the first one"

    local port key pg rd
    port="$(free_port)" key="$(random_hex 32)" pg="$(random_hex 16)" rd="$(random_hex 16)"
    umask 077
    cat >"$STACK_DIR/prod.env" <<EOF
POSTGRES_PASSWORD=$pg
REDIS_PASSWORD=$rd
DATABASE_URL=postgres://context:$pg@db:5432/context
REDIS_URL=redis://default:$rd@redis:6379
API_KEYS=$(admin_api_keys "$key")
GRAFANA_ADMIN_PASSWORD=$(random_hex 16)
DOMAIN=:80
GRAFANA_DOMAIN=http://grafana.localhost
EOF
    umask 022
    # Only the published port differs from production: loopback, and free.
    cat >"$STACK_DIR/prod.override.yml" <<EOF
services:
  caddy:
    ports: !override
      - "127.0.0.1:$port:80"
EOF
    COMPOSE_ARGS=(-f docker-compose.yml -f docker-compose.prod.yml -f "$STACK_DIR/prod.override.yml"
                  -p "$PROJECT" --env-file "$STACK_DIR/prod.env")
    DOCKER_HOST="unix://$SOCK" timeout 600 "$COMPOSE" "${COMPOSE_ARGS[@]}" up -d --no-build --pull never \
        caddy context-api context-api-2 context-api-3 >&2 || die "docker compose up of the production stack failed"
    local svc
    for svc in context-api context-api-2 context-api-3 caddy; do wait_healthy "$svc" 120; done
    local base="http://127.0.0.1:$port"
    for _ in $(seq 1 30); do curl -sf "$base/ready" >/dev/null && break; sleep 1; done
    curl -sf "$base/ready" >/dev/null || die "/ready through Caddy on $base does not answer 200"
    sleep 3   # a round of Caddy's active health checks on all three replicas
    ok "production stack up: Caddy on $base, three replicas healthy"

    rm -f "$STACK_DIR/rollout.stop"
    python3 scripts/lib/rollout_load.py "$port" "$key" "$STACK_DIR/rollout.stop" "$STACK_DIR/rollout-load.json" \
        2>"$STACK_DIR/rollout-load.log" &
    local load_pid=$! t_roll=$SECONDS
    sleep 5
    if ! DOCKER_HOST="unix://$SOCK" COMPOSE="$COMPOSE" COMPOSE_ARGS="${COMPOSE_ARGS[*]}" \
        scripts/rollout.sh --image "$next"; then
        touch "$STACK_DIR/rollout.stop"
        wait "$load_pid" || true
        die "scripts/rollout.sh failed"
    fi
    sleep 3
    touch "$STACK_DIR/rollout.stop"
    t_roll=$((SECONDS - t_roll))
    local load_rc=0
    wait "$load_pid" || load_rc=$?
    [[ -s "$STACK_DIR/rollout-load.json" ]] || { cat "$STACK_DIR/rollout-load.log" >&2; die "the load generator wrote no summary"; }
    local summary
    summary="$(jq -c '{requests, failed_requests, failures_by_kind, acknowledged_writes, acknowledged_writes_read_back, p50_ms, p99_ms, max_ms}' "$STACK_DIR/rollout-load.json")"
    if [[ "$load_rc" != 0 ]]; then
        jq -c '.failure_samples[]?' "$STACK_DIR/rollout-load.json" >&2 || true
        die "requests failed or writes went missing during the rollout: $summary"
    fi
    ok "load for ${t_roll}s across the rollout, through Caddy: $summary"

    local id image
    for svc in context-api context-api-2 context-api-3; do
        id="$(container_of "$svc")"
        image="$(podman inspect --format '{{.Image}}' "$id")"
        [[ "$image" == "$next_id" ]] || die "$svc runs image $image, not the new $next_id"
    done
    ok "every replica runs the new image ($next)"
}

main() {
    mkdir -p "$STACK_DIR"
    phase "tools"
    ensure_container_tools
    ensure_compose
    setup_podman
    log "$(podman --version), $("$COMPOSE" version)"

    phase "stand-in base images"
    build_standins
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
    if [[ "$rc" != 0 ]] || ! have_image "$IMAGE"; then
        tail -n 40 "$STACK_DIR/build-image.log" >&2
        die "podman build of Dockerfile failed"
    fi
    local size_bytes size_mb
    size_bytes="$(podman image inspect --format '{{.Size}}' "$IMAGE")"
    size_mb="$(awk -v b="$size_bytes" 'BEGIN{printf "%.1f", b/1000000}')"
    log "runtime image $IMAGE: $size_mb MB ($size_bytes bytes)"
    [[ "$(podman image inspect --format '{{.Config.Healthcheck}}' "$IMAGE")" == *healthcheck* ]] \
        || die "the built image has no HEALTHCHECK (built without --format docker?)"
    awk -v b="$size_bytes" 'BEGIN{exit !(b <= 40000000)}' || die "runtime image is $size_mb MB, over the 40 MB target"
    ok "image has a HEALTHCHECK and is within 40 MB"
    if [[ "${STACK_ONLY:-}" == rollout ]]; then
        start_podman_service
        start_healthcheck_loop
        rollout_test
        teardown
        return
    fi

    phase "compose up"
    local key
    key="$(random_hex 32)"
    umask 077
    cat >"$STACK_DIR/stack.env" <<EOF
POSTGRES_PASSWORD=$(random_hex 16)
REDIS_PASSWORD=$(random_hex 16)
API_KEYS=$(admin_api_keys "$key")
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

    log "taking the development stack down"
    compose down --volumes --remove-orphans --timeout 10 >/dev/null 2>&1 || die "docker compose down failed"

    rollout_test

    phase "teardown"
    teardown
    phase ""
    log "runtime image size: $size_mb MB"
    log "all stack checks passed in $((SECONDS - T0))s"
}

main "$@"
