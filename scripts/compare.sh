#!/usr/bin/env bash
# P-Tuning v2, LoRA and full fine-tuning with the same data and step budget, each trained and
# evaluated, then one table (trainable parameters, peak memory, training tokens/s, final dev
# loss, ROUGE-1/2/L, BLEU-4) printed and written to OUTPUT_DIR/comparison.{md,json}.
# With no arguments: the embedded default model on data/'s ADGEN sample into output/compare.
# ADGEN_DIR=../shared/adgen: the real ADGEN rows instead (train5k.json -> dev500.json) into
# output/compare-adgen. Environment variables:
#   MODEL, ADGEN_DIR, TRAIN_FILE, VALIDATION_FILE, OUTPUT_DIR, METHODS (comma list),
#   MAX_STEPS, BATCH_SIZE, EVAL_SAMPLES, MAX_NEW_TOKENS,
#   LEARNING_RATES (default lora=1e-3,full=5e-4, for the 5M-parameter embedded model; P-tuning keeps
#   its 2e-2. LEARNING_RATES= (empty) uses sft.train's per-method defaults, meant for 6B-class models).
# Any further flags go to bench/compare_methods.py, and those it does not know to every
# sft.train run (e.g. --activation_checkpointing).
set -euo pipefail
if [ -n "${ADGEN_DIR:-}" ]; then
  if [ ! -f "$ADGEN_DIR/train5k.json" ] || [ ! -f "$ADGEN_DIR/dev500.json" ]; then
    echo "error: ADGEN_DIR: expected train5k.json and dev500.json, found no such files in $ADGEN_DIR" >&2
    exit 2
  fi
  ADGEN_DIR=$(cd "$ADGEN_DIR" && pwd)  # before the cd below: relative to where the user is
fi
cd "$(dirname "$0")/.."
source scripts/python.sh

MODEL=${MODEL:-embedded}
if [ -n "${ADGEN_DIR:-}" ]; then
  TRAIN_FILE=${TRAIN_FILE:-$ADGEN_DIR/train5k.json}
  VALIDATION_FILE=${VALIDATION_FILE:-$ADGEN_DIR/dev500.json}
  OUTPUT_DIR=${OUTPUT_DIR:-output/compare-adgen}
fi
TRAIN_FILE=${TRAIN_FILE:-data/adgen/train.json}
VALIDATION_FILE=${VALIDATION_FILE:-data/adgen/dev.json}
OUTPUT_DIR=${OUTPUT_DIR:-output/compare}
METHODS=${METHODS:-ptuning,lora,full}
MAX_STEPS=${MAX_STEPS:-150}
BATCH_SIZE=${BATCH_SIZE:-16}
EVAL_SAMPLES=${EVAL_SAMPLES:-50}
MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-96}
LEARNING_RATES=${LEARNING_RATES-lora=1e-3,full=5e-4}

exec "$PYTHON" bench/compare_methods.py \
  --model_name_or_path "$MODEL" \
  --train_file "$TRAIN_FILE" \
  --validation_file "$VALIDATION_FILE" \
  --output_dir "$OUTPUT_DIR" \
  --methods "$METHODS" \
  --max_steps "$MAX_STEPS" \
  --batch_size "$BATCH_SIZE" \
  --eval_samples "$EVAL_SAMPLES" \
  --max_new_tokens "$MAX_NEW_TOKENS" \
  --learning_rates "$LEARNING_RATES" \
  "$@"
