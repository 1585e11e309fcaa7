#!/usr/bin/env bash
# Checks every deployment file with the tool that consumes it, then runs Caddy
# and Prometheus against the real service on loopback:
#
#   scripts/deploy-check.sh            # everything
#   scripts/deploy-check.sh static     # only the static checks (no cargo build)
#
# static:
#   - Compose v2 (`docker-compose config`) on base, base+override and
#     base+prod, with assertions on the merged models (scripts/lib/compose_assert.py);
#   - `caddy validate`, `promtool check config` / `check rules`, hadolint on
#     the Dockerfile and the stand-in Containerfiles, Grafana JSON.
# live (127.0.0.1 only; Postgres/Redis from scripts/services.sh, the TEI stub):
#   - two replicas of the release binary behind Caddy run from the real
#     Caddyfile with TLS from Caddy's local CA: security headers, no Server
#     header, compression, JSON access logs, /metrics refused at the edge,
#     and no traffic to a replica whose /ready fails;
#   - a real Prometheus, from the real prometheus.yml and
#     deploy/prometheus/alerts.yml, scrapes the service and reports the target
#     up with every rule loaded;
#   - every metric the dashboard and the alerts use is exported by the service.
#
# Missing tools are installed (scripts/lib/deploy-tools.sh); a tool that cannot
# be installed fails the check with its name.
set -euo pipefail

SCRIPT_NAME=deploy-check DIE_PREFIX=FAIL
# shellcheck source=scripts/lib/deploy-tools.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/deploy-tools.sh"
cd "$REPO"
exec </dev/null

MODE="${1:-all}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/deploy-check.XXXXXX")"
PIDS=()
DBNAME=""

T0=$SECONDS

cleanup() {
    local rc=$? pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [[ -n "$DBNAME" ]]; then
        psql_admin -c "DROP DATABASE IF EXISTS \"$DBNAME\" WITH (FORCE)" >/dev/null 2>&1 || true
    fi
    if [[ $rc -ne 0 ]]; then
        log "logs kept in $WORK"
    else
        rm -rf "$WORK"
    fi
    return "$rc"
}
trap cleanup EXIT

# ------------------------------------------------------------------ static --
compose_checks() {
    local env="$WORK/compose.env"
    # Sentinels: none of these may appear in the production model's services.
    cat >"$env" <<'EOF'
POSTGRES_PASSWORD=sentinel-pg-password-1f3a
REDIS_PASSWORD=sentinel-redis-password-9c2e
API_KEYS=admin:sentinel0api0keys0hash0000000000000000000000000000000000000000
DATABASE_URL=postgres://context:sentinel-pg-password-1f3a@db:5432/context
REDIS_URL=redis://default:sentinel-redis-password-9c2e@redis:6379
GRAFANA_ADMIN_PASSWORD=sentinel-grafana-password-77d1
DOMAIN=api.example.com
EOF
    # shellcheck disable=SC2034 # read through the nameref below
    local base=(-f docker-compose.yml) dev=(-f docker-compose.yml -f docker-compose.override.yml)
    # shellcheck disable=SC2034 # read through the nameref below
    local prod=(-f docker-compose.yml -f docker-compose.prod.yml) name
    for name in base dev prod; do
        local -n files="$name"
        "$COMPOSE" "${files[@]}" --env-file "$env" config -q \
            || die "docker-compose config rejects the $name model (${files[*]})"
        "$COMPOSE" "${files[@]}" --env-file "$env" config --format json >"$WORK/$name.json" \
            || die "docker-compose config --format json failed for $name"
        unset -n files
    done
    ok "docker-compose config accepts base, base+override, base+prod"

    # Required secrets really are required: leaving out any one stops compose
    # with a message that names it.
    local out var
    for var in POSTGRES_PASSWORD REDIS_PASSWORD API_KEYS; do
        grep -v "^$var=" "$env" >"$WORK/missing.env"
        if out="$("$COMPOSE" -f docker-compose.yml --env-file "$WORK/missing.env" config -q 2>&1)"; then
            die "the base compose file accepts a missing $var"
        fi
        grep -q "required variable $var is missing" <<<"$out" || die "a missing $var is reported as: $out"
    done
    ok "each missing required secret stops compose with its name"

    # .env.example lists every variable the compose files read.
    local used listed missing
    used="$( { grep -ohE '\$\{[A-Z_][A-Z0-9_]*' docker-compose*.yml | cut -c3-; \
               grep -ohE '^ +environment: [A-Z_][A-Z0-9_]*$' docker-compose*.yml | awk '{print $2}'; } | sort -u)"
    listed="$(grep -oE '^[A-Z_][A-Z0-9_]*=' .env.example | tr -d = | sort -u)"
    missing="$(comm -23 <(printf '%s\n' "$used") <(printf '%s\n' "$listed"))"
    [[ -z "$missing" ]] || die ".env.example does not list: $(tr '\n' ' ' <<<"$missing")"
    ok ".env.example lists all $(wc -l <<<"$used") variables the compose files use"

    python3 scripts/lib/compose_assert.py "$WORK/base.json" "$WORK/dev.json" "$WORK/prod.json" "$env" \
        || die "assertions on the merged compose models failed"
}

