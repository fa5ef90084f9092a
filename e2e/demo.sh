#!/usr/bin/env bash
# `make demo`: ocisync running as pods on the local real node. Brings the environment up
# (with a node), builds the image without Docker, installs the chart with Helm, pushes a
# sample Falco rules artifact (written here, not copied from upstream), and applies an
# ArtifactSource and a RuleBundle whose files land in a ConfigMap and on the node.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(e2e/testenv.sh up --node)"
[[ -n ${OCISYNC_NODE:-} ]] || { echo "demo: needs the local real node (unset KUBECONFIG)" >&2; exit 1; }
BIN=target/release/ocisync
HELM=target/tools/helm
ns=ocisync-demo
hostdir=/tmp/ocisync-demo
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "== the image, built without Docker, in the local registry"
tag=demo-$(date +%s)
e2e/image.sh "$OCISYNC_REGISTRY_PLAIN/ocisync:$tag"

echo "== helm install (controller Deployment, agent DaemonSet)"
"$HELM" upgrade --install ocisync charts/ocisync --namespace "$ns" --create-namespace \
	--set image.repository="$OCISYNC_REGISTRY_PLAIN/ocisync" --set image.tag="$tag" \
	--set "agent.allowedDirs={$hostdir}" --set agent.stateDir="$hostdir-state" \
	--set 'agent.controllerURL=http://$(OCISYNC_CONTROLLER_SERVICE_HOST):$(OCISYNC_CONTROLLER_SERVICE_PORT)'
kubectl -n "$ns" rollout status deploy/ocisync-controller --timeout=120s
kubectl -n "$ns" rollout status ds/ocisync-agent --timeout=120s

echo "== a sample Falco rules file, pushed as a falcoctl-style artifact"
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
"$BIN" push "$work/rules/ocisync_demo_rules.yaml" "$OCISYNC_REGISTRY_PLAIN/ocisync-demo/falco-rules" \
	--type falco-rules --version 0.1.0 --floating-tags --insecure

echo "== an ArtifactSource and a RuleBundle (ConfigMap + files on the node)"
kubectl apply -n "$ns" -f - <<YAML
apiVersion: ocisync.dev/v1alpha1
kind: ArtifactSource
metadata: {name: falco-rules}
spec:
  url: oci://$OCISYNC_NODE_REGISTRY/ocisync-demo/falco-rules
  ref: {semver: ">=0.1.0 <1"}
  interval: 1m
  insecure: true
---
apiVersion: ocisync.dev/v1alpha1
kind: RuleBundle
metadata: {name: falco-rules}
spec:
  sources: [{sourceRef: {name: falco-rules}}]
  configMap: {}
  nodeFiles: {directory: $hostdir/rules.d}
YAML
kubectl wait -n "$ns" --for=condition=Ready --timeout=120s rulebundle/falco-rules
kubectl get pods,artifactsources,rulebundles,nodereports -n "$ns" -o wide
echo "== the ConfigMap"
kubectl get configmap falco-rules -n "$ns" -o jsonpath='{.metadata.annotations}{"\n"}'
echo "== on the node: $hostdir/rules.d"
ls -la "$hostdir/rules.d"
echo
echo "demo: ocisync runs as pods in namespace $ns; use the environment with: eval \"\$(e2e/testenv.sh env)\""
echo "remove it with: $HELM uninstall ocisync -n $ns"
