#!/usr/bin/env python3
"""PromQL of the Grafana dashboard and the alert rules: list, check, run live.

    dashboard_queries.py --list                  # panel title <TAB> refId <TAB> expr
    dashboard_queries.py --list --resolved       # ... with Grafana variables substituted
    dashboard_queries.py --check                 # structure of dashboard and alert rules
    dashboard_queries.py --prometheus http://127.0.0.1:9090
                                                 # run every panel and alert expression
    dashboard_queries.py --prometheus URL --parse-only
                                                 # only require that each one evaluates

--prometheus evaluates each expression through Prometheus's HTTP API
(GET /api/v1/query) after substituting Grafana's variables ($__rate_interval,
$__interval and $__range by --interval, default 1m; template variables by their
"All" value). It fails, naming the panel, when a query errors or returns no
series. Alert expressions must evaluate without error; for an alert of the form
`<signal> <comparison> <number>` the signal alone must return series (so a
misspelt metric is caught even though a quiet alert returns nothing), while an
alert without such a comparison (absent(...)) only has to evaluate.

Run it shortly after load reached the server (e.g. `glimpse bench`), within the
rate window: the panels are written to return data under normal load, and to
return 0 (`or vector(0)`) where a series legitimately does not exist yet
(errors, preemptions, eviction under the full policy).

Standard library only, except that the alert rules are read with PyYAML.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DASHBOARD = ROOT / "deploy" / "grafana" / "glimpse.json"
DEFAULT_ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DEFAULT_DOCS = ROOT / "docs" / "deploy.md"

# Metric names the server exports (docs/deploy.md lists them; the design's
# metrics section is the source). Histograms also expose _bucket, _sum, _count.
HISTOGRAMS = {
    "glimpse_time_to_first_token_seconds",
    "glimpse_inter_token_latency_seconds",
    "glimpse_e2e_request_latency_seconds",
    "glimpse_request_queue_time_seconds",
    "glimpse_request_prefill_time_seconds",
    "glimpse_kv_eviction_seconds",
    "glimpse_request_prompt_tokens",
    "glimpse_request_generation_tokens",
    "glimpse_iteration_tokens",
}
GAUGES = {
    "glimpse_num_requests_running",
    "glimpse_num_requests_waiting",
    "glimpse_kv_blocks_total",
    "glimpse_kv_blocks_used",
    "glimpse_kv_blocks_cached",
    "glimpse_kv_cache_usage_ratio",
    "glimpse_kv_cache_bytes",
    "glimpse_build_info",
}
COUNTERS = {
    "glimpse_prompt_tokens_total",
    "glimpse_generation_tokens_total",
    "glimpse_kv_evicted_tokens_total",
    "glimpse_kv_blocks_freed_by_eviction_total",
    "glimpse_num_preemptions_total",
    "glimpse_prefix_cache_queries_total",
    "glimpse_prefix_cache_hits_total",
    "glimpse_request_success_total",
    "glimpse_request_errors_total",
}
KNOWN_SERIES = GAUGES | COUNTERS | {h + s for h in HISTOGRAMS for s in ("_bucket", "_sum", "_count")}
METRIC_RE = re.compile(r"\bglimpse_[a-z0-9_]+\b")


def unknown_metrics(text: str) -> list[str]:
    """glimpse_* names in text that the server does not export."""
    return sorted({m for m in METRIC_RE.findall(text) if m not in KNOWN_SERIES})


# Grafana's built-in variables that can appear in a PromQL expression.
BUILTIN_INTERVALS = ("__rate_interval", "__interval", "__range")
VAR_RE = re.compile(r"\$\{(\w+)(?::[\w]+)?\}|\$(\w+)")


class Failure(Exception):
    pass


# --------------------------------------------------------------------------
# dashboard


def walk_panels(panels):
    """Yield every panel, including those nested in collapsed rows."""
    for panel in panels or []:
        yield panel
        yield from walk_panels(panel.get("panels"))


def load_dashboard(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            dash = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise Failure(f"{path}: cannot read dashboard JSON: {e}") from e
    if not isinstance(dash, dict) or not isinstance(dash.get("panels"), list):
        raise Failure(f"{path}: not a Grafana dashboard (no 'panels' list)")
    return dash


def query_panels(dash: dict):
    """(title, refId, expr) for each PromQL target of each non-row panel."""
    out = []
    for panel in walk_panels(dash["panels"]):
        if panel.get("type") == "row":
            continue
        for target in panel.get("targets") or []:
            expr = (target.get("expr") or "").strip()
            if expr:
                out.append((panel.get("title", ""), target.get("refId", ""), expr))
    return out


def template_values(dash: dict) -> dict:
    """Value each dashboard variable takes in a query when 'All' is selected."""
    values = {}
    for var in (dash.get("templating") or {}).get("list") or []:
        name = var.get("name")
        if not name:
            continue
        if var.get("type") == "datasource":
            continue
        if var.get("includeAll"):
            values[name] = var.get("allValue") or ".*"
        else:
            current = (var.get("current") or {}).get("value")
            if isinstance(current, list):
                current = current[0] if current else ""
            values[name] = current if current not in (None, "$__all") else ".*"
    return values


def resolve(expr: str, variables: dict, interval: str) -> str:
    def sub(m):
        name = m.group(1) or m.group(2)
        if name in BUILTIN_INTERVALS:
            return interval
        if name == "__interval_ms":
            return str(duration_ms(interval))
        if name in variables:
            return variables[name]
        raise Failure(f"unknown Grafana variable ${name} in: {expr}")

    return VAR_RE.sub(sub, expr)


def duration_ms(d: str) -> int:
    m = re.fullmatch(r"(\d+)(ms|s|m|h|d)", d)
    if not m:
        raise Failure(f"bad --interval {d!r}: use e.g. 30s, 1m, 5m")
    n, unit = int(m.group(1)), m.group(2)
    return n * {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}[unit]


def check_dashboard(dash: dict, path: Path) -> list[str]:
    problems = []
    variables = {v.get("name"): v for v in (dash.get("templating") or {}).get("list") or []}
    ds_var = [n for n, v in variables.items() if v.get("type") == "datasource"]
    if not ds_var:
        problems.append("no datasource template variable (type 'datasource')")
    elif variables[ds_var[0]].get("query") != "prometheus":
        problems.append(f"datasource variable ${ds_var[0]} is not of plugin type 'prometheus'")
    ds_refs = {f"${n}" for n in ds_var} | {f"${{{n}}}" for n in ds_var}

    def uses_var(ds):
        return isinstance(ds, dict) and ds.get("uid") in ds_refs

    ids = set()
    n_panels = 0
    for panel in walk_panels(dash["panels"]):
        title = (panel.get("title") or "").strip()
        where = f"panel id {panel.get('id')} {title!r}"
        if panel.get("id") in ids:
            problems.append(f"{where}: duplicate panel id")
        ids.add(panel.get("id"))
        if panel.get("type") == "row":
            if not title:
                problems.append(f"{where}: row without a title")
            continue
        n_panels += 1
        if not title:
            problems.append(f"{where}: panel without a title")
        if not uses_var(panel.get("datasource")):
            problems.append(f"{where}: panel datasource is not the datasource variable")
        targets = panel.get("targets") or []
        exprs = [t for t in targets if (t.get("expr") or "").strip()]
        if not exprs:
            problems.append(f"{where}: no PromQL target")
        refids = [t.get("refId") for t in targets]
        if len(set(refids)) != len(refids) or not all(refids):
            problems.append(f"{where}: missing or duplicate refId")
        for t in targets:
            if not uses_var(t.get("datasource")):
                problems.append(f"{where} {t.get('refId')}: target datasource is not the datasource variable")
            for m in VAR_RE.finditer(t.get("expr") or ""):
                name = m.group(1) or m.group(2)
                if name not in BUILTIN_INTERVALS and name != "__interval_ms" and name not in variables:
                    problems.append(f"{where} {t.get('refId')}: unknown variable ${name}")
            for name in unknown_metrics(t.get("expr") or ""):
                problems.append(f"{where} {t.get('refId')}: unknown metric {name}")
            for m in re.finditer(r"histogram_quantile\([^,]*,(.*)", t.get("expr") or ""):
                if "_bucket" not in m.group(1):
                    problems.append(f"{where} {t.get('refId')}: histogram_quantile over a non-_bucket series")
            if re.search(r"\[\s*\d+[smhd]\s*\]", t.get("expr") or "") and "rate(" in (t.get("expr") or ""):
                problems.append(f"{where} {t.get('refId')}: fixed rate window; use $__rate_interval")
    if n_panels == 0:
        problems.append("dashboard has no panels")
    return [f"{path.name}: {p}" for p in problems]


# --------------------------------------------------------------------------
# alert rules


def load_alerts(path: Path):
    try:
        import yaml  # PyYAML
    except ImportError as e:
        raise Failure("PyYAML is needed to read the alert rules (pip install pyyaml)") from e
    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        raise Failure(f"{path}: cannot read alert rules: {e}") from e
    rules = []
    for group in (doc or {}).get("groups") or []:
        for rule in group.get("rules") or []:
            if "alert" in rule:
                rules.append(rule)
    return rules


def github_anchor(heading: str) -> str:
    a = heading.strip().lower()
    a = re.sub(r"[^\w\- ]", "", a)
    return a.replace(" ", "-")


def check_alerts(rules, path: Path, docs: Path | None) -> list[str]:
    problems = []
    if not rules:
        problems.append("no alert rules")
    anchors = set()
    if docs is not None:
        try:
            text = docs.read_text(encoding="utf-8")
        except OSError as e:
            problems.append(f"cannot read {docs}: {e}")
            text = ""
        for line in text.splitlines():
            m = re.match(r"#{1,6}\s+(.*)", line)
            if m:
                anchors.add(github_anchor(m.group(1)))
    names = set()
    for rule in rules:
        name = rule.get("alert")
        if name in names:
            problems.append(f"alert {name}: defined twice")
        names.add(name)
        ann = rule.get("annotations") or {}
        for key in ("summary", "description", "runbook"):
            if not ann.get(key):
                problems.append(f"alert {name}: no '{key}' annotation")
        if not (rule.get("labels") or {}).get("severity"):
            problems.append(f"alert {name}: no severity label")
        for metric in unknown_metrics(str(rule.get("expr", ""))):
            problems.append(f"alert {name}: unknown metric {metric}")
        runbook = ann.get("runbook", "")
        if docs is not None and runbook:
            doc_path, _, anchor = runbook.partition("#")
            if doc_path != "docs/deploy.md" or anchor not in anchors:
                problems.append(f"alert {name}: runbook {runbook!r} does not name a heading of docs/deploy.md")
    return [f"{path.name}: {p}" for p in problems]


def split_comparison(expr: str):
    """For `<lhs> <cmp> [bool] <number>` at the top level, return lhs; else None."""
    depth = 0
    quote = None
    last = None
    i = 0
    while i < len(expr):
        c = expr[i]
        if quote:
            if c == "\\":
                i += 2
                continue
            if c == quote:
                quote = None
        elif c in "\"'`":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0 and c in "<>=!":
            op = expr[i : i + 2] if expr[i : i + 2] in ("==", "!=", ">=", "<=") else c
            if op in ("==", "!=", ">=", "<=", ">", "<"):
                last = (i, op)
                i += len(op)
                continue
        i += 1
    if last is None:
        return None
    pos, op = last
    rhs = expr[pos + len(op) :]
    if not re.fullmatch(r"\s*(bool\s+)?[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?\s*", rhs):
        return None
    return expr[:pos].strip()


# --------------------------------------------------------------------------
# live


def prom_query(base_url: str, expr: str, timeout: float):
    url = base_url.rstrip("/") + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body = json.load(resp)
    except urllib.error.HTTPError as e:
        try:
            body = json.load(e)
        except Exception:
            return None, f"HTTP {e.code}"
    except (urllib.error.URLError, OSError, json.JSONDecodeError) as e:
        return None, f"request failed: {e}"
    if body.get("status") != "success":
        return None, f"{body.get('errorType', 'error')}: {body.get('error', body)}"
    data = body.get("data") or {}
    if data.get("resultType") in ("vector", "matrix"):
        return data.get("result") or [], None
    return [data.get("result")], None  # scalar / string


def run_live(base_url, dash, rules, interval, timeout, parse_only=False) -> int:
    variables = template_values(dash)
    probe, err = prom_query(base_url, "vector(1)", timeout)
    if err:
        raise Failure(f"cannot query Prometheus at {base_url}: {err}")
    failures = []
    n = 0
    for title, ref, expr in query_panels(dash):
        n += 1
        q = resolve(expr, variables, interval)
        result, err = prom_query(base_url, q, timeout)
        if err:
            failures.append(f"panel {title!r} ({ref}): query failed: {err}\n    {q}")
        elif not result and not parse_only:
            failures.append(f"panel {title!r} ({ref}): empty result\n    {q}")
        else:
            print(f"ok     panel {title!r} ({ref}): {len(result)} series")
    for rule in rules:
        n += 1
        name, expr = rule["alert"], str(rule["expr"]).strip()
        result, err = prom_query(base_url, expr, timeout)
        if err:
            failures.append(f"alert {name}: query failed: {err}\n    {expr}")
            continue
        signal = split_comparison(expr)
        if signal is None or parse_only:
            print(f"ok     alert {name}: evaluates ({len(result)} series firing-candidate)")
            continue
        sresult, serr = prom_query(base_url, signal, timeout)
        if serr:
            failures.append(f"alert {name}: signal query failed: {serr}\n    {signal}")
        elif not sresult:
            failures.append(f"alert {name}: signal (left of the comparison) is empty\n    {signal}")
        else:
            print(f"ok     alert {name}: signal has {len(sresult)} series, {len(result)} above threshold")
    for f in failures:
        print(f"FAIL   {f}", file=sys.stderr)
    print(f"{n - len(failures)} passed, {len(failures)} failed")
    return 1 if failures else 0


# --------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--list", action="store_true", help="print panel title, refId and expr, tab-separated")
    mode.add_argument("--check", action="store_true", help="check dashboard and alert rule structure (offline)")
    mode.add_argument("--prometheus", metavar="URL", help="run every expression against this Prometheus")
    ap.add_argument(
        "--parse-only",
        action="store_true",
        help="with --prometheus: only require every query to evaluate (empty results allowed)",
    )
    ap.add_argument("--resolved", action="store_true", help="with --list: substitute Grafana variables")
    ap.add_argument("--dashboard", type=Path, default=DEFAULT_DASHBOARD)
    ap.add_argument("--alerts", type=Path, default=DEFAULT_ALERTS)
    ap.add_argument("--docs", type=Path, default=DEFAULT_DOCS, help="runbook document checked by --check")
    ap.add_argument("--interval", default="1m", help="value for $__rate_interval, $__interval, $__range")
    ap.add_argument("--timeout", type=float, default=15.0, help="seconds per query")
    args = ap.parse_args(argv)

    try:
        duration_ms(args.interval)
        dash = load_dashboard(args.dashboard)
        if args.list:
            variables = template_values(dash)
            for title, ref, expr in query_panels(dash):
                if args.resolved:
                    expr = resolve(expr, variables, args.interval)
                print(f"{title}\t{ref}\t{' '.join(expr.split())}")
            return 0
        rules = load_alerts(args.alerts)
        if args.check:
            problems = check_dashboard(dash, args.dashboard) + check_alerts(rules, args.alerts, args.docs)
            variables = template_values(dash)
            for _, _, expr in query_panels(dash):
                try:
                    resolve(expr, variables, args.interval)
                except Failure as e:
                    problems.append(str(e))
            for rule in rules:
                if split_comparison(str(rule.get("expr", ""))) is None and "absent" not in str(rule.get("expr")):
                    problems.append(f"alert {rule.get('alert')}: expr is neither '<signal> <cmp> <number>' nor absent()")
            for p in problems:
                print(f"FAIL {p}", file=sys.stderr)
            panels = [p for p in walk_panels(dash["panels"]) if p.get("type") != "row"]
            print(
                f"dashboard: {len(panels)} panels, {len(query_panels(dash))} queries; "
                f"alerts: {len(rules)} rules; {len(problems)} problem(s)"
            )
            return 1 if problems else 0
        return run_live(args.prometheus, dash, rules, args.interval, args.timeout, args.parse_only)
    except Failure as e:
        print(f"FAIL {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
