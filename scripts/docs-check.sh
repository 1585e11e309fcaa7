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
key="$(random_hex 32)"
serve_cleanup_extra() {
    [[ "$shot" == "$REPO/docs/docs-page.png" ]] || rm -f "$shot" "${shot%.png}-overview.png"
}
serve_scratch docs_check 384 "$(admin_api_keys "$key")" "$(mktemp)"
port="$SERVE_PORT"
curl -sf -X POST "http://127.0.0.1:$port/contexts" -H "Authorization: Bearer $key" \
    -H 'Content-Type: application/json' \
    -d '{"user_id":"0193b3c4-0000-7000-8000-000000000001","context_type":"note","content":{"text":"tried from the docs page"}}' \
    >/dev/null || die "could not create a context to list"

phase "browser (scripts/docs-check.py)"
.docs-venv/bin/python scripts/docs-check.py "http://127.0.0.1:$port" "$key" "$shot"
phase ""
ok "/docs renders every route and Try it out works"
