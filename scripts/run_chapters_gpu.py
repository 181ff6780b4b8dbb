"""Run every chapter's code cells in order, as a reader of a GPU notebook would, and report per
chapter: pass/fail, time, the slowest cell, warnings. No Jupyter kernel is needed: each chapter
runs in a fresh Python process (like a fresh notebook kernel), its cells exec'd in one namespace.

    PYTHONPATH=$PWD python scripts/run_chapters_gpu.py                 # every book/NN_*.ipynb
    PYTHONPATH=$PWD python scripts/run_chapters_gpu.py book/05_*.ipynb --cell-limit 60

Nothing is written back to the notebooks. TRITON_INTERPRET is removed from the environment (a
GPU notebook does not set it; chapters set it themselves when they find no GPU). Exit status 1
when a chapter fails or a cell runs longer than --cell-limit seconds.
"""
from __future__ import annotations

import argparse
import ast
import glob
import json
import os
import subprocess
import sys
import time


def _cell_code(src: str) -> str:
    """A cell's source as Python: IPython magics and shell escapes become calls of the
    `get_ipython()` stub (they sit in branches a set-up machine does not take)."""
    try:
        from IPython.core.inputtransformer2 import TransformerManager
        return TransformerManager().transform_cell(src)
    except ImportError:
        return "\n".join("pass" if ln.lstrip().startswith(("%", "!")) else ln
                         for ln in src.splitlines())


class _NoIPython:
    def __getattr__(self, name):
        raise RuntimeError("this cell needs IPython (a magic or shell escape ran)")


def _render(value) -> None:
    """What Jupyter does with a displayed value: its text and HTML forms."""
    repr(value)
    if hasattr(value, "_repr_html_"):
        value._repr_html_()


def _exec_cell(code: str, ns: dict) -> None:
    """exec a cell; like Jupyter, evaluate a final expression and render it (repr and HTML)."""
    tree = ast.parse(code)
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    exec(compile(tree, "<cell>", "exec"), ns)
    if last is not None:
        value = eval(compile(ast.Expression(last.value), "<cell>", "eval"), ns)
        if value is not None:
            _render(value)


def run_one(path: str) -> dict:
    """Run one chapter in this process; the result as a dict (printed as JSON by the child)."""
    import matplotlib
    matplotlib.use("Agg")
    import nbformat
    nb = nbformat.read(path, as_version=4)
    cwd = os.getcwd()
    os.chdir(os.path.dirname(os.path.abspath(path)))      # as Jupyter: the notebook's folder
    try:
        return _run_cells(nb)
    finally:
        os.chdir(cwd)


def _run_cells(nb) -> dict:
    import contextlib
    import io
    import warnings
    ns = {"__name__": "__main__", "get_ipython": lambda: _NoIPython(),
          "display": lambda *objs, **kw: [_render(o) for o in objs]}
    times, n_warn, t0 = [], 0, time.time()
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        t = time.time()
        try:
            with warnings.catch_warnings(record=True) as w, \
                    contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("always")
                _exec_cell(_cell_code(cell.source), ns)
                import matplotlib.pyplot as plt
                plt.close("all")
            n_warn += len(w)
        except Exception as e:  # noqa: BLE001 - reported, not raised
            times.append((time.time() - t, i))
            return {"ok": False, "seconds": time.time() - t0, "slowest": max(times),
                    "warnings": n_warn, "error": f"cell {i}: {type(e).__name__}: {e}"[:300]}
        times.append((time.time() - t, i))
    return {"ok": True, "seconds": time.time() - t0, "slowest": max(times, default=(0.0, -1)),
            "warnings": n_warn, "error": ""}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("notebooks", nargs="*", help="default: book/[0-9]*.ipynb")
    ap.add_argument("--cell-limit", type=float, default=60.0,
                    help="flag cells slower than this (seconds; default 60)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="per chapter, seconds")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print("RESULT " + json.dumps(run_one(a.one)))
        return 0
    paths = a.notebooks or sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..",
                                                         "book", "[0-9]*.ipynb")))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("PYTHONHASHSEED", "0")
    try:
        import torch
        where = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU only"
    except ImportError:
        where = "no torch"
    print(f"Running {len(paths)} chapter(s) on {where}, cell limit {a.cell_limit:.0f} s")
    print(f"{'chapter':28s} {'result':6s} {'seconds':>8s} {'slowest cell':>14s} {'warnings':>8s}")
    bad = 0
    for p in paths:
        try:
            r = subprocess.run([sys.executable, os.path.abspath(__file__), "--one", p], env=env,
                               capture_output=True, text=True, timeout=a.timeout)
            line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
            res = json.loads(line[-1][7:]) if line else {
                "ok": False, "seconds": 0.0, "slowest": (0.0, -1), "warnings": 0,
                "error": f"exit {r.returncode}: {r.stderr.strip()[-300:]}"}
        except subprocess.TimeoutExpired:
            res = {"ok": False, "seconds": a.timeout, "slowest": (a.timeout, -1), "warnings": 0,
                   "error": f"timed out after {a.timeout:.0f} s"}
        slow_s, slow_i = res["slowest"]
        ok = res["ok"] and slow_s <= a.cell_limit
        bad += not ok
        verdict = "pass" if ok else ("slow" if res["ok"] else "FAIL")
        print(f"{os.path.basename(p):28s} {verdict:6s} {res['seconds']:8.1f} "
              f"{f'[{slow_i}] {slow_s:.1f} s':>14s} {res['warnings']:8d}"
              + (f"  {res['error']}" if res["error"] else ""), flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
