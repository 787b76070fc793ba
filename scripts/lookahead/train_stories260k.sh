#!/usr/bin/env bash
# Trains the shipped LookaheadKV module for the bundled stories260K model and evaluates it against
# the baselines, exactly as docs/quality.md reports:
#   1. 1056 training prompts sampled from the model itself (seed 11; 32 held out for validation),
#      128 evaluation prompts with another seed (22) — committed as data/lookahead-eval/,
#   2. the shipped module: 32 tokens, LoRA r 8 / alpha 32, 400 Adam updates of 32 prompts, lr 2e-3
#      (gradient norm clipped at 1),
#   3. ablations at 150 updates: embeddings only (no LoRA), 16 and 8 lookahead tokens, against the
#      shipped run's own module at update 150,
#   4. `glimpse eval` on the evaluation prompts at budgets 16, 32, 64, 128 (and 256 for SnapKV's 2B),
#      then the shipped module with a 32-entry window (capped at half the budget) as well.
# Each step prints its wall time, which docs/quality.md quotes.
#
#   scripts/lookahead/train_stories260k.sh [OUT]        (OUT default: lookahead-out/)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=$(realpath -m "${1:-lookahead-out}")
mkdir -p "$OUT"
# shellcheck source=scripts/timed-glimpse.sh
source scripts/timed-glimpse.sh

glimpse sample-prompts --count 1056 --seed 11 --out "$OUT/train.jsonl"
[ -f data/lookahead-eval/stories260k-eval.jsonl ] ||
  glimpse sample-prompts --count 128 --seed 22 --out data/lookahead-eval/stories260k-eval.jsonl

common=(--prompts "$OUT/train.jsonl" --validation-prompts 32 --batch-size 32 --learning-rate 2e-3
        --validate-every 25)
# The shipped run, paused at update 150 (its module there is the like-for-like ablation
# reference) and resumed from its checkpoint to 400: identical to one uninterrupted run.
glimpse train-lookahead "${common[@]}" --steps 150 --checkpoint-dir "$OUT/checkpoint" \
  --checkpoint-every 25 --out "$OUT/step150.safetensors" 2>&1 | tee "$OUT/train-main.log"
glimpse train-lookahead "${common[@]}" --steps 400 --checkpoint-dir "$OUT/checkpoint" \
  --checkpoint-every 25 --resume "$OUT/checkpoint" --out "$OUT/lookahead.safetensors" \
  2>&1 | tee -a "$OUT/train-main.log"
glimpse train-lookahead "${common[@]}" --steps 150 --no-lora --out "$OUT/nolora.safetensors"
glimpse train-lookahead "${common[@]}" --steps 150 --num-tokens 16 --out "$OUT/tok16.safetensors"
glimpse train-lookahead "${common[@]}" --steps 150 --num-tokens 8 --out "$OUT/tok8.safetensors"

glimpse eval --prompts data/lookahead-eval/stories260k-eval.jsonl --budgets 16,32,64,128,256 \
  --lookahead "lookahead=$OUT/lookahead.safetensors" \
  --lookahead "lookahead@150=$OUT/step150.safetensors" \
  --lookahead "lookahead@150 (no LoRA)=$OUT/nolora.safetensors" \
  --lookahead "lookahead@150 (16 tokens)=$OUT/tok16.safetensors" \
  --lookahead "lookahead@150 (8 tokens)=$OUT/tok8.safetensors" \
  --out-dir "$OUT/eval"
# Does a SnapKV-style window (the last entries always kept) help the shipped module?
glimpse eval --prompts data/lookahead-eval/stories260k-eval.jsonl --budgets 16,32,64,128 \
  --lookahead "lookahead=$OUT/lookahead.safetensors" --lookahead-windows 32 --no-baselines \
  --out-dir "$OUT/eval-window"
echo "module: $OUT/lookahead.safetensors; evaluation: $OUT/eval/eval.md"
