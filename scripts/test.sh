#!/usr/bin/env bash
# Every test: the unit tests (the Triton kernels run under TRITON_INTERPRET=1 when there is no
# GPU), then strict nbval over every notebook of the book, each notebook in a fresh kernel in the
# pinned numeric environment its outputs were made in (scripts/run_notebook.py), then the
# notebooks that train once more as another CPU would run them: the outputs must not change.
# Extra arguments go to every pytest run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# tests/test_browser.py drives Debian's Chromium: install it where this user can.
if ! command -v chromium >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
export PYTHONHASHSEED=0 MPLBACKEND=agg
.venv/bin/python -m pytest -n 2 --dist loadfile tests "$@"
.venv/bin/python scripts/run_notebook.py --check -n 2 --dist loadfile book "$@"
.venv/bin/python scripts/run_notebook.py --as avx2 --check -n 2 --dist loadfile \
  book/07_ptq.ipynb book/08_qat.ipynb book/09_training.ipynb book/11_kv_cache.ipynb \
  book/12_debugging.ipynb "$@"
