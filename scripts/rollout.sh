#!/usr/bin/env bash
# Zero-downtime rolling update of the production compose stack:
#
#   scripts/rollout.sh [--image IMAGE] [--no-migrate] [--settle SECONDS]
#
# Run it from the project directory where the stack was started (it uses the
# same .env). It applies the compose files' current configuration (and IMAGE,
# when given, as CONTEXT_API_IMAGE) to the API replicas one at a time, behind
# Caddy:
#
#   0. `migrate` runs once with the new image (migrations must keep working
#      for the replicas that still run the old one: add, then drop later);
#   1. for each replica service (context-api, context-api-2, ...), in order:
#      - `stop` sends SIGTERM: the replica reports `draining` on /ready for
#        SHUTDOWN_DELAY_MS, so Caddy's active health check takes it out of
#        the rotation, then it finishes its in-flight requests and exits 0
#        (the script fails the rollout on any other exit status);
#      - `up --force-recreate --no-deps` starts the replacement under the same
#        name, which Caddy's upstream list already holds;
#      - the script waits until `context-api healthcheck` passes inside it
#        (GET /ready, the check Caddy makes), then --settle seconds more
#        (default 5: Caddy's health_interval plus health_timeout) so that Caddy
#        has seen it healthy before the next replica drains.
#   If a replacement does not become ready in ROLLOUT_READY_TIMEOUT seconds
#   (default 120), the rollout stops there: the replicas not yet replaced keep
#   serving the old image; its last log lines are printed.
#
# With IMAGE, also write CONTEXT_API_IMAGE=IMAGE to .env afterwards, or a
# later `docker compose up` would go back to the old image.
#
# Environment:
#   COMPOSE          the compose command (default: docker compose)
#   COMPOSE_ARGS     its file/project arguments (default:
#                    -f docker-compose.yml -f docker-compose.prod.yml)
#   ROLLOUT_SERVICES the replica services (default: every service named
#                    context-api or context-api-<n>)
set -euo pipefail

read -r -a COMPOSE_CMD <<<"${COMPOSE:-docker compose}"
read -r -a COMPOSE_ARGS <<<"${COMPOSE_ARGS:--f docker-compose.yml -f docker-compose.prod.yml}"
compose() { "${COMPOSE_CMD[@]}" "${COMPOSE_ARGS[@]}" "$@"; }

log() { printf 'rollout: %s %s\n' "$(date -u +%H:%M:%S.%3N)" "$*" >&2; }
die() { printf 'rollout: FAIL: %s\n' "$*" >&2; exit 1; }

MIGRATE=1 SETTLE=5
READY_TIMEOUT="${ROLLOUT_READY_TIMEOUT:-120}"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --image) export CONTEXT_API_IMAGE="${2:?--image needs a value}"; shift 2 ;;
        --no-migrate) MIGRATE=0; shift ;;
        --settle) SETTLE="${2:?--settle needs a value}"; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done

services=()
if [[ -n "${ROLLOUT_SERVICES:-}" ]]; then
    read -r -a services <<<"$ROLLOUT_SERVICES"
else
    mapfile -t services < <(compose config --services | grep -E '^context-api(-[0-9]+)?$' | sort -V)
fi
[[ ${#services[@]} -ge 2 ]] \
    || die "found ${#services[@]} API replica service(s) (${services[*]:-none}): a rollout without downtime needs at least two"

container_of() { compose ps -a -q "$1" 2>/dev/null | head -n1; }
# A container's field, by compose's Go template (e.g. ExitCode, Image).
field_of() { compose ps -a --format "{{.$2}}" "$1" 2>/dev/null | head -n1; }

wait_ready() { # service
    local t0=$SECONDS
    while ((SECONDS - t0 < READY_TIMEOUT)); do
        if compose exec -T "$1" /usr/local/bin/context-api healthcheck >/dev/null 2>&1; then
            return 0
        fi
        sleep 1
    done
    return 1
}

T0=$SECONDS
log "rolling ${#services[@]} replicas (${services[*]})${CONTEXT_API_IMAGE:+ to $CONTEXT_API_IMAGE}"

if [[ "$MIGRATE" == 1 ]]; then
    log "migrate (with the new configuration)"
    compose run --rm --no-deps -T migrate >&2 || die "migrate failed: no replica was touched"
fi

for svc in "${services[@]}"; do
    t=$SECONDS
    old="$(container_of "$svc")"
    if [[ -n "$old" ]]; then
        compose stop "$svc" >/dev/null 2>&1 || die "docker compose stop $svc failed"
        code="$(field_of "$svc" ExitCode)"
        [[ "$code" == 0 ]] || die "$svc exited with status '${code}' after SIGTERM, not 0: it did not drain cleanly"
        log "$svc drained and stopped in $((SECONDS - t)) s (exit 0)"
    fi
    compose up -d --no-deps --no-build --force-recreate "$svc" >/dev/null 2>&1 \
        || die "docker compose up $svc failed"
    if ! wait_ready "$svc"; then
        compose logs --no-color --tail 30 "$svc" >&2 || true
        die "$svc was not ready within ${READY_TIMEOUT} s; the replicas after it still run the old image"
    fi
    sleep "$SETTLE"
    log "$svc replaced and ready in $((SECONDS - t)) s, on $(field_of "$svc" Image)"
done
log "all ${#services[@]} replicas replaced ($((SECONDS - T0)) s)"
