"""scripts/run_chapters_gpu.py: cells run in order in one namespace; failures name their cell."""
import importlib.util
import json
from pathlib import Path

import nbformat

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "run_chapters_gpu.py"
spec = importlib.util.spec_from_file_location("run_chapters_gpu", SCRIPT)
rcg = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rcg)


def _notebook(tmp_path, *sources):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# A chapter")] + [
        nbformat.v4.new_code_cell(s) for s in sources]
    path = tmp_path / "01_x.ipynb"
    nbformat.write(nb, path)
    return str(path)


def test_cells_share_a_namespace_and_magics_in_untaken_branches_are_fine(tmp_path):
    path = _notebook(tmp_path, "try:\n    import json\nexcept ImportError:\n    %pip install x",
                     "a = 2", "b = a * 21\nb")
    r = rcg.run_one(path)
    assert r["ok"] and r["error"] == "" and r["slowest"][1] in (1, 2, 3)


def test_a_failing_cell_is_reported_with_its_index(tmp_path):
    path = _notebook(tmp_path, "x = 1", "raise RuntimeError('no GPU path')")
    r = rcg.run_one(path)
    assert not r["ok"] and r["error"].startswith("cell 2: RuntimeError: no GPU path")
    json.dumps(r)                                    # what the child prints to the parent
