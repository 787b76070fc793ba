#!/usr/bin/env bash
# The official `openai` Python package (pinned in scripts/openai-python/requirements.txt, installed
# into a venv under target/) and `curl -N` against `glimpse serve`'s OpenAI-compatible HTTP API on
# free loopback ports, with the bundled stories260K, its lookahead module and a chat template:
# scripts/openai-python/check.py says what is checked.
#
#   scripts/openai-check.sh [path/to/glimpse]      (default: target/debug/glimpse)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
GLIMPSE="${1:-${CARGO_TARGET_DIR:-target}/debug/glimpse}"
WORK="target/openai-python"
VENV="$WORK/venv"
[ -x "$GLIMPSE" ] || { echo "openai-check: no glimpse binary at $GLIMPSE" >&2; exit 1; }
mkdir -p "$WORK"
# shellcheck source=scripts/lib/python-venv.sh
. scripts/lib/python-venv.sh
# shellcheck source=scripts/lib/glimpse-server.sh
. scripts/lib/glimpse-server.sh
python_venv "$VENV" scripts/openai-python/requirements.txt
trap 'kill ${SERVER:-} 2>/dev/null || true; wait 2>/dev/null || true' EXIT
start_glimpse "$GLIMPSE" "$WORK/glimpse.log" --max-num-seqs 2 --max-waiting 0 \
	--chat-template scripts/openai-python/chat_template.jinja \
	--lookahead-module models/stories260K-lookahead/lookahead.safetensors
"$VENV/bin/python" scripts/openai-python/check.py --base-url "http://127.0.0.1:$HTTP_PORT/v1" \
	--metrics "http://127.0.0.1:$METRICS_PORT/metrics" --golden models/stories260K/golden.json
