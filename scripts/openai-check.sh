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
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check -r scripts/openai-python/requirements.txt

free_port() { "$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT="$(free_port)" HTTP_PORT="$(free_port)" METRICS_PORT="$(free_port)"
"$GLIMPSE" serve --port "$PORT" --http-port "$HTTP_PORT" --metrics-port "$METRICS_PORT" \
	--kv-memory-bytes 20000000 --max-num-seqs 2 --max-waiting 0 \
	--chat-template scripts/openai-python/chat_template.jinja \
	--lookahead-module models/stories260K-lookahead/lookahead.safetensors >"$WORK/glimpse.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; wait 2>/dev/null || true' EXIT
# Open ports are not readiness: /health turns 200 only after the warm-up generation.
deadline=$((SECONDS + 60))
until curl -sf "http://127.0.0.1:$HTTP_PORT/health" >/dev/null; do
	if ((SECONDS >= deadline)) || ! kill -0 "$SERVER" 2>/dev/null; then
		echo "openai-check: the server did not report healthy within 60 s; log:" >&2
		cat "$WORK/glimpse.log" >&2
		exit 1
	fi
	sleep 0.2
done
"$VENV/bin/python" scripts/openai-python/check.py --base-url "http://127.0.0.1:$HTTP_PORT/v1" \
	--metrics "http://127.0.0.1:$METRICS_PORT/metrics" --golden models/stories260K/golden.json
