#!/usr/bin/env bash
# `glimpse bench --backend openai` against a real OpenAI-compatible server that is not Glimpse:
# llama.cpp's server (llama-cpp-python, pinned in scripts/bench/openai-llamacpp/requirements.txt,
# installed into a venv under target/) serving the bundled model, converted to GGUF by
# scripts/bench/openai-llamacpp/llama_to_gguf.py. Checks that text prompts stream to the end with
# timings and texts recorded, and that a server error (llama.cpp takes no token-id prompts) is
# counted per HTTP status, printed, and fails the run.
#
# Not part of `cargo test`: the first run compiles llama.cpp (about 30 minutes on 2 cores); later
# runs reuse the venv and take seconds.
#
#   scripts/bench/openai-llamacpp-check.sh [path/to/glimpse]      (default: target/debug/glimpse)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
GLIMPSE="${1:-${CARGO_TARGET_DIR:-target}/debug/glimpse}"
HERE="scripts/bench/openai-llamacpp"
WORK="target/bench-openai"
VENV="$WORK/venv"
[ -x "$GLIMPSE" ] || { echo "openai-llamacpp-check: no glimpse binary at $GLIMPSE" >&2; exit 1; }
mkdir -p "$WORK"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF" \
	"$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$HERE/requirements.txt"
"$VENV/bin/python" "$HERE/llama_to_gguf.py" models/stories260K "$WORK/stories260K.gguf"

PORT="$("$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
"$VENV/bin/python" -m llama_cpp.server --model "$WORK/stories260K.gguf" --model_alias stories260K \
	--host 127.0.0.1 --port "$PORT" --n_ctx 512 >"$WORK/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; wait 2>/dev/null || true' EXIT
# Ready when GET /v1/models answers 200; 60 s deadline.
DEADLINE=$((SECONDS + 60))
until curl -sf "http://127.0.0.1:$PORT/v1/models" >/dev/null; do
	kill -0 $SERVER 2>/dev/null || { cat "$WORK/server.log" >&2; exit 1; }
	[ $SECONDS -lt $DEADLINE ] || { echo "llama.cpp server not ready in 60 s" >&2; cat "$WORK/server.log" >&2; exit 1; }
	sleep 0.2
done

printf '%s\n' '{"prompt": "Once upon a time", "max_tokens": 12}' '{"prompt": "Lily liked to", "max_tokens": 12}' \
	'{"prompt": "The dog", "max_tokens": 12}' '{"prompt": "One day", "max_tokens": 12}' >"$WORK/prompts.jsonl"
# One at a time: llama-cpp-python's server cuts a running stream short when the next request comes.
"$GLIMPSE" bench --backend openai --endpoint "127.0.0.1:$PORT" --dataset jsonl \
	--dataset-path "$WORK/prompts.jsonl" --num-prompts 4 --max-concurrency 1 \
	--json "$WORK/report.json" --output-texts "$WORK/texts.jsonl" 2>"$WORK/bench.err"
grep -q "does not report max_model_len" "$WORK/bench.err"
"$VENV/bin/python" - "$WORK/report.json" "$WORK/texts.jsonl" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
assert report["model"] == {"backend": "openai", "id": "stories260K", "max_model_len": None}, report["model"]
full = report["policies"][0]
assert (full["successful_requests"], full["failed_requests"]) == (4, 0), full
assert full["finish_reasons"] == {"length": 4}, full["finish_reasons"]
assert full["output_lens"]["min"] == full["output_lens"]["max"] == 12, full["output_lens"]
assert 0 < full["ttft"]["median_ms"] <= full["e2el"]["median_ms"], full
texts = [json.loads(line) for line in open(sys.argv[2])]
assert [t["index"] for t in texts] == [0, 1, 2, 3] and all(t["text"] for t in texts), texts
print("text prompts: 4 of 4 streamed;", texts[0]["text"])
PY

# Token-id prompts: llama.cpp's server refuses them, so every request fails with one status.
if "$GLIMPSE" bench --backend openai --endpoint "127.0.0.1:$PORT" --model-dir models/stories260K \
	--input-len 16 --output-len 8 --num-prompts 2 >"$WORK/refused.out" 2>"$WORK/refused.err"; then
	echo "a run whose requests all failed exited 0" >&2
	exit 1
fi
grep -q "full: 2 request(s) failed with HTTP 500 Internal Server Error; first: " "$WORK/refused.err"
echo "token-id prompts: refused, counted per HTTP status, exit non-zero"
