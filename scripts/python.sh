# Sourced by the scripts: PYTHON is the project's interpreter (.venv if present, unless one is active).
if [ -z "${PYTHON:-}" ]; then
  if [ -z "${VIRTUAL_ENV:-}" ] && [ -x "$(dirname "${BASH_SOURCE[0]}")/../.venv/bin/python" ]; then
    PYTHON="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.venv/bin/python"
  else
    PYTHON=python
  fi
fi
# On a few shared cores, OpenMP threads that spin while waiting slow every other process
# (and the test suite's subprocesses) down by up to 10x; passive waiting costs little alone.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
