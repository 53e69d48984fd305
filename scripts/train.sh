#!/usr/bin/env bash
# Fine-tune through `python -m sft.train`: P-Tuning v2, LoRA or full, chosen by METHOD.
# With no arguments: P-tunes the embedded default model on data/'s ADGEN sample into
# output/adgen-ptuning; METHOD=lora or METHOD=full trains that method into output/adgen-$METHOD.
# Environment variables (names as in ChatGLM's ptuning/train.sh):
#   METHOD (ptuning|lora|full), MODEL, TRAIN_FILE, VALIDATION_FILE, OUTPUT_DIR,
#   LR (default: the method's, see --learning_rate in python -m sft.train --help),
#   PRE_SEQ_LEN (ptuning), LORA_RANK, LORA_ALPHA, LORA_TARGET (lora; default: sft.train's),
#   MAX_STEPS, BATCH_SIZE (per process), GRAD_ACC, MAX_SOURCE_LENGTH, MAX_TARGET_LENGTH.
# Several processes (torchrun; gloo on CPU, nccl on GPUs), each with BATCH_SIZE rows, so the
# global batch is NNODES x NPROC x BATCH_SIZE x GRAD_ACC (the log states it):
#   NPROC       processes on this machine (default 1; NUM_GPUS is the older name, still read)
#   NNODES      machines (default 1); with NNODES>1 run this script on every machine with the same
#   NODE_RANK   0..NNODES-1, this machine's number, and MASTER_ADDR:MASTER_PORT (default port 29500),
#   MASTER_ADDR an address of machine 0 that every machine reaches (torchrun's --rdzv-endpoint).
# Any further flags are passed to sft.train (python -m sft.train --help lists them), e.g.
# --activation_checkpointing, --fsdp full_shard (full or lora, GPUs), or --deepspeed configs/deepspeed/zero3.json.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/python.sh

METHOD=${METHOD:-ptuning}
MODEL=${MODEL:-embedded}
TRAIN_FILE=${TRAIN_FILE:-data/adgen/train.json}
VALIDATION_FILE=${VALIDATION_FILE:-data/adgen/dev.json}
PRE_SEQ_LEN=${PRE_SEQ_LEN:-32}
MAX_STEPS=${MAX_STEPS:-300}
BATCH_SIZE=${BATCH_SIZE:-16}
GRAD_ACC=${GRAD_ACC:-1}
MAX_SOURCE_LENGTH=${MAX_SOURCE_LENGTH:-64}
MAX_TARGET_LENGTH=${MAX_TARGET_LENGTH:-128}
NPROC=${NPROC:-${NUM_GPUS:-1}}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_PORT=${MASTER_PORT:-29500}
OUTPUT_DIR=${OUTPUT_DIR:-output/adgen-$METHOD}

# Only what was set: sft.train's defaults follow the method (the learning rate above all).
optional=()
if [ -n "${LR:-}" ]; then optional+=(--learning_rate "$LR"); fi
if [ -n "${LORA_RANK:-}" ]; then optional+=(--lora_rank "$LORA_RANK"); fi
if [ -n "${LORA_ALPHA:-}" ]; then optional+=(--lora_alpha "$LORA_ALPHA"); fi
if [ -n "${LORA_TARGET:-}" ]; then optional+=(--lora_target "$LORA_TARGET"); fi

fail() { echo "error: $*" >&2; exit 2; }
count() {  # count NAME VALUE MIN: VALUE must be a whole number >= MIN
  [[ "$2" =~ ^[0-9]+$ ]] && [ "$2" -ge "$3" ] || fail "$1: expected a whole number >= $3, found '$2'"
}
count NPROC "$NPROC" 1
count NNODES "$NNODES" 1
count NODE_RANK "$NODE_RANK" 0
count MASTER_PORT "$MASTER_PORT" 1
if [ -n "${NUM_GPUS:-}" ] && [ "$NUM_GPUS" != "$NPROC" ]; then
  fail "NPROC and NUM_GPUS: expected one of them (NUM_GPUS is NPROC's older name), found NPROC=$NPROC NUM_GPUS=$NUM_GPUS"
fi
[ "$NODE_RANK" -lt "$NNODES" ] || fail "NODE_RANK: expected 0..$((NNODES - 1)) (NNODES=$NNODES), found $NODE_RANK"

if [ "$NNODES" -gt 1 ]; then
  [ -n "${MASTER_ADDR:-}" ] || fail "MASTER_ADDR: expected machine 0's address with NNODES=$NNODES, found none"
  launch=("$PYTHON" -m torch.distributed.run --nnodes="$NNODES" --node-rank="$NODE_RANK" --nproc-per-node="$NPROC"
          --rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT" -m sft.train)
elif [ "$NPROC" -gt 1 ]; then
  launch=("$PYTHON" -m torch.distributed.run --standalone --nnodes=1 --nproc-per-node="$NPROC" -m sft.train)
else
  launch=("$PYTHON" -m sft.train)
fi

exec "${launch[@]}" \
  --finetuning_type "$METHOD" \
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
  --pre_seq_len "$PRE_SEQ_LEN" \
  --logging_steps 10 \
  --eval_strategy steps \
  --eval_steps 100 \
  --save_steps 1000 \
  --eval_base_loss \
  "${optional[@]}" \
  "$@"
