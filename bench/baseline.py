#!/usr/bin/env python3
"""The polling baseline: time secret delivery the way people do it today.

Write a fresh value with the `bao` CLI, then once a second run
`kubectl get ... -o json` and note the wall-clock time a poll first shows
each milestone (Secret holds the value, ExternalSecret synced, pod template
changed, rollout complete, canary Pods answer the new digest). One thread per
chain; each run is one JSON line on --out, scored against the lab's ground
truth by secret-canary-bench exactly like the prober's runs.

Only the standard library; kubectl is the real one first on PATH (scripts/bench.sh puts the pinned build there).
"""

import argparse
import base64
import hashlib
import json
import os
import random
import secrets
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import datetime, timezone

POLL = 1.0  # seconds between polls: "kubectl get every second"


def now_ns():
    return time.time_ns()


def rfc3339_to_ns(text):
    # "2024-05-01T12:00:00.123456789Z" (Python's fromisoformat stops at µs)
    if not text:
        return None
    main, _, frac = text.rstrip("Z").partition(".")
    frac = (frac + "000000000")[:9]
    dt = datetime.strptime(main, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
    return int(dt.timestamp()) * 1_000_000_000 + int(frac)


class Tools:
    def __init__(self, args):
        self.kubectl = [args.kubectl, "--kubeconfig", args.kubeconfig, "-n", args.namespace]
        self.bao = args.bao
        self.env = dict(os.environ)
        with open(args.vault_env) as f:
            for line in f:
                line = line.strip()
                if line.startswith("export ") and "=" in line:
                    k, v = line[len("export "):].split("=", 1)
                    self.env[k] = v

    def kubectl_json(self, *what):
        r = subprocess.run(self.kubectl + ["get", *what, "-o", "json"],
                           capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            return None
        try:
            return json.loads(r.stdout)
        except ValueError:
            return None

    def kubectl_run(self, *args):
        return subprocess.run(self.kubectl + list(args), capture_output=True, text=True, timeout=30)

    def bao_put(self, path, value):
        r = subprocess.run([self.bao, "kv", "put", "-format=json", "-mount=secret", path,
                            f"value={value}"], capture_output=True, text=True, env=self.env,
                           timeout=30)
        if r.returncode != 0:
            raise RuntimeError(f"bao kv put failed: {r.stderr.strip()}")
        return json.loads(r.stdout)


def items_of(doc):
    if doc is None:
        return []
    if doc.get("kind", "").endswith("List"):
        return doc.get("items", [])
    return [doc]


def rollout_complete(d, min_generation):
    """`kubectl rollout status`'s rule, for a generation >= min_generation."""
    meta, spec, st = d.get("metadata", {}), d.get("spec", {}), d.get("status", {})
    gen = meta.get("generation", 0)
    if gen < min_generation or st.get("observedGeneration", 0) < gen:
        return False
    want = spec.get("replicas", 1)
    return (st.get("updatedReplicas", 0) >= want
            and st.get("replicas", 0) <= st.get("updatedReplicas", 0)
            and st.get("availableReplicas", 0) >= st.get("updatedReplicas", 0))


def es_synced(es, write_floor_s):
    st = es.get("status", {})
    ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                for c in st.get("conditions", []))
    rt = rfc3339_to_ns(st.get("refreshTime"))
    return ready and rt is not None and rt >= write_floor_s * 1_000_000_000


def canary_digests(tools, selector):
    pods = items_of(tools.kubectl_json("pods", "-l", selector))
    out = []
    for p in pods:
        if p.get("metadata", {}).get("deletionTimestamp"):
            continue
        st = p.get("status", {})
        ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                    for c in st.get("conditions", []))
        ip = st.get("podIP")
        if not ready or not ip:
            continue
        try:
            with urllib.request.urlopen(f"http://{ip}:8080/digest", timeout=2) as r:
                out.append(json.loads(r.read()).get("digest"))
        except Exception:  # noqa: BLE001 - an unreachable canary is "not yet"
            out.append(None)
    return out


