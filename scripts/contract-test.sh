#!/usr/bin/env bash
# The published contract, fuzzed: schemathesis (PyPI) against the live service
# (release build, the local Postgres and Redis, the TEI stand-in), with every
# check, authenticated, in all four phases: the documented examples, the
# coverage of each schema's edges, random fuzzing, and stateful runs that
# follow the document's OpenAPI links (create, then get, patch, search and
# delete the created id). The example budget is fixed, so the run fits CI.
# Any failure fails the script; the report is in target/contract/.
#
#   scripts/contract-test.sh [extra schemathesis options...]
#
# Environment: CONTRACT_EXAMPLES (examples per operation, default 300),
# CONTRACT_SEED (default: a fixed seed, so CI runs the same cases each time).
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
cd "$REPO"
exec </dev/null

SCHEMATHESIS_VERSION=4.32.5
examples="${CONTRACT_EXAMPLES:-300}"
seed="${CONTRACT_SEED:-20261201}"
report="$REPO/target/contract"

phase "tools (schemathesis $SCHEMATHESIS_VERSION in .contract-venv)"
if ! .contract-venv/bin/st --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
    python3 -m venv .contract-venv
    .contract-venv/bin/pip install -q "schemathesis==$SCHEMATHESIS_VERSION" \
        || die "pip install schemathesis failed"
fi

phase "service"
cargo build --release --quiet --bin context-api || die "cargo build --release failed"
# A small dimension, so that schema-valid vectors are within reach of the fuzzer.
dim=8
# A user key, the common client: a create without user_id is its own user's
# (an admin key must name the user, which the document cannot say per key).
user=0193b3c4-0000-7000-8000-00000000c0de
mapfile -t made < <(target/release/context-api keys new --scope "$user" | grep -v '^#')
key="${made[0]}" entry="${made[1]}"
log_file="$(mktemp)"
serve_cleanup_extra() { rm -f "$log_file"; }
serve_scratch contract_test "$dim" "$entry" "$log_file"
port="$SERVE_PORT"

phase "schemathesis (all checks, all phases, $examples examples per operation, seed $seed)"
rm -rf "$report"
mkdir -p "$report"
status=0
SCHEMATHESIS_HOOKS=${CONTRACT_HOOKS-contract_hooks} PYTHONPATH="$REPO/scripts" \
    .contract-venv/bin/st --config-file scripts/schemathesis.toml run "http://127.0.0.1:$port/openapi.json" \
    --checks all \
    --phases examples,coverage,fuzzing,stateful \
    --header "Authorization: Bearer $key" \
    --max-examples "$examples" \
    --seed "$seed" \
    --workers 1 \
    --request-timeout 10 \
    --suppress-health-check too_slow,filter_too_much \
    --report junit,ndjson --report-dir "$report" \
    --no-color \
    "$@" || status=$?
# A 5xx is a failure of its own, so the service's log is shown with it.
if grep -E '"level":"ERROR"| ERROR |panicked' "$log_file" >/dev/null; then
    grep -m 20 -E '"level":"ERROR"| ERROR |panicked' "$log_file" >&2
    die "the service logged errors while being fuzzed"
fi
((status == 0)) || die "schemathesis found failures (exit $status; report in $report)"
phase ""
ok "the contract holds: no failure in any check (report in $report)"
