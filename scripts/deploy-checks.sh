#!/usr/bin/env bash
# Offline checks of everything under deploy/ (see docs/deploy.md, "Checks").
#
#   scripts/deploy-checks.sh
#
# Runs as root on a fresh Debian 12 machine: installs what it needs (Debian
# packages through apt, Python tools pinned in scripts/deploy/requirements.txt
# into a venv under target/deploy-checks/), and is safe to run again. Any
# failing check stops the script with a non-zero status and says which.
#
# What it checks:
#   0. this script (shellcheck) and scripts/deploy/*.py (Python syntax)
#   1. Prometheus: promtool check config / check rules / test rules
#   2. Compose file: docker-compose config (schema and interpolation)
#   3. Dockerfiles: hadolint, then the project's own rules
#   4. Kubernetes: kustomize renders the cpu, cuda and inference-gateway
#      overlays and the prometheus-adapter rules; kubernetes-validate (strict,
#      offline schemas of Kubernetes $K8S_VERSION) validates every built-in
#      object, check_crds.py every custom one against the CRDs vendored in
#      deploy/k8s/crds/ (and must reject a broken InferencePool); cross-object
#      checks
#   5. Grafana: the dashboard parses, every panel has a title and PromQL, every
#      metric name is one the server exports, every alert has a runbook section
#   6. PromQL: every dashboard and alert expression is evaluated by a real
#      Prometheus started on loopback (no data, so only parsing and evaluation
#      are checked; the live check needs a running server, see docs)
#
# Environment: DEPLOY_CHECKS_K8S_VERSION (default 1.31.0).

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

K8S_VERSION="${DEPLOY_CHECKS_K8S_VERSION:-1.31.0}"
WORK="target/deploy-checks"
VENV="$WORK/venv"
REQS="scripts/deploy/requirements.txt"
export DEBIAN_FRONTEND=noninteractive

step() { printf '\n==> %s\n' "$*"; }
die() {
	printf '\ndeploy-checks: FAIL: %s\n' "$*" >&2
	exit 1
}
PROM_PID=""
on_exit() {
	local rc=$?
	if [ -n "$PROM_PID" ]; then
		kill "$PROM_PID" 2>/dev/null || true
	fi
	if [ "$rc" -ne 0 ]; then
		printf '\ndeploy-checks: FAILED (exit %s)\n' "$rc" >&2
	fi
}
trap on_exit EXIT

APT_UPDATED=0
apt_install() {
	# apt_install PACKAGE... : install the Debian packages that are missing.
	local missing=() p
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
	done
	[ "${#missing[@]}" -eq 0 ] && return 0
	[ "$(id -u)" -eq 0 ] || die "need root to install ${missing[*]} with apt-get"
	if [ "$APT_UPDATED" -eq 0 ]; then
		apt-get update -qq || die "apt-get update failed"
		APT_UPDATED=1
	fi
	echo "installing with apt-get: ${missing[*]}"
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
		die "apt-get install ${missing[*]} failed"
}

# ---------------------------------------------------------------- tools
step "tools"
# prometheus: promtool and a server for the PromQL check; docker-compose: the
# Compose file check (no container engine is needed for `config`); shellcheck:
# this script.
apt_install prometheus docker-compose shellcheck ca-certificates curl
command -v python3 >/dev/null || apt_install python3 python3-venv
command -v promtool >/dev/null || die "promtool not found after installing the prometheus package"
command -v docker-compose >/dev/null || die "docker-compose not found after installing it"

mkdir -p "$WORK"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
	rm -rf "$VENV"
	if ! python3 -m venv "$VENV" 2>/dev/null; then
		apt_install python3-venv
		rm -rf "$VENV"
		python3 -m venv "$VENV" || die "cannot create a Python venv"
	fi
fi
# Reinstall only when the pins changed.
if ! cmp -s "$REQS" "$VENV/.requirements"; then
	"$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQS" ||
		die "pip install -r $REQS failed"
	cp "$REQS" "$VENV/.requirements"
fi
PY="$VENV/bin/python"
KUBECTL="$VENV/bin/kubectl"
HADOLINT="$VENV/bin/hadolint"
KVALIDATE="$VENV/bin/kubernetes-validate"
for t in "$KUBECTL" "$HADOLINT" "$KVALIDATE"; do
	[ -x "$t" ] || die "$t missing from the venv"
