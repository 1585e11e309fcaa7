#!/usr/bin/env bash
# End-to-end test of the quick start, as a newcomer would run it:
#   1. ./scripts/quickstart.sh starts (in its own process group, like a terminal);
#   2. the README's walkthrough (the ```sh blocks between the
#      <!-- walkthrough --> markers) runs verbatim and its answers are checked;
#   3. Ctrl-C (SIGINT to the process group) stops everything: the service
#      exits, the services the script started are stopped, no process is left.
# Usage: scripts/quickstart-test.sh   (CI runs it from .ci/run)
set -euo pipefail
DIE_PREFIX=FAIL
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
cd "$REPO"
log=$(mktemp); out=$(mktemp); walk=$(mktemp)
trap 'rm -f "$log" "$out" "$walk"' EXIT

# The quick start must find the services stopped to show it starts (and stops) them.
scripts/services.sh stop >/dev/null 2>&1 || true
curl -s -o /dev/null http://127.0.0.1:8000/health && die "something already listens on 127.0.0.1:8000"

setsid scripts/quickstart.sh >"$log" 2>&1 < /dev/null &
leader=$!
cleanup() {
    kill -KILL -- "-$leader" 2>/dev/null || true
    scripts/services.sh stop >/dev/null 2>&1 || true
}
trap 'cleanup; rm -f "$log" "$out" "$walk"' EXIT

# Up to 20 minutes: a cold release build comes first.
for _ in $(seq 1 1200); do
    curl -sf -o /dev/null http://127.0.0.1:8000/ready && break
    kill -0 "$leader" 2>/dev/null || { cat "$log" >&2; die "quickstart.sh exited before the service was ready"; }
    sleep 1
done
curl -sf -o /dev/null http://127.0.0.1:8000/ready || { tail -50 "$log" >&2; die "not ready after 20 minutes"; }
grep -q "admin API key:" "$log" || die "the quick start did not print the API key"

# The walkthrough, verbatim from the README.
awk '/<!-- walkthrough:start -->/{on=1} /<!-- walkthrough:end -->/{on=0}
     on && /^```sh/{code=1; next} on && /^```/{code=0; next} code' README.md > "$walk"
[[ -s "$walk" ]] || die "no walkthrough found in README.md"
bash -euo pipefail "$walk" > "$out" 2>&1 || { cat "$out" >&2; die "the walkthrough failed"; }
cat "$out"

# What the walkthrough must have shown.
grep -q '"next_cursor"' "$out" || die "listing did not answer"
first=$(grep -m1 '"results"' "$out" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["results"][0]["context"]["content"]["text"])') \
    || die "search did not answer"
[[ "$first" == *"green tea"* ]] || die "the drink question did not find the tea preference first, but: $first"
grep -q '"version":2' "$out" || die "the If-Match update did not answer version 2"
grep -q 'HTTP/1.1 412' "$out" || die "a stale If-Match was not refused with 412"
grep -q 'HTTP/1.1 204' "$out" || die "delete did not answer 204"

# Ctrl-C: SIGINT to the whole process group, as a terminal sends it.
kill -INT -- "-$leader"
for _ in $(seq 1 60); do
    kill -0 "$leader" 2>/dev/null || break
    sleep 0.5
done
kill -0 "$leader" 2>/dev/null && { tail -20 "$log" >&2; die "quickstart.sh still running 30 s after Ctrl-C"; }
wait "$leader" || die "quickstart.sh exited non-zero after Ctrl-C: $(tail -5 "$log")"
left=$(pgrep -f "target/(debug|release)/context-api serve|$REPO/.services" || true)
[[ -z "$left" ]] || die "processes left behind: $(ps -o pid,args -p "${left//$'\n'/,}")"
grep -q "shutdown complete" "$log" || die "the service did not shut down gracefully"

# A second run keeps the data of the first.
setsid scripts/quickstart.sh >"$log" 2>&1 < /dev/null &
leader=$!
for _ in $(seq 1 120); do
    curl -sf -o /dev/null http://127.0.0.1:8000/ready && break
    sleep 1
done
KEY=$(cat .data/dev-api-key)
n=$(curl -sf "http://127.0.0.1:8000/contexts?user_id=7a1c9d7e-3b53-4f5e-9a0c-2f1d6a4b8c11" \
      -H "Authorization: Bearer $KEY" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["items"]))')
[[ "$n" -ge 2 ]] || die "the second run lost the first run's contexts (found $n)"
kill -INT -- "-$leader"
wait "$leader" || die "second run: non-zero exit after Ctrl-C"
echo "quickstart-test: OK"
