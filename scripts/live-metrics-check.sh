#!/usr/bin/env bash
# Live check of the dashboard and alerts against the real server: starts `glimpse serve` on free
# loopback ports with the bundled model, a real Prometheus (Debian package) scraping its /metrics
# every second, drives a short `glimpse bench` load, then evaluates every PromQL expression of the
# Grafana dashboard and the alert rules through Prometheus's HTTP API. An empty result fails the
# check, naming the panel. Needs what scripts/deploy-checks.sh installs (prometheus, the venv).
#
#   scripts/live-metrics-check.sh [path/to/glimpse]      (default: target/debug/glimpse)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
GLIMPSE="${1:-${CARGO_TARGET_DIR:-target}/debug/glimpse}"
WORK="target/live-metrics-check"
PY="target/deploy-checks/venv/bin/python"
[ -x "$GLIMPSE" ] || { echo "live-metrics-check: no glimpse binary at $GLIMPSE (cargo build -p glimpse-server)" >&2; exit 1; }
[ -x "$PY" ] || { echo "live-metrics-check: run scripts/deploy-checks.sh first (it installs Prometheus and the venv)" >&2; exit 1; }
rm -rf "$WORK" && mkdir -p "$WORK/prometheus"

PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_for() { # wait_for URL WHAT LOG
	for _ in $(seq 1 120); do
		curl -fsS "$1" >/dev/null 2>&1 && return 0
		sleep 0.5
	done
	cat "$3" >&2
	echo "live-metrics-check: $2 did not come up" >&2
	exit 1
}

GRPC_PORT="$(free_port)" METRICS_PORT="$(free_port)" PROM_PORT="$(free_port)"
"$GLIMPSE" serve --port "$GRPC_PORT" --metrics-port "$METRICS_PORT" --http-port 0 --kv-memory-bytes 40000000 \
	>"$WORK/glimpse.log" 2>&1 &
PIDS+=($!)
wait_for "http://127.0.0.1:$METRICS_PORT/metrics" "glimpse serve" "$WORK/glimpse.log"
"$GLIMPSE" health --endpoint "http://127.0.0.1:$GRPC_PORT" >/dev/null

cat >"$WORK/prometheus/prometheus.yml" <<YAML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: glimpse
    static_configs:
      - targets: ["127.0.0.1:$METRICS_PORT"]
YAML
prometheus --config.file="$WORK/prometheus/prometheus.yml" --storage.tsdb.path="$WORK/prometheus/data" \
	--web.listen-address="127.0.0.1:$PROM_PORT" >"$WORK/prometheus/log" 2>&1 &
PIDS+=($!)
wait_for "http://127.0.0.1:$PROM_PORT/-/ready" "prometheus" "$WORK/prometheus/log"

echo "==> load: glimpse bench against the server while Prometheus scrapes it"
"$GLIMPSE" bench --endpoint "http://127.0.0.1:$GRPC_PORT" --metrics-url "http://127.0.0.1:$METRICS_PORT/metrics" \
	--dataset random --input-len 128 --output-len 48 --num-prompts 120 --request-rate 15 --seed 1 \
	--json "$WORK/bench.json" >"$WORK/bench.md"
sed -n '1,12p' "$WORK/bench.md"
sleep 3

echo "==> every dashboard panel and alert expression returns data"
"$PY" scripts/deploy/dashboard_queries.py --prometheus "http://127.0.0.1:$PROM_PORT"
echo "live-metrics-check: all expressions returned data"
