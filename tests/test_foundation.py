"""The house itself: packaging, environment files, book configuration and committed notebooks."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "book").glob("*.ipynb"))
CONDA_TO_PYPI = {"pytorch": "torch"}


def _name(requirement: str) -> str:
    name = re.split(r"[<>=!~;\[ @]", requirement.strip(), maxsplit=1)[0]
    return name.lower().replace("_", "-")


def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_distribution_name_is_not_quantlib():
    # PyPI's "quantlib" is the QuantLib finance bindings.
    project = _pyproject()["project"]
    assert project["name"] != "quantlib"
    assert "quantlib" in project["name"]


def test_environment_yml_names_the_same_packages_as_pyproject():
    project = _pyproject()["project"]
    extras = project["optional-dependencies"]
    wanted = {_name(r) for r in project["dependencies"]}
    for extra in ("triton", "book", "test"):
        wanted |= {_name(r) for r in extras[extra]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    named = set()
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            named |= {_name(r) for r in dep["pip"] if not r.startswith("-e")}
        elif _name(dep) not in ("python", "pip"):
            named.add(CONDA_TO_PYPI.get(_name(dep), _name(dep)))
    assert named == wanted, f"only in environment.yml: {named - wanted}; only in pyproject: {wanted - named}"


def test_torch_is_a_range_in_the_package_and_pinned_in_the_setup():
    deps = _pyproject()["project"]["dependencies"]
    torch_req = next(r for r in deps if _name(r) == "torch")
    assert "==" not in torch_req, "quantlib must keep a GPU notebook's own torch"
    assert "torch==2.13.0" in (ROOT / "scripts" / "setup.sh").read_text()


def test_quantlib_imports_without_triton():
    # A machine without Triton (macOS, Windows) must import quantlib and run its CPU paths.
    code = ("import sys; sys.modules['triton'] = None; import quantlib; "
            "from quantlib.device import kernel_path; assert kernel_path('cpu') == 'reference'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_config_is_offline_and_does_not_execute():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["execute"]["execute_notebooks"] == "off"
    assert config["sphinx"]["config"].get("intersphinx_mapping", {}) == {}
    assert "sphinx.ext.intersphinx" not in config["sphinx"].get("extra_extensions", [])


def _toc_files():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        files += [c["file"] for c in part["chapters"]]
    return files


def test_toc_lists_every_notebook_and_only_existing_files():
    files = _toc_files()
    for f in files:
        assert list(ROOT.glob(f + ".*")), f"_toc.yml lists {f}, which does not exist"
    for nb in NOTEBOOKS:
        assert str(nb.relative_to(ROOT).with_suffix("")) in files, f"{nb.name} is not in _toc.yml"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_ready_for_strict_nbval(path):
    """nbval silently skips a code cell with no stored execution; a stored error or stderr would
    be compared as if it were right. None of these may be committed."""
    nb = json.loads(path.read_text())
    assert path.stat().st_size < 1_000_000, "keep notebooks under 1 MB (smaller figures)"
    last = 0
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code" or not "".join(cell["source"]).strip():
            continue
        tags = set(cell.get("metadata", {}).get("tags", []))
        if "nbval-skip" in tags:
            continue
        assert cell["execution_count"] is not None, f"cell {i} has never been executed"
        assert cell["execution_count"] > last, f"cell {i} executed out of order"
        last = cell["execution_count"]
        for out in cell["outputs"]:
            assert out["output_type"] != "error", f"cell {i} stores an error"
            if "nbval-ignore-output" not in tags:
                assert not (out["output_type"] == "stream" and out["name"] == "stderr"), \
                    f"cell {i} writes to stderr: {''.join(out['text'])[:200]}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_install_cell_uses_the_configured_repository(path):
    url = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
    nb = json.loads(path.read_text())
    first_code = next(c for c in nb["cells"] if c["cell_type"] == "code")
    src = "".join(first_code["source"])
    assert "import quantlib" in src and "%pip install" in src, "first code cell must install quantlib"
    assert f"git+{url}" in src, f"install cell must use the repository in _config.yml ({url})"