caddy_validate() {
    local d="$WORK/caddy-validate"
    mkdir -p "$d"
    # Validation briefly starts the active health checks: loopback upstreams.
    env XDG_DATA_HOME="$d" XDG_CONFIG_HOME="$d" DOMAIN=localhost \
        API_UPSTREAMS="127.0.0.1:9 127.0.0.1:9" GRAFANA_UPSTREAM=127.0.0.1:9 \
        CADDY_ADMIN=127.0.0.1:0 CADDY_HTTP_PORT="$(free_port)" CADDY_HTTPS_PORT="$(free_port)" \
        caddy validate --config Caddyfile --adapter caddyfile >"$d/out.log" 2>&1 \
        || { tail -n 20 "$d/out.log" >&2; die "caddy validate rejects the Caddyfile"; }
    caddy fmt Caddyfile | diff -q Caddyfile - >/dev/null || die "Caddyfile is not caddy-fmt formatted (caddy fmt --overwrite Caddyfile)"
    ok "caddy validate, caddy fmt"
}

prometheus_checks() {
    # The config as the prod stack mounts it: alerts.yml beside prometheus.yml.
    local etc="$WORK/etc-prometheus"
    mkdir -p "$etc"
    cp prometheus.yml deploy/prometheus/alerts.yml "$etc/"
    promtool check config "$etc/prometheus.yml" >"$WORK/promtool.log" 2>&1 \
        || { cat "$WORK/promtool.log" >&2; die "promtool check config failed"; }
    grep -q 'SUCCESS: 1 rule files found' "$WORK/promtool.log" \
        || { cat "$WORK/promtool.log" >&2; die "promtool check config did not find alerts.yml beside prometheus.yml"; }
    promtool check rules deploy/prometheus/alerts.yml >>"$WORK/promtool.log" 2>&1 \
        || { cat "$WORK/promtool.log" >&2; die "promtool check rules failed"; }
    promtool test rules deploy/prometheus/alerts.test.yml >>"$WORK/promtool.log" 2>&1 \
        || { cat "$WORK/promtool.log" >&2; die "promtool test rules (alert unit tests) failed"; }
    ok "promtool check config, check rules, test rules"
}

