#!/usr/bin/env bash
# Write requirements.lock: every package that a fresh install of the project (with the dev extra) resolves
# to, pinned with ==, from a throwaway virtualenv. It takes the newest releases within pyproject.toml's
# ranges; requirements given as arguments narrow it:
#   bash scripts/lock.sh                           # newest within the ranges
#   bash scripts/lock.sh "transformers==5.24.0"    # one release within the range, not the newest
# Then bash scripts/test.sh (it reinstalls .venv from the new lock); commit the lock if the suite passes.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/installer.sh
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"${PYTHON:-python3}" -m venv "$tmp/venv"
install_into "$tmp/venv" -e ".[dev]" "$@"
{
  echo "# Written by: bash scripts/lock.sh${1+$(printf ' %q' "$@")} ($(date +%F), $("$tmp/venv/bin/python" -V))"
  echo "# Installed as constraints by scripts/setup.sh. torch carries no local label (+cpu) so that a CUDA"
  echo "# build of the same release satisfies it too. setuptools is here because torch requires it."
  # --all keeps setuptools; pip itself belongs to the virtualenv, not to the project.
  "$tmp/venv/bin/python" -m pip freeze --all --exclude-editable | grep -v "^pip==" \
    | sed -E 's/^(torch==[^+]+)\+.*/\1/'
} > requirements.lock
echo "wrote requirements.lock ($(grep -cv '^#' requirements.lock) packages)"
