#!/usr/bin/env bash
# Engine benchmarks against Hugging Face transformers on the same weights, in one run:
#   1. writes a random Llama with SmolLM-135M's shape (never committed; ~540 MB),
#   2. Glimpse forward pass: prefill 512/4096 tokens, decode at batch 1 and 16, copy bandwidth,
#   3. transformers: the same measurements,
#   4. offline throughput: 64 requests, 256-token prompts, 128 output tokens — Glimpse's engine loop
#      (batched and one at a time) and transformers static-batch generate().
# Results land in OUT (default bench-out/) as JSON; docs/benchmarks.md quotes them.
#
#   scripts/bench/run_engine_benchmarks.sh [OUT]      (needs: pip install -r scripts/fixtures/requirements.txt)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=$(realpath -m "${1:-bench-out}")
PYTHON=${PYTHON:-python3}
MODEL="$OUT/smollm135m-shape"
REPEATS=${REPEATS:-3}
mkdir -p "$OUT"
[ -f "$MODEL/model.safetensors" ] || "$PYTHON" scripts/bench/peer_transformers.py make-model "$MODEL"

cargo bench -p glimpse-engine --bench forward -- --model "$MODEL" --repeats "$REPEATS" \
  --json "$OUT/glimpse-forward.json"
"$PYTHON" scripts/bench/peer_transformers.py run "$MODEL" --repeats "$REPEATS" \
  --json "$OUT/transformers-forward.json"
cargo bench -p glimpse-server --bench offline_throughput -- --model "$MODEL" \
  --requests 64 --prompt-len 256 --output-len 128 --alone 4 --json "$OUT/glimpse-offline.json"
"$PYTHON" scripts/bench/peer_transformers.py offline-throughput "$MODEL" \
  --requests 64 --prompt-len 256 --output-len 128 --json "$OUT/transformers-offline.json"
echo "results in $OUT"
