#!/usr/bin/env bash
# Make a new scripts/constraints.txt: the newest versions pyproject.toml's ranges admit, resolved
# in a throwaway virtual environment (torch stays the CPU build 2.13.0). Afterwards re-execute
# every chapter (scripts/run_notebook.py book/*.ipynb), review the changed outputs, and commit
# the lock and the notebooks together.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
tmp=$(mktemp -d)
"$PY" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install -q --upgrade pip
"$tmp/venv/bin/python" -m pip install -q "torch==2.13.0"
"$tmp/venv/bin/python" -m pip install -q -e ".[triton,book,test]" "torch==2.13.0"
{
  echo "# Exact versions the book's stored outputs were made with (scripts/refresh_lock.sh)."
  "$tmp/venv/bin/python" -m pip freeze --exclude-editable | grep -v -i '^quantlib-book'
} > scripts/constraints.txt
rm -rf "$tmp"
echo "scripts/constraints.txt: $(grep -vc '^#' scripts/constraints.txt) packages"
