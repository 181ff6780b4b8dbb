#!/usr/bin/env bash
# Idempotent set-up: a local virtual environment in .venv with quantlib (editable) and every
# extra the book and the tests need. torch is pinned to the CPU build 2.13.0 here; quantlib itself
# only asks for a range, so GPU notebooks keep their own torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.setup-stamp
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q "torch==2.13.0"
  .venv/bin/python -m pip install -q -e ".[triton,book,test]" "torch==2.13.0"
  echo "$want" > "$stamp"
fi
