#!/usr/bin/env bash
# `make image IMAGE=host:port/repo:tag`: the ocisync image without a Docker engine. The
# release binary plus what it needs at run time (the shared libraries `ldd` lists, the CA
# bundle), the same user, entrypoint and ports as the Dockerfile's image, pushed to a
# plain-HTTP registry (the local test registry) by e2e/python/image.py.
set -euo pipefail
cd "$(dirname "$0")/.."
ref=${1:?usage: e2e/image.sh REGISTRY/REPO:TAG}
BIN=${OCISYNC_BIN:-target/release/ocisync}
[[ -x $BIN ]] || cargo build --release --locked
root=$(mktemp -d /tmp/ocisync-image.XXXXXX)
trap 'rm -rf "$root"' EXIT
install -D -m 0755 "$BIN" "$root/usr/local/bin/ocisync"
# the dynamic loader and libraries, at the paths the binary asks for
for lib in $(ldd "$BIN" | awk '/=>/ {print $3} !/=>/ && $1 ~ /^\// {print $1}'); do
	install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
done
install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/etc/passwd"
mkdir -p "$root/tmp" && chmod 1777 "$root/tmp"
python3 e2e/python/image.py "$root" "$ref" --entrypoint /usr/local/bin/ocisync \
	--user 65532:65532 --port 9090 --port 9091
