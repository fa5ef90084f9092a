#!/usr/bin/env bash
# Change detection: what one check of an unchanged tag costs the registry, from the
# registry's access log. ocisync (a controller with one ArtifactSource, checks forced with
# the requested-at annotation) against oras-py pulling the same reference, plus the
# arithmetic for falcoctl's model (every Falco pod GETs the manifest every tick).
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${OCISYNC_REGISTRY_PLAIN:?run: eval \"\$(e2e/testenv.sh up)\"}"
source e2e/bench/lib.sh
CHECKS=${BENCH_CHECKS:-10}
ns=bench-changes-$(date +%s)
work=$(mktemp -d /tmp/ocisync-bench-changes.XXXXXX)
port=$(free_port)
cleanup() {
	[[ -n ${ctl:-} ]] && kill "$ctl" 2>/dev/null || true
	kubectl delete namespace "$ns" --wait=false >/dev/null 2>&1 || true
	rm -rf "$work"
}
trap cleanup EXIT
log=$OCISYNC_REGISTRY_PLAIN_LOG
repo="$ns/rules"
count() { # from-line method path-part -> requests and bytes (the access log's size field)
	tail -n +"$(($1 + 1))" "$log" | grep -E "\"$2 /v2/$repo/$3" |
		awk '{n++; b += $10} END {printf "%d %d", n, b}'
}

kubectl apply --server-side --field-manager=ocisync -f crds/ >/dev/null
kubectl create namespace "$ns" >/dev/null
mkdir -p "$work/in"
head -c 200000 /dev/urandom | base64 | sed 's/^/# /' >"$work/in/falco_rules.yaml"
"$BIN" push "$work/in/falco_rules.yaml" "$OCISYNC_REGISTRY_PLAIN/$repo:1" --type falco-rules --insecure -O json >/dev/null
printf 'apiVersion: ocisync.dev/v1alpha1\nkind: ArtifactSource\nmetadata: {name: rules}\nspec: {url: "oci://%s/%s", ref: {tag: "1"}, interval: 6h, insecure: true}\n' \
	"$OCISYNC_REGISTRY_PLAIN" "$repo" | kubectl apply -n "$ns" -f - >/dev/null
"$BIN" controller --namespace "$ns" --listen "127.0.0.1:$port" --artifact-base-url "http://127.0.0.1:$port" \
	--store-dir "$work/store" 2>"$work/controller.log" &
ctl=$!
kubectl wait -n "$ns" --for=condition=Ready artsrc/rules --timeout=60s >/dev/null
before=$(wc -l <"$log")
for i in $(seq 1 "$CHECKS"); do
	kubectl annotate -n "$ns" artsrc/rules "ocisync.dev/requested-at=$i" --overwrite >/dev/null
	wait_for 30 "check $i" 'import json,subprocess,sys
o = json.loads(subprocess.run(["kubectl","get","-n",sys.argv[1],"artsrc/rules","-o","json"],capture_output=True,check=True).stdout)
sys.exit(0 if (o.get("status") or {}).get("lastHandledRequestedAt") == sys.argv[2] else 1)' "$ns" "$i"
done
read -r heads _ <<<"$(count "$before" HEAD manifests)"
read -r mgets mbytes <<<"$(count "$before" GET manifests)"
read -r bgets bbytes <<<"$(count "$before" GET blobs)"
o_req=$(python3 -c "print(($heads + $mgets + $bgets) / $CHECKS)")
o_bytes=$(python3 -c "print(int(($mbytes + $bbytes) / $CHECKS))")
echo "ocisync: $CHECKS checks of an unchanged tag: $heads HEAD, $mgets manifest GET, $bgets blob GET, $((mbytes + bbytes)) bytes"

before=$(wc -l <"$log")
for i in $(seq 1 "$CHECKS"); do
	rm -rf "$work/oras-out"
	ORAS_INSECURE=1 "$PY" e2e/python/oras_interop.py pull "$OCISYNC_REGISTRY_PLAIN/$repo:1" "$work/oras-out" >/dev/null
done
read -r p_heads _ <<<"$(count "$before" HEAD "")"
read -r p_mgets p_mbytes <<<"$(count "$before" GET manifests)"
read -r p_bgets p_bbytes <<<"$(count "$before" GET blobs)"
p_req=$(python3 -c "print(($p_heads + $p_mgets + $p_bgets) / $CHECKS)")
p_bytes=$(python3 -c "print(int(($p_mbytes + $p_bbytes) / $CHECKS))")
echo "oras-py: $CHECKS pulls: $p_heads HEAD, $p_mgets manifest GET, $p_bgets blob GET, $((p_mbytes + p_bbytes)) bytes"
row "Change detection" "registry requests per check of an unchanged tag" "$o_req" "oras-py pull $p_req" "$(ratio "$o_req" "$p_req")"
row "Change detection" "registry bytes per check of an unchanged tag (blobs + manifests)" "$o_bytes" "oras-py pull $p_bytes" "$(ratio "$o_bytes" "$p_bytes")"
# falcoctl: each Falco pod (one per node) follows the reference and GETs its manifest every
# tick; ocisync checks once per source per interval, whatever the number of nodes.
falco=$(python3 -c 'print(1000 / 6)')
ours=$(python3 -c 'print(1 / 6)')
row "Change detection" "requests/hour, 1,000 nodes, 6 h tick, one reference" \
	"$(printf %.2f "$ours") HEAD (one source)" "falcoctl $(printf %.0f "$falco") manifest GET (one per node per tick)" "$(ratio "$ours" "$falco")"
