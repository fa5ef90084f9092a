#!/usr/bin/env bash
# Nodes at scale: for each N in BENCH_NODE_SIZES (default 1000 5000), N fake Nodes in 10
# zones and one NodeReport per node, written by a load generator as agents would (kubectl,
# four processes at once: at 5,000 nodes, agent processes would not fit here). Eleven
# nodeFiles RuleBundles: one over every node, one per zone. Reports:
# - the time from the first report written until every bundle's status.nodes counts its
#   nodes updated, the controller's CPU seconds in that, and the bundles' status writes
#   (from the API server's /metrics): aggregation must stay linear in the nodes;
# - the controller's RSS before the Nodes exist and after (the Nodes' cost per node);
# - a relabel of one node from zone 0 to zone 1: the status writes it causes (two bundles'
#   selections change; the nine other zones and the every-node bundle must not move).
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${OCISYNC_REGISTRY_PLAIN:?run: eval \"\$(e2e/testenv.sh up)\"}"
source e2e/bench/lib.sh
read -r -a SIZES <<<"${BENCH_NODE_SIZES:-1000 5000}"
ZONES=10
WATCH=e2e/bench/watch_until.py
work=$(mktemp -d /tmp/ocisync-bench-nodes.XXXXXX)
cleanup() {
	[[ -n ${ctl:-} ]] && kill "$ctl" 2>/dev/null || true
	for ns in "${namespaces[@]}"; do
		kubectl delete namespace "$ns" --wait=false >/dev/null 2>&1 || true
		kubectl delete nodes -l "bench=$ns" --wait=false >/dev/null 2>&1 || true
		kubectl delete nodereports -l "bench=$ns" --wait=false >/dev/null 2>&1 || true
	done
	rm -rf "$work"
}
namespaces=()
trap cleanup EXIT
kubectl apply --server-side --field-manager=ocisync -f crds/ >/dev/null
kubectl wait --for condition=Established --timeout=60s crd --all >/dev/null

# Creates the objects of file $1, four kubectl processes at once.
create_parallel() {
	local file=$1 pids=() part
	rm -rf "$work/parts" && mkdir -p "$work/parts"
	awk -v dir="$work/parts" '/^---$/ {n++} {print > (dir "/" (n % 4))}' "$file"
	for part in "$work"/parts/*; do
		kubectl create -f "$part" >/dev/null &
		pids+=($!)
	done
	for part in "${pids[@]}"; do wait "$part"; done
}

# PATCHes of RuleBundle status so far, from the API server's /metrics.
status_writes() {
	kubectl get --raw /metrics | python3 -c '
import re, sys
n = 0
for line in sys.stdin:
    if line.startswith("apiserver_request_total{") and "resource=\"rulebundles\"" in line and "subresource=\"status\"" in line \
            and re.search(r"verb=\"(PATCH|APPLY|PUT)\"", line):
        n += float(line.rsplit(" ", 1)[1])
print(int(n))'
}

# RuleBundle reconciles so far, from the controller's /metrics on port $1.
reconciles() {
	curl -sf "http://127.0.0.1:$1/metrics" | python3 -c '
import sys
print(int(sum(float(l.rsplit(" ", 1)[1]) for l in sys.stdin
              if l.startswith("ocisync_reconciles_total{") and "kind=\"RuleBundle\"" in l)))'
}

bundle() { # ns name [zone]
	local selector="{matchLabels: {bench: \"$1\"}}"
	[[ -n ${3:-} ]] && selector="{matchLabels: {bench: \"$1\", bench-zone: \"$3\"}}"
	printf -- '---\napiVersion: ocisync.dev/v1alpha1\nkind: RuleBundle\nmetadata: {name: %s, namespace: %s}\nspec: {sources: [{sourceRef: {name: rules}}], nodeFiles: {directory: /etc/falco/rules.d, nodeSelector: %s}}\n' \
		"$2" "$1" "$selector"
}

# One size: prints "n rollout_s cpu_s status_writes rss_before rss_after relabel_writes
# relabel_reconciles".
one_size() {
	local n=$1 ns port i
	ns=bench-nodes-$n-$(date +%s)
	namespaces+=("$ns")
	kubectl create namespace "$ns" >/dev/null
	mkdir -p "$work/$ns/in"
	printf -- '- rule: nodes %s\n  condition: evt.type = open\n' "$ns" >"$work/$ns/in/rules.yaml"
	"$BIN" push "$work/$ns/in/rules.yaml" "$OCISYNC_REGISTRY_PLAIN/$ns/rules:1" --type falco-rules --insecure -O json >/dev/null
	{
		printf -- '---\napiVersion: ocisync.dev/v1alpha1\nkind: ArtifactSource\nmetadata: {name: rules, namespace: %s}\nspec: {url: "oci://%s/%s/rules", ref: {tag: "1"}, interval: 1h, insecure: true}\n' \
			"$ns" "$OCISYNC_REGISTRY_PLAIN" "$ns"
		bundle "$ns" every-node
		for z in $(seq 0 $((ZONES - 1))); do bundle "$ns" "zone-$z" "z$z"; done
	} | kubectl apply -f - >/dev/null
	port=$(free_port)
	"$BIN" controller --namespace "$ns" --listen "127.0.0.1:$port" --artifact-base-url "http://127.0.0.1:$port" \
		--store-dir "$work/$ns/store" 2>"$work/$ns/controller.log" &
	ctl=$!
	kubectl wait -n "$ns" --for=condition=Ready artsrc/rules --timeout=120s >/dev/null
	"$WATCH" "/apis/ocisync.dev/v1alpha1/namespaces/$ns/rulebundles" $((ZONES + 1)) ready --deadline 120 >/dev/null
	local rss_before
	rss_before=$(rss_mib "$ctl")

	for i in $(seq 1 "$n"); do
		printf -- '---\napiVersion: v1\nkind: Node\nmetadata: {name: %s-n%s, labels: {bench: "%s", bench-zone: "z%s", kubernetes.io/os: linux, kubernetes.io/arch: amd64}}\n' \
			"$ns" "$i" "$ns" $((i % ZONES))
	done >"$work/nodes.yaml"
	create_parallel "$work/nodes.yaml"
	# every bundle counts its nodes (none updated yet)
	"$WATCH" "/apis/ocisync.dev/v1alpha1/namespaces/$ns/rulebundles?fieldSelector=metadata.name%3Devery-node" \
		1 desired "$n" --deadline 300 >/dev/null

	# the reports, as each node's agent would write them once it applied its bundles
	kubectl get rulebundles -n "$ns" -o json | python3 -c '
import json, sys
ns, n, zones = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
bundles = {b["metadata"]["name"]: b for b in json.load(sys.stdin)["items"]}
def entry(b):
    return {"namespace": ns, "name": b["metadata"]["name"], "uid": b["metadata"]["uid"],
            "generation": b["metadata"]["generation"], "revision": b["status"]["revision"], "reason": "Applied"}
for i in range(1, n + 1):
    node = f"{ns}-n{i}"
    spec = {"applied": 2, "failed": 0, "bundles": [entry(bundles["every-node"]), entry(bundles[f"zone-{i % zones}"])]}
    print("---")
    print(json.dumps({"apiVersion": "ocisync.dev/v1alpha1", "kind": "NodeReport",
                      "metadata": {"name": node, "labels": {"bench": ns}}, "spec": spec}))
' "$ns" "$n" "$ZONES" >"$work/reports.yaml"
	local writes_before cpu_before start
	writes_before=$(status_writes)
	cpu_before=$(cpu_seconds "$ctl")
	start=$(date +%s.%N)
	"$WATCH" "/apis/ocisync.dev/v1alpha1/namespaces/$ns/rulebundles" $((ZONES + 1)) rolled-out --start "$start" \
		--deadline 600 >"$work/rolled" &
	local watcher=$!
	create_parallel "$work/reports.yaml"
	wait "$watcher"
	local rolled cpu writes rss_after
	rolled=$(cat "$work/rolled")
	cpu=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$cpu_before" "$(cpu_seconds "$ctl")")
	writes=$(($(status_writes) - writes_before))
	rss_after=$(rss_mib "$ctl")
	# the counts are the expected ones
	kubectl get rulebundles -n "$ns" -o json | python3 -c '
import json, sys
n, zones = int(sys.argv[1]), int(sys.argv[2])
for b in json.load(sys.stdin)["items"]:
    name, nodes = b["metadata"]["name"], b["status"]["nodes"]
    want = n if name == "every-node" else sum(1 for i in range(1, n + 1) if f"zone-{i % zones}" == name)
    assert nodes["desired"] == nodes["updated"] == want, (name, nodes, want)' "$n" "$ZONES"
	echo "nodes $n: every bundle counted its nodes updated $rolled s after the first report; controller CPU $cpu s, $writes status writes; RSS $rss_before MiB before the Nodes, $rss_after MiB after" >&2

	# one node moves from zone 0 to zone 1
	local moved=$ns-n$ZONES z0 z1 relabel
	z0=$(kubectl get rulebundle -n "$ns" zone-0 -o jsonpath='{.status.nodes.desired}')
	z1=$(kubectl get rulebundle -n "$ns" zone-1 -o jsonpath='{.status.nodes.desired}')
	writes_before=$(status_writes)
	local reconciled
	reconciled=$(reconciles "$port")
	kubectl label node "$moved" bench-zone=z1 --overwrite >/dev/null
	"$WATCH" "/apis/ocisync.dev/v1alpha1/namespaces/$ns/rulebundles?fieldSelector=metadata.name%3Dzone-0" \
		1 desired $((z0 - 1)) --deadline 60 >/dev/null
	"$WATCH" "/apis/ocisync.dev/v1alpha1/namespaces/$ns/rulebundles?fieldSelector=metadata.name%3Dzone-1" \
		1 desired $((z1 + 1)) --deadline 60 >/dev/null
	relabel=$(($(status_writes) - writes_before))
	reconciled=$(($(reconciles "$port") - reconciled))
	echo "nodes $n: relabel of one node from zone 0 to zone 1: $relabel status writes, $reconciled bundle reconciles (zone-0 and zone-1 move)" >&2
	kill -TERM "$ctl"
	wait "$ctl" || true
	ctl=
	kubectl delete nodes -l "bench=$ns" --wait=false >/dev/null 2>&1 || true
	kubectl delete nodereports -l "bench=$ns" --wait=false >/dev/null 2>&1 || true
	echo "$n $rolled $cpu $writes $rss_before $rss_after $relabel $reconciled"
}

for n in "${SIZES[@]}"; do
	one_size "$n" >>"$work/series"
done
python3 - "$work/series" >"$work/table" <<-'PY'
	import sys
	rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
	print("| Nodes (with NodeReports) | every bundle's status.nodes complete after the first report | controller CPU in it (per 1,000 nodes) | bundle status writes in it | controller RSS before the Nodes / after (per node) | a relabel of one node: status writes, bundle reconciles |")
	print("|---|---|---|---|---|---|")
	for n, rolled, cpu, writes, before, after, relabel, reconciled in rows:
	    per = (float(after) - float(before)) * 1024 / int(n)
	    print(f"| {int(n):,} | {float(rolled):.1f} s | {float(cpu):.1f} s ({float(cpu) * 1000 / int(n):.2f} s) | {writes} | {before} / {after} MiB ({per:.1f} KiB) | {relabel}, {reconciled} |")
PY
cat "$work/table"
largest=${SIZES[-1]}
read -r _ rolled cpu writes _ _ relabel reconciled <<<"$(tail -1 "$work/series")"
row Scale "$largest Nodes with NodeReports (11 nodeFiles bundles): every status.nodes complete after the first report" "$rolled s (controller CPU $cpu s, $writes status writes)" "—" "—"
row Scale "relabel of one node among $largest (11 bundles): status writes, bundle reconciles" "$relabel, $reconciled (the two bundles whose selection moved)" "—" "—"
if [[ -n ${BENCH_SECTIONS:-} ]]; then
	{
		echo
		echo "## Scale: Nodes"
		echo
		echo "e2e/bench/nodes.sh, sizes ${SIZES[*]}: fake Nodes in $ZONES zones, one NodeReport each (written by kubectl, four at once), 11 nodeFiles bundles (every node; one per zone)."
		echo
		cat "$work/table"
	} >>"$BENCH_SECTIONS"
fi
