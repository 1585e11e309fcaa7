#!/usr/bin/env bash
# Supply-chain audit: every crate in Cargo.lock against the RustSec advisory
# database, the licence policy and the allowed sources (deny.toml), with
# cargo-deny, offline.
#
#   scripts/audit.sh           # every crate of the workspace, all features
#   scripts/audit.sh --image   # advisories only, for the crates of the image's
#                              # binary (the Dockerfile's features, no dev
#                              # dependencies); scripts/sbom.sh runs it
#
# The machines reach no advisory feed, so the database is a local copy:
# ADVISORY_DB, else ../shared/advisory-db/db beside the checkout, else
# /work/shared/advisory-db/db. cargo-deny wants it as a git repository under
# a folder named after the default URL's hash; this script makes that copy in
# a temporary directory. cargo-deny is installed once (cargo install).
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
cd "$REPO"

CARGO_DENY_VERSION=0.20.2

db=""
for candidate in "${ADVISORY_DB:-}" "$REPO/../shared/advisory-db/db" /work/shared/advisory-db/db; do
    [[ -n "$candidate" && -d "$candidate/crates" ]] && { db="$candidate"; break; }
done
[[ -n "$db" ]] || die "no RustSec advisory database: set ADVISORY_DB to a copy of its folder (with crates/ in it)"

if ! cargo deny --version >/dev/null 2>&1; then
    log "installing cargo-deny $CARGO_DENY_VERSION (once; about 3 minutes)"
    cargo install --locked --quiet "cargo-deny@$CARGO_DENY_VERSION" || die "cargo install cargo-deny failed"
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
repo="$work/advisory-db-3157b0e258782691"
mkdir -p "$repo"
cp -r "$db/." "$repo/"
git -C "$repo" init -q
git -C "$repo" add -A
git -C "$repo" -c user.name=audit -c user.email=audit@localhost commit -qm snapshot
snapshot="$(git -C "$db/.." log -1 --format=%cs 2>/dev/null || true)"
log "advisory database: $db (a snapshot${snapshot:+ of $snapshot}: advisories newer than it are not checked)"

# cargo-deny reads the crates' manifests from the local registry.
cargo fetch --locked --quiet
# The policy, with the copy as its database.
sed "s|^\[advisories\]$|[advisories]\ndb-path = \"$work\"|" deny.toml >"$work/deny.toml"
if [[ "${1:-}" == --image ]]; then
    # As the Dockerfile builds it: the root package alone, without the default
    # feature (the in-process model), without dev-dependencies.
    n="$(cargo tree --locked --offline -p context-api --no-default-features -e normal --prefix none --format '{p}' \
        | sort -u | wc -l)"
    cargo deny --log-level warn --offline --locked --no-default-features --exclude-dev \
        --config "$work/deny.toml" check advisories
    ok "no known vulnerability in the image binary's dependency graph ($n crates, over every target)"
    exit 0
fi
cargo deny --log-level warn --offline --locked --workspace --all-features \
    --config "$work/deny.toml" check advisories licenses bans sources
ok "no known vulnerability, licence or source outside deny.toml's policy ($(grep -c '^name = ' Cargo.lock) crates)"
