#!/usr/bin/env bash
# Search quality on BEIR SciFact through the HTTP API (bench/scifact.py):
#
#   bench/scifact.sh [--modes vector text hybrid] [--env KEY=VALUE]... [--reload] [--out FILE]
#                    [--client-load] [--check]
#
# Starts Postgres (scripts/services.sh), fetches the in-process model
# (scripts/model.sh), builds the release binary with it, then runs the queries.
# The data: SCIFACT_DIR, else ../shared/datasets/scifact beside the checkout,
# else /work/shared/datasets/scifact (CC BY-NC: never committed here).
set -euo pipefail
SCRIPT_NAME=scifact
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib/common.sh"
cd "$REPO"
found=""
for candidate in "${SCIFACT_DIR:-}" "$REPO/../shared/datasets/scifact" /work/shared/datasets/scifact; do
    [[ -n "$candidate" && -f "$candidate/corpus.jsonl" ]] && { found="$candidate"; break; }
done
[[ -n "$found" ]] || die "BEIR SciFact is missing: set SCIFACT_DIR, or put it in ../shared/datasets/scifact (see its README)"
export SCIFACT_DIR="$found"
phase "postgres" scripts/services.sh start
eval "$(scripts/services.sh env)"
TEST_MODEL_DIR="$(scripts/model.sh)"
export TEST_DATABASE_URL PSQL TEST_MODEL_DIR
phase "cargo build --release (context-api, in-process model)" cargo build --release --bin context-api
phase "evaluation (bench/scifact.py)" python3 bench/scifact.py "$@"
phase ""
