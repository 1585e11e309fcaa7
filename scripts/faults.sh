#!/usr/bin/env bash
# Faults under load and a soak (scripts/faults.py): Postgres restarted, Redis
# killed, TEI down, a rolling restart behind the project's Caddyfile, three
# replicas draining a backlog, then SOAK_SECONDS (default 300) of mixed load.
# Each is bounded in time and requests, and targets loopback only.
#
#   scripts/faults.sh [faults.py options, e.g. --only tei_down --soak-seconds 60]
#
# It stops and starts the local Postgres and Redis (scripts/services.sh): run
# it alone, not beside the test suite. Results: target/faults/results.json.
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
cd "$REPO"
exec </dev/null

phase "tools (caddy) and services"
apt_ensure caddy caddy
"$REPO/scripts/services.sh" start
eval "$("$REPO/scripts/services.sh" env)"

phase "binaries (release)"
cargo build --release --quiet --bin context-api || die "cargo build --release failed"
tei="$(ensure_tei_stub)"

phase "faults under load (scripts/faults.py)"
rm -rf target/faults
python3 scripts/faults.py --bin target/release/context-api --tei-stub "$tei" --psql "$PSQL" \
    --database-url "$TEST_DATABASE_URL" --redis-url "$TEST_REDIS_URL" \
    --soak-seconds "${SOAK_SECONDS:-300}" "$@" || die "a fault scenario failed (see above; logs in target/faults/)"
phase ""
ok "every fault survived; results in target/faults/results.json"
