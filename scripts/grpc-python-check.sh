#!/usr/bin/env bash
# Generates Python grpcio stubs from proto/glimpse/v1/generation.proto with grpcio-tools (pinned in
# scripts/grpc-python/requirements.txt, installed into a venv under target/), starts `glimpse serve`
# on a free loopback port, and runs one streaming request through scripts/grpc-python/client.py.
#
#   scripts/grpc-python-check.sh [path/to/glimpse]      (default: target/debug/glimpse)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
GLIMPSE="${1:-${CARGO_TARGET_DIR:-target}/debug/glimpse}"
WORK="target/grpc-python"
VENV="$WORK/venv"
[ -x "$GLIMPSE" ] || { echo "grpc-python-check: no glimpse binary at $GLIMPSE" >&2; exit 1; }
mkdir -p "$WORK"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check -r scripts/grpc-python/requirements.txt
rm -rf "$WORK/stubs" && mkdir -p "$WORK/stubs"
"$VENV/bin/python" -m grpc_tools.protoc -I proto --python_out="$WORK/stubs" --grpc_python_out="$WORK/stubs" \
	proto/glimpse/v1/generation.proto
touch "$WORK/stubs/glimpse/__init__.py" "$WORK/stubs/glimpse/v1/__init__.py"

PORT="$("$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
METRICS_PORT="$("$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
"$GLIMPSE" serve --port "$PORT" --metrics-port "$METRICS_PORT" --http-port 0 --kv-memory-bytes 20000000 >"$WORK/glimpse.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; wait 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
	"$GLIMPSE" health --endpoint "http://127.0.0.1:$PORT" >/dev/null 2>&1 && break
	sleep 0.5
done
"$VENV/bin/python" scripts/grpc-python/client.py --endpoint "127.0.0.1:$PORT" --stubs "$WORK/stubs" \
	--golden models/stories260K/golden.json
