#!/usr/bin/env bash
# Search quality on BEIR SciFact through the HTTP API (bench/scifact.py):
#
#   bench/scifact.sh [--modes vector text hybrid] [--env KEY=VALUE]... [--reload] [--out FILE]
#
# Starts Postgres (scripts/services.sh), fetches the in-process model
# (scripts/model.sh), builds the release binary with it, then runs the queries.
set -euo pipefail
SCRIPT_NAME=scifact
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib/common.sh"
cd "$REPO"
[[ -f ../shared/datasets/scifact/corpus.jsonl ]] \
    || die "../shared/datasets/scifact/ is missing (BEIR SciFact; see its README)"
phase "postgres" scripts/services.sh start
eval "$(scripts/services.sh env)"
TEST_MODEL_DIR="$(scripts/model.sh)"
export TEST_DATABASE_URL PSQL TEST_MODEL_DIR
phase "cargo build --release (context-api, in-process model)" cargo build --release --bin context-api
phase "evaluation (bench/scifact.py)" python3 bench/scifact.py "$@"
phase ""
