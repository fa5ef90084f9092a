#!/usr/bin/env bash
# `make bench` (agent part): one agent with 10 RuleBundles (nodeFiles) on a fake node.
# Reports the time until every bundle is Ready on the node, the agent's idle RSS, and the
# artifact-server requests an idle minute costs (the goal: none beyond the watch).
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${OCISYNC_REGISTRY_PLAIN:?run: eval \"\$(e2e/testenv.sh up)\"}"
source e2e/bench/lib.sh
BUNDLES=${BENCH_BUNDLES:-10}
IDLE=${BENCH_IDLE_SECONDS:-60}
ns=bench-agent-$(date +%s)
node=$ns-node
work=$(mktemp -d /tmp/ocisync-bench-agent.XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cleanup() {
	status=$?
	if ((status != 0)) && [[ -d $work ]]; then
		echo "--- controller log (tail)" >&2; tail -n 20 "$work/controller.log" >&2 || true
		echo "--- agent log (tail)" >&2; tail -n 20 "$work/agent.log" >&2 || true
	fi
	[[ -n ${agent:-} ]] && kill "$agent" 2>/dev/null || true
	[[ -n ${ctl:-} ]] && kill "$ctl" 2>/dev/null || true
	kubectl delete namespace "$ns" --wait=false >/dev/null 2>&1 || true
	kubectl delete node "$node" --wait=false >/dev/null 2>&1 || true
	rm -rf "$work"
}
trap cleanup EXIT

kubectl apply --server-side --field-manager=ocisync -f crds/ >/dev/null
kubectl wait --for condition=Established --timeout=60s crd --all >/dev/null
kubectl create namespace "$ns" >/dev/null
printf 'apiVersion: v1\nkind: Node\nmetadata: {name: %s, labels: {bench: "%s"}}\n' "$node" "$ns" | kubectl apply -f - >/dev/null
for i in $(seq 1 "$BUNDLES"); do
	mkdir -p "$work/in$i"
	printf -- '- rule: bench %s %s\n  condition: evt.type = open\n' "$i" "$ns" >"$work/in$i/rules_$i.yaml"
	"$BIN" push "$work/in$i/rules_$i.yaml" "$OCISYNC_REGISTRY_PLAIN/$ns/repo$i:1" --type falco-rules --insecure -O json >/dev/null
	printf -- '---\napiVersion: ocisync.dev/v1alpha1\nkind: ArtifactSource\nmetadata: {name: s%s}\nspec: {url: "oci://%s/%s/repo%s", ref: {tag: "1"}, interval: 10m, insecure: true}\n' \
		"$i" "$OCISYNC_REGISTRY_PLAIN" "$ns" "$i"
	printf -- '---\napiVersion: ocisync.dev/v1alpha1\nkind: RuleBundle\nmetadata: {name: b%s}\nspec: {sources: [{sourceRef: {name: s%s}}], nodeFiles: {directory: /etc/falco/rules.d/b%s, nodeSelector: {matchLabels: {bench: "%s"}}}}\n' \
		"$i" "$i" "$i" "$ns"
done >"$work/objects.yaml"
kubectl apply -n "$ns" -f "$work/objects.yaml" >/dev/null
mkdir -p "$work/host/etc/falco"

"$BIN" controller --namespace "$ns" --listen "127.0.0.1:$port" --artifact-base-url "http://127.0.0.1:$port" \
	--store-dir "$work/store" 2>"$work/controller.log" &
ctl=$!
start=$(date +%s.%N)
"$BIN" agent --node-name "$node" --host-root "$work/host" --allowed-dir /etc/falco \
	--controller-url "http://127.0.0.1:$port" --resync 5m --listen 127.0.0.1:0 2>"$work/agent.log" &
agent=$!
python3 - "$ns" "$BUNDLES" <<'PY'
import json, subprocess, sys, time
ns, want = sys.argv[1], int(sys.argv[2])
deadline = time.time() + 120
while True:
    out = subprocess.run(["kubectl", "get", "rulebundles", "-n", ns, "-o", "json"], capture_output=True, check=True).stdout
    done = sum(
        1 for i in json.loads(out)["items"]
        if ((i.get("status") or {}).get("nodes") or {}).get("updated") == 1
        and any(c["type"] == "Ready" and c["status"] == "True" for c in (i.get("status") or {}).get("conditions", []))
    )
    if done >= want:
        break
    if time.time() > deadline:
        sys.exit(f"only {done}/{want} bundles Ready on the node after 120 s")
    time.sleep(0.2)
PY
end=$(date +%s.%N)
served() { curl -fsS "http://127.0.0.1:$port/metrics" | awk '/^ocisync_artifact_server_requests_total\{.*route="blob"/ {s += $2} END {print s + 0}'; }
before=$(served)
sleep "$IDLE" # measuring idle: nothing to wait for
after=$(served)
rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$agent/status")
hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$agent/status")
files=$(find "$work/host/etc/falco" -type l -name 'rules_*.yaml' | wc -l)
python3 -c 'import sys; print(f"{sys.argv[3]} bundles on the node after {float(sys.argv[2]) - float(sys.argv[1]):.1f} s ({sys.argv[4]} files)")' "$start" "$end" "$BUNDLES" "$files"
echo "agent idle RSS: $((rss / 1024)) MiB (peak $((hwm / 1024)) MiB) with $BUNDLES bundles"
echo "artifact-server blob requests in ${IDLE} s idle: $((after - before)) (blob requests in total: $after)"
row Footprint "agent RSS, idle, $BUNDLES bundles (goal: under 20 MiB)" "$((rss / 1024)) MiB" "—" "—"
row "Change detection" "agent: artifact-server requests in ${IDLE} s with $BUNDLES unchanged bundles (goal: 0)" "$((after - before))" "—" "—"
