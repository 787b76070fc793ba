#!/usr/bin/env bash
# Full cache vs LookaheadKV through the real gRPC server at equal KV memory, in one run each:
#   (a) memory-bound: stories260K, prompts of 300-400 tokens (350-450 + 100 would pass the model's
#       512-token context), 100-token answers, a pool that holds 8 full-cache requests (500
#       entries = 32 blocks each), budgets 32 and 64;
#   (b) the 135M-shape random model (made by run_engine_benchmarks.sh), 2K-token prompts,
#       512-token answers. The server needs a tokenizer.json in that folder covering its 49,152
#       ids; GPT-2's (50,257 tokens) serves, since the prompts are random token ids anyway.
# The lookahead modules are random (`glimpse init-lookahead`): this measures serving capacity,
# not answer quality. Results land in OUT (default bench-out/server) as JSON and Markdown.
#
#   scripts/bench/run_server_benchmarks.sh [OUT] [a|b|all]
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=$(realpath -m "${1:-bench-out/server}")
WHICH=${2:-all}
MODEL_135M=${MODEL_135M:-$(dirname "$OUT")/smollm135m-shape}
mkdir -p "$OUT"
cargo build --release -p glimpse-server
GLIMPSE=target/release/glimpse

serve() { # model kv_bytes module
  "$GLIMPSE" serve --model "$1" --kv-memory-bytes "$2" --lookahead-module "$3" \
    --port 50151 --metrics-port 9451 --http-port 0 >"$OUT/server.log" 2>&1 &
  SERVER=$!
  for _ in $(seq 1 120); do
    "$GLIMPSE" health --endpoint http://127.0.0.1:50151 >/dev/null 2>&1 && return 0
    sleep 1
  done
  echo "server did not come up; see $OUT/server.log" >&2
  exit 1
}
stop() { kill -TERM "$SERVER"; wait "$SERVER" || true; }
bench() { # name args...
  local name=$1
  shift
  "$GLIMPSE" bench --endpoint http://127.0.0.1:50151 --metrics-url http://127.0.0.1:9451/metrics \
    --ignore-eos --temperature 0 --json "$OUT/$name.json" "$@" | tee "$OUT/$name.md"
}

if [ "$WHICH" = a ] || [ "$WHICH" = all ]; then
  "$GLIMPSE" init-lookahead --model models/stories260K --out "$OUT/stories-lookahead.safetensors"
  # 8 requests x 32 blocks x 16 entries x 1280 bytes per entry.
  serve models/stories260K $((8 * 32 * 16 * 1280)) "$OUT/stories-lookahead.safetensors"
  for budget in 32 64; do
    bench "a-budget$budget" --dataset random --input-len 350 --range-ratio 0.142 \
      --output-len 100 --num-prompts 96 --policies full,lookahead --budget "$budget"
  done
  stop
fi
if [ "$WHICH" = b ] || [ "$WHICH" = all ]; then
  "$GLIMPSE" init-lookahead --model "$MODEL_135M" --out "$OUT/135m-lookahead.safetensors"
  # 8 full-cache requests of 2048 + 512 entries (160 blocks) at 46080 bytes per entry.
  serve "$MODEL_135M" $((8 * 160 * 16 * 46080)) "$OUT/135m-lookahead.safetensors"
  bench b-135m --dataset random --input-len 2048 --output-len 512 --num-prompts 24 \
    --policies full,lookahead --budget 128
  stop
fi
echo "results in $OUT"
