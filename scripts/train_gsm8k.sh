#!/usr/bin/env bash
# The real consistency-training run on the default model (issue 4; figures in BENCHMARKS.md).
# Holds the first 100 GSM8K prompts out for evaluation, collects Jacobi trajectories of the
# next $PROMPTS prompts, trains, and benchmarks the model before and after on the held-out ones.
# Every stage continues where it stopped when run again (trajectories by their progress file,
# training with --resume), so the script can be interrupted at any point.
#
#   scripts/train_gsm8k.sh [work dir, default runs/gsm8k]
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-runs/gsm8k}
PROMPTS=${PROMPTS:-120}
MAX_NEW=${MAX_NEW:-128}
BLOCK=${BLOCK:-16}
STEPS=${STEPS:-400}
LR=${LR:-5e-5}
EVAL=${EVAL:-100}
EVAL_TOKENS=${EVAL_TOKENS:-128}
DATA=${DATA:-../shared/data/gsm8k/train.jsonl}
mkdir -p "$WORK"
cargo build --release --locked
FP=target/release/fixpoint
[ -n "${CARGO_TARGET_DIR:-}" ] && FP="$CARGO_TARGET_DIR/release/fixpoint"
"$FP" models fetch

stage() { echo "== $* ($(date +%H:%M:%S))" >&2; }

if [ ! -f "$WORK/before.json" ]; then
  stage "baseline on $EVAL held-out prompts"
  "$FP" bench --prompts "$DATA" --limit "$EVAL" --max-tokens "$EVAL_TOKENS" \
    --blocks 8,16 --cost-sizes 1,8,16 --json > "$WORK/before.json.tmp"
  mv "$WORK/before.json.tmp" "$WORK/before.json"
fi

stage "trajectories of $PROMPTS prompts"
"$FP" trajectories --prompts "$DATA" --skip "$EVAL" --limit "$PROMPTS" \
  --block "$BLOCK" --max-new "$MAX_NEW" --out "$WORK/trajectories.jsonl"

if [ ! -f "$WORK/model/model.safetensors" ]; then
  stage "training, $STEPS updates"
  if [ -d "$WORK/model/checkpoints" ]; then
    "$FP" train --out "$WORK/model" --resume
  else
    "$FP" train --data "$WORK/trajectories.jsonl" --out "$WORK/model" --steps "$STEPS" --lr "$LR"
  fi
fi

if [ ! -f "$WORK/after.json" ]; then
  stage "trained model on the same held-out prompts"
  "$FP" bench --model "$WORK/model" --prompts "$DATA" --limit "$EVAL" \
    --max-tokens "$EVAL_TOKENS" --blocks 8,16 --cost-sizes 1,8,16 --json > "$WORK/after.json.tmp"
  mv "$WORK/after.json.tmp" "$WORK/after.json"
fi
stage "done: $WORK/before.json and $WORK/after.json"
