#!/usr/bin/env bash
# `make bench`: what signature verification adds per new revision, by format, measured
# with `ocisync verify` against the local plain registry: its requests (from -O json) and
# wall time (hyperfine, process start included), beside `ocisync pull` of the same small
# artifact (what a new revision costs without verification). A check of an unchanged tag
# adds no request at all (verification is remembered per digest and policy):
# tests/e2e_verify.rs counts that in the registry log.
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${OCISYNC_REGISTRY_PLAIN:?run: eval \"\$(e2e/testenv.sh up)\"}"
source e2e/bench/lib.sh
RUNS=${BENCH_RUNS:-20}
if ! command -v hyperfine >/dev/null; then
	if ((EUID == 0)); then apt-get install -y -q --no-install-recommends hyperfine >/dev/null
	else sudo apt-get install -y -q --no-install-recommends hyperfine >/dev/null; fi
fi
REG=$OCISYNC_REGISTRY_PLAIN
work=$(mktemp -d /tmp/ocisync-bench-verify.XXXXXX)
trap 'rm -rf "$work"' EXIT
[[ -d target/sigstore/node_modules ]] || e2e/deps.sh >/dev/null

repo=$REG/bench/verify-$(date +%s%N)
printf -- '- rule: bench\n  condition: evt.type = open\n' >"$work/rules.yaml"
push() { "$BIN" push --insecure --type falco-rules "$@" | grep -o 'sha256:[0-9a-f]\{64\}' | head -1; }
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/k.pem" 2>/dev/null
openssl pkey -in "$work/k.pem" -pubout -out "$work/k.pub"
push --sign-key "$work/k.pem" "$work/rules.yaml" "oci://$repo:key" >/dev/null
printf -- '- rule: c\n' >"$work/c.yaml"
dc=$(push "$work/c.yaml" "oci://$repo:classic")
printf -- '- rule: b\n' >"$work/b.yaml"
db=$(push "$work/b.yaml" "oci://$repo:bundle")
node e2e/sigstore/sign.mjs --out "$work/c" --digest "$dc" >/dev/null
node e2e/sigstore/sign.mjs --out "$work/b" --digest "$db" >/dev/null
# cosign's layouts, written here without ocisync: the classic keyless layer, and the v0.3
# bundle as a referrer with the fallback index (Distribution 2.8 has no referrers API)
"$PY" - "$REG" "${repo#*/}" "$dc" "$work/c/classic" "$db" "$work/b/bundle-v03.json" <<'PY'
import hashlib, json, sys, urllib.request
reg, name, dc, classic, db, bundle = sys.argv[1:]
def req(method, path, body=b"", ctype="application/octet-stream"):
    r = urllib.request.Request(f"http://{reg}/v2/{name}/{path}", data=body or None, method=method)
    r.add_header("Content-Type", ctype)
    return urllib.request.urlopen(r)
def blob(data):
    d = "sha256:" + hashlib.sha256(data).hexdigest()
    loc = req("POST", "blobs/uploads/").headers["Location"]
    sep = "&" if "?" in loc else "?"
    # an explicit type: Go's server reads a form-encoded PUT body as a form
    put = urllib.request.Request(f"{loc}{sep}digest={d}", data=data, method="PUT")
    put.add_header("Content-Type", "application/octet-stream")
    urllib.request.urlopen(put)
    return {"digest": d, "size": len(data)}
def manifest(ref, doc, mt):
    data = json.dumps(doc).encode()
    req("PUT", f"manifests/{ref}", data, mt)
    return {"mediaType": mt, "digest": "sha256:" + hashlib.sha256(data).hexdigest(), "size": len(data)}
M = "application/vnd.oci.image.manifest.v1+json"
payload = open(f"{classic}/payload.json", "rb").read()
notes = json.load(open(f"{classic}/annotations.json"))
layer = dict(blob(payload), mediaType="application/vnd.dev.cosign.simplesigning.v1+json", annotations=notes)
config = dict(blob(b"{}"), mediaType="application/vnd.oci.image.config.v1+json")
manifest(f"sha256-{dc[7:]}.sig", {"schemaVersion": 2, "mediaType": M, "config": config, "layers": [layer]}, M)
B = "application/vnd.dev.sigstore.bundle.v0.3+json"
empty = dict(blob(b"{}"), mediaType="application/vnd.oci.empty.v1+json")
subject = {"mediaType": M, "digest": db, "size": 0}
ref = manifest(db.replace(":", "-") + "-bundle", {"schemaVersion": 2, "mediaType": M, "artifactType": B, "config": empty,
    "layers": [dict(blob(open(bundle, "rb").read()), mediaType=B)], "subject": subject}, M)
index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [dict(ref, artifactType=B)]}
manifest(f"sha256-{db[7:]}", index, "application/vnd.oci.image.index.v1+json")
PY

issuer='^https://token\.actions\.githubusercontent\.com$'
subject='^https://github\.com/example/rules/'
mean_ms() { python3 -c 'import json, sys; r = json.load(open(sys.argv[1]))["results"][0]; print("%.1f" % (r["mean"] * 1000))' "$1"; }
measure() { # what tag args...
	local what=$1 tag=$2
	shift 2
	local json requests ms pull_ms
	json=$("$BIN" verify --insecure -O json "oci://$repo:$tag" "$@")
	requests=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["requests"])' <<<"$json")
	hyperfine -N -w 2 -r "$RUNS" --export-json "$work/v.json" "$BIN verify --insecure oci://$repo:$tag $*" >/dev/null 2>&1
	ms=$(mean_ms "$work/v.json")
	hyperfine -N -w 2 -r "$RUNS" --prepare "rm -rf $work/out" --export-json "$work/p.json" "$BIN pull --insecure --output-dir $work/out oci://$repo:$tag" >/dev/null 2>&1
	pull_ms=$(mean_ms "$work/p.json")
	echo "verify $what: $requests requests, $ms ms (pull of the same revision: $pull_ms ms)"
	row Signatures "verify a new revision, $what: signature-search requests (besides resolve and manifest) / wall time of ocisync verify, vs ocisync pull of it" "$requests requests, $ms ms" "$pull_ms ms" "$(ratio "$ms" "$pull_ms")"
}
measure "key, classic .sig" key --key "$work/k.pub"
measure "keyless, classic .sig" classic --certificate-identity-regexp "$subject" --certificate-oidc-issuer-regexp "$issuer" --trusted-root "$work/c/trusted_root.json"
measure "keyless, bundle v0.3 referrer" bundle --certificate-identity-regexp "$subject" --certificate-oidc-issuer-regexp "$issuer" --trusted-root "$work/b/trusted_root.json"
row Signatures "added requests per check of an unchanged tag (tests/e2e_verify.rs, registry log)" "0" "—" "—"
# the checks alone, in process (no registry, no process start): release build
cargo test --release --locked --lib verification_time -- --ignored --nocapture 2>/dev/null |
	sed -n 's/^BENCH //p' | while IFS=: read -r what took; do
	echo "keyless check in process, $what:$took"
	row Signatures "keyless check in process (parse, chain, SET, proof, checkpoint, SCT, identity), $what" "${took# }" "—" "—"
done