hadolint_checks() {
    "$HADOLINT" Dockerfile || die "hadolint Dockerfile"
    local f
    for f in deploy/stand-ins/*/Containerfile; do
        "$HADOLINT" "$f" || die "hadolint $f"
    done
    ok "hadolint: Dockerfile and stand-in Containerfiles clean"
}

grafana_checks() {
    python3 - <<'PY' || die "Grafana provisioning check failed"
import json, sys, yaml
ds = yaml.safe_load(open("deploy/grafana/provisioning/datasources/prometheus.yml"))
uids = {d["uid"] for d in ds["datasources"] if d["type"] == "prometheus"}
prov = yaml.safe_load(open("deploy/grafana/provisioning/dashboards/context-api.yml"))
assert prov["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards", "provider path"
dash = json.load(open("deploy/grafana/dashboards/context-api.json"))
for p in dash["panels"]:
    assert p["datasource"]["uid"] in uids, f"panel {p['title']!r} uses an unknown data source"
    assert p["targets"], f"panel {p['title']!r} has no query"
titles = " | ".join(p["title"] for p in dash["panels"]).lower()
for want in ["request rate", "error rate", "latency", "in-flight", "pool", "cache hit", "embedding latency", "pending embeddings"]:
    assert want in titles, f"the dashboard has no {want!r} panel"
print(f"deploy-check: ok: Grafana data source + dashboard with {len(dash['panels'])} panels", file=sys.stderr)
PY
}

static_checks() {
    phase "tools"
    ensure_static_tools
    log "compose $("$COMPOSE" version --short), $(caddy version | cut -d' ' -f1), $(promtool --version 2>&1 | head -n1 | cut -d' ' -f1-3), $("$HADOLINT" --version)"
    phase "static checks"
    compose_checks
    caddy_validate
    prometheus_checks
    hadolint_checks
    grafana_checks
}

# -------------------------------------------------------------------- live --
PSQL=""   # from `scripts/services.sh env`
psql_admin() { "$PSQL" -X -q -v ON_ERROR_STOP=1 -At "$TEST_DATABASE_URL" "$@"; }

start_replica() { # name port extra-env...
    local name="$1" port="$2"; shift 2
    env -i PATH="$PATH" \
        DATABASE_URL="$DB_URL" REDIS_URL="$TEST_REDIS_URL" CACHE_KEY_PREFIX="deploy-check-$$:" \
        EMBEDDING_SERVICE_URL="http://127.0.0.1:$TEI_PORT" EMBEDDING_PROVIDER=tei \
        API_KEYS="$API_KEYS" BIND_ADDRESS="127.0.0.1:$port" LOG_FORMAT=json LOG_LEVEL=info \
        "$@" "$BIN" serve >"$WORK/$name.log" 2>&1 &
    PIDS+=($!)
    LAST_PID=$!
    wait_http "http://127.0.0.1:$port/ready" 60 || { tail -n 20 "$WORK/$name.log" >&2; die "replica $name did not become ready on :$port"; }
}

replica_count() { # port -> requests to GET /contexts/{id} counted by that replica
    curl -sf "http://127.0.0.1:$1/metrics" \
        | awk '/^http_requests_total\{/ && /route="\/contexts\/\{id\}"/ && /method="GET"/ {s+=$NF} END{print s+0}'
}

live_checks() {
    phase "release build (cargo build --release --no-default-features)"
    cargo build --release --no-default-features --bin context-api >&2 || die "cargo build --release failed"
    BIN="${CARGO_TARGET_DIR:-$REPO/target}/release/context-api"
    [[ -x "$BIN" ]] || die "no binary at $BIN"

    phase "TEI stand-in (cargo build --release -p tei-stub)"
    TEI_STUB="$(ensure_tei_stub)"

    phase "services (Postgres, Redis, TEI stub)"
    scripts/services.sh start
    eval "$(scripts/services.sh env)"
    [[ -x "$PSQL" ]] || die "psql not found at $PSQL (from scripts/services.sh env)"
    DBNAME="deploy_check_$$_$RANDOM"
    psql_admin -c "CREATE DATABASE \"$DBNAME\"" >/dev/null || die "cannot create database $DBNAME"
    DB_URL="${TEST_DATABASE_URL%/*}/$DBNAME"
    "$PSQL" -X -q -v ON_ERROR_STOP=1 "$DB_URL" -f init-db/01-extensions.sql >/dev/null \
        || die "init-db/01-extensions.sql failed on a fresh database"
    TEI_PORT="$(free_port)"
    "$TEI_STUB" --host 127.0.0.1 --port "$TEI_PORT" --dim 768 >"$WORK/tei.log" 2>&1 &
    PIDS+=($!)
    wait_http "http://127.0.0.1:$TEI_PORT/health" 20 || die "the TEI stub did not start"

    KEY="$(random_hex 32)"
    API_KEYS="$(admin_api_keys "$KEY")"
    env -i PATH="$PATH" DATABASE_URL="$DB_URL" EMBEDDING_DIM=768 EMBEDDING_PROVIDER=tei \
        EMBEDDING_SERVICE_URL="http://127.0.0.1:$TEI_PORT" AUTH_DISABLED=true \
        "$BIN" migrate >"$WORK/migrate.log" 2>&1 || { cat "$WORK/migrate.log" >&2; die "context-api migrate failed"; }

    A_PORT="$(free_port)" B_PORT="$(free_port)"
    # Replica A, once sent SIGTERM, keeps serving but answers /ready with 503
    # for 30 s: the state Caddy must route around.
    start_replica a "$A_PORT" SHUTDOWN_DELAY_MS=30000
    A_PID=$LAST_PID
    start_replica b "$B_PORT"
    ok "two replicas on 127.0.0.1:$A_PORT and :$B_PORT"

    prometheus_start
    caddy_live
    prometheus_verify
    metric_names_check
}

caddy_live() {
    phase "Caddy in front of the service"
    local d="$WORK/caddy" https http admin
    mkdir -p "$d"
    https="$(free_port)" http="$(free_port)" admin="$(free_port)"
    # The real Caddyfile; only ports, upstreams and storage come from the environment.
    env XDG_DATA_HOME="$d/data" XDG_CONFIG_HOME="$d/config" DOMAIN=localhost \
        API_UPSTREAMS="127.0.0.1:$A_PORT 127.0.0.1:$B_PORT" GRAFANA_UPSTREAM="127.0.0.1:$(free_port)" \
        CADDY_HTTP_PORT="$http" CADDY_HTTPS_PORT="$https" CADDY_ADMIN="127.0.0.1:$admin" \
        caddy run --config Caddyfile --adapter caddyfile >"$d/caddy.log" 2>&1 &
    PIDS+=($!)
    local ca="$d/data/caddy/pki/authorities/local/root.crt" url="https://localhost:$https"
    local c=(--cacert "$ca" --resolve "localhost:$https:127.0.0.1")
    for _ in $(seq 1 100); do [[ -s "$ca" ]] && break; sleep 0.2; done
    [[ -s "$ca" ]] || { tail -n 20 "$d/caddy.log" >&2; die "Caddy did not create its local CA"; }
    wait_http "$url/health" 30 "${c[@]}" || { tail -n 20 "$d/caddy.log" >&2; die "no HTTPS answer from Caddy on :$https"; }

    local hdr="$WORK/headers.txt"
    curl -sf -D "$hdr" -o /dev/null "${c[@]}" "$url/health" || die "GET /health through Caddy failed"
    grep -qi '^strict-transport-security: max-age=31536000' "$hdr" || die "no HSTS header: $(cat "$hdr")"
    grep -qi '^x-content-type-options: nosniff' "$hdr" || die "no X-Content-Type-Options: nosniff"
    grep -qi '^x-frame-options: deny' "$hdr" || die "no X-Frame-Options: DENY"
    grep -qi '^referrer-policy: ' "$hdr" || die "no Referrer-Policy"
    grep -qi '^server:' "$hdr" && die "a Server header is sent: $(grep -i '^server:' "$hdr")"
    grep -qi '^x-request-id: ' "$hdr" || die "the API's X-Request-Id did not come through the proxy"
    ok "HTTPS with HSTS, nosniff, frame DENY, referrer policy, no Server header"

    local code
    code="$(curl -s -o /dev/null -w '%{http_code}' "${c[@]}" "$url/metrics")"
    [[ "$code" == 404 ]] || die "/metrics through Caddy answered $code, expected 404"
    code="$(curl -s -o /dev/null -w '%{http_code}' "${c[@]}" "$url/metrics/")"
    [[ "$code" == 404 ]] || die "/metrics/ through Caddy answered $code, expected 404"
    curl -sf -o /dev/null "http://127.0.0.1:$B_PORT/metrics" || die "/metrics is not served by the replica itself"
    ok "/metrics refused at the edge (404) and served on the replica"

    code="$(curl -s -o /dev/null -w '%{http_code}' --resolve "localhost:$http:127.0.0.1" "http://localhost:$http/health")"
    [[ "$code" == 308 || "$code" == 301 || "$code" == 302 ]] || die "plain HTTP is not redirected to HTTPS (got $code)"
    ok "HTTP redirects to HTTPS ($code)"

    local h="Authorization: Bearer $KEY" j="Content-Type: application/json" created id
    local long
    long="$(printf 'tea %.0s' $(seq 1 300))"
    created="$(curl -sf "${c[@]}" -X POST "$url/contexts" -H "$h" -H "$j" \
        -d '{"user_id":"0b8a6f7e-3c1d-4e2f-9a5b-6c7d8e9f0a1b","context_type":"note","content":{"text":"'"$long"'"}}')" \
        || die "POST /contexts through Caddy failed"
    id="$(jq -r .id <<<"$created")"
    curl -sf -D "$hdr" -o /dev/null "${c[@]}" -H 'Accept-Encoding: gzip' -H "$h" "$url/contexts/$id" \
        || die "GET /contexts/{id} through Caddy failed"
    grep -qi '^content-encoding: gzip' "$hdr" || die "a 1.5 kB JSON response was not compressed"
    ok "responses are compressed (gzip)"

    grep '"logger":"http.log.access' "$d/caddy.log" | head -n 1 | jq -e '.request.uri' >/dev/null \
        || die "no JSON access log lines in Caddy's output"
    ok "JSON access logs"

    # Both replicas take traffic...
    local a0 b0 a1 b1 a2 b2 i
    a0="$(replica_count "$A_PORT")" b0="$(replica_count "$B_PORT")"
    for i in $(seq 1 30); do curl -sf -o /dev/null "${c[@]}" -H "$h" "$url/contexts/$id" || die "GET $i through Caddy failed"; done
    a1="$(replica_count "$A_PORT")" b1="$(replica_count "$B_PORT")"
    ((a1 + b1 - a0 - b0 == 30)) || die "30 requests through Caddy, replicas counted $((a1 + b1 - a0 - b0))"
    ((a1 > a0 && b1 > b0)) || die "traffic is not balanced: replica A got $((a1 - a0)), B got $((b1 - b0))"
    ok "both replicas take traffic (A $((a1 - a0)), B $((b1 - b0)) of 30)"

    # ...until A's /ready fails: SIGTERM starts its drain (/ready 503) while it
    # keeps serving, so only Caddy's health check can keep traffic away.
    kill -TERM "$A_PID"
    for i in $(seq 1 25); do
        [[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$A_PORT/ready")" == 503 ]] && break
        sleep 0.2
    done
    [[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$A_PORT/ready")" == 503 ]] \
        || die "replica A's /ready did not turn 503 after SIGTERM"
    curl -sf -o /dev/null "http://127.0.0.1:$A_PORT/health" || die "replica A stopped serving during its drain delay (test premise)"
    sleep 5   # two health-check intervals
    a1="$(replica_count "$A_PORT")" b1="$(replica_count "$B_PORT")"
    for i in $(seq 1 30); do curl -sf -o /dev/null "${c[@]}" -H "$h" "$url/contexts/$id" || die "GET $i through Caddy failed after A went unready"; done
    a2="$(replica_count "$A_PORT")" b2="$(replica_count "$B_PORT")"
    ((a2 == a1)) || die "replica A still got $((a2 - a1)) of 30 requests after its /ready failed"
    ((b2 - b1 == 30)) || die "replica B got $((b2 - b1)) of 30 requests"
    ok "no traffic to the replica whose /ready fails (B took 30 of 30)"
}

prometheus_start() {
    PROM_PORT="$(free_port)"
    local d="$WORK/prometheus"
    mkdir -p "$d/data"
    cp deploy/prometheus/alerts.yml "$d/"
    # The real prometheus.yml, with DNS discovery of the replicas (the compose
    # network's DNS) swapped for the loopback replica; everything else as is.
    python3 - "$d/prometheus.yml" "127.0.0.1:$B_PORT" "127.0.0.1:$PROM_PORT" <<'PY'
import json, sys, yaml
out, api, prom = sys.argv[1:]
cfg = yaml.safe_load(open("prometheus.yml"))
jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
api_job = jobs["context-api"]
assert "dns_sd_configs" in api_job, "expected DNS discovery of the replicas"
del api_job["dns_sd_configs"]
api_job["static_configs"] = [{"targets": [api]}]
jobs["prometheus"]["static_configs"] = [{"targets": [prom]}]
cfg["global"]["scrape_interval"] = "2s"
cfg["global"]["evaluation_interval"] = "2s"
cfg["global"]["scrape_timeout"] = "2s"
json.dump(cfg, open(out, "w"))
PY
    prometheus --config.file="$d/prometheus.yml" --storage.tsdb.path="$d/data" \
        --web.listen-address="127.0.0.1:$PROM_PORT" >"$d/prometheus.log" 2>&1 &
    PIDS+=($!)
}

prometheus_verify() {
    phase "Prometheus scraping the service"
    local prom="http://127.0.0.1:$PROM_PORT" i health=""
    wait_http "$prom/-/ready" 30 || { tail -n 20 "$WORK/prometheus/prometheus.log" >&2; die "Prometheus did not start"; }
    for i in $(seq 1 60); do
        health="$(curl -sf "$prom/api/v1/targets" | jq -r '.data.activeTargets[] | select(.labels.job=="context-api") | .health')"
        [[ "$health" == up ]] && break
        sleep 1
    done
    [[ "$health" == up ]] || die "Prometheus reports the context-api target as '${health:-absent}'"
    [[ "$(curl -sf "$prom/api/v1/query" --data-urlencode 'query=up{job="context-api"}' | jq -r '.data.result[0].value[1]')" == 1 ]] \
        || die "up{job=\"context-api\"} is not 1"
    local rules
    rules="$(curl -sf "$prom/api/v1/rules" | jq '[.data.groups[].rules[]] | length')"
    [[ "$rules" -ge 7 ]] || die "Prometheus loaded $rules alert rules, expected 7"
    local bad
    bad="$(curl -sf "$prom/api/v1/rules" | jq -r '[.data.groups[].rules[] | select(.health != "ok" and .health != "unknown") | .name] | join(",")')"
    [[ -z "$bad" ]] || die "alert rules fail to evaluate: $bad"
    ok "Prometheus: target up, $rules rules loaded and evaluating"
}

metric_names_check() {
    phase "metric names used by the dashboard and alerts"
    # Exercise replica B directly so that its lazily registered series exist.
    local h="Authorization: Bearer $KEY" j="Content-Type: application/json" id
    id="$(curl -sf -X POST "http://127.0.0.1:$B_PORT/contexts" -H "$h" -H "$j" \
        -d '{"user_id":"0b8a6f7e-3c1d-4e2f-9a5b-6c7d8e9f0a1b","context_type":"note","content":{"text":"metrics warm-up"}}' | jq -r .id)"
    for _ in 1 2; do
        curl -sf -o /dev/null "http://127.0.0.1:$B_PORT/contexts/$id" -H "$h" || die "GET /contexts/{id} on replica B failed"
    done
    curl -sf -o /dev/null -X POST "http://127.0.0.1:$B_PORT/contexts/search" -H "$h" -H "$j" -d '{"query":"warm-up","k":1}' \
        || die "search on replica B failed"
    curl -sf "http://127.0.0.1:$B_PORT/metrics" >"$WORK/metrics.txt" || die "cannot read /metrics"
    python3 - "$WORK/metrics.txt" <<'PY' || die "the dashboard or alerts use metrics the service does not export"
import json, re, sys, yaml
exported = set()
for line in open(sys.argv[1]):
    if line.startswith("# TYPE "):
        exported.add(line.split()[2])
    elif line and not line.startswith("#"):
        exported.add(re.split(r"[{ ]", line, 1)[0])
exprs = []
for g in yaml.safe_load(open("deploy/prometheus/alerts.yml"))["groups"]:
    exprs += [r["expr"] for r in g["rules"]]
for p in json.load(open("deploy/grafana/dashboards/context-api.json"))["panels"]:
    exprs += [t["expr"] for t in p["targets"]]
builtin = {"up", "rate", "sum", "max", "by", "le", "histogram_quantile", "deriv", "absent", "and", "unless", "or"}
missing = set()
for e in exprs:
    e = re.sub(r"\{[^}]*\}", "", e)          # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)         # ranges
    e = re.sub(r"\([^()]*?\)\s*(?=\()", "", e)
    for name in re.findall(r"\b([a-z_][a-z0-9_]*_(?:total|seconds_bucket|seconds|pending|connections|flight))\b", e):
        base = re.sub(r"_bucket$", "", name)
        if name not in exported and base not in exported:
            missing.add(name)
# Counters that nothing has incremented yet (shed, purged, failures...) are
# not exported until they are; those must at least be in the documentation
# (the metrics table of docs/operations.md).
import glob
readme = "".join(open(f).read() for f in ["README.md", *sorted(glob.glob("docs/*.md"))])
documented = set(re.findall(r"`([a-z_]+)(?:\{[^`]*\})?`", readme))
unknown = {m for m in missing if m not in documented and re.sub(r"_bucket$", "", m) not in documented}
if unknown:
    print("deploy-check: neither exported nor documented:", ", ".join(sorted(unknown)), file=sys.stderr)
    sys.exit(1)
print(f"deploy-check: ok: all {len(exprs)} dashboard/alert queries use exported metrics"
      + (f" ({len(missing)} not yet incremented, found in the docs: {', '.join(sorted(missing))})" if missing else ""),
      file=sys.stderr)
PY
}

main() {
    static_checks
    if [[ "$MODE" != static ]]; then
        live_checks
    fi
    phase ""
    log "all deployment checks passed in $((SECONDS - T0))s"
}

main
