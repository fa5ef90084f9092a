"""Builds an OCI image from a root filesystem folder, without a Docker engine, and pushes
it to a registry over plain HTTP (the local test registry).

    image.py ROOTFS REGISTRY/REPO:TAG --entrypoint /bin/x [--user 65532:65532] [--port 9090]

One gzip layer (files owned by root unless --owner, modes kept), an OCI image config
(`architecture`, `os`, `config.Entrypoint/User/ExposedPorts`, `rootfs.diff_ids`), and an
OCI image manifest. Prints the manifest digest.
"""
import argparse, gzip, hashlib, io, json, os, sys, tarfile, urllib.request


def layer(rootfs, owner):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for dirpath, dirnames, filenames in os.walk(rootfs):
            dirnames.sort()
            for name in sorted(dirnames) + sorted(filenames):
                path = os.path.join(dirpath, name)
                info = tar.gettarinfo(path, arcname=os.path.relpath(path, rootfs))
                info.uid, info.gid = owner
                info.uname = info.gname = ""
                info.mtime = 0
                if info.isfile():
                    with open(path, "rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)
    tar_bytes = raw.getvalue()
    gz = gzip.compress(tar_bytes, mtime=0)
    return tar_bytes, gz


def push_blob(base, repo, data):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    head = urllib.request.Request(f"{base}/v2/{repo}/blobs/{digest}", method="HEAD")
    try:
        urllib.request.urlopen(head)
        return digest
    except urllib.error.HTTPError:
        pass
    start = urllib.request.urlopen(urllib.request.Request(f"{base}/v2/{repo}/blobs/uploads/", method="POST", data=b""))
    location = start.headers["Location"]
    if location.startswith("/"):
        location = base + location
    sep = "&" if "?" in location else "?"
    put = urllib.request.Request(f"{location}{sep}digest={digest}", method="PUT", data=data,
                                 headers={"Content-Type": "application/octet-stream"})
    urllib.request.urlopen(put)
    return digest


def main():
    p = argparse.ArgumentParser()
    p.add_argument("rootfs")
    p.add_argument("ref")
    p.add_argument("--entrypoint", nargs="+", required=True)
    p.add_argument("--user", default="")
    p.add_argument("--port", action="append", default=[])
    p.add_argument("--owner", default="0:0")
    a = p.parse_args()
    host, rest = a.ref.split("/", 1)
    repo, tag = rest.rsplit(":", 1)
    base = f"http://{host}"
    owner = tuple(int(x) for x in a.owner.split(":"))
    tar_bytes, gz = layer(a.rootfs, owner)
    config = {
        "architecture": "amd64" if os.uname().machine == "x86_64" else "arm64",
        "os": "linux",
        "config": {"Entrypoint": a.entrypoint, "User": a.user,
                   "ExposedPorts": {f"{port}/tcp": {} for port in a.port},
                   "Env": ["PATH=/usr/local/bin:/usr/bin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(tar_bytes).hexdigest()]},
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    layer_digest = push_blob(base, repo, gz)
    config_digest = push_blob(base, repo, config_bytes)
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": len(config_bytes)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": len(gz)}],
    }).encode()
    req = urllib.request.Request(f"{base}/v2/{repo}/manifests/{tag}", method="PUT", data=manifest,
                                 headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    urllib.request.urlopen(req)
    print("sha256:" + hashlib.sha256(manifest).hexdigest())


if __name__ == "__main__":
    sys.exit(main())
