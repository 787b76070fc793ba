#!/usr/bin/env python3
"""Cross-object checks of rendered Kubernetes manifests.

    kubectl kustomize deploy/k8s/overlays/cpu | check_manifests.py --device cpu -
    check_manifests.py --adapter rendered-adapter.yaml

Schema validation (kubernetes-validate) looks at one object at a time and knows
no CRDs. This checks what it cannot: that the objects fit together and keep the
deployment rules.

  - Services, the PodDisruptionBudget and the HPA point at the Deployment's pods
  - Service target ports are named container ports; the headless Service is
    headless; exactly one Service is selected by the ServiceMonitor
  - ServiceMonitor (CRD monitoring.coreos.com/v1): required fields, and its
    endpoint port is a port of the selected Service
  - the server container: native gRPC startup/readiness/liveness probes on the
    gRPC port, non-root, read-only root filesystem, no privilege escalation,
    all capabilities dropped, memory requests and limits, `--device <X>`
  - with --device cuda:*: an nvidia.com/gpu limit and a GPU toleration
  - HPA custom metrics and prometheus-adapter rules name metrics the server
    exports

Needs PyYAML.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dashboard_queries import KNOWN_SERIES, unknown_metrics  # noqa: E402


def load(path: str):
    text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    return [d for d in yaml.safe_load_all(text) if d]


def selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_app(docs, device: str) -> list[str]:
    p = []
    by_kind: dict[str, list] = {}
    for d in docs:
        by_kind.setdefault(d.get("kind"), []).append(d)
        if d.get("kind") != "Namespace" and not d.get("metadata", {}).get("namespace"):
            p.append(f"{d.get('kind')}/{d['metadata'].get('name')}: no namespace")

    deps = by_kind.get("Deployment", [])
    if len(deps) != 1:
        return p + [f"expected one Deployment, found {len(deps)}"]
    dep = deps[0]
    dname = dep["metadata"]["name"]
    pod = dep["spec"]["template"]
    pod_labels = pod["metadata"].get("labels", {})
    if not selects(dep["spec"]["selector"].get("matchLabels", {}), pod_labels):
        p.append(f"Deployment/{dname}: selector does not match its pod template labels")
    spec = pod["spec"]
    if spec.get("enableServiceLinks") is not False:
        p.append(f"Deployment/{dname}: enableServiceLinks must be false (service env vars collide with GLIMPSE_*)")
    psc = spec.get("securityContext", {})
    if not psc.get("runAsNonRoot"):
        p.append(f"Deployment/{dname}: pod securityContext.runAsNonRoot is not true")

    containers = {c["name"]: c for c in spec.get("containers", [])}
    server = containers.get("glimpse")
    if server is None:
        return p + [f"Deployment/{dname}: no container named glimpse"]
    ports = {pt.get("name"): pt["containerPort"] for pt in server.get("ports", [])}
    if "grpc" not in ports or "metrics" not in ports:
        p.append("container glimpse: needs ports named grpc and metrics")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        pr = server.get(probe)
        if not pr or "grpc" not in pr:
            p.append(f"container glimpse: {probe} is not a native grpc probe")
        elif pr["grpc"].get("port") != ports.get("grpc"):
            p.append(f"container glimpse: {probe} port {pr['grpc'].get('port')} is not the grpc port")
    for c in list(spec.get("containers", [])) + list(spec.get("initContainers", [])):
        sc = c.get("securityContext", {})
        where = f"container {c['name']}"
        if sc.get("allowPrivilegeEscalation") is not False:
            p.append(f"{where}: allowPrivilegeEscalation is not false")
        if sc.get("readOnlyRootFilesystem") is not True:
            p.append(f"{where}: readOnlyRootFilesystem is not true")
        if "ALL" not in (sc.get("capabilities", {}).get("drop") or []):
            p.append(f"{where}: capabilities do not drop ALL")
        res = c.get("resources", {})
        if not res.get("requests", {}).get("memory") or not res.get("limits", {}).get("memory"):
            p.append(f"{where}: memory request and limit required")
    args = server.get("args", [])
    if "--device" not in args or args[args.index("--device") + 1 :][:1] != [device]:
        p.append(f"container glimpse: args {args} do not set --device {device}")
    if device.startswith("cuda"):
        if not server.get("resources", {}).get("limits", {}).get("nvidia.com/gpu"):
            p.append("container glimpse: no nvidia.com/gpu limit on a CUDA replica")
        if not any(t.get("key") == "nvidia.com/gpu" for t in spec.get("tolerations", [])):
            p.append(f"Deployment/{dname}: no nvidia.com/gpu toleration")
    elif "nvidia.com/gpu" in str(server.get("resources", {})):
        p.append("container glimpse: GPU requested by a CPU replica")

    services = by_kind.get("Service", [])
    for s in services:
        sname = s["metadata"]["name"]
        if not selects(s["spec"].get("selector", {}), pod_labels):
            p.append(f"Service/{sname}: selector does not select the Deployment's pods")
        for pt in s["spec"].get("ports", []):
            tp = pt.get("targetPort")
            if isinstance(tp, str) and tp not in ports:
                p.append(f"Service/{sname}: targetPort {tp} is not a container port name")
    headless = [s for s in services if s["spec"].get("clusterIP") == "None"]
    if len(headless) != 1:
        p.append(f"expected one headless Service, found {len(headless)}")

    for pdb in by_kind.get("PodDisruptionBudget", []):
        if not selects(pdb["spec"].get("selector", {}).get("matchLabels", {}), pod_labels):
            p.append(f"PodDisruptionBudget/{pdb['metadata']['name']}: does not select the Deployment's pods")
    if not by_kind.get("PodDisruptionBudget"):
        p.append("no PodDisruptionBudget")

    hpas = by_kind.get("HorizontalPodAutoscaler", [])
    if not hpas:
        p.append("no HorizontalPodAutoscaler")
    for h in hpas:
        ref = h["spec"]["scaleTargetRef"]
        if ref.get("kind") != "Deployment" or ref.get("name") != dname:
            p.append(f"HorizontalPodAutoscaler/{h['metadata']['name']}: scaleTargetRef is not Deployment/{dname}")
        for m in h["spec"].get("metrics", []):
            if m.get("type") in ("Pods", "Object", "External"):
                name = m[m["type"].lower()]["metric"]["name"]
                if name not in KNOWN_SERIES:
                    p.append(f"HorizontalPodAutoscaler: metric {name} is not exported by the server")

    sms = by_kind.get("ServiceMonitor", [])
    if len(sms) != 1:
        p.append(f"expected one ServiceMonitor, found {len(sms)}")
    for sm in sms:
        where = f"ServiceMonitor/{sm.get('metadata', {}).get('name')}"
        if sm.get("apiVersion") != "monitoring.coreos.com/v1":
            p.append(f"{where}: apiVersion {sm.get('apiVersion')}")
        sel = sm.get("spec", {}).get("selector", {}).get("matchLabels", {})
        chosen = [s for s in services if selects(sel, s["metadata"].get("labels", {}))]
        if len(chosen) != 1:
            p.append(f"{where}: selects {len(chosen)} Services (want exactly 1, else pods are scraped twice)")
            continue
        sports = {pt.get("name") for pt in chosen[0]["spec"].get("ports", [])}
        eps = sm.get("spec", {}).get("endpoints") or []
        if not eps:
            p.append(f"{where}: no endpoints")
        for ep in eps:
            if ep.get("port") not in sports:
                p.append(f"{where}: endpoint port {ep.get('port')} is not a port of Service/{chosen[0]['metadata']['name']}")
            if ep.get("path", "/metrics") != "/metrics":
                p.append(f"{where}: path {ep.get('path')} is not /metrics")
        allowed = {"selector", "endpoints", "namespaceSelector", "jobLabel", "targetLabels", "podTargetLabels", "sampleLimit"}
        extra = set(sm.get("spec", {})) - allowed
        if extra:
            p.append(f"{where}: unexpected spec fields {sorted(extra)}")
    return p


def check_adapter(docs) -> list[str]:
    p = []
    cms = [d for d in docs if d.get("kind") == "ConfigMap"]
    if len(cms) != 1 or "config.yaml" not in cms[0].get("data", {}):
        return ["prometheus-adapter: expected one ConfigMap with data.config.yaml"]
    cfg = yaml.safe_load(cms[0]["data"]["config.yaml"])
    rules = cfg.get("rules") or []
    if not rules:
        p.append("prometheus-adapter: no rules")
    exposed = set()
    for r in rules:
        for key in ("seriesQuery", "resources", "metricsQuery"):
            if key not in r:
                p.append(f"prometheus-adapter rule: no {key}")
        p += [f"prometheus-adapter: unknown metric {m}" for m in unknown_metrics(r.get("seriesQuery", ""))]
        exposed |= set(re.findall(r"glimpse_[a-z0-9_]+", r.get("seriesQuery", "")))
        over = (r.get("resources") or {}).get("overrides") or {}
        if {v.get("resource") for v in over.values()} < {"namespace", "pod"}:
            p.append("prometheus-adapter rule: must map namespace and pod labels")
    for need in ("glimpse_num_requests_waiting", "glimpse_kv_cache_usage_ratio"):
        if need not in exposed:
            p.append(f"prometheus-adapter: the HPA's metric {need} is not exposed")
    return p


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file", help="rendered manifests (multi-document YAML), - for stdin")
    ap.add_argument("--device", help="expected --device of the server (cpu, cuda:0)")
    ap.add_argument("--adapter", action="store_true", help="the file is the prometheus-adapter rendering")
    args = ap.parse_args(argv)
    docs = load(args.file)
    if args.adapter:
        problems = check_adapter(docs)
    else:
        if not args.device:
            ap.error("--device is required for application manifests")
        problems = check_app(docs, args.device)
    for pr in problems:
        print(f"FAIL {args.file}: {pr}", file=sys.stderr)
    print(f"{args.file}: {len(docs)} objects, {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
