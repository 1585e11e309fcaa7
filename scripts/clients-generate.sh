#!/usr/bin/env bash
# The client libraries' types, generated from docs/openapi.json (which the
# service's tests keep equal to what it serves):
# - Python: pydantic models by datamodel-code-generator, in
#   clients/python/src/context_api_client/models.py;
# - TypeScript: types by openapi-typescript (pinned in clients/typescript's
#   package-lock.json), in clients/typescript/src/schema.ts.
# With --check, generates into a scratch directory and fails when a
# committed file differs (CI: the clients are stale against the document).
#
#   scripts/clients-generate.sh [--check]
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
cd "$REPO"
exec </dev/null

CHECK=0
[[ "${1:-}" == "--check" ]] && CHECK=1

DATAMODEL_CODEGEN_VERSION=0.89.0
VENV="$REPO/.clients-venv"
PY_MODELS=clients/python/src/context_api_client/models.py
TS_DIR=clients/typescript
TS_TYPES=$TS_DIR/src/schema.ts

# The venv the Python client's generator and tests share (idempotent).
ensure_clients_venv() {
    local gen="datamodel-code-generator==$DATAMODEL_CODEGEN_VERSION" want
    want="$gen $(sha256sum clients/python/pyproject.toml | cut -d' ' -f1)"
    if [[ "$(cat "$VENV/.installed" 2>/dev/null)" != "$want" ]]; then
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install -q "$gen" || die "pip install $gen failed"
        "$VENV/bin/pip" install -q -e "clients/python[test,langgraph]" || die "pip install clients/python failed"
        printf '%s' "$want" >"$VENV/.installed"
    fi
}

# python_models OUT: the pydantic models of docs/openapi.json, written to OUT.
python_models() {
    "$VENV/bin/datamodel-codegen" --input docs/openapi.json --input-file-type openapi \
        --output "$1" --output-model-type pydantic_v2.BaseModel --target-python-version 3.10 \
        --use-standard-collections --use-union-operator --field-constraints --use-annotated \
        --use-schema-description --use-field-description --enum-field-as-literal all \
        --disable-timestamp --formatters builtin \
        --custom-file-header "# Generated from docs/openapi.json by scripts/clients-generate.sh
# (datamodel-code-generator $DATAMODEL_CODEGEN_VERSION). Do not edit: regenerate." \
        2>/dev/null || die "datamodel-codegen failed"
}

# The TypeScript client's dev dependencies, from its lock file (idempotent).
ensure_ts_modules() {
    command -v npm >/dev/null || die "npm is missing (Node 18 or later)"
    local lock stamp="$TS_DIR/node_modules/.lock-sha256"
    lock="$(sha256sum "$TS_DIR/package-lock.json" | cut -d' ' -f1)"
    if [[ "$(cat "$stamp" 2>/dev/null)" != "$lock" ]]; then
        npm ci --silent --no-audit --no-fund --prefix "$TS_DIR" >/dev/null 2>&1 \
            || die "npm ci in $TS_DIR failed"
        printf '%s' "$lock" >"$stamp"
    fi
}

# ts_types OUT: the TypeScript types of docs/openapi.json, written to OUT.
ts_types() {
    "$TS_DIR/node_modules/.bin/openapi-typescript" docs/openapi.json --empty-objects-unknown \
        -o "$1" >/dev/null 2>&1 || die "openapi-typescript failed"
}

ensure_clients_venv
ensure_ts_modules
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
python_models "$out/models.py"
ts_types "$out/schema.ts"
for pair in "$PY_MODELS:models.py" "$TS_TYPES:schema.ts"; do
    committed="${pair%%:*}" made="$out/${pair##*:}"
    if ((CHECK)); then
        diff -u "$committed" "$made" >&2 \
            || die "$committed is stale against docs/openapi.json: run scripts/clients-generate.sh"
    else
        cp "$made" "$committed"
        ok "wrote $committed"
    fi
done
((CHECK)) && ok "the generated client types match docs/openapi.json"
