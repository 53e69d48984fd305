#!/usr/bin/env bash
# Run the whole test suite against the newest releases of transformers, peft and accelerate, past
# requirements.lock and pyproject.toml's upper bounds, in a throwaway virtualenv (.venv-newest, made anew
# each run): everything is installed from the lock first, then those three are upgraded (with whatever
# they need upgraded). LOCKED=1 runs the lock as it is. CI runs the lock (scripts/test.sh); this is how we
# find out early what the next release breaks. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-newest
rm -rf "$venv"
bash scripts/setup.sh "$venv"
if [ -z "${LOCKED:-}" ]; then
  # The venv's pip, not uv: it upgrades the named packages only and reports what now conflicts with
  # glm-sft's declared ranges.
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade transformers peft accelerate \
    2> >(grep -v "^WARNING: Location" >&2)
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
