#!/usr/bin/env bash
# Every test: the unit tests (the Triton kernels run under TRITON_INTERPRET=1 when there is no
# GPU), then strict nbval over every notebook of the book, each notebook in a fresh kernel run
# exactly as its outputs were made (scripts/run_notebook.py). Extra arguments go to both pytest runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PYTHONHASHSEED=0 MPLBACKEND=agg
.venv/bin/python -m pytest -n 2 --dist loadfile tests "$@"
env -u TRITON_INTERPRET -u MPLBACKEND .venv/bin/python -m pytest -n 2 --dist loadfile \
  --nbval --nbval-current-env --nbval-sanitize-with tests/sanitize.cfg book "$@"
