#!/usr/bin/env bash
# Plugin fan-out on a mixed-architecture cluster: a Falco plugin pushed as a 4-platform
# image index (linux/amd64, arm64, ppc64le, s390x; BENCH_PLUGIN_MIB MiB of library each),
# one ArtifactSource with `platform: all`, and BENCH_PLUGIN_NODES (default 1000) fake Nodes,
# a quarter per architecture, each with its own agent process and host root. Reports the
# time from creating the bundle until every node reports the revision, the registry
# requests and bytes that took, and the same for falcoctl's model (every node pulls its
# platform from the registry itself), played by one `ocisync pull --platform` per node,
# BENCH_PLUGIN_PARALLEL (default 16) at a time.
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${OCISYNC_REGISTRY_PLAIN:?run: eval \"\$(e2e/testenv.sh up)\"}"
source e2e/bench/lib.sh
NODES=${BENCH_PLUGIN_NODES:-1000}
MIB=${BENCH_PLUGIN_MIB:-4}
PARALLEL=${BENCH_PLUGIN_PARALLEL:-16}
ARCHES=(amd64 arm64 ppc64le s390x)
ns=bench-plugins-$(date +%s)
work=$(mktemp -d /tmp/ocisync-bench-plugins.XXXXXX)
port=$(free_port)
agents=()
cleanup() {
	((${#agents[@]})) && kill "${agents[@]}" 2>/dev/null || true
	[[ -n ${ctl:-} ]] && kill "$ctl" 2>/dev/null || true
	kubectl delete namespace "$ns" --wait=false >/dev/null 2>&1 || true
	kubectl delete nodes -l "bench=$ns" --wait=false >/dev/null 2>&1 || true
	kubectl get nodereports -o name 2>/dev/null | grep "/$ns-n" | xargs -r kubectl delete --wait=false >/dev/null 2>&1 || true
	rm -rf "$work"
}
trap cleanup EXIT

arch_of() { echo "${ARCHES[$((($1 - 1) % ${#ARCHES[@]}))]}"; }

kubectl apply --server-side --field-manager=ocisync -f crds/ >/dev/null
kubectl create namespace "$ns" >/dev/null
for i in $(seq 1 "$NODES"); do
	printf -- '---\napiVersion: v1\nkind: Node\nmetadata: {name: %s-n%s, labels: {bench: "%s", kubernetes.io/os: linux, kubernetes.io/arch: %s}}\n' \
		"$ns" "$i" "$ns" "$(arch_of "$i")"
done | kubectl apply -f - >/dev/null
repo=$OCISYNC_REGISTRY_PLAIN/$ns/plugin
for arch in "${ARCHES[@]}"; do
	mkdir -p "$work/in-$arch"
	head -c "$((MIB * 1024 * 1024))" /dev/urandom >"$work/in-$arch/libbench.so"
	sha256sum "$work/in-$arch/libbench.so" | cut -d' ' -f1 >"$work/sha-$arch"
	"$BIN" push "$work/in-$arch/libbench.so" "$repo:1" --type falco-plugin --platform "linux/$arch" \
		--insecure -O json >/dev/null
done

log=$OCISYNC_REGISTRY_PLAIN_LOG
# registry requests for the plugin's repository since line $1, and their response bytes
requests() { tail -n +"$(($1 + 1))" "$log" | grep -cE '"(GET|HEAD) /v2/'"$ns"'/plugin/' || true; }
mib_sent() {
	tail -n +"$(($1 + 1))" "$log" | grep -E '"GET /v2/'"$ns"'/plugin/' |
		awk '{ if ($10 ~ /^[0-9]+$/) s += $10 } END { printf "%.1f", s / 1048576 }'
}
printf 'apiVersion: ocisync.dev/v1alpha1\nkind: ArtifactSource\nmetadata: {name: plugin}\nspec: {url: "oci://%s", ref: {tag: "1"}, interval: 1h, insecure: true, platform: all}\n' \
	"$repo" | kubectl apply -n "$ns" -f - >/dev/null
before=$(wc -l <"$log")
"$BIN" controller --namespace "$ns" --listen "127.0.0.1:$port" --artifact-base-url "http://127.0.0.1:$port" \
	--store-dir "$work/store" 2>"$work/controller.log" &
ctl=$!
kubectl wait -n "$ns" --for=condition=Ready artsrc/plugin --timeout=120s >/dev/null
start_agents "$ns" "$NODES" "$work" "$port" 900
start=$(now)
printf 'apiVersion: ocisync.dev/v1alpha1\nkind: RuleBundle\nmetadata: {name: plugins}\nspec: {sources: [{sourceRef: {name: plugin}}], nodeFiles: {directory: /etc/falco/plugins, nodeSelector: {matchLabels: {bench: "%s"}}}}\n' \
	"$ns" | kubectl apply -n "$ns" -f - >/dev/null
rolled_out "$ns" plugins "$NODES" 900
end=$(now)
ours=$(requests "$before")
ours_mib=$(mib_sent "$before")
served=$(curl -fsS "http://127.0.0.1:$port/metrics" | awk '/^ocisync_artifact_server_requests_total\{.*route="blob"/ {s += $2} END {print s + 0}')
wrong=0
for i in $(seq 1 "$NODES"); do
	got=$(sha256sum "$work/h$i/etc/falco/plugins/libbench.so" | cut -d' ' -f1)
	[[ $got == "$(cat "$work/sha-$(arch_of "$i")")" ]] || wrong=$((wrong + 1))
done
((wrong == 0)) || { echo "bench: $wrong nodes hold another platform's library" >&2; exit 1; }
kill "${agents[@]}" 2>/dev/null || true
agents=()
kill "$ctl" 2>/dev/null || true
ctl=

# falcoctl's model: each node pulls the index, its manifest, config and layer itself
before=$(wc -l <"$log")
pstart=$(now)
seq 1 "$NODES" | xargs -P "$PARALLEL" -I{} sh -c '
	i={}; arch=$(echo "amd64 arm64 ppc64le s390x" | cut -d" " -f$(( (i - 1) % 4 + 1 )))
	"$0" pull "$1:1" --platform "linux/$arch" -o "$2/p$i" --insecure -O json >/dev/null && rm -rf "$2/p$i"' \
	"$BIN" "$repo" "$work"
pend=$(now)
theirs=$(requests "$before")
theirs_mib=$(mib_sent "$before")

secs=$(elapsed "$start" "$end")
echo "$NODES nodes (4 architectures) have their platform's ${MIB} MiB plugin $secs s after the bundle was created; every library checked against its platform's digest"
echo "registry requests: ocisync $ours ($ours_mib MiB; artifact-server blob responses $served); falcoctl's model $theirs ($theirs_mib MiB) in $(elapsed "$pstart" "$pend") s ($PARALLEL at a time)"
row Plugins "$NODES nodes, 4 architectures, a ${MIB} MiB plugin per platform (platform: all): until every node reports its platform's library" "$secs s" "falcoctl's model, $PARALLEL node pulls at a time: $(elapsed "$pstart" "$pend") s" "$(ratio "$secs" "$(elapsed "$pstart" "$pend")")"
row Plugins "registry requests for it (index, then manifest, config and layer per platform)" "$ours" "falcoctl's model: $theirs (index, manifest, config, layer per node)" "$(ratio "$ours" "$theirs")"
row Plugins "registry response bytes for it" "$ours_mib MiB" "$theirs_mib MiB" "$(ratio "$ours_mib" "$theirs_mib")"
row Plugins "artifact-server blob responses (in-cluster, one per node)" "$served" "—" "—"
