#!/usr/bin/env bash
# Regenerates .sqlx/, the query descriptions the sqlx macros check against at
# compile time (SQLX_OFFLINE=true, .cargo/config.toml), from a database made
# from migrations/ alone. Without sqlx-cli: the macros themselves write the
# descriptions when a build runs online with SQLX_OFFLINE_DIR set.
#
#   scripts/sqlx-prepare.sh          rewrite .sqlx/ (commit it with the queries)
#   scripts/sqlx-prepare.sh --check  fail when the committed .sqlx/ is stale
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
cd "$REPO"

mode="${1:-write}"
[[ "$mode" == write || "$mode" == --check ]] || die "usage: $0 [--check]"

db=sqlx_prepare
scratch_db "$db"
url="$SCRATCH_DB_URL"
"$PSQL" -X -q -v ON_ERROR_STOP=1 "$url" -f init-db/01-extensions.sql
# The migrations as `context-api migrate` applies them (the dimension does not
# change any query's description, nor does the text-search configuration).
for f in migrations/*.sql; do
    sed 's/{{EMBEDDING_DIM}}/768/g; s/{{TEXT_SEARCH_CONFIG}}/english/g' "$f" | "$PSQL" -X -q -v ON_ERROR_STOP=1 "$url" >/dev/null \
        || die "$f does not apply"
done

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
# The macros run again only if their files changed.
touch src/store/*.rs
SQLX_OFFLINE=false DATABASE_URL="$url" SQLX_OFFLINE_DIR="$out" \
    cargo check --quiet --lib
"$PSQL" -X -q "$TEST_DATABASE_URL" -c "DROP DATABASE IF EXISTS $db"

if [[ "$mode" == --check ]]; then
    diff -r .sqlx "$out" >&2 || die ".sqlx/ is stale: run scripts/sqlx-prepare.sh and commit .sqlx/"
    ok ".sqlx/ matches the queries ($(find "$out" -name '*.json' | wc -l) queries)"
else
    rm -rf .sqlx
    cp -r "$out" .sqlx
    ok "wrote .sqlx/ ($(find .sqlx -name '*.json' | wc -l) queries)"
fi
