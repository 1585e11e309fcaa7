#!/usr/bin/env bash
# The client libraries, through their own test runners, against the live
# service (the release build on a fresh database, the local Postgres and
# Redis, the TEI stand-in):
# - the generated types are current (scripts/clients-generate.sh --check);
# - Python: pytest in clients/python (sync and async clients);
# - TypeScript: tsc, then Node's test runner in clients/typescript.
# A second instance on the same database has a user rate limit, for the 429
# retries. The service takes bodies of 64 KiB (batches of 1 MiB), so that the
# clients' splitting of a batch too large is exercised.
#
#   scripts/clients-test.sh
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
cd "$REPO"
exec </dev/null

phase "generated types are current (scripts/clients-generate.sh --check)"
scripts/clients-generate.sh --check

phase "service"
dim=16
rate=20
user=0193b3c4-0000-7000-8000-00000000c11e
cargo build --release --quiet --bin context-api || die "cargo build --release failed"
mapfile -t a < <(target/release/context-api keys new --scope admin | grep -v '^#')
mapfile -t u < <(target/release/context-api keys new --scope "$user" | grep -v '^#')
log_file="$(mktemp)" limited_log="$(mktemp)" unembedded_log="$(mktemp)"
serve_cleanup_extra() { rm -f "$log_file" "$limited_log" "$unembedded_log"; }
SERVE_ENV=(MAX_BODY_BYTES=65536)
serve_scratch clients_test "$dim" "${a[1]},${u[1]}" "$log_file"
serve_another "$limited_log" RATE_LIMIT_USER_PER_MINUTE="$rate"
limited_port="$ANOTHER_PORT"
# A third whose embedding service is unreachable: its writes are stored
# pending, and the first instance's worker makes their vectors.
serve_another "$unembedded_log" EMBEDDING_SERVICE_URL="http://127.0.0.1:$(free_port)"

export CONTEXT_API_URL="http://127.0.0.1:$SERVE_PORT" CONTEXT_API_LIMITED_URL="http://127.0.0.1:$limited_port" \
    CONTEXT_API_UNEMBEDDED_URL="http://127.0.0.1:$ANOTHER_PORT" \
    CONTEXT_API_ADMIN_KEY="${a[0]}" CONTEXT_API_USER_KEY="${u[0]}" CONTEXT_API_USER_ID="$user" \
    CONTEXT_API_DIM="$dim" CONTEXT_API_RATE_PER_MINUTE="$rate"
py=0 ts=0
phase "Python client (pytest)"
"$REPO/.clients-venv/bin/python" -m pytest -q -p no:cacheprovider clients/python || py=$?
# The limited instance's budget refills (20 a minute) before the next client's 429 test.
sleep 3
phase "TypeScript client (tsc, node --test)"
(cd clients/typescript && rm -rf dist && npm test --silent) || ts=$?
if grep -E '"level":"ERROR"|panicked' "$log_file" "$limited_log" >/dev/null; then
    grep -m 20 -E '"level":"ERROR"|panicked' "$log_file" "$limited_log" >&2
    die "the service logged errors under the clients' tests"
fi
((py == 0)) || die "the Python client's tests failed (exit $py)"
((ts == 0)) || die "the TypeScript client's tests failed (exit $ts)"
phase ""
ok "the clients work against the live service"
