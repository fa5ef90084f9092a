#!/usr/bin/env bash
# Scale: 1,000 ArtifactSources (over 10 repositories) and 1,000 RuleBundles (ConfigMap
# target; each takes its own source plus one source shared by all) created at once.
# Reports the time until all are Ready, the controller's peak RSS and CPU seconds, the
# registry requests, then the time from one new revision of the shared source until every
# ConfigMap holds it, and the SIGTERM-to-exit time.
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${OCISYNC_REGISTRY_PLAIN:?run: eval \"\$(e2e/testenv.sh up)\"}"
source e2e/bench/lib.sh
N=${BENCH_OBJECTS:-1000}
REPOS=${BENCH_REPOS:-10}
ns=bench-scale-$(date +%s)
work=$(mktemp -d /tmp/ocisync-bench-scale.XXXXXX)
port=$(free_port)
cleanup() {
	[[ -n ${ctl:-} ]] && kill "$ctl" 2>/dev/null || true
	kubectl delete namespace "$ns" --wait=false >/dev/null 2>&1 || true
	rm -rf "$work"
}
trap cleanup EXIT
push() { # file repo
	"$BIN" push "$1" "$OCISYNC_REGISTRY_PLAIN/$ns/$2:1" --type falco-rules --insecure -O json >/dev/null
}

kubectl apply --server-side --field-manager=ocisync -f crds/ >/dev/null
kubectl wait --for condition=Established --timeout=60s crd --all >/dev/null
kubectl create namespace "$ns" >/dev/null
for r in $(seq 1 "$REPOS"); do
	mkdir -p "$work/in$r"
	printf -- '- rule: bench %s %s\n  condition: evt.type = open\n' "$r" "$ns" >"$work/in$r/rules_$r.yaml"
	push "$work/in$r/rules_$r.yaml" "repo$r"
done
mkdir -p "$work/shared"
printf -- '- macro: shared_v1\n  condition: proc.name = sh\n' >"$work/shared/shared.yaml"
push "$work/shared/shared.yaml" shared
{
	printf -- '---\napiVersion: ocisync.dev/v1alpha1\nkind: ArtifactSource\nmetadata: {name: shared}\nspec: {url: "oci://%s/%s/shared", ref: {tag: "1"}, interval: 1h, insecure: true}\n' \
		"$OCISYNC_REGISTRY_PLAIN" "$ns"
	for i in $(seq 1 "$N"); do
		r=$(((i - 1) % REPOS + 1))
		printf -- '---\napiVersion: ocisync.dev/v1alpha1\nkind: ArtifactSource\nmetadata: {name: s%s}\nspec: {url: "oci://%s/%s/repo%s", ref: {tag: "1"}, interval: 1h, insecure: true}\n' \
			"$i" "$OCISYNC_REGISTRY_PLAIN" "$ns" "$r"
		printf -- '---\napiVersion: ocisync.dev/v1alpha1\nkind: RuleBundle\nmetadata: {name: b%s}\nspec: {sources: [{sourceRef: {name: s%s}}, {sourceRef: {name: shared}}], configMap: {}}\n' "$i" "$i"
	done
} >"$work/objects.yaml"
kubectl apply -n "$ns" -f "$work/objects.yaml" >/dev/null
echo "$N sources over $REPOS repositories, 1 shared source and $N bundles created in $ns"

log=$OCISYNC_REGISTRY_PLAIN_LOG
before=$(wc -l <"$log")
start=$(now)
"$BIN" controller --namespace "$ns" --listen "127.0.0.1:$port" --artifact-base-url "http://127.0.0.1:$port" \
	--store-dir "$work/store" --concurrency "${BENCH_CONCURRENCY:-16}" 2>"$work/controller.log" &
ctl=$!
ALL_READY='import json, subprocess, sys
ns, kind, want = sys.argv[1], sys.argv[2], int(sys.argv[3])
out = subprocess.run(["kubectl", "get", kind, "-n", ns, "-o", "json"], capture_output=True, check=True).stdout
ready = sum(1 for i in json.loads(out)["items"]
            if any(c["type"] == "Ready" and c["status"] == "True" for c in (i.get("status") or {}).get("conditions", [])))
sys.exit(0 if ready >= want else 1)'
wait_for 600 "all sources Ready" "$ALL_READY" "$ns" artifactsources "$((N + 1))"
sources_at=$(now)
wait_for 600 "all bundles Ready" "$ALL_READY" "$ns" rulebundles "$N"
end=$(now)
rss=$(peak_rss_mib "$ctl")
cpu=$(cpu_seconds "$ctl")
reqs=$(tail -n +"$((before + 1))" "$log" | grep -E '^127\.0\.0\.1 .*"(HEAD|GET) /v2/'"$ns"'/' || true)
heads=$(grep -c '"HEAD ' <<<"$reqs" || true)
mgets=$(grep -c '"GET .*/manifests/' <<<"$reqs" || true)
bgets=$(grep -c '"GET .*/blobs/' <<<"$reqs" || true)
echo "all $((N + 1)) sources Ready after $(elapsed "$start" "$sources_at") s, all $N bundles Ready after $(elapsed "$start" "$end") s"
echo "controller: peak RSS $rss MiB, CPU $cpu s; registry: $heads HEAD, $mgets manifest GET, $bgets blob GET"
row Scale "$((N + 1)) ArtifactSources + $N RuleBundles (ConfigMap) created at once: all Ready" "$(elapsed "$start" "$end") s" "—" "—"
row Scale "controller peak RSS / CPU during that" "$rss MiB / $cpu s" "—" "—"
row Scale "registry requests for it ($REPOS+1 repositories)" "$heads HEAD, $mgets manifest GET, $bgets blob GET" "—" "—"

# one new revision of the shared source: until every ConfigMap has it
printf -- '- macro: shared_v2\n  condition: proc.name = bash\n' >"$work/shared/shared.yaml"
push "$work/shared/shared.yaml" shared
pushed=$(now)
kubectl annotate -n "$ns" artsrc/shared ocisync.dev/requested-at="$(date +%s)" --overwrite >/dev/null
wait_for 600 "every ConfigMap updated" 'import json, subprocess, sys
out = subprocess.run(["kubectl", "get", "configmaps", "-n", sys.argv[1], "-l", "app.kubernetes.io/managed-by=ocisync", "-o", "json"], capture_output=True, check=True).stdout
n = sum(1 for i in json.loads(out)["items"] if "shared_v2" in (i.get("data") or {}).get("shared.yaml", ""))
sys.exit(0 if n >= int(sys.argv[2]) else 1)' "$ns" "$N"
updated=$(now)
echo "new shared revision in all $N ConfigMaps $(elapsed "$pushed" "$updated") s after the push (check requested at once)"
row Scale "one new revision of the shared source until all $N ConfigMaps have it" "$(elapsed "$pushed" "$updated") s" "—" "—"
idle=$(rss_mib "$ctl")
stop_start=$(now)
kill -TERM "$ctl"
wait "$ctl" || true
stop_end=$(now)
ctl=
echo "controller RSS after: $idle MiB; SIGTERM to exit: $(elapsed "$stop_start" "$stop_end" 2) s"
row Footprint "controller RSS holding $((N + 1)) sources and $N bundles, idle" "$idle MiB" "—" "—"
