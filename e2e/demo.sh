#!/usr/bin/env bash
# `make demo`: the main job on a fresh machine. Brings the local environment up, pushes a
# sample Falco rules artifact (written here, not copied from upstream), applies the CRDs
# and a sample ArtifactSource, and shows what is there. Grows as the controller and agent land.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${OCISYNC_BIN:-target/release/ocisync}
[[ -x $BIN ]] || BIN=target/debug/ocisync
[[ -x $BIN ]] || { echo "demo: build first (make release)" >&2; exit 1; }

eval "$(e2e/testenv.sh up)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "== a sample Falco rules file"
mkdir -p "$work/rules"
cat >"$work/rules/ocisync_demo_rules.yaml" <<'RULES'
# A small rule set written for the ocisync demo.
- required_engine_version: 0.26.0

- macro: ocisync_demo_shell
  condition: proc.name in (bash, sh, zsh)

- rule: Shell started in a demo container
  desc: A shell was started inside a container labelled for the ocisync demo.
  condition: evt.type = execve and container.id != host and ocisync_demo_shell
  output: "Shell in demo container (user=%user.name container=%container.name cmd=%proc.cmdline)"
  priority: NOTICE
  tags: [ocisync, demo]
RULES

ref="$OCISYNC_REGISTRY_PLAIN/ocisync-demo/falco-rules"
echo "== ocisync push $ref (version 0.1.0, floating tags)"
"$BIN" push "$work/rules/ocisync_demo_rules.yaml" "$ref" --type falco-rules \
	--version 0.1.0 --floating-tags --insecure

echo "== ocisync pull $ref:0 (semver-style floating tag)"
"$BIN" pull "$ref:0" -o "$work/pulled" --insecure
ls -l "$work/pulled"

echo "== CRDs applied to the cluster"
kubectl apply --server-side --field-manager=ocisync -f crds/
kubectl wait --for condition=Established --timeout=60s \
	crd/artifactsources.ocisync.dev crd/rulebundles.ocisync.dev

echo "== a sample ArtifactSource"
kubectl create namespace ocisync-demo --dry-run=client -o yaml | kubectl apply -f -
kubectl apply -n ocisync-demo -f - <<YAML
apiVersion: ocisync.dev/v1alpha1
kind: ArtifactSource
metadata:
  name: falco-rules
spec:
  url: oci://$ref
  ref:
    semver: ">=0.1.0 <1"
  interval: 5m
  insecure: true
YAML

echo "== the controller (artifact server on 127.0.0.1:9090)"
pkill -f "ocisync controller --namespace ocisync-demo" 2>/dev/null || true
mkdir -p "$OCISYNC_TESTENV_DIR/demo-store"
nohup "$BIN" controller --namespace ocisync-demo --listen 127.0.0.1:9090 \
	--artifact-base-url http://127.0.0.1:9090 --store-dir "$OCISYNC_TESTENV_DIR/demo-store" \
	>"$OCISYNC_TESTENV_DIR/logs/demo-controller.log" 2>&1 &
echo "controller pid $! (log: $OCISYNC_TESTENV_DIR/logs/demo-controller.log)"
kubectl wait -n ocisync-demo --for=condition=Ready --timeout=60s artifactsource/falco-rules
kubectl get artifactsources -n ocisync-demo -o wide
url=$(kubectl get artifactsource falco-rules -n ocisync-demo -o jsonpath='{.status.artifact.url}')
echo "== served index: $url"
curl -fsS "$url"
echo
echo "demo: environment and controller are up; use them with:  eval \"\$(e2e/testenv.sh env)\""
echo "stop the controller with: pkill -f 'ocisync controller --namespace ocisync-demo'"
