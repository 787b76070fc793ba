#!/usr/bin/env bash
# Trains the LookaheadKV module shipped for models/retrieval-byte-6l and evaluates it against the
# baselines on RULER-style retrieval at 2048 tokens, exactly as docs/quality.md reports:
#   1. training prompts from the task generator on the training essays (seed 5000: 26 per task at
#      1024 and at 2048 tokens, 260 prompts) plus 35 validation prompts (seed 5001, 2048 tokens);
#      the evaluation prompts use the held-out essays and seed 1000 (the model's own held-out set),
#      committed as data/retrieval-eval/retrieval-2048.jsonl;
#   2. the module: 32 tokens, LoRA r 8 / alpha 32, 300 Adam updates of 16 prompts, lr 2e-3, trained
#      on the model's own greedy answers (the prompts' reference answers are not used);
#   3. `glimpse eval` at budgets 32, 64, 128, 256: agreement, KL, attention recall, TTFT and
#      exact-answer accuracy per task and needle depth.
# Each step prints its wall time.
#
#   scripts/retrieval/train_lookahead.sh [OUT]        (OUT default: retrieval-lookahead-out/)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=$(realpath -m "${1:-retrieval-lookahead-out}")
PYTHON=${PYTHON:-python3}
MODEL=models/retrieval-byte-6l
EVAL=data/retrieval-eval/retrieval-2048.jsonl
mkdir -p "$OUT"
# shellcheck source=scripts/timed-glimpse.sh
source scripts/timed-glimpse.sh
tasks() {
  "$PYTHON" scripts/retrieval/generate_tasks.py --template compact --tasks all "$@"
}

tasks --split train --seed 5000 --context-tokens 1024,2048 --num 26 --out "$OUT/train-part.jsonl"
tasks --split train --seed 5001 --context-tokens 2048 --num 7 --out "$OUT/validation-part.jsonl"
cat "$OUT/train-part.jsonl" "$OUT/validation-part.jsonl" > "$OUT/train.jsonl"
[ -f "$EVAL" ] || tasks --split test --seed 1000 --context-tokens 2048 --num 20 \
  --depths 0,10,20,30,40,50,60,70,80,90,100 --out "$EVAL"

glimpse train-lookahead --model "$MODEL" --prompts "$OUT/train.jsonl" --validation-prompts 35 \
  --min-prompt-tokens 64 --max-prompt-tokens 2048 --answer-tokens 40 --batch-size 16 --steps 300 \
  --learning-rate 2e-3 --validate-every 25 --checkpoint-dir "$OUT/checkpoint" --checkpoint-every 50 \
  --out "$OUT/lookahead.safetensors" 2>&1 | tee "$OUT/train.log"

glimpse eval --model "$MODEL" --prompts "$EVAL" --budgets 32,64,128,256 --answer-tokens 40 \
  --lookahead "lookahead=$OUT/lookahead.safetensors" --out-dir "$OUT/eval"
echo "module: $OUT/lookahead.safetensors; evaluation: $OUT/eval/eval.md"
