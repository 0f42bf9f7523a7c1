#!/usr/bin/env python3
"""Real Helm (the helm-sdkpy library: Helm v4's Go code) for the chart tests.

    helm.py lint   CHART [--values-json FILE]
    helm.py render CHART [--values-json FILE] [--release NAME] [--namespace NS]
                         [--drop-api GROUP/VERSION]... [--add-api GROUP/VERSION]...

`lint` runs Helm's own linter. helm-sdkpy's Lint takes no values, so the
chart is copied to a temporary directory whose values.yaml is replaced by the
given (already merged) values; Helm reads JSON as YAML. Prints
{"errors": N, "messages": [{"severity": "error", "path": ...}]} and exits 1 when
Helm reported an error.

`render` prints what Helm installed, as JSON: {"manifest": the rendered
multi-document YAML, "hooks": [{name, kind, events, manifest}], "created":
[every object Helm sent to the API, as JSON]}.
helm-sdkpy exposes no `helm template`/dry run, so this runs a real
`helm install` against a throwaway in-process stand-in of the Kubernetes API
on 127.0.0.1 that serves discovery, answers 404 to every read and records
every object created. Helm itself maps each kind through discovery, so an
unknown kind or a malformed manifest fails the install as it would in a cluster.
`--drop-api` removes a group/version from the stand-in's discovery (a cluster
without the Prometheus Operator: `--drop-api monitoring.coreos.com/v1`);
`--add-api` serves one of OPTIONAL_RESOURCES too (ESO's older
`external-secrets.io/v1beta1`, OpenShift's `security.openshift.io/v1`, the
Operator's `monitoring.coreos.com/v1alpha1`). The chart sees them through
`.Capabilities.APIVersions`, as on a real cluster.

Used by tests/chart.rs; needs `.venv` with helm-sdkpy (scripts/setup.sh).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Kinds the stand-in API serves: group/version -> [(plural, Kind, namespaced)].
RESOURCES: dict[str, list[tuple[str, str, bool]]] = {
    "v1": [
        ("configmaps", "ConfigMap", True),
        ("secrets", "Secret", True),
        ("services", "Service", True),
        ("serviceaccounts", "ServiceAccount", True),
        ("pods", "Pod", True),
        ("namespaces", "Namespace", False),
    ],
    "apps/v1": [("deployments", "Deployment", True)],
    "rbac.authorization.k8s.io/v1": [
        ("roles", "Role", True),
        ("rolebindings", "RoleBinding", True),
        ("clusterroles", "ClusterRole", False),
        ("clusterrolebindings", "ClusterRoleBinding", False),
    ],
    "networking.k8s.io/v1": [("networkpolicies", "NetworkPolicy", True)],
    "policy/v1": [("poddisruptionbudgets", "PodDisruptionBudget", True)],
    "monitoring.coreos.com/v1": [
        ("servicemonitors", "ServiceMonitor", True),
        ("prometheusrules", "PrometheusRule", True),
    ],
    "external-secrets.io/v1": [
        ("externalsecrets", "ExternalSecret", True),
        ("secretstores", "SecretStore", True),
        ("clustersecretstores", "ClusterSecretStore", False),
    ],
}

# Group/versions a cluster may or may not serve (`--add-api`).
OPTIONAL_RESOURCES: dict[str, list[tuple[str, str, bool]]] = {
    "external-secrets.io/v1beta1": [
        ("externalsecrets", "ExternalSecret", True),
        ("secretstores", "SecretStore", True),
        ("clustersecretstores", "ClusterSecretStore", False),
    ],
    "security.openshift.io/v1": [("securitycontextconstraints", "SecurityContextConstraints", False)],
    "monitoring.coreos.com/v1alpha1": [("alertmanagerconfigs", "AlertmanagerConfig", True)],
}

SEVERITY = {1: "info", 2: "warning", 3: "error"}


def fail(message: str) -> None:
    print(f"helm.py: {message}", file=sys.stderr)
    sys.exit(2)


def import_helm():
    try:
        import helm_sdkpy  # noqa: PLC0415
    except ImportError as e:
        fail(f"helm-sdkpy is not installed in this Python ({sys.executable}): {e}; run scripts/setup.sh")
    return helm_sdkpy


def load_values(path: str | None) -> dict:
    if not path:
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def lint(chart: str, values: dict) -> int:
    helm = import_helm()
    with tempfile.TemporaryDirectory(prefix="helm-lint-") as tmp:
        copy = os.path.join(tmp, os.path.basename(os.path.normpath(chart)))
        shutil.copytree(chart, copy, symlinks=False)
        if values:
            with open(os.path.join(copy, "values.yaml"), "w", encoding="utf-8") as f:
                json.dump(values, f, indent=1)
        result = asyncio.run(helm.Lint(helm.Configuration()).run(copy))
    messages = [
        {
            "severity": SEVERITY.get(m.get("Severity"), str(m.get("Severity"))),
            "path": m.get("Path"),
            # helm-sdkpy serialises Go errors as {}: keep whatever text there is.
            "error": m.get("Err") or None,
        }
        for m in result.get("Messages") or []
    ]
    errors = sum(1 for m in messages if m["severity"] == "error")
    print(json.dumps({"errors": errors, "messages": messages}, indent=1))
    return 1 if errors else 0


class StandIn(BaseHTTPRequestHandler):
    """A write-only Kubernetes API: discovery, 404 on reads, records creations."""

    created: list[dict] = []
    lock = threading.Lock()

    def log_message(self, format, *args):  # noqa: A002 - the stdlib's name
        if os.environ.get("HELM_PY_DEBUG"):
            sys.stderr.write("stand-in: " + (format % args) + "\n")

    def reply(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def not_found(self) -> None:
        self.reply(
            404,
            {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
             "reason": "NotFound", "code": 404, "message": f"{self.path} not found"},
        )

    def discovery(self, path: str) -> dict | None:
        if path == "/version":
            return {"major": "1", "minor": "33", "gitVersion": "v1.33.0", "platform": "linux/amd64"}
        if path == "/api":
            return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
        if path == "/apis":
            by_group: dict[str, list[dict]] = {}
            for gv in RESOURCES:
                if "/" not in gv:
                    continue
                group, version = gv.split("/")
                by_group.setdefault(group, []).append({"groupVersion": gv, "version": version})
            groups = [{"name": g, "versions": vs, "preferredVersion": vs[0]} for g, vs in by_group.items()]
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
        gv = path[len("/api/"):] if path.startswith("/api/") else path[len("/apis/"):]
        if path.startswith(("/api/", "/apis/")) and gv in RESOURCES:
            return {
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": gv,
                "resources": [
                    {"name": plural, "singularName": kind.lower(), "namespaced": ns, "kind": kind,
                     "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]}
                    for plural, kind, ns in RESOURCES[gv]
                ],
            }
        return None

    def do_GET(self):  # noqa: N802 - http.server's name
        path = self.path.split("?")[0]
        found = self.discovery(path)
        if found is not None:
            return self.reply(200, found)
        # A list (release history) is empty; an object is absent.
        last = path.rstrip("/").split("/")[-1]
        if any(last == plural for rs in RESOURCES.values() for plural, _, _ in rs):
            return self.reply(200, {"kind": "List", "apiVersion": "v1", "metadata": {}, "items": []})
        return self.not_found()

    def do_POST(self):  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if "json" not in (self.headers.get("Content-Type") or ""):
            # client-go writes built-in types (Helm's release record) as
            # protobuf; the rendered manifests always arrive as JSON.
            return self.reply(201, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                                    "content-type": self.headers.get("Content-Type")})
        body = json.loads(raw or b"{}")
        with self.lock:
            self.created.append(body)
        meta = body.setdefault("metadata", {})
        meta.setdefault("uid", f"uid-{len(self.created)}")
        meta.setdefault("resourceVersion", str(len(self.created)))
        self.reply(201, body)

    def do_PUT(self):  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if "json" not in (self.headers.get("Content-Type") or ""):
            return self.reply(200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"})
        self.reply(200, json.loads(raw or b"{}"))

    do_PATCH = do_PUT

    def do_DELETE(self):  # noqa: N802
        self.not_found()


def render(chart: str, values: dict, release: str, namespace: str,
           drop: list[str] | None = None, add: list[str] | None = None) -> int:
    helm = import_helm()
    for gv in drop or []:
        if RESOURCES.pop(gv, None) is None:
            fail(f"--drop-api {gv}: not served by the stand-in ({', '.join(RESOURCES)})")
    for gv in add or []:
        if gv not in OPTIONAL_RESOURCES:
            fail(f"--add-api {gv}: unknown ({', '.join(OPTIONAL_RESOURCES)})")
        RESOURCES[gv] = OPTIONAL_RESOURCES[gv]
    StandIn.created = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        kubeconfig = f"""apiVersion: v1
