#!/usr/bin/env bash
# Webhook propagation: a CNCF Distribution registry of its own whose `notifications`
# endpoint is the controller's push webhook receiver (bearer token), configured as a user
# would; an ArtifactSource with a 1 h interval, so only the webhook can move it; 20 pushes
# of a new version to its tag, 1 to 3 s apart. For each, the time from the push until the
# ConfigMap holds it and until the file on the node (one agent, one fake Node) holds it.
# Reports p50 and p99 (goal: p99 under 2 s).
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${KUBECONFIG:?run: eval \"\$(e2e/testenv.sh up)\"}"
source e2e/bench/lib.sh
PUSHES=${BENCH_PUSHES:-20}
ns=bench-hook-$(date +%s)
node=$ns-node
work=$(mktemp -d /tmp/ocisync-bench-hook.XXXXXX)
port=$(free_port)
hook_port=$(free_port)
reg_port=$(free_port)
registry_host=127.0.0.1:$reg_port
cleanup() {
	status=$?
	if ((status != 0)) && [[ -d $work ]]; then
		echo "--- controller log (tail)" >&2; tail -n 20 "$work/controller.log" >&2 || true
		echo "--- registry log (tail)" >&2; tail -n 20 "$work/registry.log" >&2 || true
	fi
	[[ -n ${agent:-} ]] && kill "$agent" 2>/dev/null || true
	[[ -n ${ctl:-} ]] && kill "$ctl" 2>/dev/null || true
	[[ -n ${registry:-} ]] && kill "$registry" 2>/dev/null || true
	kubectl delete namespace "$ns" --wait=false >/dev/null 2>&1 || true
	kubectl delete node "$node" --wait=false >/dev/null 2>&1 || true
	rm -rf "$work"
}
trap cleanup EXIT

# the token the registry sends, as a mounted Secret key would hold it
python3 -c 'import secrets; print(secrets.token_hex(24))' >"$work/token"
cat >"$work/registry.yml" <<YAML
version: 0.1
log: {level: warn, formatter: text, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $work/registry}, delete: {enabled: true}}
http: {addr: $registry_host, secret: $(python3 -c 'import secrets; print(secrets.token_hex(16))')}
notifications:
  endpoints:
    - name: ocisync
      url: http://127.0.0.1:$hook_port/hook
      headers: {Authorization: [Bearer $(cat "$work/token")]}
      timeout: 2s
      threshold: 3
      backoff: 250ms
      ignore: {mediatypes: [application/octet-stream], actions: [pull]}
YAML
docker-registry serve "$work/registry.yml" 2>"$work/registry.log" &
registry=$!
wait_for 30 "the registry" 'import sys, urllib.request
try:
    urllib.request.urlopen(sys.argv[1], timeout=1)
except Exception:
    sys.exit(1)' "http://$registry_host/v2/"

kubectl apply --server-side --field-manager=ocisync -f crds/ >/dev/null
kubectl create namespace "$ns" >/dev/null
printf 'apiVersion: v1\nkind: Node\nmetadata: {name: %s, labels: {bench: "%s"}}\n' "$node" "$ns" | kubectl apply -f - >/dev/null
ref="$registry_host/$ns/rules:1"
mkdir -p "$work/in" "$work/host/etc/falco"
printf -- '- macro: v0\n  condition: proc.name = sh\n' >"$work/in/falco_rules.yaml"
"$BIN" push "$work/in/falco_rules.yaml" "$ref" --type falco-rules --insecure -O json >/dev/null
cat <<YAML | kubectl apply -n "$ns" -f - >/dev/null
apiVersion: ocisync.dev/v1alpha1
kind: ArtifactSource
metadata: {name: rules}
spec: {url: "oci://$registry_host/$ns/rules", ref: {tag: "1"}, interval: 1h, insecure: true}
---
apiVersion: ocisync.dev/v1alpha1
kind: RuleBundle
metadata: {name: rules}
spec:
  sources: [{sourceRef: {name: rules}}]
  configMap: {}
  nodeFiles: {directory: /etc/falco/rules.d, nodeSelector: {matchLabels: {bench: "$ns"}}}
YAML
"$BIN" controller --namespace "$ns" --listen "127.0.0.1:$port" --artifact-base-url "http://127.0.0.1:$port" \
	--store-dir "$work/store" --webhook-listen "127.0.0.1:$hook_port" --webhook-token-file "$work/token" \
	2>"$work/controller.log" &
ctl=$!
"$BIN" agent --node-name "$node" --host-root "$work/host" --allowed-dir /etc/falco \
	--controller-url "http://127.0.0.1:$port" --listen 127.0.0.1:0 2>"$work/agent.log" &
agent=$!
kubectl wait -n "$ns" --for=condition=Ready rulebundle/rules --timeout=120s >/dev/null
python3 - "$BIN" "$ref" "$ns" "$work" "$PUSHES" "${BENCH_RESULTS:-}" <<'PY'
import random, subprocess, sys, time
bin_, ref, ns, work, pushes, results = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6]
node_file = f"{work}/host/etc/falco/rules.d/falco_rules.yaml"
cm_times, node_times = [], []
for i in range(1, pushes + 1):
    time.sleep(random.uniform(1, 3))
    marker = f"v{i}_{time.time_ns()}"
    with open(f"{work}/in/falco_rules.yaml", "w") as f:
        f.write(f"- macro: {marker}\n  condition: proc.name = sh\n")
    # the clock starts when the push has returned: the tag points at the new manifest
    subprocess.run([bin_, "push", f"{work}/in/falco_rules.yaml", ref, "--type", "falco-rules", "--insecure", "-O", "json"], check=True, capture_output=True)
    pushed = time.time()
    cm = node = None
    while cm is None or node is None:
        if time.time() - pushed > 60:
            sys.exit(f"push {i}: not propagated within 60 s (the interval is 1 h: the webhook did not wake the source)")
        if cm is None:
            out = subprocess.run(["kubectl", "get", "configmap", "rules", "-n", ns, "-o", "jsonpath={.data.falco_rules\\.yaml}"], capture_output=True).stdout.decode()
            if marker in out:
                cm = time.time() - pushed
        if node is None:
            try:
                if marker in open(node_file).read():
                    node = time.time() - pushed
            except OSError:
                pass
        time.sleep(0.05)
    cm_times.append(cm)
    node_times.append(node)
    print(f"  push {i:2d}: ConfigMap {cm:5.2f} s, node file {node:5.2f} s")
def pct(xs, p):
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)
rows = []
for what, xs in (("ConfigMap", cm_times), ("node file", node_times)):
    p50, p99 = pct(xs, 50), pct(xs, 99)
    print(f"{what}: p50 {p50:.2f} s, p99 {p99:.2f} s over {len(xs)} pushes")
    rows.append(f"| Webhook | push to updated {what}, {len(xs)} pushes, Distribution notifications, 1 h interval: p50 / p99 | {p50:.2f} s / {p99:.2f} s | goal: p99 < 2 s | {p99 / 2:.2f}x of the goal |\n")
for row in rows:
    print(row, end="")
if results:
    open(results, "a").writelines(rows)
PY
