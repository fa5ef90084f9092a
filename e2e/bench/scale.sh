#!/usr/bin/env bash
# Scale, as a growth series. For each size N in BENCH_SCALE_SIZES (default 1000 2000 4000
# 8000): N ArtifactSources (over N/100 repositories) and N RuleBundles (ConfigMap target;
# each takes its own source plus one source shared by all) are created, then a fresh
# controller starts. Per size: the time until every bundle is Ready, the controller's CPU
# seconds and peak RSS, its RSS once idle, the registry requests, the time from a new
# revision of the shared source until every ConfigMap holds it, and the API server's
# requests for that (from its own /metrics). Completion is seen through one watch
# (watch_until.py), not by listing thousands of objects over and over.
#
# Then the API server's own rate for the same writes (the api-floor example: ConfigMaps by
# server-side apply, 16 at a time) and a table per size with the slope k of cost ~ N^k
# (k = 1: linear), on stdout and, under `make bench`, in bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${OCISYNC_REGISTRY_PLAIN:?run: eval \"\$(e2e/testenv.sh up)\"}"
source e2e/bench/lib.sh
read -r -a SIZES <<<"${BENCH_SCALE_SIZES:-1000 2000 4000 8000}"
CONCURRENCY=${BENCH_CONCURRENCY:-16}
WATCH=e2e/bench/watch_until.py
work=$(mktemp -d /tmp/ocisync-bench-scale.XXXXXX)
namespaces=() # deleted without waiting if the script stops early
cleanup() {
	[[ -n ${ctl:-} ]] && kill "$ctl" 2>/dev/null || true
	for ns in "${namespaces[@]}"; do
		kubectl delete namespace "$ns" --wait=false >/dev/null 2>&1 || true
	done
	rm -rf "$work"
}
trap cleanup EXIT
cargo build --release --locked --example api-floor --example bench-objects 2>/dev/null
FLOOR=target/release/examples/api-floor
# creates the objects of one size, $CONCURRENCY requests at a time (kubectl makes one at a time)
OBJECTS=target/release/examples/bench-objects

kubectl apply --server-side --field-manager=ocisync -f crds/ >/dev/null
kubectl wait --for condition=Established --timeout=60s crd --all >/dev/null

push() { # ns file repo
	"$BIN" push "$2" "$OCISYNC_REGISTRY_PLAIN/$1/$3:1" --type falco-rules --insecure -O json >/dev/null
}

# The API server's request counts (verb resource subresource -> n) from its /metrics.
api_requests() {
	kubectl get --raw /metrics | python3 -c '
import re, sys, collections
counts = collections.Counter()
for line in sys.stdin:
    if not line.startswith("apiserver_request_total{"):
        continue
    labels = dict(re.findall(r"(\w+)=\"([^\"]*)\"", line))
    if labels.get("verb") in ("POST", "PATCH", "PUT", "DELETE", "APPLY", "CREATE", "UPDATE"):
        key = (labels.get("verb"), labels.get("resource"), labels.get("subresource", ""))
        counts[key] += float(line.rsplit(" ", 1)[1])
for (verb, resource, sub), n in sorted(counts.items()):
    print(verb, resource, sub or "-", int(n))'
}

# Writes per kind between two api_requests snapshots: "n ConfigMap, n status, n Event, n total".
writes_between() {
	python3 - "$1" "$2" <<-'PY'
		import sys
		def read(path):
		    out = {}
		    for line in open(path):
		        verb, resource, sub, n = line.split()
		        out[(verb, resource, sub)] = int(n)
		    return out
		a, b = read(sys.argv[1]), read(sys.argv[2])
		d = {k: b[k] - a.get(k, 0) for k in b if b[k] - a.get(k, 0) > 0}
		by = lambda res, sub=None: sum(n for (v, r, s), n in d.items() if r == res and (sub is None or s == sub))
		cms, status, events = by("configmaps"), by("rulebundles", "status") + by("artifactsources", "status"), by("events")
		print(f"{cms} {status} {events} {sum(d.values())}")
	PY
}

