#!/usr/bin/env bash
# The restore drill: a backup in the production backup service's format,
# restored into an empty database by the documented steps (docs/deployment.md), must give back
# the same service:
#   1. a database with contexts, written through the API (release build, the
#      TEI stand-in, the local Postgres and Redis);
#   2. the backup: pg_dump with the backup service's POSTGRES_EXTRA_OPTS, read
#      from docker-compose.prod.yml (custom format, compressed);
#   3. the writers stopped; an empty database with the extension, as
#      init-db/ makes it; the documented `pg_restore` line (read from
#      docs/deployment.md, with this drill's database, user and file);
#   4. the service on the restored database: the same row count, the same
#      results (ids, order, scores) for fixed queries in every search mode,
#      and an HNSW index that is valid and chosen by the planner.
#
#   scripts/restore-drill.sh [--from DB] [--maintenance-work-mem SIZE]
#
# --from DB: step 1 is an existing database of the local Postgres instead
# (a million rows kept by `bench/scale.sh --keep`: `--from bench_scale`),
# left as it is. The fixed queries are then each filtered to one of four
# small users, whose searches are exact (the store's plan for them), so that
# they must match whatever graph the restore rebuilt. Each step's time, the
# dump's size and the restore's settings are printed. --maintenance-work-mem
# replaces the documented line's (the index build's memory: a million 768-d
# `halfvec` vectors need about 2GB to build in memory).
set -euo pipefail
SCRIPT_NAME=restore-drill DIE_PREFIX=FAIL
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
cd "$REPO"
exec </dev/null

ROWS=600
DIM=64
SRC=drill_src DST=drill_dst
FROM="" MWM=""
while (($#)); do
    case "$1" in
        --from) FROM="${2:?--from needs a database name}"; shift 2 ;;
        --maintenance-work-mem) MWM="${2:?--maintenance-work-mem needs a size}"; shift 2 ;;
        *) die "unknown argument: $1 (see the header)" ;;
    esac
