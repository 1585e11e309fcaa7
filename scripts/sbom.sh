#!/usr/bin/env bash
# The image's software bill of materials, and an audit of exactly those crates:
#
#   scripts/sbom.sh            # writes target/sbom/context-api.cdx.json
#
# 1. cargo-cyclonedx (installed once, pinned) describes the context-api binary
#    as the Dockerfile builds it (--no-default-features, the host target):
#    CycloneDX 1.5 JSON, every crate with its version, licence and purl.
# 2. The SBOM is checked against cargo's own view of the same build: every
#    crate that `cargo tree` resolves for it is in the SBOM, with the same
#    version, and the in-process model's crates (the default feature, not in
#    the image) are not.
# 3. Those crates, and only those, are audited against the RustSec database
#    (scripts/audit.sh --image: cargo-deny with the Dockerfile's features).
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
cd "$REPO"

CARGO_CYCLONEDX_VERSION=0.5.9
OUT_DIR="${CARGO_TARGET_DIR:-$REPO/target}/sbom"
SBOM="$OUT_DIR/context-api.cdx.json"
TARGET="$(rustc -vV | awk '/^host:/{print $2}')"

if [[ "$(cargo cyclonedx --version 2>/dev/null)" != *"$CARGO_CYCLONEDX_VERSION"* ]]; then
    log "installing cargo-cyclonedx $CARGO_CYCLONEDX_VERSION (once; about 3 minutes)"
    cargo install --locked --quiet "cargo-cyclonedx@$CARGO_CYCLONEDX_VERSION" || die "cargo install cargo-cyclonedx failed"
fi

mkdir -p "$OUT_DIR"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# cargo-cyclonedx writes beside each Cargo.toml (the package, with its lib and
# bin as subcomponents: one dependency graph); the name is fixed here and the
# file moved out of the source tree at once.
rm -f context-api-sbom.json
SOURCE_DATE_EPOCH="$(git log -1 --format=%ct 2>/dev/null || date +%s)" \
    cargo cyclonedx --quiet --format json --spec-version 1.5 --all --no-build-deps \
    --no-default-features --target "$TARGET" \
    --override-filename context-api-sbom --manifest-path Cargo.toml \
    || die "cargo cyclonedx failed"
[[ -f context-api-sbom.json ]] || die "cargo cyclonedx wrote no context-api-sbom.json"
mv context-api-sbom.json "$SBOM"
find crates -name context-api-sbom.json -delete

# What cargo resolves for the image's build: normal dependencies of the binary
# on this target, without the default features.
cargo tree --locked --offline -p context-api --no-default-features --target "$TARGET" -e normal \
    --prefix none --format '{p}' 2>/dev/null \
    | awk '{print $1 "@" substr($2, 2)}' | sort -u >"$work/tree.txt"
[[ -s "$work/tree.txt" ]] || die "cargo tree listed nothing"

python3 - "$SBOM" "$work/tree.txt" <<'PY' || die "the SBOM does not describe the image's build"
import json, sys

bom = json.load(open(sys.argv[1]))
want = {l.strip() for l in open(sys.argv[2]) if l.strip()}
problems = []
if bom.get("bomFormat") != "CycloneDX" or bom.get("specVersion") != "1.5":
    problems.append(f"not CycloneDX 1.5: {bom.get('bomFormat')} {bom.get('specVersion')}")
main = (bom.get("metadata") or {}).get("component") or {}
comps = bom.get("components") or []
have = {f"{c['name']}@{c['version']}" for c in comps}
have.add(f"{main.get('name')}@{main.get('version')}")
for c in comps:
    if not str(c.get("purl", "")).startswith(f"pkg:cargo/{c['name']}@{c['version']}"):
        problems.append(f"{c['name']}: purl {c.get('purl')!r}")
    if not c.get("licenses"):
        problems.append(f"{c['name']}@{c['version']}: no licence")
missing = sorted(want - have)
if missing:
    problems.append(f"{len(missing)} crates of the build are missing: {missing[:10]}")
for absent in ("candle-core", "tokenizers"):
    if any(c["name"] == absent for c in comps):
        problems.append(f"{absent} is listed, but the image is built without local-embeddings")
for present in ("axum", "sqlx-postgres", "redis", "tokio", "rustls"):
    if not any(c["name"] == present for c in comps):
        problems.append(f"{present} is not listed")
for p in problems[:20]:
    print(f"sbom: {p}", file=sys.stderr)
if problems:
    sys.exit(1)
print(f"{len(comps)} components, all {len(want)} crates of the build, each with a purl and a licence")
PY
ok "SBOM of the image's binary: $SBOM ($(jq '.components | length' "$SBOM") crates)"

scripts/audit.sh --image
