#!/usr/bin/env python3
"""Waits, through one watch of the API server, until COUNT objects of a kind in a namespace
meet a condition; prints the seconds since START (a Unix time, default: now).

  watch_until.py PATH COUNT CONDITION [ARG] [--start T] [--deadline S]

PATH is the collection's API path (/apis/ocisync.dev/v1alpha1/namespaces/NS/rulebundles,
/api/v1/namespaces/NS/configmaps?labelSelector=...). CONDITION is `ready` (a Ready condition
with status True), `data KEY TEXT` (data[KEY] contains TEXT), `rolled-out` (a bundle's
status.nodes counts every desired node updated, and some are desired) or `desired N` (a
bundle's status.nodes.desired is N).

The benchmarks used to poll with `kubectl get -o json` every 0.2 s: at thousands of objects
each poll lists them all, and the polling took as much of the API server as the system
measured. A watch costs the API server one serialisation per change. Credentials come from
the current kubeconfig (kubectl config view --raw); the API server is the test
environment's own.
"""
import base64
import json
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request


def kubeconfig():
    raw = subprocess.run(["kubectl", "config", "view", "--raw", "--minify", "-o", "json"],
                         capture_output=True, check=True).stdout
    config = json.loads(raw)
    cluster = config["clusters"][0]["cluster"]
    user = config["users"][0]["user"]
    context = ssl.create_default_context()
    if "certificate-authority-data" in cluster:
        with tempfile.NamedTemporaryFile("wb", delete=False) as ca:
            ca.write(base64.b64decode(cluster["certificate-authority-data"]))
        context.load_verify_locations(ca.name)
    elif "certificate-authority" in cluster:
        context.load_verify_locations(cluster["certificate-authority"])
    if "client-certificate" in user:
        context.load_cert_chain(user["client-certificate"], user["client-key"])
    headers = {"Authorization": "Bearer " + user["token"]} if "token" in user else {}
    return cluster["server"], context, headers


def meets(obj, condition, args):
    if condition == "ready":
        conditions = (obj.get("status") or {}).get("conditions") or []
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    if condition == "data":
        key, text = args
        return text in ((obj.get("data") or {}).get(key) or "")
    nodes = (obj.get("status") or {}).get("nodes") or {}
    if condition == "rolled-out":
        return nodes.get("desired", 0) > 0 and nodes.get("updated") == nodes.get("desired")
    if condition == "desired":
        return nodes.get("desired") == int(args[0])
    raise SystemExit(f"unknown condition {condition}")


def main():
    argv = sys.argv[1:]
    start, deadline = time.time(), 600.0
    if "--start" in argv:
        i = argv.index("--start")
        start = float(argv[i + 1])
        del argv[i:i + 2]
    if "--deadline" in argv:
        i = argv.index("--deadline")
        deadline = float(argv[i + 1])
        del argv[i:i + 2]
    path, count, condition, args = argv[0], int(argv[1]), argv[2], argv[3:]
    server, context, headers = kubeconfig()
    sep = "&" if "?" in path else "?"
    met = set()
    # a list for the resourceVersion and what is already there, then the watch from it
    request = urllib.request.Request(server + path, headers=headers)
    with urllib.request.urlopen(request, context=context, timeout=60) as r:
        listed = json.load(r)
    for obj in listed.get("items") or []:
        if meets(obj, condition, args):
            met.add(obj["metadata"]["name"])
    version = listed["metadata"]["resourceVersion"]
    end = start + deadline
    while len(met) < count:
        left = end - time.time()
        if left <= 0:
            raise SystemExit(f"watch_until: {len(met)} of {count} within {deadline:.0f}s")
        url = f"{server}{path}{sep}watch=1&allowWatchBookmarks=true&resourceVersion={version}" \
              f"&timeoutSeconds={max(1, int(left))}"
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                    context=context, timeout=left + 30) as stream:
            for line in stream:
                event = json.loads(line)
                obj = event["object"]
                if event["type"] == "ERROR":
                    raise SystemExit(f"watch_until: {obj.get('message')}")
                version = obj["metadata"]["resourceVersion"]
                name = obj["metadata"].get("name")
                if event["type"] == "BOOKMARK":
                    continue
                if event["type"] != "DELETED" and meets(obj, condition, args):
                    met.add(name)
                else:
                    met.discard(name)
                if len(met) >= count:
                    break
    print(f"{time.time() - start:.1f}")


if __name__ == "__main__":
    main()
