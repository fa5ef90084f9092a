"""oras-py, the independent ORAS client the interop tests and benchmark use.

usage: oras_interop.py push TARGET FILE...   (files keep their base names as titles)
       oras_interop.py pull TARGET OUTDIR    (prints the pulled paths, one per line)

Reaching the registry: ORAS_INSECURE=1 for plain HTTP, else ORAS_CA names the CA bundle;
ORAS_USER and ORAS_PASSWORD log in with basic auth.
"""

import atexit
import os
import shutil
import sys
import tempfile

import oras.client


def client(target: str) -> oras.client.OrasClient:
    host = target.split("/", 1)[0]
    insecure = os.environ.get("ORAS_INSECURE") == "1"
    tls_verify = os.environ.get("ORAS_CA", True)
    c = oras.client.OrasClient(
        hostname=host, insecure=insecure, tls_verify=tls_verify, auth_backend="basic"
    )
    user = os.environ.get("ORAS_USER")
    if user:
        # oras-py's login writes the credentials into a Docker config file; the shared
        # ~/.docker/config.json would be written by every test's process at once (one read
        # a half-written file), so each process keeps its own, gone when it exits
        home = tempfile.mkdtemp(prefix="oras-py-")
        atexit.register(shutil.rmtree, home, True)
        config = os.path.join(home, "config.json")
        c.login(
            username=user,
            password=os.environ["ORAS_PASSWORD"],
            hostname=host,
            tls_verify=tls_verify,
            config_path=config,
        )
    return c


def main(argv: list) -> int:
    if len(argv) < 3 or argv[0] not in ("push", "pull"):
        print(__doc__, file=sys.stderr)
        return 2
    verb, target, rest = argv[0], argv[1], argv[2:]
    c = client(target)
    if verb == "push":
        # oras-py titles each layer with the path as given: run from the files' directory
        os.chdir(os.path.dirname(os.path.abspath(rest[0])))
        response = c.push(target=target, files=[os.path.basename(f) for f in rest], quiet=True)
        response.raise_for_status()
    else:
        for path in c.pull(target=target, outdir=rest[0]):
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
