#!/usr/bin/env bash
# `make bench`: pull a ~100 MiB tar+gzip artifact from the local plain registry, verified
# and unpacked, and time it against three references in the same run:
#   (a) standard tools doing the same work: curl | tee >(sha256sum) | tar xz
#   (b) oras-py's pull
#   (c) a bare curl to /dev/null (the transfer floor)
# Also reports ocisync's peak RSS for a 100 MiB and a 25 MiB artifact (it must not grow
# with size). Needs the environment from `e2e/testenv.sh up` in the environment.
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${OCISYNC_REGISTRY_PLAIN:?run: eval \"\$(e2e/testenv.sh up)\"}"
source e2e/bench/lib.sh
RUNS=${BENCH_RUNS:-5}

need=()
command -v hyperfine >/dev/null || need+=(hyperfine)
[[ -x /usr/bin/time ]] || need+=(time)
if ((${#need[@]})); then
	if ((EUID == 0)); then apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
	else sudo apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null; fi
fi

work=$(mktemp -d /tmp/ocisync-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT

# Content that compresses like text (base64 of random bytes: about 3:4): ~135 MiB of
# files becomes a ~100 MiB gzip layer, so inflating is real work.
make_input() { # dir MiB-of-random
	mkdir -p "$1"
	local i
	for i in $(seq 1 8); do
		head -c $(($2 * 1024 * 1024 / 8)) /dev/urandom | base64 -w 76 >"$1/part-$i.txt"
	done
}
make_input "$work/in100" 100
make_input "$work/in25" 25

# oras-py pushes each input directory as one tar+gzip layer, which both oras-py and
# ocisync download, verify and unpack: the same work for every contestant.
push() { # dir name
	ORAS_INSECURE=1 "$PY" e2e/python/oras_interop.py push "$OCISYNC_REGISTRY_PLAIN/bench/$2:1" "$1"
}
layer_url() { # name
	local d
	d=$(curl -sf -H 'Accept: application/vnd.oci.image.manifest.v1+json' "http://$OCISYNC_REGISTRY_PLAIN/v2/bench/$1/manifests/1" |
		python3 -c 'import json,sys; print(json.load(sys.stdin)["layers"][0]["digest"])')
	echo "http://$OCISYNC_REGISTRY_PLAIN/v2/bench/$1/blobs/$d"
}
make_input "$work/in1" 1
push "$work/in100" big
push "$work/in25" small
push "$work/in1" tiny

bench() { # name label
	local url
	url=$(layer_url "$1")
	echo
	echo "== $1: layer $(($(curl -sfI "$url" | awk 'tolower($1)=="content-length:" {print $2}' | tr -d '\r') / 1024)) KiB compressed"
	hyperfine --style basic --warmup 1 --runs "$RUNS" --export-json "$work/$1.json" \
		--prepare "rm -rf $work/out-*" \
		-n ocisync "$BIN pull $OCISYNC_REGISTRY_PLAIN/bench/$1:1 -o $work/out-ocisync --insecure -O json" \
		-n "curl|tee sha256sum|tar xz" "bash -c 'mkdir -p $work/out-tar && curl -sf $url | tee >(sha256sum >$work/sum) | tar xz -C $work/out-tar'" \
		-n oras-py "ORAS_INSECURE=1 $PY e2e/python/oras_interop.py pull $OCISYNC_REGISTRY_PLAIN/bench/$1:1 $work/out-oras" \
		-n "curl >/dev/null" "curl -sf -o /dev/null $url" >/dev/null
	python3 - "$work/$1.json" "$2" "${BENCH_RESULTS:-}" <<'PY'
import json, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
o = r["ocisync"]["median"]
rows = []
for name, x in r.items():
    print(f"  {name:28s} median {x['median']:.3f} s (mean {x['mean']:.3f} ± {x['stddev']:.3f})  ocisync/this = {o / x['median']:.2f}x")
    if name != "ocisync":
        peer = name.replace("|", "\\|")
        rows.append(f"| Pull | {sys.argv[2]}, verified and unpacked, median of 5 | {o:.3f} s | {peer} {x['median']:.3f} s | {o / x['median']:.2f}x |\n")
if sys.argv[3]:
    open(sys.argv[3], "a").writelines(rows)
PY
}
bench tiny "1 MiB"
bench big "100 MiB"

peak() { # command... -> MiB
	rm -rf "$work"/out-rss*
	/usr/bin/time -f '%M' -o "$work/rss" "$@" >/dev/null 2>&1
	echo $(($(cat "$work/rss") / 1024))
}
echo "peak RSS:"
for name in small big; do
	o=$(peak "$BIN" pull "$OCISYNC_REGISTRY_PLAIN/bench/$name:1" -o "$work/out-rss" --insecure -O json)
	p=$(peak env ORAS_INSECURE=1 "$PY" e2e/python/oras_interop.py pull "$OCISYNC_REGISTRY_PLAIN/bench/$name:1" "$work/out-rss-oras")
	url=$(layer_url "$name")
	t=$(peak bash -c "mkdir -p $work/out-rss-tar && curl -sf $url | tee >(sha256sum >$work/sum) | tar xz -C $work/out-rss-tar")
	echo "  $name: ocisync $o MiB, oras-py $p MiB, curl|tee|tar (largest process) $t MiB"
	label=$([[ $name == big ]] && echo "100 MiB" || echo "25 MiB")
	row Pull "peak RSS, $label artifact" "$o MiB" "oras-py $p MiB" "$(ratio "$o" "$p")"
	row Pull "peak RSS, $label artifact" "$o MiB" "curl\|tee\|tar $t MiB" "$(ratio "$o" "$t")"
done