def one_run(tools, chain, deadline_s):
    kind, name = chain["kind"], chain["name"]
    value = secrets.token_hex(16)
    digest = hashlib.sha256(value.encode()).hexdigest()
    base_gen = 0
    if kind != "volume":
        d = tools.kubectl_json(f"deployment/{name}")
        base_gen = (d or {}).get("metadata", {}).get("generation", 0)
    rec = {"chain": name, "kind": kind, "digest": digest}
    rec["write_start"] = now_ns()
    put = tools.bao_put(chain["store_path"], value)
    rec["write_end"] = now_ns()
    rec["created_time"] = put.get("data", {}).get("created_time")
    if kind == "bankvaults":
        tools.kubectl_run("rollout", "restart", f"deployment/{name}")
    write_floor_s = rec["write_start"] // 1_000_000_000
    seen = {}
    what = []
    if kind != "bankvaults":
        what += [f"externalsecrets.external-secrets.io/{name}", f"secret/{name}"]
    if kind != "volume":
        what.append(f"deployment/{name}")
    want = {"env": ["secret", "eso", "template", "rollout", "canary"],
            "volume": ["secret", "eso", "canary"],
            "bankvaults": ["template", "rollout", "canary"]}[kind]
    start = time.monotonic()
    tick = start
    while time.monotonic() - start < deadline_s and not all(k in seen for k in want):
        docs = items_of(tools.kubectl_json(*what))
        t = now_ns()
        # The Secret first: ESO's sync counts once the Secret shows the value.
        order = {"Secret": 0, "ExternalSecret": 1, "Deployment": 2}
        for doc in sorted(docs, key=lambda d: order.get(d.get("kind"), 3)):
            k = doc.get("kind")
            if k == "Secret" and "secret" not in seen:
                raw = (doc.get("data") or {}).get("value")
                if raw and hashlib.sha256(base64.b64decode(raw)).hexdigest() == digest:
                    seen["secret"] = t
            elif k == "ExternalSecret" and "eso" not in seen:
                if es_synced(doc, write_floor_s) and ("secret" in seen):
                    seen["eso"] = t
            elif k == "Deployment":
                gen = doc.get("metadata", {}).get("generation", 0)
                if "template" not in seen and gen > base_gen:
                    seen["template"] = t
                if "template" in seen and "rollout" not in seen and rollout_complete(doc, base_gen + 1):
                    seen["rollout"] = t
        if "canary" not in seen and (kind == "volume" and "secret" in seen or "rollout" in seen):
            ds = canary_digests(tools, chain["selector"])
            if ds and all(x == digest for x in ds):
                seen["canary"] = now_ns()
        tick += POLL
        time.sleep(max(0.0, tick - time.monotonic()))
    rec["seen"] = seen
    rec["complete"] = all(k in seen for k in want)
    return rec


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kubeconfig", required=True)
    ap.add_argument("--kubectl", default="kubectl")
    ap.add_argument("--bao", required=True)
    ap.add_argument("--vault-env", required=True)
    ap.add_argument("--namespace", default="canary")
    ap.add_argument("--chains", required=True, help="JSON list of chains")
    ap.add_argument("--runs", type=int, required=True, help="runs in total, spread over the chains")
    ap.add_argument("--deadline", type=float, default=60.0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    tools = Tools(args)
    with open(args.chains) as f:
        chains = json.load(f)
    lock = threading.Lock()
    out = open(args.out, "w")
    counter = {"left": args.runs}

    def worker(chain):
        while True:
            with lock:
                if counter["left"] <= 0:
                    return
                counter["left"] -= 1
            try:
                rec = one_run(tools, chain, args.deadline)
            except Exception as e:  # noqa: BLE001 - record and go on
                rec = {"chain": chain["name"], "kind": chain["kind"], "error": str(e)}
            with lock:
                out.write(json.dumps(rec) + "\n")
                out.flush()
            # A random pause so writes fall at random points of ESO's refresh cycle.
            time.sleep(random.uniform(1.0, 3.0))

    threads = [threading.Thread(target=worker, args=(c,), daemon=True) for c in chains]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
