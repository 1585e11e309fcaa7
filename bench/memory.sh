#!/usr/bin/env bash
# Peak memory of the service with the local model loaded, under a little load.
#
#   bench/memory.sh            (starts Postgres/Redis if needed)
#
# Starts `context-api serve` with EMBEDDING_PROVIDER=local on a scratch
# database, creates 200 contexts and runs 200 text searches (8 at a time), then
# reads VmHWM (peak resident set) and VmRSS from /proc. For comparison it does
# the same with the TEI provider against target/release/tei-stub (no model in process).
set -euo pipefail
SCRIPT_NAME=memory
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib/common.sh"
cd "$REPO"
PORT="${PORT:-18800}"
scripts/services.sh start >/dev/null
eval "$(scripts/services.sh env)"
MODEL="$(scripts/model.sh)"
# The dev build: candle and friends are optimized in it (see Cargo.toml), and
# it is the binary the quick start runs.
cargo build --quiet --bin context-api
TEI_STUB="$(ensure_tei_stub)"
KEY=bench-key

run() { # provider
    local provider=$1 db="bench_mem_$1" pid stub=""
    "$PSQL" "$TEST_DATABASE_URL" -qc "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" 2>/dev/null
    local api_keys
    api_keys="$(admin_api_keys "$KEY")"
    export DATABASE_URL="${TEST_DATABASE_URL%/postgres}/$db" REDIS_URL="$TEST_REDIS_URL" \
        API_KEYS="$api_keys" BIND_ADDRESS="127.0.0.1:$PORT" \
        EMBEDDING_DIM=384 CACHE_KEY_PREFIX="bench-mem-$provider:" LOG_LEVEL=warn
    if [[ $provider == local ]]; then
        export EMBEDDING_PROVIDER=local EMBEDDING_MODEL_DIR="$MODEL"; unset EMBEDDING_SERVICE_URL
    else
        "$TEI_STUB" --port $((PORT + 1)) --dim 384 >/dev/null 2>&1 & stub=$!
        export EMBEDDING_PROVIDER=tei EMBEDDING_SERVICE_URL="http://127.0.0.1:$((PORT + 1))"
    fi
    target/debug/context-api migrate >/dev/null
    target/debug/context-api serve & pid=$!
    wait_http "http://127.0.0.1:$PORT/ready" 20 || true
    local idle; idle=$(awk '/VmRSS/{print $2}' /proc/$pid/status)
    python3 - "$PORT" "$KEY" <<'PY'
import json, sys, urllib.request, concurrent.futures as cf
port, key = sys.argv[1], sys.argv[2]
def call(path, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", json.dumps(body).encode(),
        {"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    return urllib.request.urlopen(req).status
user = "7a1c9d7e-3b53-4f5e-9a0c-2f1d6a4b8c11"
with cf.ThreadPoolExecutor(8) as ex:
    list(ex.map(lambda i: call("/contexts", {"user_id": user, "context_type": "bench",
        "content": {"text": f"memory number {i} about tea, travel, work and family " * 4}}), range(200)))
    list(ex.map(lambda i: call("/contexts/search", {"query": f"question {i} about family travel", "k": 5}), range(200)))
PY
    local hwm rss; hwm=$(awk '/VmHWM/{print $2}' /proc/$pid/status); rss=$(awk '/VmRSS/{print $2}' /proc/$pid/status)
    kill -TERM $pid; wait $pid || true
    [[ -n $stub ]] && kill $stub
    "$PSQL" "$TEST_DATABASE_URL" -qc "DROP DATABASE IF EXISTS $db"
    printf '| %s | %d MiB | %d MiB | %d MiB |\n' "$provider" $((idle / 1024)) $((rss / 1024)) $((hwm / 1024))
}
echo "| provider | RSS after start | RSS after load | peak RSS (VmHWM) |"
echo "|---|---|---|---|"
run local
run tei
