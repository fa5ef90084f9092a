#!/usr/bin/env bash
# `make bench` (controller part): 1,000 ArtifactSources over 10 repositories on the local
# environment. Reports the time from controller start until every source is Ready, the
# controller's peak RSS, and the registry requests it made.
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${OCISYNC_REGISTRY_PLAIN:?run: eval \"\$(e2e/testenv.sh up)\"}"
BIN=${OCISYNC_BIN:-target/release/ocisync}
SOURCES=${BENCH_SOURCES:-1000}
REPOS=${BENCH_REPOS:-10}
ns=bench-$(date +%s)
work=$(mktemp -d /tmp/ocisync-bench-src.XXXXXX)
cleanup() {
	[[ -n ${pid:-} ]] && kill "$pid" 2>/dev/null || true
	kubectl delete namespace "$ns" --wait=false >/dev/null 2>&1 || true
	rm -rf "$work"
}
trap cleanup EXIT

kubectl apply --server-side --field-manager=ocisync -f crds/ >/dev/null
kubectl wait --for condition=Established --timeout=60s crd/artifactsources.ocisync.dev >/dev/null
kubectl create namespace "$ns" >/dev/null
for r in $(seq 1 "$REPOS"); do
	mkdir -p "$work/in$r"
	printf -- '- rule: bench %s %s\n  condition: evt.type = open\n' "$r" "$ns" >"$work/in$r/rules.yaml"
	"$BIN" push "$work/in$r/rules.yaml" "$OCISYNC_REGISTRY_PLAIN/$ns/repo$r:1" --type falco-rules --insecure -O json >/dev/null
done
for i in $(seq 1 "$SOURCES"); do
	r=$(((i - 1) % REPOS + 1))
	printf -- '---\napiVersion: ocisync.dev/v1alpha1\nkind: ArtifactSource\nmetadata: {name: s%s}\nspec: {url: "oci://%s/%s/repo%s", ref: {tag: "1"}, interval: 10m, insecure: true}\n' \
		"$i" "$OCISYNC_REGISTRY_PLAIN" "$ns" "$r"
done >"$work/sources.yaml"
kubectl apply -n "$ns" -f "$work/sources.yaml" >/dev/null
echo "$SOURCES sources over $REPOS repositories created in $ns"

log=$OCISYNC_REGISTRY_PLAIN_LOG
before=$(wc -l <"$log")
start=$(date +%s.%N)
# peak RSS is read from /proc (VmHWM) before stopping the controller
"$BIN" controller --namespace "$ns" --listen 127.0.0.1:0 \
	--artifact-base-url http://127.0.0.1:1 --store-dir "$work/store" --concurrency "${BENCH_CONCURRENCY:-16}" \
	2>"$work/controller.log" &
pid=$!
# one list per half second (kubectl wait --all would time its own per-object requests)
python3 - "$ns" "$SOURCES" <<'PY'
import json, subprocess, sys, time
ns, want = sys.argv[1], int(sys.argv[2])
deadline = time.time() + 300
while True:
    out = subprocess.run(["kubectl", "get", "artifactsources", "-n", ns, "-o", "json"], capture_output=True, check=True).stdout
    ready = sum(
        1 for i in json.loads(out)["items"]
        if any(c["type"] == "Ready" and c["status"] == "True" for c in (i.get("status") or {}).get("conditions", []))
    )
    if ready >= want:
        break
    if time.time() > deadline:
        sys.exit(f"only {ready}/{want} Ready after 300 s")
    time.sleep(0.5)
PY
end=$(date +%s.%N)
rss_kib=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status")
stop_start=$(date +%s.%N)
kill -TERM "$pid"
wait "$pid" || true
stop_end=$(date +%s.%N)
pid=
reqs=$(tail -n +"$((before + 1))" "$log" | grep -E '^127\.0\.0\.1 .*"(HEAD|GET) /v2/'"$ns"'/' || true)
python3 -c 'import sys; print(f"all Ready after {float(sys.argv[2]) - float(sys.argv[1]):.1f} s")' "$start" "$end"
echo "controller peak RSS: $((rss_kib / 1024)) MiB"
python3 -c 'import sys; print(f"SIGTERM to exit: {float(sys.argv[2]) - float(sys.argv[1]):.2f} s")' "$stop_start" "$stop_end"
echo "registry requests: $(grep -c '"HEAD ' <<<"$reqs") HEAD, $(grep -c '"GET .*/manifests/' <<<"$reqs") manifest GET, $(grep -c '"GET .*/blobs/' <<<"$reqs") blob GET"
