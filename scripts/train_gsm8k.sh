#!/usr/bin/env bash
# The real consistency-training run on the default model (figures in BENCHMARKS.md).
# Holds the first 100 GSM8K prompts out for evaluation, collects Jacobi trajectories of the next
# $PROMPTS prompts, trains, and measures base and trained model on the held-out prompts:
# tokens per pass and wall-clock speed at blocks 8 and 16 on the first 20, answer accuracy on
# all 100 (greedy AR, up to 400 tokens). The base model is exported as a float folder first, so that both run on the same
# weight format (the CPU kernels requantize float folders to Q8_0).
# Every stage continues where it stopped when run again (trajectories by their progress file,
# training with --resume, finished measurements are kept).
#
#   scripts/train_gsm8k.sh [work dir, default runs/gsm8k]
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-runs/gsm8k}
PROMPTS=${PROMPTS:-120}
MAX_NEW=${MAX_NEW:-128}
BLOCK=${BLOCK:-16}
STEPS=${STEPS:-500}
LR=${LR:-1e-4}
EVAL=${EVAL:-100}
SPEED_PROMPTS=${SPEED_PROMPTS:-20}
EVAL_TOKENS=${EVAL_TOKENS:-128}
ANSWER_TOKENS=${ANSWER_TOKENS:-400}
DATA=${DATA:-../shared/data/gsm8k/train.jsonl}
mkdir -p "$WORK"
cargo build --release --locked -p fixpoint
FP="${CARGO_TARGET_DIR:-target}/release/fixpoint"
"$FP" models fetch
stage() { echo "== $* ($(date +%H:%M:%S))" >&2; }

stage "trajectories of $PROMPTS prompts after the $EVAL held out"
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

[ -d "$WORK/base" ] || "$FP" models export --out "$WORK/base"
measure() { # name, output, bench arguments...
  local out="$WORK/$2"; shift 2
  [ -f "$out" ] && return
  "$FP" bench --prompts "$DATA" --json "$@" > "$out.tmp"
  mv "$out.tmp" "$out"
}
for m in base model; do
  stage "speed of $m"
  measure "$m" "speed-$m.json" --model "$WORK/$m" --limit "$SPEED_PROMPTS" --blocks 8,16 \
    --max-tokens "$EVAL_TOKENS" \
    --cost-sizes 1,8,16 --repetitions 5
done
for m in base model; do
  stage "accuracy of $m"
  measure "$m" "accuracy-$m.json" --model "$WORK/$m" --limit "$EVAL" --ar-only \
    --max-tokens "$ANSWER_TOKENS" --cost-sizes 1 --repetitions 1
done
stage "done: $WORK/speed-*.json and $WORK/accuracy-*.json"