# One size: prints "n ready_s cpu_s peak_mib idle_mib shared_s cm status events total".
one_size() {
	local n=$1 repos=$(($1 / 100 > 0 ? $1 / 100 : 1)) ns r port deadline=$((120 + $1 / 10))
	ns=bench-scale-$n-$(date +%s)
	namespaces+=("$ns")
	kubectl create namespace "$ns" >/dev/null
	mkdir -p "$work/$ns"
	for r in $(seq 1 "$repos"); do
		printf -- '- rule: bench %s %s\n  condition: evt.type = open\n' "$r" "$ns" >"$work/$ns/rules_$r.yaml"
		push "$ns" "$work/$ns/rules_$r.yaml" "repo$r"
	done
	printf -- '- macro: shared_v1\n  condition: proc.name = sh\n' >"$work/$ns/shared.yaml"
	push "$ns" "$work/$ns/shared.yaml" shared
	local created_at
	created_at=$(now)
	"$OBJECTS" "$ns" "$n" "$repos" "$OCISYNC_REGISTRY_PLAIN" "$CONCURRENCY"
	echo "size $n: $((n + 1)) sources over $repos repositories and $n bundles created in $(elapsed "$created_at" "$(now)") s" >&2

	local log=$OCISYNC_REGISTRY_PLAIN_LOG before start
	before=$(wc -l <"$log")
	api_requests >"$work/api.start"
	port=$(free_port)
	start=$(date +%s.%N)
	"$WATCH" "/apis/ocisync.dev/v1alpha1/namespaces/$ns/rulebundles" "$n" ready --start "$start" \
		--deadline "$deadline" >"$work/ready" &
	local watcher=$!
	"$BIN" controller --namespace "$ns" --listen "127.0.0.1:$port" --artifact-base-url "http://127.0.0.1:$port" \
		--store-dir "$work/$ns/store" --concurrency "$CONCURRENCY" 2>"$work/$ns/controller.log" &
	ctl=$!
	wait "$watcher"
	local ready cpu peak start_writes
	ready=$(cat "$work/ready")
	api_requests >"$work/api.ready"
	start_writes=$(writes_between "$work/api.start" "$work/api.ready" | awk '{print $4}')
	cpu=$(cpu_seconds "$ctl")
	peak=$(peak_rss_mib "$ctl")
	local reqs heads mgets bgets
	reqs=$(tail -n +"$((before + 1))" "$log" | grep -E '^127\.0\.0\.1 .*"(HEAD|GET) /v2/'"$ns"'/' || true)
	heads=$(grep -c '"HEAD ' <<<"$reqs" || true)
	mgets=$(grep -c '"GET .*/manifests/' <<<"$reqs" || true)
	bgets=$(grep -c '"GET .*/blobs/' <<<"$reqs" || true)
	echo "size $n: all bundles Ready after $ready s; controller CPU $cpu s, peak RSS $peak MiB; registry: $heads HEAD, $mgets manifest GET, $bgets blob GET; API writes: $start_writes" >&2

	# one new revision of the shared source: until every ConfigMap has it
	printf -- '- macro: shared_v2\n  condition: proc.name = bash\n' >"$work/$ns/shared.yaml"
	push "$ns" "$work/$ns/shared.yaml" shared
	api_requests >"$work/api.before"
	start=$(date +%s.%N)
	"$WATCH" "/api/v1/namespaces/$ns/configmaps?labelSelector=app.kubernetes.io/managed-by%3Docisync" \
		"$n" data shared.yaml shared_v2 --start "$start" --deadline "$deadline" >"$work/shared" &
	watcher=$!
	kubectl annotate -n "$ns" artsrc/shared ocisync.dev/requested-at="$(date +%s)" --overwrite >/dev/null
	wait "$watcher"
	local shared writes
	shared=$(cat "$work/shared")
	api_requests >"$work/api.after"
	writes=$(writes_between "$work/api.before" "$work/api.after")
	echo "size $n: the new shared revision in all $n ConfigMaps after $shared s; API writes (ConfigMap, status, Event, all): $writes" >&2
	local idle
	idle=$(rss_mib "$ctl")
	kill -TERM "$ctl"
	wait "$ctl" || true
	ctl=
	last_ns=$ns
	echo "$n $ready $cpu $peak $idle $shared $writes $start_writes"
}

# Each size but the last is deleted (and gone) before the next starts: the API server
# slows as etcd fills, and a size should not pay for the ones before it.
# Deletes the namespace $1 and waits until it is gone.
delete_namespace() {
	local deleting
	deleting=$(now)
	kubectl delete namespace "$1" --timeout=600s >/dev/null
	echo "namespace $1 deleted in $(elapsed "$deleting" "$(now)") s" >&2
}

