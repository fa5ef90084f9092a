"""Writes a cosign classic signature manifest with oras-py, independently of ocisync.

usage: cosign_classic.py push REPOSITORY DIGEST LAYERS.json

REPOSITORY is host/name; DIGEST the signed manifest's sha256:<hex>. LAYERS.json is a list
of {"payload": PATH, "annotations": {...}}: one layer of media type
application/vnd.dev.cosign.simplesigning.v1+json each, the payload file as its blob. The
manifest goes to tag sha256-<hex>.sig with an OCI image config listing the layers, as
cosign writes it. Prints the manifest's tag.

Reaching the registry: as oras_interop.py (ORAS_INSECURE, ORAS_CA, ORAS_USER, ORAS_PASSWORD).
"""

import hashlib
import json
import os
import sys
import tempfile

from oras_interop import client

SIMPLESIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"


def descriptor(media_type: str, path: str) -> dict:
    with open(path, "rb") as f:
        data = f.read()
    return {
        "mediaType": media_type,
        "digest": "sha256:" + hashlib.sha256(data).hexdigest(),
        "size": len(data),
    }


def upload(c, container, layer: dict, path: str) -> None:
    response = c.upload_blob(path, container, layer)
    response.raise_for_status()


def push(repository: str, digest: str, layers_file: str) -> int:
    algorithm, hex_digest = digest.split(":", 1)
    if algorithm != "sha256":
        print(f"not a sha256 digest: {digest}", file=sys.stderr)
        return 2
    tag = f"sha256-{hex_digest}.sig"
    target = f"{repository}:{tag}"
    c = client(target)
    container = c.get_container(target)
    with open(layers_file) as f:
        wanted = json.load(f)
    layers = []
    for spec in wanted:
        layer = descriptor(SIMPLESIGNING, spec["payload"])
        upload(c, container, layer, spec["payload"])
        if spec.get("annotations"):
            layer["annotations"] = spec["annotations"]
        layers.append(layer)
    config = {
        "architecture": "",
        "os": "",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [l["digest"] for l in layers]},
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "config.json")
        with open(path, "w") as f:
            json.dump(config, f)
        config_descriptor = descriptor(CONFIG, path)
        upload(c, container, config_descriptor, path)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": config_descriptor,
        "layers": layers,
    }
    c.upload_manifest(manifest, container).raise_for_status()
    print(tag)
    return 0


def main(argv: list) -> int:
    if len(argv) != 4 or argv[0] != "push":
        print(__doc__, file=sys.stderr)
        return 2
    return push(argv[1], argv[2], argv[3])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
