#!/usr/bin/env bash
# The Python client package (clients/python, `glimpse-client`) against a real server: checks that
# its committed gRPC stubs match proto/glimpse/v1/generation.proto, installs it with
# `pip install ./clients/python` into a venv under target/ (grpcio pinned in
# scripts/grpc-python/requirements.txt), starts `glimpse serve` on a free loopback port, and runs
# scripts/grpc-python/client.py, which streams one greedy request and compares it with the bundled
# model's golden continuation.
#
#   scripts/grpc-python-check.sh [path/to/glimpse]      (default: target/debug/glimpse)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/lib/python-venv.sh
source scripts/lib/glimpse-server.sh
GLIMPSE="${1:-${CARGO_TARGET_DIR:-target}/debug/glimpse}"
WORK="target/grpc-python"
VENV="$WORK/venv"
[ -x "$GLIMPSE" ] || { echo "grpc-python-check: no glimpse binary at $GLIMPSE" >&2; exit 1; }
mkdir -p "$WORK"
scripts/python-client-stubs.sh --check
python_venv "$VENV" scripts/grpc-python/requirements.txt ./clients/python

trap 'kill ${SERVER:-} 2>/dev/null || true; wait 2>/dev/null || true' EXIT
start_glimpse "$GLIMPSE" "$WORK/glimpse.log"
"$VENV/bin/python" scripts/grpc-python/client.py --endpoint "127.0.0.1:$PORT" \
	--golden models/stories260K/golden.json
