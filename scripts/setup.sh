#!/usr/bin/env bash
# Create (or reuse) the project virtualenv (.venv, or the directory given) and install the project into
# it at the versions of requirements.lock, the ones the test suite passed with (scripts/lock.sh writes it).
# The lock says torch==2.13.0, which the CPU wheel (2.13.0+cpu) and a CUDA build (2.13.0+cu1xx) both
# satisfy: on a GPU machine install the CUDA build into .venv first (see README) and this keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/installer.sh
venv=${1:-.venv}
if [ ! -x "$venv/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$venv"
fi
stamp="$venv/.installed-$(cat pyproject.toml requirements.lock | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "installing the project into $venv (first run, or pyproject.toml or requirements.lock changed) ..."
  start=$(date +%s)
  install_into "$venv" -c requirements.lock -e ".[dev]"
  "$venv/bin/python" -c "import sft, ptuning, torch, transformers" # fail here, not later, if the install broke
  rm -f "$venv"/.installed-*
  touch "$stamp"
  echo "installed in $(( $(date +%s) - start )) s"
fi
