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
  - with --gateway (overlays/inference-gateway): the application objects pass
    the checks above, and the InferencePool selects the server's pods on its
    http port, its endpointPickerRef is the endpoint picker's Service, the
    picker watches that pool, reads the protocol's metrics under the names the
    server exports from its metrics port, has its plugin config and RBAC, runs
    a pinned image, and the HTTPRoute sends /v1 from a Gateway to the pool

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


EPP_COMPONENT = "endpoint-picker"
GATEWAY_KINDS = {"InferencePool", "Gateway", "HTTPRoute"}
# The model-server protocol's metrics (Inference Extension v1.0.2 flags) and
# the server's series that answer them.
EPP_METRIC_FLAGS = {
    "--total-queued-requests-metric": "glimpse_num_requests_waiting",
    "--kv-cache-usage-percentage-metric": "glimpse_kv_cache_usage_ratio",
}


def component(doc) -> str | None:
    return doc.get("metadata", {}).get("labels", {}).get("app.kubernetes.io/component")


def flags(args: list[str]) -> dict[str, str]:
    """`--flag value` pairs of a container's args."""
    return {a: b for a, b in zip(args, args[1:]) if a.startswith("--")}


def check_gateway(docs, device: str) -> list[str]:
    app = [d for d in docs if d.get("kind") not in GATEWAY_KINDS and component(d) != EPP_COMPONENT]
    p = check_app(app, device)
    by_kind: dict[str, list] = {}
    for d in docs:
        by_kind.setdefault(d.get("kind"), []).append(d)
    server_dep = next(d for d in app if d.get("kind") == "Deployment")
    server_pod = server_dep["spec"]["template"]
    server = next(c for c in server_pod["spec"]["containers"] if c["name"] == "glimpse")
    server_ports = {pt.get("name"): pt["containerPort"] for pt in server.get("ports", [])}

    pools = by_kind.get("InferencePool", [])
    if len(pools) != 1:
        return p + [f"expected one InferencePool, found {len(pools)}"]
    pool = pools[0]
    pname = pool["metadata"]["name"]
    if not selects(pool["spec"]["selector"].get("matchLabels", {}), server_pod["metadata"].get("labels", {})):
        p.append(f"InferencePool/{pname}: selector does not select the server's pods")
    targets = [t.get("number") for t in pool["spec"].get("targetPorts", [])]
    if targets != [server_ports.get("http")]:
        p.append(f"InferencePool/{pname}: targetPorts {targets} are not the server's http port {server_ports.get('http')}")

    epps = [d for d in by_kind.get("Deployment", []) if component(d) == EPP_COMPONENT]
    if len(epps) != 1:
        return p + [f"expected one endpoint-picker Deployment, found {len(epps)}"]
    epp_pod = epps[0]["spec"]["template"]
    epp = epp_pod["spec"]["containers"][0]
    epp_ports = {pt.get("name"): pt["containerPort"] for pt in epp.get("ports", [])}
    f = flags(epp.get("args", []))
    if f.get("--pool-name") != pname:
        p.append(f"endpoint picker: --pool-name {f.get('--pool-name')} is not InferencePool/{pname}")
    for flag, series in EPP_METRIC_FLAGS.items():
        if f.get(flag) != series or series not in KNOWN_SERIES:
            p.append(f"endpoint picker: {flag} {f.get(flag)!r} is not the server's {series}")
    if f.get("--model-server-metrics-port") != str(server_ports.get("metrics")):
        p.append(f"endpoint picker: --model-server-metrics-port {f.get('--model-server-metrics-port')} is not the server's metrics port {server_ports.get('metrics')}")
    image = epp.get("image", "")
    if not re.search(r":v\d+\.\d+\.\d+$", image):
        p.append(f"endpoint picker: image {image} is not pinned to a release tag")
    config = f.get("--config-file", "")
    maps = {v["name"]: v["configMap"]["name"] for v in epp_pod["spec"].get("volumes", []) if "configMap" in v}
    cms = {c["metadata"]["name"]: c for c in by_kind.get("ConfigMap", [])}
    if not any(cms.get(m, {}).get("data", {}).get(Path(config).name) for m in maps.values()):
        p.append(f"endpoint picker: no mounted ConfigMap holds its --config-file {config}")

    ref = pool["spec"].get("endpointPickerRef", {})
    epp_labels = epp_pod["metadata"].get("labels", {})
    svcs = [s for s in by_kind.get("Service", []) if s["metadata"]["name"] == ref.get("name")]
    if not svcs or not selects(svcs[0]["spec"].get("selector", {}), epp_labels):
        p.append(f"InferencePool/{pname}: endpointPickerRef {ref.get('name')} is not a Service of the endpoint picker")
    else:
        port = next((pt for pt in svcs[0]["spec"]["ports"] if pt["port"] == ref.get("port", {}).get("number")), None)
        if port is None or epp_ports.get(port.get("targetPort")) != 9002:
            p.append(f"InferencePool/{pname}: endpointPickerRef port does not reach the picker's ext-proc port 9002")

    sa = epp_pod["spec"].get("serviceAccountName")
    if sa not in {s["metadata"]["name"] for s in by_kind.get("ServiceAccount", [])}:
        p.append(f"endpoint picker: ServiceAccount {sa} is missing")
    roles = {r["metadata"]["name"]: r for r in by_kind.get("Role", [])}
    granted = set()
    for rb in by_kind.get("RoleBinding", []):
        if any(s.get("name") == sa for s in rb.get("subjects", [])):
            for rule in roles.get(rb["roleRef"]["name"], {}).get("rules", []):
                granted |= set(rule.get("resources", []))
    for need in ("inferencepools", "pods"):
        if need not in granted:
            p.append(f"endpoint picker: its RBAC does not grant {need}")

    gateways = {g["metadata"]["name"] for g in by_kind.get("Gateway", [])}
    routes = by_kind.get("HTTPRoute", [])
    routed = False
    for route in routes:
        rname = route["metadata"]["name"]
        for parent in route["spec"].get("parentRefs", []):
            if parent.get("name") not in gateways:
                p.append(f"HTTPRoute/{rname}: parent {parent.get('name')} is not a Gateway here")
        for rule in route["spec"].get("rules", []):
            to_pool = any(b.get("kind") == "InferencePool" and b.get("name") == pname for b in rule.get("backendRefs", []))
            paths = {m.get("path", {}).get("value") for m in rule.get("matches", [])}
            routed |= to_pool and "/v1" in paths
    if not routed:
        p.append(f"no HTTPRoute sends /v1 to InferencePool/{pname}")
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
    ap.add_argument("--gateway", action="store_true", help="the file is the inference-gateway overlay's rendering")
    args = ap.parse_args(argv)
    docs = load(args.file)
    if args.adapter:
        problems = check_adapter(docs)
    else:
        if not args.device:
            ap.error("--device is required for application manifests")
        check = check_gateway if args.gateway else check_app
        problems = check(docs, args.device)
    for pr in problems:
        print(f"FAIL {args.file}: {pr}", file=sys.stderr)
    print(f"{args.file}: {len(docs)} objects, {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
