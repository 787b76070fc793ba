#!/usr/bin/env bash
# Regenerates the gRPC stubs committed in clients/python/src/glimpse_client/v1/ from
# proto/glimpse/v1/generation.proto with grpcio-tools (pinned in scripts/grpc-python/requirements.txt,
# installed into a venv under target/). With --check, regenerates into a temporary folder and fails
# if the committed stubs differ (CI runs this, so the package never lags the .proto).
#
#   scripts/python-client-stubs.sh [--check]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/lib/python-venv.sh
VENV="target/grpc-python/venv"
STUBS="clients/python/src/glimpse_client/v1"
python_venv "$VENV" scripts/grpc-python/requirements.txt

OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
"$VENV/bin/python" -m grpc_tools.protoc -I proto --python_out="$OUT" --pyi_out="$OUT" \
	--grpc_python_out="$OUT" proto/glimpse/v1/generation.proto
# protoc names the message module by its .proto path (`glimpse.v1`); inside the package it is a
# sibling module.
sed -i 's/^from glimpse\.v1 import generation_pb2 as/from . import generation_pb2 as/' \
	"$OUT/glimpse/v1/generation_pb2_grpc.py"
cp "$STUBS/__init__.py" "$OUT/glimpse/v1/"

if [ "${1:-}" = "--check" ]; then
	diff -r -x __pycache__ "$STUBS" "$OUT/glimpse/v1" || {
		echo "python-client-stubs: $STUBS is stale; run scripts/python-client-stubs.sh and commit" >&2
		exit 1
	}
	echo "python-client-stubs: $STUBS matches proto/glimpse/v1/generation.proto"
else
	cp "$OUT"/glimpse/v1/generation_pb2*.py* "$STUBS/"
	echo "python-client-stubs: wrote $STUBS"
fi
