#!/usr/bin/env bash
# The MCP server, checked by the clients agents use:
# - the MCP Inspector's CLI (npm @modelcontextprotocol/inspector, pinned) lists
#   the tools and calls each one, over streamable HTTP at /mcp (with a bearer
#   key) and over stdio (`context-api mcp` with CONTEXT_API_KEY);
# - the official Python SDK (PyPI mcp, pinned) stores and recalls a memory
#   over HTTP, and checks that a user key sees only its own user
#   (scripts/mcp_client.py).
# Against the release build, the local Postgres and Redis, the TEI stand-in.
#
#   scripts/mcp-test.sh
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
cd "$REPO"
exec </dev/null

INSPECTOR_VERSION=2.12.0
MCP_SDK_VERSION=2.3.0
TOOLS="$REPO/.mcp-tools"

phase "tools (MCP Inspector $INSPECTOR_VERSION in .mcp-tools, Python mcp $MCP_SDK_VERSION in .mcp-tools/venv)"
command -v npm >/dev/null || die "npm is missing (Node 20 or later)"
inspector="$TOOLS/node_modules/.bin/mcp-inspector"
if [[ "$(cat "$TOOLS/.inspector" 2>/dev/null)" != "$INSPECTOR_VERSION" || ! -x "$inspector" ]]; then
    mkdir -p "$TOOLS"
    # It declares node >= 22 and runs on 20 (EBADENGINE warnings only).
    npm install --silent --no-audit --no-fund --prefix "$TOOLS" \
        "@modelcontextprotocol/inspector@$INSPECTOR_VERSION" >/dev/null 2>&1 \
        || die "npm install @modelcontextprotocol/inspector@$INSPECTOR_VERSION failed"
    printf '%s' "$INSPECTOR_VERSION" >"$TOOLS/.inspector"
fi
if ! "$TOOLS/venv/bin/python" -c "import mcp, sys; sys.exit(0)" 2>/dev/null \
    || [[ "$(cat "$TOOLS/.sdk" 2>/dev/null)" != "$MCP_SDK_VERSION" ]]; then
    python3 -m venv "$TOOLS/venv"
    "$TOOLS/venv/bin/pip" install -q "mcp==$MCP_SDK_VERSION" || die "pip install mcp failed"
    printf '%s' "$MCP_SDK_VERSION" >"$TOOLS/.sdk"
fi

phase "service"
dim=8
alice=0193b3c4-0000-7000-8000-0000000a11ce
bob=0193b3c4-0000-7000-8000-000000000b0b
cargo build --release --quiet --bin context-api || die "cargo build --release failed"
mapfile -t a < <(target/release/context-api keys new --scope admin | grep -v '^#')
mapfile -t u < <(target/release/context-api keys new --scope "$alice" | grep -v '^#')
admin_key="${a[0]}" user_key="${u[0]}"
keys="${a[1]},${u[1]}"
log_file="$(mktemp)"
out="$(mktemp -d)"
serve_cleanup_extra() { rm -rf "$log_file" "$out"; }
serve_scratch mcp_test "$dim" "$keys" "$log_file"
url="http://127.0.0.1:$SERVE_PORT/mcp"

# inspect NAME ARGS...: one Inspector CLI call; its JSON answer in $out/NAME.json.
inspect() {
    local name="$1"; shift
    if ! "$inspector" --cli "$@" >"$out/$name.json" 2>"$out/$name.err"; then
        cat "$out/$name.err" "$out/$name.json" >&2
        die "inspector: $name failed"
    fi
}
# refused NAME ARGS...: a call whose tool answers an error (the Inspector then
# exits non-zero, still printing the answer).
refused() {
    local name="$1"; shift
    if "$inspector" --cli "$@" >"$out/$name.json" 2>"$out/$name.err"; then
        cat "$out/$name.json" >&2
        die "inspector: $name succeeded, an error was expected"
    fi
}
# field NAME EXPR: a Python expression over the answer `r` (and `s`, its structuredContent).
field() {
    python3 - "$out/$1.json" "$2" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
s = r.get("structuredContent")
print(eval(sys.argv[2]))
PY
}
expect() {
    local name="$1" expr="$2"
    [[ "$(field "$name" "$expr")" == True ]] || { cat "$out/$name.json" >&2; die "$name: expected $expr"; }
}

