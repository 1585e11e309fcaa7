#!/usr/bin/env bash
# The client libraries' types, generated from docs/openapi.json (which the
# service's tests keep equal to what it serves):
# - Python: pydantic models by datamodel-code-generator, in
#   clients/python/src/context_api_client/models.py;
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

# The venv the Python client's generator and tests share (idempotent).
ensure_clients_venv() {
    local want="datamodel-code-generator==$DATAMODEL_CODEGEN_VERSION"
    if [[ "$(cat "$VENV/.installed" 2>/dev/null)" != "$want" ]]; then
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install -q "$want" || die "pip install $want failed"
        "$VENV/bin/pip" install -q -e "clients/python[test]" || die "pip install clients/python failed"
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

ensure_clients_venv
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
python_models "$out/models.py"
if ((CHECK)); then
    diff -u "$PY_MODELS" "$out/models.py" >&2 \
        || die "$PY_MODELS is stale against docs/openapi.json: run scripts/clients-generate.sh"
    ok "the generated client types match docs/openapi.json"
else
    cp "$out/models.py" "$PY_MODELS"
    ok "wrote $PY_MODELS"
fi
