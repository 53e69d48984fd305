#!/usr/bin/env bash
# The main job on the embedded default, from a fresh clone: set up .venv, P-tune the shipped
# model on data/'s ADGEN sample, evaluate it (ROUGE/BLEU-4) and write a few ad texts.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHON="$PWD/.venv/bin/python"
bash scripts/train.sh
bash scripts/evaluate.sh
for prompt in "类型#上衣*版型#宽松*颜色#白色*风格#简约*图案#线条*衣样式#衬衫" \
              "类型#裙*材质#雪纺*颜色#粉色*风格#甜美*裙型#a字*裙长#连衣裙"; do
  echo "== $prompt"
  "$PYTHON" -m sft.infer --checkpoint output/adgen-ptuning --prompt "$prompt"
done