# check_transport LABEL TARGET...: every tool through one transport.
check_transport() {
    local label="$1"; shift
    inspect "$label-list" "$@" --method tools/list
    expect "$label-list" "sorted(t['name'] for t in r['tools']) == ['forget', 'get_memory', 'list_memories', 'recall', 'remember', 'update_memory']"
    expect "$label-list" "all(t.get('description') and t['inputSchema']['type'] == 'object' for t in r['tools'])"
    inspect "$label-remember" "$@" --method tools/call --tool-name remember \
        --tool-arg "text=prefers green tea over coffee ($label)" --tool-arg context_type=preference \
        --tool-arg "user_id=$alice"
    expect "$label-remember" "not r.get('isError') and s['embedding_status'] == 'ready'"
    local id
    id="$(field "$label-remember" "s['id']")"
    inspect "$label-get" "$@" --method tools/call --tool-name get_memory --tool-arg "id=$id"
    expect "$label-get" "s['id'] == '$id' and 'green tea' in s['content']['text']"
    for mode in vector text hybrid; do
        inspect "$label-recall-$mode" "$@" --method tools/call --tool-name recall \
            --tool-arg "query=green tea" --tool-arg "mode=$mode" --tool-arg "user_id=$alice"
        expect "$label-recall-$mode" "s['mode'] == '$mode' and '$id' in [x['context']['id'] for x in s['results']]"
    done
    inspect "$label-update" "$@" --method tools/call --tool-name update_memory \
        --tool-arg "id=$id" --tool-arg "text=prefers black coffee now ($label)"
    expect "$label-update" "s['version'] == 2 and 'black coffee' in s['content']['text']"
    inspect "$label-list-memories" "$@" --method tools/call --tool-name list_memories \
        --tool-arg "user_id=$alice"
    expect "$label-list-memories" "'$id' in [x['id'] for x in s['items']]"
    inspect "$label-forget" "$@" --method tools/call --tool-name forget --tool-arg "id=$id"
    expect "$label-forget" "s['forgotten'] == '$id'"
    refused "$label-gone" "$@" --method tools/call --tool-name get_memory --tool-arg "id=$id"
    expect "$label-gone" "r.get('isError') is True and s['status'] == 404"
    ok "$label: 6 tools listed, each called"
}

phase "MCP Inspector over streamable HTTP ($url)"
check_transport http "$url" --transport http --header "Authorization: Bearer $admin_key"
# No key, no tools.
code="$(curl -s -o /dev/null -w '%{http_code}' -X POST "$url" -H 'Content-Type: application/json' \
    -H 'Accept: application/json, text/event-stream' \
    -d '{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}')"
[[ "$code" == 401 ]] || die "/mcp without a key answered $code, not 401"

phase "MCP Inspector over stdio (context-api mcp)"
check_transport stdio -e "DATABASE_URL=$SCRATCH_DB_URL" -e "REDIS_URL=$TEST_REDIS_URL" \
    -e "EMBEDDING_SERVICE_URL=$SERVE_TEI_URL" -e "EMBEDDING_DIM=$dim" -e "API_KEYS=$keys" \
    -e "CACHE_KEY_PREFIX=mcp_test-stdio:" -e "LOG_LEVEL=warn" -e "CONTEXT_API_KEY=$admin_key" \
    "$REPO/target/release/context-api" mcp

phase "Python SDK (mcp $MCP_SDK_VERSION): remember and recall, scopes"
"$TOOLS/venv/bin/python" scripts/mcp_client.py "$url" "$admin_key" "$user_key" "$alice" "$bob" \
    || die "scripts/mcp_client.py failed"
if grep -q '"level":"ERROR"' "$log_file"; then
    grep '"level":"ERROR"' "$log_file" >&2
    die "the service logged errors"
fi
phase ""
ok "MCP: Inspector over HTTP and stdio, Python SDK"
