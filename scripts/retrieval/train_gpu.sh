#!/usr/bin/env bash
# Production training run of the long-context retrieval test model on one GPU (H100/H200 class).
#
#   scripts/retrieval/train_gpu.sh OUT_DIR > train.log 2>&1
#
# Training stops after TRAIN_SECONDS (default 330) of training-loop time: the trainer first times a few
# throw-away steps at each context length and plans the number of steps that fits (written to
# OUT_DIR/train_meta.json with the command that reproduces the weights without timing). Then it saves
# the model in Hugging Face layout and evaluates held-out instances for at most EVAL_SECONDS (default 60).
# The whole run is killed after HARD_LIMIT seconds (default 480); the model is saved before evaluation
# and every 90 s during training, so a kill during evaluation still leaves a usable model.
set -euo pipefail
OUT=${1:?usage: scripts/retrieval/train_gpu.sh OUT_DIR}
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 CUBLAS_WORKSPACE_CONFIG=:4096:8 TOKENIZERS_PARALLELISM=false
"$PYTHON" -c "import torch, transformers, numpy, safetensors; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())"
exec timeout --signal=TERM --kill-after=15 "${HARD_LIMIT:-480}" "$PYTHON" scripts/retrieval/train.py \
  --out "$OUT" --device cuda --seed 1 \
  --layers 6 --hidden 256 --intermediate 768 --heads 8 --kv-heads 4 --rope-theta 10000 --max-pos 4096 \
  --curriculum 768:0.2,1280:0.2,2048:0.6 --mix-shorter 0.2 --tokens-per-step 65536 \
  --task-weights 0.5,1,1.25,1.25,1 --lm-rows 0.1 --lm-weight 0.2 \
  --lr 2e-3 --warmup 150 --min-lr-frac 0.05 --weight-decay 0.05 --grad-clip 1.0 \
  --precision bf16 --deterministic 1 --save-dtype bfloat16 \
  --steps 0 --time-budget-seconds "${TRAIN_SECONDS:-330}" --budget-safety 0.93 --min-steps 3000 \
  --workers "${WORKERS:-12}" --log-every 50 --save-every-seconds 90 \
  --eval-ctx 1024,2048,3968 --eval-num 200 --eval-generate-num 16 --eval-time-budget "${EVAL_SECONDS:-60}"
