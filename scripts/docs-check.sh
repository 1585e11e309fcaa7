#!/usr/bin/env bash
# The /docs page in a real headless browser: Debian's chromium driven by
# Playwright (scripts/docs-check.py) against a running service. It checks that
# every route of /openapi.json is rendered, that "Try it out" answers 200 with
# a bearer key, and that the page loads nothing from elsewhere.
#
#   scripts/docs-check.sh            check (screenshot in a temporary file)
#   scripts/docs-check.sh --update   check, and write docs/docs-page.png (after
#                                    Try it out) and docs/docs-page-overview.png
#
# Uses the release binary (cargo build --release), the local Postgres and
# Redis (scripts/services.sh) and the TEI stand-in. Installs chromium (apt) and
# Playwright (a venv in .docs-venv) once.
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
cd "$REPO"
exec </dev/null

PLAYWRIGHT_VERSION=1.65.2
shot="$(mktemp --suffix=.png)"
[[ "${1:-}" == --update ]] && shot="$REPO/docs/docs-page.png"

phase "tools (chromium, playwright)"
apt_ensure chromium chromium
if ! .docs-venv/bin/python -c "import playwright" 2>/dev/null; then
    python3 -m venv .docs-venv
    .docs-venv/bin/pip install -q "playwright==$PLAYWRIGHT_VERSION" || die "pip install playwright failed"
fi

phase "service"
cargo build --release --quiet --bin context-api || die "cargo build --release failed"
tei="$(ensure_tei_stub)"
db=docs_check
scratch_db "$db"
url="$SCRATCH_DB_URL"
tei_port="$(free_port)" port="$(free_port)" key="$(random_hex 32)"
pids=()
cleanup() {
    if ((${#pids[@]})); then kill "${pids[@]}" 2>/dev/null || true; fi
    "$PSQL" -X -q "$TEST_DATABASE_URL" -c "DROP DATABASE IF EXISTS $db" 2>/dev/null || true
    [[ "$shot" == "$REPO/docs/docs-page.png" ]] || rm -f "$shot" "${shot%.png}-overview.png"
}
trap cleanup EXIT
"$tei" --port "$tei_port" --dim 384 >/dev/null 2>&1 &
pids+=($!)
keys="$(admin_api_keys "$key")"
export DATABASE_URL="$url" REDIS_URL="$TEST_REDIS_URL" EMBEDDING_SERVICE_URL="http://127.0.0.1:$tei_port" \
    EMBEDDING_DIM=384 API_KEYS="$keys" BIND_ADDRESS="127.0.0.1:$port" \
    CACHE_KEY_PREFIX="docs-check:" LOG_LEVEL=warn
target/release/context-api migrate >/dev/null
target/release/context-api >"$(mktemp)" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$port/ready" 30 || die "the service did not become ready"
curl -sf -X POST "http://127.0.0.1:$port/contexts" -H "Authorization: Bearer $key" \
    -H 'Content-Type: application/json' \
    -d '{"user_id":"0193b3c4-0000-7000-8000-000000000001","context_type":"note","content":{"text":"tried from the docs page"}}' \
    >/dev/null || die "could not create a context to list"

phase "browser (scripts/docs-check.py)"
.docs-venv/bin/python scripts/docs-check.py "http://127.0.0.1:$port" "$key" "$shot"
phase ""
ok "/docs renders every route and Try it out works"