kind: Config
clusters:
- name: stand-in
  cluster:
    server: http://127.0.0.1:{port}
users:
- name: helm
  user:
    token: stand-in
contexts:
- name: stand-in
  context: {{cluster: stand-in, user: helm, namespace: {namespace}}}
current-context: stand-in
"""
        with tempfile.NamedTemporaryFile("w", suffix=".kubeconfig", delete=False) as f:
            f.write(kubeconfig)
            kc_path = f.name
        try:
            config = helm.Configuration(namespace=namespace, kubeconfig=kc_path)
            try:
                result = asyncio.run(
                    helm.Install(config).run(release, chart, values=values or None, wait=False, timeout=60)
                )
            except helm.HelmError as e:
                print(f"helm install failed: {e}", file=sys.stderr)
                return 1
        finally:
            os.unlink(kc_path)
    finally:
        server.shutdown()
    created = []
    for body in StandIn.created:
        meta = body.get("metadata") or {}
        for key in ("uid", "resourceVersion"):
            meta.pop(key, None)
        created.append(body)
    hooks = [
        {"name": h.get("name"), "kind": h.get("kind"), "events": h.get("events") or [], "manifest": h.get("manifest", "")}
        for h in result.get("hooks") or []
    ]
    print(json.dumps({"manifest": result.get("manifest", ""), "hooks": hooks, "created": created}, indent=1))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["lint", "render"])
    parser.add_argument("chart")
    parser.add_argument("--values-json", help="a JSON file of values (lint: the whole values; render: overrides)")
    parser.add_argument("--release", default="secret-canary")
    parser.add_argument("--namespace", default="secret-canary")
    parser.add_argument("--drop-api", action="append", default=[], help="render: a group/version the cluster does not serve")
    parser.add_argument("--add-api", action="append", default=[], help="render: an optional group/version the cluster serves")
    args = parser.parse_args()
    values = load_values(args.values_json)
    if args.command == "lint":
        return lint(args.chart, values)
    return render(args.chart, values, args.release, args.namespace, args.drop_api, args.add_api)


if __name__ == "__main__":
    sys.exit(main())
