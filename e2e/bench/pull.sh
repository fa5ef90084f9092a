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
BIN=${OCISYNC_BIN:-target/release/ocisync}
PY=${OCISYNC_PYTHON:-target/pyenv/bin/python}
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

push() { # dir name
	"$BIN" push "$1" "$OCISYNC_REGISTRY_PLAIN/bench/$2:1" --type falco-rules --insecure -O json
}
push "$work/in100" big >"$work/big.json"
push "$work/in25" small >"$work/small.json"
layer=$(python3 -c 'import json,sys; l=json.load(open(sys.argv[1]))["layers"][0]; print(l["digest"], l["size"])' "$work/big.json")
digest=${layer% *}
size=${layer#* }
url="http://$OCISYNC_REGISTRY_PLAIN/v2/bench/big/blobs/$digest"
echo "artifact: layer $digest, $((size / 1024 / 1024)) MiB compressed, $(du -sm "$work/in100" | cut -f1) MiB unpacked"

hyperfine --style basic --warmup 1 --runs "$RUNS" --export-json "$work/hyperfine.json" \
	--prepare "rm -rf $work/out-*" \
	-n ocisync "$BIN pull $OCISYNC_REGISTRY_PLAIN/bench/big:1 -o $work/out-ocisync --insecure -O json" \
	-n "curl|tee sha256sum|tar xz" "bash -c 'mkdir -p $work/out-tar && curl -sf $url | tee >(sha256sum >$work/sum) | tar xz -C $work/out-tar'" \
	-n oras-py "ORAS_INSECURE=1 $PY e2e/python/oras_interop.py pull $OCISYNC_REGISTRY_PLAIN/bench/big:1 $work/out-oras" \
	-n "curl >/dev/null" "curl -sf -o /dev/null $url"

python3 - "$work/hyperfine.json" <<'PY'
import json, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
o = r["ocisync"]["mean"]
print("\nmean seconds (stddev):")
for name, x in r.items():
    print(f"  {name:28s} {x['mean']:.3f} ({x['stddev']:.3f})  ocisync/this = {o / x['mean']:.2f}x")
PY

rss() { # name
	rm -rf "$work/out-rss"
	/usr/bin/time -f '%M' -o "$work/rss" "$BIN" pull "$OCISYNC_REGISTRY_PLAIN/bench/$1:1" -o "$work/out-rss" --insecure -O json >/dev/null
	echo "  $1: $(($(cat "$work/rss") / 1024)) MiB peak RSS"
}
echo "ocisync pull peak RSS:"
rss small
rss big
