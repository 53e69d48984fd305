#!/usr/bin/env bash
# Generation-based evaluation (ROUGE-1/2/L, BLEU-4 as ChatGLM scores them) through `python -m sft.evaluate`.
# With no arguments: evaluates the checkpoint the default `bash scripts/train.sh` wrote
# (output/adgen-ptuning) on data/'s ADGEN dev sample, writes generated_predictions.jsonl and
# metrics.json to output/adgen-ptuning/eval and prints the scores. A rerun continues where
# the previous one stopped. Environment variables:
#   CHECKPOINT (a checkpoint dir, a plain model dir or "embedded"), MODEL (read the
#   checkpoint's base model from here instead), VALIDATION_FILE, EVAL_SAMPLES, BATCH_SIZE,
#   MAX_NEW_TOKENS (per process), NPROC (processes generating their share of the batches through
#   torchrun, default 1: the predictions file and scores are those of one process).
# Any further flags are passed to sft.evaluate (python -m sft.evaluate --help lists them),
# e.g. --do_sample --top_p 0.8 --temperature 0.95 --seed 42, --output_dir DIR, --overwrite.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/python.sh

CHECKPOINT=${CHECKPOINT:-output/adgen-ptuning}
VALIDATION_FILE=${VALIDATION_FILE:-data/adgen/dev.json}
BATCH_SIZE=${BATCH_SIZE:-16}
MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-128}
NPROC=${NPROC:-1}
if ! [[ "$NPROC" =~ ^[0-9]+$ ]] || [ "$NPROC" -lt 1 ]; then
  echo "error: NPROC: expected a whole number >= 1, found '$NPROC'" >&2
  exit 2
fi

flags=(--checkpoint "$CHECKPOINT" --validation_file "$VALIDATION_FILE"
       --batch_size "$BATCH_SIZE" --max_new_tokens "$MAX_NEW_TOKENS")
if [ -n "${MODEL:-}" ]; then
  flags+=(--model_name_or_path "$MODEL")
fi
if [ -n "${EVAL_SAMPLES:-}" ]; then
  flags+=(--eval_samples "$EVAL_SAMPLES")
fi

if [ "$NPROC" -gt 1 ]; then
  exec "$PYTHON" -m torch.distributed.run --standalone --nnodes=1 --nproc-per-node="$NPROC" -m sft.evaluate \
    "${flags[@]}" "$@"
fi
exec "$PYTHON" -m sft.evaluate "${flags[@]}" "$@"
