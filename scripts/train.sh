#!/usr/bin/env bash
# P-Tuning v2 (and, with METHOD, other methods) through `python -m sft.train`.
# With no arguments: P-tunes the embedded default model on data/'s ADGEN sample into
# output/adgen-ptuning. Environment variables (names as in ChatGLM's ptuning/train.sh):
#   MODEL, TRAIN_FILE, VALIDATION_FILE, OUTPUT_DIR, PRE_SEQ_LEN, LR, MAX_STEPS,
#   BATCH_SIZE, GRAD_ACC, MAX_SOURCE_LENGTH, MAX_TARGET_LENGTH, NUM_GPUS (>1 uses torchrun).
# Any further flags are passed to sft.train (python -m sft.train --help lists them).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/python.sh

MODEL=${MODEL:-embedded}
TRAIN_FILE=${TRAIN_FILE:-data/adgen/train.json}
VALIDATION_FILE=${VALIDATION_FILE:-data/adgen/dev.json}
PRE_SEQ_LEN=${PRE_SEQ_LEN:-32}
LR=${LR:-2e-2}
MAX_STEPS=${MAX_STEPS:-300}
BATCH_SIZE=${BATCH_SIZE:-16}
GRAD_ACC=${GRAD_ACC:-1}
MAX_SOURCE_LENGTH=${MAX_SOURCE_LENGTH:-64}
MAX_TARGET_LENGTH=${MAX_TARGET_LENGTH:-128}
NUM_GPUS=${NUM_GPUS:-1}
OUTPUT_DIR=${OUTPUT_DIR:-output/adgen-ptuning}

if [ "$NUM_GPUS" -gt 1 ]; then
  launch=("$PYTHON" -m torch.distributed.run --standalone --nnodes=1 --nproc-per-node="$NUM_GPUS" -m sft.train)
else
  launch=("$PYTHON" -m sft.train)
fi

exec "${launch[@]}" \
  --model_name_or_path "$MODEL" \
  --train_file "$TRAIN_FILE" \
  --validation_file "$VALIDATION_FILE" \
  --prompt_column content \
  --response_column summary \
  --output_dir "$OUTPUT_DIR" \
  --max_source_length "$MAX_SOURCE_LENGTH" \
  --max_target_length "$MAX_TARGET_LENGTH" \
  --per_device_train_batch_size "$BATCH_SIZE" \
  --per_device_eval_batch_size "$BATCH_SIZE" \
  --gradient_accumulation_steps "$GRAD_ACC" \
  --max_steps "$MAX_STEPS" \
  --learning_rate "$LR" \
  --pre_seq_len "$PRE_SEQ_LEN" \
  --logging_steps 10 \
  --eval_strategy steps \
  --eval_steps 100 \
  --save_steps 1000 \
  --eval_base_loss \
  "$@"
