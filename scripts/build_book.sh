#!/usr/bin/env bash
# Build the book to _build/html. Outputs are committed in the notebooks (execution is off), so
# this renders what nbval checks; -W turns every warning into an error.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
rm -rf _build/html _build/.doctrees
# MathJax for offline reading: the self-contained SVG build from the django-static-mathjax wheel.
mkdir -p _static/mathjax
.venv/bin/python - <<'PY'
import importlib.util, pathlib, shutil
root = pathlib.Path(importlib.util.find_spec("mathjax").submodule_search_locations[0])
shutil.copy(root / "static" / "mathjax" / "es5" / "tex-svg.js", "_static/mathjax/tex-svg.js")
PY
.venv/bin/jupyter-book build . --path-output . --warningiserror --nitpick --keep-going
echo "book: $(pwd)/_build/html/index.html"