done
promtool --version 2>&1 | head -n1
docker-compose version --short
"$KUBECTL" version --client 2>&1 | tr '\n' ' '
echo
"$HADOLINT" --version
echo "kubernetes-validate $("$KVALIDATE" --version 2>&1), schemas of Kubernetes $K8S_VERSION"

# ---------------------------------------------------------------- scripts
step "scripts: shellcheck, Python syntax"
shellcheck scripts/deploy-checks.sh || die "shellcheck scripts/deploy-checks.sh"
"$PY" -m py_compile scripts/deploy/*.py || die "Python syntax"
echo "ok"

# ---------------------------------------------------------------- prometheus
step "prometheus: config, rules, rule unit tests"
promtool check config deploy/prometheus/prometheus.yml || die "promtool check config"
promtool check rules deploy/prometheus/alerts.yml || die "promtool check rules"
shopt -s nullglob
rule_tests=(deploy/prometheus/tests/*.yml)
shopt -u nullglob
[ "${#rule_tests[@]}" -gt 0 ] || die "no rule tests in deploy/prometheus/tests/"
promtool test rules "${rule_tests[@]}" || die "promtool test rules"

# ---------------------------------------------------------------- compose
step "compose: docker-compose config"
docker-compose -f deploy/compose.yaml config -q || die "deploy/compose.yaml does not validate"
for f in deploy/prometheus/prometheus.yml deploy/prometheus/alerts.yml deploy/grafana/glimpse.json \
	deploy/grafana/provisioning/datasources deploy/grafana/provisioning/dashboards deploy/docker/Dockerfile; do
	[ -e "$f" ] || die "compose refers to $f, which is missing"
done

# ---------------------------------------------------------------- dockerfiles
step "dockerfiles: hadolint and project rules"
dockerfiles=(deploy/docker/Dockerfile deploy/docker/Dockerfile.cuda)
"$HADOLINT" --failure-threshold info "${dockerfiles[@]}" || die "hadolint"
echo "hadolint: ${#dockerfiles[@]} file(s), no findings"
"$PY" scripts/deploy/dockerfile_rules.py "${dockerfiles[@]}" || die "Dockerfile rules"
[ -d models/stories260K ] || die "models/stories260K (copied into the image) is missing"

# ---------------------------------------------------------------- kubernetes
step "kubernetes: render with kustomize, validate (Kubernetes $K8S_VERSION, strict), cross-check"
RENDER="$WORK/rendered"
rm -rf "$RENDER"
mkdir -p "$RENDER"
# Kinds defined by CRDs, which kubernetes-validate has no schema for: the
# ServiceMonitor (prometheus-operator) is checked by check_manifests.py, the
# others by check_crds.py against deploy/k8s/crds/.
CRD_KINDS='ServiceMonitor|InferencePool|Gateway|HTTPRoute'
validate() {
	# validate FILE: strict schema validation; only the CRD kinds above may lack a schema.
	local out
	out="$("$KVALIDATE" -k "$K8S_VERSION" --strict "$1" 2>&1)" || {
		printf '%s\n' "$out" >&2
		die "kubernetes-validate $1"
	}
	printf '%s\n' "$out" | grep -Ev "Couldn't find schema for kind ($CRD_KINDS) with" || true
	if printf '%s\n' "$out" | grep "Couldn't find schema" | grep -Evq "kind ($CRD_KINDS) with"; then
		die "$1 has an object of a kind with no schema (only $CRD_KINDS are expected)"
	fi
	if printf '%s\n' "$out" | grep -Eq "Couldn't find schema for kind ($CRD_KINDS) with"; then
		echo "note: CRD kinds ($CRD_KINDS) have no core schema; checked by check_crds.py and check_manifests.py"
	fi
}
for overlay in cpu cuda inference-gateway; do
	out="$RENDER/overlay-$overlay.yaml"
	"$KUBECTL" kustomize "deploy/k8s/overlays/$overlay" >"$out" || die "kustomize deploy/k8s/overlays/$overlay"
	echo "rendered deploy/k8s/overlays/$overlay: $(grep -c '^kind:' "$out") objects"
	validate "$out"
done
"$KUBECTL" kustomize deploy/k8s/prometheus-adapter >"$RENDER/prometheus-adapter.yaml" || die "kustomize deploy/k8s/prometheus-adapter"
validate "$RENDER/prometheus-adapter.yaml"
"$PY" scripts/deploy/check_manifests.py --device cpu "$RENDER/overlay-cpu.yaml" || die "manifest checks (cpu)"
"$PY" scripts/deploy/check_manifests.py --device cuda:0 "$RENDER/overlay-cuda.yaml" || die "manifest checks (cuda)"
"$PY" scripts/deploy/check_manifests.py --adapter "$RENDER/prometheus-adapter.yaml" || die "prometheus-adapter checks"
"$PY" scripts/deploy/check_manifests.py --gateway --device cpu "$RENDER/overlay-inference-gateway.yaml" ||
	die "manifest checks (inference-gateway)"

step "kubernetes: custom objects against the vendored CRDs (deploy/k8s/crds)"
"$PY" scripts/deploy/check_crds.py --crds deploy/k8s/crds --ignore-kind ServiceMonitor "$RENDER"/*.yaml ||
	die "custom objects do not validate against their CRDs"
# The check must catch a broken object: an InferencePool target port out of range.
broken="$WORK/broken-inferencepool.yaml"
sed 's/^  - number: 8000$/  - number: 80000/' "$RENDER/overlay-inference-gateway.yaml" >"$broken"
grep -q '^  - number: 80000$' "$broken" || die "could not build the broken InferencePool for the negative check"
if "$PY" scripts/deploy/check_crds.py --crds deploy/k8s/crds --ignore-kind ServiceMonitor "$broken" >/dev/null 2>&1; then
	die "check_crds.py accepted an InferencePool with targetPorts[0].number 80000"
fi
echo "check_crds.py rejects an InferencePool with targetPorts[0].number 80000: ok"

# ---------------------------------------------------------------- grafana
step "grafana: dashboard structure, metric names, runbook links"
"$PY" -c 'import json,sys; json.load(open(sys.argv[1]))' deploy/grafana/glimpse.json || die "glimpse.json is not JSON"
"$PY" scripts/deploy/dashboard_queries.py --check || die "dashboard / alert checks"
"$PY" scripts/deploy/dashboard_queries.py --list >"$WORK/dashboard-queries.tsv" || die "dashboard_queries.py --list"
n_queries="$(wc -l <"$WORK/dashboard-queries.tsv")"
[ "$n_queries" -gt 0 ] || die "dashboard_queries.py --list printed no queries"
echo "dashboard_queries.py --list: $n_queries (panel, expr) pairs in $WORK/dashboard-queries.tsv; first three:"
head -n 3 "$WORK/dashboard-queries.tsv"

# ---------------------------------------------------------------- promql
step "promql: every dashboard and alert expression evaluated by a real Prometheus"
PROM_DIR="$WORK/prometheus"
rm -rf "$PROM_DIR"
mkdir -p "$PROM_DIR/data"
PROM_PORT="$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
cat >"$PROM_DIR/prometheus.yml" <<'YAML'
global:
  scrape_interval: 15s
scrape_configs: []
YAML
prometheus --config.file="$PROM_DIR/prometheus.yml" --storage.tsdb.path="$PROM_DIR/data" \
	--web.listen-address="127.0.0.1:$PROM_PORT" >"$PROM_DIR/log" 2>&1 &
PROM_PID=$!
for _ in $(seq 1 60); do
	curl -fsS "http://127.0.0.1:$PROM_PORT/-/ready" >/dev/null 2>&1 && break
	kill -0 "$PROM_PID" 2>/dev/null || {
		cat "$PROM_DIR/log" >&2
		die "prometheus exited"
	}
	sleep 0.5
done
curl -fsS "http://127.0.0.1:$PROM_PORT/-/ready" >/dev/null || die "prometheus did not become ready"
"$PY" scripts/deploy/dashboard_queries.py --prometheus "http://127.0.0.1:$PROM_PORT" --parse-only >"$PROM_DIR/queries.log" 2>&1 || {
	cat "$PROM_DIR/queries.log" >&2
	die "a PromQL expression does not evaluate"
}
tail -n 1 "$PROM_DIR/queries.log"
kill "$PROM_PID" 2>/dev/null || true
wait "$PROM_PID" 2>/dev/null || true
PROM_PID=""

printf '\ndeploy-checks: all checks passed\n'
