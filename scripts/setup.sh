#!/usr/bin/env bash
# Create (or reuse) the project virtualenv at .venv and install the project into it.
# torch is pinned to 2.13.0, which resolves to the CPU wheel on CPU machines; on a GPU machine
# install the CUDA build of torch 2.13.0 into .venv first (see README) and this keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
stamp=".venv/.installed-$(cat pyproject.toml | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "installing the project into .venv (first run only) ..."
  start=$(date +%s)
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "torch==2.13.0" -e ".[dev]" 2>&1 \
    | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import sft, ptuning, torch, transformers" # fail here, not later, if the install broke
  rm -f .venv/.installed-*
  touch "$stamp"
  echo "installed in $(( $(date +%s) - start )) s"
fi
