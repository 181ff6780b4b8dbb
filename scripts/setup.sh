#!/usr/bin/env bash
# Idempotent set-up: a local virtual environment in .venv with quantlib (editable) and every
# extra the book and the tests need, at the exact versions in scripts/constraints.txt (the ones
# the notebooks' stored outputs were made with; scripts/refresh_lock.sh makes a new one). torch is
# the CPU build 2.13.0 here; quantlib itself only asks for ranges, so GPU notebooks keep their torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.setup-stamp
want=$(cat pyproject.toml scripts/setup.sh scripts/constraints.txt | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -c scripts/constraints.txt "torch==2.13.0"
  .venv/bin/python -m pip install -q -c scripts/constraints.txt -e ".[triton,book,test]"
  echo "$want" > "$stamp"
fi
