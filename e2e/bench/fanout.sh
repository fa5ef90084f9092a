#!/usr/bin/env bash
# Fan-out: 200 agents (one process per fake Node, each with its own host root) receive a
# 5 MiB bundle (BENCH_BUNDLE_MIB sets another size: files of at most 5 MiB, the first
# `big_rules.yaml`, so that the agents' RSS can be compared across bundle sizes). Reports the time from creating the bundle until every node reports the
# revision, the registry blob GETs (goal: exactly one per blob), the artifact-server blob
# responses, and the agents' RSS.
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${OCISYNC_REGISTRY_PLAIN:?run: eval \"\$(e2e/testenv.sh up)\"}"
source e2e/bench/lib.sh
AGENTS=${BENCH_AGENTS:-200}
MIB=${BENCH_BUNDLE_MIB:-5}
ns=bench-fanout-$(date +%s)
work=$(mktemp -d /tmp/ocisync-bench-fanout.XXXXXX)
port=$(free_port)
agents=()
cleanup() {
	((${#agents[@]})) && kill "${agents[@]}" 2>/dev/null || true
	[[ -n ${ctl:-} ]] && kill "$ctl" 2>/dev/null || true
	kubectl delete namespace "$ns" --wait=false >/dev/null 2>&1 || true
	kubectl delete nodes -l "bench=$ns" --wait=false >/dev/null 2>&1 || true
	rm -rf "$work"
}
trap cleanup EXIT

kubectl apply --server-side --field-manager=ocisync -f crds/ >/dev/null
kubectl create namespace "$ns" >/dev/null
for i in $(seq 1 "$AGENTS"); do
	printf -- '---\napiVersion: v1\nkind: Node\nmetadata: {name: %s-n%s, labels: {bench: "%s"}}\n' "$ns" "$i" "$ns"
done | kubectl apply -f - >/dev/null
mkdir -p "$work/in"
# $MIB MiB of comment lines (valid Falco rules YAML: an empty document), in files of at
# most 5 MiB (a content check reads files up to 8 MiB)
python3 -c 'import base64, os, sys
left = int(sys.argv[2]) * 1024 * 1024
n = 0
while left > 0:
    n += 1
    name = "big_rules.yaml" if n == 1 else f"big_rules_{n}.yaml"
    out = open(os.path.join(sys.argv[1], name), "w")
    size = 0
    while size < min(left, 5 * 1024 * 1024):
        line = "# " + base64.b64encode(os.urandom(54)).decode() + "\n"
        out.write(line)
        size += len(line)
    left -= size' "$work/in" "$MIB"
"$BIN" push "$work/in"/*.yaml "$OCISYNC_REGISTRY_PLAIN/$ns/rules:1" --type falco-rules --insecure -O json >/dev/null
printf 'apiVersion: ocisync.dev/v1alpha1\nkind: ArtifactSource\nmetadata: {name: rules}\nspec: {url: "oci://%s/%s/rules", ref: {tag: "1"}, interval: 1h, insecure: true}\n' \
	"$OCISYNC_REGISTRY_PLAIN" "$ns" | kubectl apply -n "$ns" -f - >/dev/null
log=$OCISYNC_REGISTRY_PLAIN_LOG
before=$(wc -l <"$log")
"$BIN" controller --namespace "$ns" --listen "127.0.0.1:$port" --artifact-base-url "http://127.0.0.1:$port" \
	--store-dir "$work/store" 2>"$work/controller.log" &
ctl=$!
kubectl wait -n "$ns" --for=condition=Ready artsrc/rules --timeout=120s >/dev/null
start_agents "$ns" "$AGENTS" "$work" "$port" 300
start=$(now)
printf 'apiVersion: ocisync.dev/v1alpha1\nkind: RuleBundle\nmetadata: {name: big}\nspec: {sources: [{sourceRef: {name: rules}}], nodeFiles: {directory: /etc/falco/rules.d, nodeSelector: {matchLabels: {bench: "%s"}}}}\n' \
	"$ns" | kubectl apply -n "$ns" -f - >/dev/null
rolled_out "$ns" big "$AGENTS" 600
end=$(now)
bgets=$(tail -n +"$((before + 1))" "$log" | grep -cE '"GET /v2/'"$ns"'/rules/blobs/' || true)
blobs=$(curl -fsS "http://127.0.0.1:$port/metrics" | awk '/^ocisync_artifact_server_requests_total\{.*route="blob"/ {s += $2} END {print s + 0}')
# RSS counts the binary's pages mapped in (shared by every agent); RssAnon is each
# agent's own memory.
rss_total=0 rss_max=0 anon_total=0 # KiB
for p in "${agents[@]}"; do
	kib=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status")
	anon_total=$((anon_total + $(awk '/^RssAnon:/ {print $2}' "/proc/$p/status")))
	rss_total=$((rss_total + kib))
	if ((kib > rss_max)); then rss_max=$kib; fi
done
mean_mib() { python3 -c 'import sys; print(f"{int(sys.argv[1]) / int(sys.argv[2]) / 1024:.1f}")' "$1" "$AGENTS"; }
rss_mean=$(mean_mib "$rss_total")
anon_mean=$(mean_mib "$anon_total")
files=$(find "$work" -path '*/etc/falco/rules.d/big_rules.yaml' -type l | wc -l)
echo "$AGENTS nodes have the $MIB MiB bundle $(elapsed "$start" "$end") s after it was created ($files files checked present)"
echo "registry blob GETs: $bgets (config + layer, once); artifact-server blob responses: $blobs; agents' mean RSS $rss_mean MiB (max $((rss_max / 1024)) MiB; anonymous $anon_mean MiB)"
row Fan-out "$AGENTS agents receive a $MIB MiB bundle: until every node reports it" "$(elapsed "$start" "$end") s" "—" "—"
row Fan-out "registry blob GETs for it (goal: one per blob: config + layer)" "$bgets" "falcoctl: one per node per blob ($((AGENTS * 2)))" "$(ratio "$bgets" "$((AGENTS * 2))")"
row Fan-out "artifact-server blob responses (in-cluster)" "$blobs" "—" "—"
row Footprint "agent RSS, mean over $AGENTS agents holding the $MIB MiB bundle" "$rss_mean MiB" "—" "—"