done
[[ -z "$FROM" ]] || SRC="$FROM"
USERS=()
WORK="$(mktemp -d "${TMPDIR:-/tmp}/restore-drill.XXXXXX")"
PIDS=()
cleanup() {
    local rc=$?
    if ((${#PIDS[@]})); then kill "${PIDS[@]}" 2>/dev/null || true; fi
    if [[ -n "${PSQL:-}" ]]; then
        [[ -n "$FROM" ]] || "$PSQL" -X -q "$TEST_DATABASE_URL" -c "DROP DATABASE IF EXISTS $SRC WITH (FORCE)" 2>/dev/null || true
        "$PSQL" -X -q "$TEST_DATABASE_URL" -c "DROP DATABASE IF EXISTS $DST WITH (FORCE)" 2>/dev/null || true
    fi
    if ((rc)); then log "logs kept in $WORK"; else rm -rf "$WORK"; fi
    return "$rc"
}
trap cleanup EXIT

KEY="$(random_hex 16)"
AUTH=(-H "Authorization: Bearer $KEY")

# serve DB LOG: the release binary on DB; sets SERVE_URL and SERVE_PID.
serve() {
    local port
    port="$(free_port)"
    DATABASE_URL="${TEST_DATABASE_URL%/*}/$1" REDIS_URL="$TEST_REDIS_URL" \
        EMBEDDING_SERVICE_URL="$TEI_URL" EMBEDDING_DIM="$DIM" API_KEYS="$(admin_api_keys "$KEY")" \
        BIND_ADDRESS="127.0.0.1:$port" CACHE_KEY_PREFIX="drill-$1-$port:" LOG_LEVEL=warn \
        "$REPO/target/release/context-api" >"$2" 2>&1 &
    SERVE_PID=$!
    PIDS+=("$SERVE_PID")
    SERVE_URL="http://127.0.0.1:$port"
    wait_http "$SERVE_URL/ready" 30 || { cat "$2" >&2; die "the service on $1 did not become ready"; }
}

# results FILE: the fixed queries, in every mode, through the API (with --from,
# query i filtered to the small user USERS[i]).
results() {
    local out="$1" q mode i=0 user
    : >"$out"
    for q in "topic 3 and colour 1" "a note about topic 5" "colour 4" "note 17"; do
        user=""
        [[ -z "$FROM" ]] || user=",\"user_id\":\"${USERS[$i]}\""
        i=$((i + 1))
        for mode in vector text hybrid; do
            curl -sf "${AUTH[@]}" -H 'Content-Type: application/json' \
                -d "{\"query\":\"$q\",\"mode\":\"$mode\",\"k\":10$user}" "$SERVE_URL/contexts/search" \
                | python3 -c 'import json,sys; b=json.load(sys.stdin)
print(json.dumps([[r["context"]["id"], round(r["score"], 6)] for r in b["results"]]))' >>"$out" \
                || die "search $mode \"$q\" failed"
        done
    done
}

count() { "$PSQL" -X -qtA "${TEST_DATABASE_URL%/*}/$1" -c "SELECT count(*) FROM contexts"; }

phase "build and services"
cargo build --release --quiet --bin context-api || die "cargo build --release failed"
tei="$(ensure_tei_stub)"
if [[ -n "$FROM" ]]; then
    "$REPO/scripts/services.sh" start
    eval "$("$REPO/scripts/services.sh" env)"
    SCRATCH_DB_URL="${TEST_DATABASE_URL%/*}/$SRC"
    DIM="$("$PSQL" -X -qtA "$SCRATCH_DB_URL" -c "SELECT vector_dims(embedding) FROM contexts WHERE embedding IS NOT NULL LIMIT 1")" \
        || die "$SRC is not a context-api database"
else
    scratch_db "$SRC"
fi
PG_BIN_DIR="$(dirname "$PSQL")"
tei_port="$(free_port)"
TEI_URL="http://127.0.0.1:$tei_port"
"$tei" --port "$tei_port" --dim "$DIM" >/dev/null 2>&1 &
PIDS+=($!)
[[ -n "$FROM" ]] || DATABASE_URL="$SCRATCH_DB_URL" EMBEDDING_DIM="$DIM" LOG_LEVEL=warn \
    "$REPO/target/release/context-api" migrate >/dev/null || die "migrate failed"

if [[ -n "$FROM" ]]; then
    phase "the database $FROM, as it is"
    mapfile -t USERS < <("$PSQL" -X -qtA "$SCRATCH_DB_URL" -c \
        "SELECT user_id FROM contexts GROUP BY user_id HAVING count(*) BETWEEN 5 AND 100 ORDER BY user_id LIMIT 4")
    ((${#USERS[@]} == 4)) || die "$FROM has fewer than four users of 5 to 100 contexts"
    ROWS="$(count "$SRC")"
    log "$ROWS contexts of $DIM dimensions, $("$PSQL" -X -qtA "$SCRATCH_DB_URL" -c \
        "SELECT pg_size_pretty(pg_database_size(current_database()))")"
fi
[[ -n "$FROM" ]] || phase "a database with $ROWS contexts, written through the API"
serve "$SRC" "$WORK/src.log"
if [[ -z "$FROM" ]]; then
    for start in $(seq 0 100 $((ROWS - 1))); do
        python3 - "$start" >"$WORK/batch.json" <<'PY'
import json, sys, uuid
start = int(sys.argv[1])
user = "0190a4f0-0000-7000-8000-000000000001"
print(json.dumps({"items": [
    {"user_id": user, "context_type": "note",
     "content": {"text": f"note {i} about topic {i % 7} and colour {i % 5}"},
     "metadata": {"i": i}}
    for i in range(start, start + 100)]}))
PY
        curl -sf "${AUTH[@]}" -H 'Content-Type: application/json' --data-binary "@$WORK/batch.json" \
            "$SERVE_URL/contexts/batch" >/dev/null || die "batch create failed"
    done
fi
results "$WORK/before.txt"
before_rows="$(count "$SRC")"
[[ "$before_rows" == "$ROWS" ]] || die "expected $ROWS rows, found $before_rows"

phase "backup: pg_dump as the backup service runs it"
opts="$(sed -n 's/^ *POSTGRES_EXTRA_OPTS: *//p' docker-compose.prod.yml)"
[[ "$opts" == *--format=custom* ]] || die "docker-compose.prod.yml's backup service no longer dumps in custom format: $opts"
# shellcheck disable=SC2086 # the options are words, as the backup service splits them
"$PG_BIN_DIR/pg_dump" $opts -d "$SCRATCH_DB_URL" -f "$WORK/context.dump" || die "pg_dump failed"
log "$(du -h "$WORK/context.dump" | cut -f1) dump ($opts)"

phase "restore: the documented steps into an empty database"
# "stop the writers"
kill "$SERVE_PID"; wait "$SERVE_PID" 2>/dev/null || true
# A new, empty volume: init-db/ has created the extension.
"$PSQL" -X -q -v ON_ERROR_STOP=1 "$TEST_DATABASE_URL" -c "DROP DATABASE IF EXISTS $DST" -c "CREATE DATABASE $DST" \
    || die "cannot create $DST"
"$PSQL" -X -q -v ON_ERROR_STOP=1 "${TEST_DATABASE_URL%/*}/$DST" -f init-db/01-extensions.sql || die "init-db failed"
# The documented pg_restore line, as written there, with this drill's names.
line="$(grep -m1 -o 'pg_restore .*/tmp/context.dump' docs/deployment.md)" || die "docs/deployment.md has no pg_restore line"
log "docs/deployment.md: $line"
# The settings it gives the restoring session (the index build's maintenance_work_mem).
pgoptions="$(grep -m1 'pg_restore .*/tmp/context.dump' docs/deployment.md | sed -n "s/.*PGOPTIONS=[\"']\([^\"']*\)[\"'].*/\1/p")"
[[ -n "$pgoptions" ]] || die "docs/deployment.md's pg_restore line sets no PGOPTIONS (maintenance_work_mem)"
[[ -z "$MWM" ]] || pgoptions="-c maintenance_work_mem=$MWM"
log "PGOPTIONS: $pgoptions"
read -r -a restore <<<"$line"
db_user="$(python3 -c 'import sys, urllib.parse as u; print(u.urlparse(sys.argv[1]).username)' "$TEST_DATABASE_URL")"
args=()
for ((i = 1; i < ${#restore[@]}; i++)); do
    case "${restore[$i]}" in
        -U) args+=(-U "$db_user"); i=$((i + 1)) ;;
        -d) args+=(-d "${TEST_DATABASE_URL%/*}/$DST"); i=$((i + 1)) ;;
        /tmp/context.dump) args+=("$WORK/context.dump") ;;
        *) args+=("${restore[$i]}") ;;
    esac
done
PGOPTIONS="$pgoptions" "$PG_BIN_DIR/pg_restore" "${args[@]}" 2>"$WORK/restore.log" \
    || { cat "$WORK/restore.log" >&2; die "pg_restore failed"; }
# "start the writers again"
serve "$DST" "$WORK/dst.log"

phase "the restored service gives back the same"
after_rows="$(count "$DST")"
[[ "$after_rows" == "$before_rows" ]] || die "rows: $before_rows before, $after_rows after"
ok "$after_rows rows"
results "$WORK/after.txt"
diff -u "$WORK/before.txt" "$WORK/after.txt" >&2 || die "the fixed queries give other results after the restore"
ok "$(wc -l <"$WORK/after.txt") searches (4 queries x vector, text, hybrid) give the same ids, order and scores"
valid="$("$PSQL" -X -qtA "${TEST_DATABASE_URL%/*}/$DST" -c \
    "SELECT indisvalid AND indisready FROM pg_index WHERE indexrelid = 'contexts_embedding_hnsw_idx'::regclass")"
[[ "$valid" == "t" ]] || die "the HNSW index is not valid after the restore"
# The ORDER BY the index serves, in the form the database records (VECTOR_INDEX).
read -r form dim < <("$PSQL" -X -qtA -F ' ' "${TEST_DATABASE_URL%/*}/$DST" -c \
    "SELECT vector_index, vector_dims(embedding) FROM embedding_state, contexts WHERE embedding IS NOT NULL LIMIT 1")
q="(SELECT embedding FROM contexts WHERE embedding IS NOT NULL LIMIT 1)"
case "$form" in
    vector) order="embedding <=> $q" ;;
    halfvec) order="l2_normalize(embedding)::halfvec($dim) <=> l2_normalize($q)::halfvec($dim)" ;;
    bit) order="binary_quantize(embedding)::bit($dim) <~> binary_quantize($q)::bit($dim)" ;;
    *) die "unknown vector index form: '$form'" ;;
esac
plan="$("$PSQL" -X -qtA "${TEST_DATABASE_URL%/*}/$DST" -c "SET enable_seqscan = off" -c \
    "EXPLAIN SELECT id FROM contexts ORDER BY $order LIMIT 10")"
grep -q "Index Scan using contexts_embedding_hnsw_idx" <<<"$plan" || { echo "$plan" >&2; die "the HNSW index is not used"; }
ok "the HNSW index ($form) is valid and answers nearest-neighbour scans"
phase ""
log "restore drill passed"
