#!/usr/bin/env bash
# Run the whole test suite against the newest releases of transformers, peft and accelerate, past
# requirements.lock and pyproject.toml's upper bounds, in a throwaway virtualenv (.venv-newest, made anew
# each run): everything is installed from the lock first, then those three are upgraded (with whatever
# they need upgraded). LOCKED=1 runs the lock as it is. Where the newest release cannot be installed here
# (a dependency the package index lacks), it says so, and NO_DEPS=1 installs it without its dependencies.
# TORCH=2.14.1 also installs that torch release (a CUDA build from PyPI unless a CPU wheel is at hand; it
# runs on the CPU all the same), past pyproject.toml's pin.
# CI runs the lock (scripts/test.sh); this is how we find out early what the next release breaks.
# Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-newest
rm -rf "$venv"
bash scripts/setup.sh "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
quiet() { "$@" 2> >(grep -v "^WARNING: Location" >&2); }  # pip's complaints about find-links it cannot use
if [ -z "${LOCKED:-}" ]; then
  # The venv's pip, not uv: it upgrades the named packages only and reports what now conflicts with
  # glm-sft's declared ranges.
  quiet "${pip[@]}" install --quiet --upgrade transformers peft accelerate
  # pip settles on an older release, without a word, when the newest one needs something the package
  # index lacks: say so, with pip's reason, and with NO_DEPS=1 install the newest without its dependencies.
  for package in transformers peft accelerate; do
    newest=$("${pip[@]}" index versions "$package" 2>/dev/null | sed -nE "s/^$package \(([^)]+)\).*/\1/p")
    installed=$("$venv/bin/python" -c "from importlib.metadata import version; print(version('$package'))")
    if [ -n "$newest" ] && [ "$newest" != "$installed" ]; then
      reason=$("${pip[@]}" install --dry-run "$package==$newest" 2>&1 | grep -m1 "^ERROR" | sed -E "s/ \(from versions:.*//" || true)
      echo "note: $package $newest is released, but $installed is what installs here: ${reason:-pip gave no reason}"
      if [ -n "${NO_DEPS:-}" ]; then
        quiet "${pip[@]}" install --quiet --no-deps "$package==$newest"
        echo "note: NO_DEPS=1: $package $newest installed without its dependencies"
      fi
    fi
  done
fi
if [ -n "${TORCH:-}" ]; then
  quiet "${pip[@]}" install --quiet "torch==$TORCH" || { echo "note: torch $TORCH does not install here (above: pip's reason)"; exit 1; }
fi
"$venv/bin/python" - <<'EOF'
from importlib.metadata import version

from sft.versions import check_supported

print("testing with", ", ".join(f"{p} {version(p)}" for p in ("transformers", "peft", "accelerate", "torch")))
for warning in check_supported():
    print(warning)
EOF
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_WAIT_POLICY=PASSIVE PYTHON="$PWD/$venv/bin/python"
exec "$venv/bin/python" -m pytest -q "$@"
