#!/usr/bin/env bash
# Build the book to _build/html. Outputs are committed in the notebooks (execution is off), so
# this renders what nbval checks; -W turns every warning into an error.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
rm -rf _build/html _build/.doctrees
.venv/bin/jupyter-book build . --path-output . --warningiserror --nitpick --keep-going
echo "book: $(pwd)/_build/html/index.html"
