#!/usr/bin/env python3
"""Offline validation of custom objects against their CustomResourceDefinitions.

    check_crds.py --crds deploy/k8s/crds [--ignore-kind ServiceMonitor] rendered.yaml...

kubernetes-validate knows only the built-in kinds. This takes the CRDs vendored
in deploy/k8s/crds/ (see its README for sources and versions) and validates
every object of a kind they define against the openAPIV3Schema of its version,
strictly: a field the schema does not name is an error, as with
`kubectl apply --validate=strict`. An object of any other non-built-in kind is
an error unless --ignore-kind names it (checked elsewhere). Not checked: the
CEL rules (x-kubernetes-validations) the API server would also run.

Needs PyYAML and jsonschema.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import jsonschema
import yaml

# API groups of built-in kinds (validated by kubernetes-validate instead).
BUILT_IN_GROUPS = {
    "", "apps", "batch", "autoscaling", "policy", "networking.k8s.io",
    "rbac.authorization.k8s.io", "apiextensions.k8s.io", "storage.k8s.io",
    "scheduling.k8s.io", "coordination.k8s.io", "admissionregistration.k8s.io",
}


def load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def strict(schema: dict) -> dict:
    """The schema with unknown fields forbidden wherever Kubernetes would prune them."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


def load_schemas(crd_dir: Path) -> dict[tuple[str, str, str], dict]:
    """(group, version, kind) -> strict openAPIV3Schema, for every served version."""
    schemas = {}
    for path in sorted(crd_dir.glob("*.yaml")):
        for crd in load_docs(path):
            if crd.get("kind") != "CustomResourceDefinition":
                continue
            spec = crd["spec"]
            for version in spec["versions"]:
                if version.get("served"):
                    key = (spec["group"], version["name"], spec["names"]["kind"])
                    schemas[key] = strict(version["schema"]["openAPIV3Schema"])
    return schemas


def check(docs: list[dict], schemas: dict, ignore: set[str]) -> tuple[int, list[str]]:
    checked, problems = 0, []
    for doc in docs:
        group, _, version = doc.get("apiVersion", "").rpartition("/")
        kind = doc.get("kind", "")
        where = f"{kind}/{doc.get('metadata', {}).get('name')} ({doc.get('apiVersion')})"
        if group in BUILT_IN_GROUPS or kind in ignore:
            continue
        schema = schemas.get((group, version, kind))
        if schema is None:
            problems.append(f"{where}: no vendored CRD serves this group, version and kind")
            continue
        validator = jsonschema.Draft7Validator(schema)
        for error in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
            path = ".".join(str(p) for p in error.absolute_path) or "(root)"
            problems.append(f"{where}: {path}: {error.message}")
        checked += 1
    return checked, problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", type=Path, help="rendered manifests (multi-document YAML)")
    ap.add_argument("--crds", type=Path, required=True, help="folder of CustomResourceDefinition YAMLs")
    ap.add_argument("--ignore-kind", action="append", default=[], help="a custom kind checked elsewhere")
    args = ap.parse_args(argv)
    schemas = load_schemas(args.crds)
    if not schemas:
        ap.error(f"no CustomResourceDefinitions in {args.crds}")
    failed = False
    for path in args.files:
        checked, problems = check(load_docs(path), schemas, set(args.ignore_kind))
        for problem in problems:
            print(f"FAIL {path}: {problem}", file=sys.stderr)
        print(f"{path}: {checked} custom object(s) checked against their CRDs, {len(problems)} problem(s)")
        failed |= bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