last_ns=
series_start=$(now)
for n in "${SIZES[@]}"; do
	[[ -n $last_ns ]] && delete_namespace "$last_ns"
	one_size "$n" >>"$work/series"
done
# the API server's own rate for the same writes, against the largest size's bundles (the
# controller stopped)
"$FLOOR" "$last_ns" "${SIZES[-1]}" "$CONCURRENCY" >"$work/floor"
cat "$work/floor" >&2
echo "the series and its floor took $(elapsed "$series_start" "$(now)" 0) s" >&2

python3 - "$work/series" "$work/floor" >"$work/table" <<-'PY'
	import math, sys
	rows = [line.split() for line in open(sys.argv[1]) if line.strip()]
	floor = {}
	for line in open(sys.argv[2]):
	    p, _, _, rate, _ = line.split()
	    floor[p] = float(rate)  # the last configmap pass: updates
	def slope(xs, ys):
	    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x > 0 and y > 0]
	    if len(pts) < 2:
	        return "—"
	    mx = sum(p[0] for p in pts) / len(pts)
	    my = sum(p[1] for p in pts) / len(pts)
	    den = sum((p[0] - mx) ** 2 for p in pts)
	    return f"{sum((p[0] - mx) * (p[1] - my) for p in pts) / den:.2f}" if den else "—"
	n = [int(r[0]) for r in rows]
	col = lambda i: [float(r[i]) for r in rows]
	print("| objects (sources + bundles) | all bundles Ready (API writes) | controller CPU | controller peak RSS (idle after) | shared revision into every ConfigMap | bundles/s in it (API writes: ConfigMap, status, Event) |")
	print("|---|---|---|---|---|---|")
	for r in rows:
	    size, ready, cpu, peak, idle, shared, cms, status, events, total, ready_writes = r
	    print(f"| {int(size):,} + {int(size):,} | {float(ready):.1f} s ({int(ready_writes):,}) | {float(cpu):.1f} s | {peak} MiB ({idle}) | {float(shared):.1f} s "
	          f"| {int(size) / float(shared):.0f} ({int(cms):,}, {int(status):,}, {int(events):,}) |")
	print(f"| slope k (cost ~ N^k) | {slope(n, col(1))} | {slope(n, col(2))} | {slope(n, col(3))} | {slope(n, col(5))} | |")
	print()
	last = rows[-1]
	ours = int(last[0]) / float(last[5])
	print(f"The API server's own rate here, against the {n[-1]:,} bundles of the largest size with the controller stopped "
	      f"(e2e/bench/api_floor.rs, 16 at a time): {floor.get('configmap', 0):.0f} ConfigMap updates/s alone, and "
	      f"{floor.get('revision', 0):.0f} bundles/s for the three writes a new revision costs (ConfigMap, status, Event). "
	      f"ocisync's {ours:.0f} bundles/s is {ours / floor.get('revision', 1):.2f} of that floor.")
PY
cat "$work/table"
largest=${SIZES[-1]}
read -r _ ready cpu peak idle shared _ <<<"$(tail -1 "$work/series")"
row Scale "$((largest + 1)) ArtifactSources + $largest RuleBundles (ConfigMap) created at once: all Ready" "$ready s" "—" "—"
row Scale "controller peak RSS / CPU during that" "$peak MiB / $cpu s" "—" "—"
row Scale "one new revision of the shared source until all $largest ConfigMaps have it" "$shared s" "—" "—"
row Footprint "controller RSS holding $((largest + 1)) sources and $largest bundles, idle" "$idle MiB" "—" "—"
if [[ -n ${BENCH_SECTIONS:-} ]]; then
	{
		echo
		echo "## Scale: growth series"
		echo
		echo "e2e/bench/scale.sh, sizes ${SIZES[*]}, --concurrency $CONCURRENCY; each size in its own namespace with a fresh controller."
		echo
		cat "$work/table"
	} >>"$BENCH_SECTIONS"
fi
# the last size is gone before the next part of `make bench` starts (deleting 8,000 + 8,000
# took the API server about three minutes, and would slow what runs beside it)
delete_namespace "$last_ns"
