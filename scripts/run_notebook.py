"""Execute book notebooks in place, as the committed outputs must be made: a fresh kernel from
this environment, cells in order, no GPU variables. Usage: .venv/bin/python scripts/run_notebook.py book/NN_name.ipynb ...
Then check them: bash scripts/test.sh -k NN_name (or pytest --nbval ... book/NN_name.ipynb)."""
import os
import sys
import time

import nbformat
from nbclient import NotebookClient


def run(path: str, timeout: int = 1200) -> None:
    nb = nbformat.read(path, as_version=4)
    os.environ.setdefault("PYTHONHASHSEED", "0")
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    t0 = time.time()
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": os.path.dirname(os.path.abspath(path))}}).execute()
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
    nbformat.write(nb, path)
    print(f"{path}: executed in {time.time() - t0:.0f} s, {os.path.getsize(path) / 1e3:.0f} kB")


if __name__ == "__main__":
    for p in sys.argv[1:]:
        run(p)
