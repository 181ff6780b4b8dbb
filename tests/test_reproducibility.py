"""The book's stored outputs must be the same bits on every x86-64 CPU: the numeric environment
scripts/run_notebook.py pins, and the lock of exact versions scripts/setup.sh installs."""
import importlib.util
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("run_notebook", ROOT / "scripts" / "run_notebook.py")
run_notebook = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_notebook)

# Operations whose bits depend on the CPU when nothing is pinned: FP32 GEMM (MKL), BF16 matmul
# and GELU (oneDNN), a long sum (threads), softmax (torch's vector kernels), numpy's BLAS and its
# float32 exp.
PROBE = r"""
import hashlib, numpy as np, torch
exec(open(__import__("os").environ["KERNEL_STARTUP_FILE"]).read())
g = torch.Generator().manual_seed(0)
a, b = torch.randn(257, 300, generator=g), torch.randn(300, 129, generator=g)
r = np.random.default_rng(0)
A, B = r.standard_normal((257, 300)), r.standard_normal((300, 129))
parts = [a @ b, (a.bfloat16() @ b.bfloat16()).float(), torch.nn.functional.gelu(a),
         torch.randn(1000003, generator=g).sum().reshape(1), torch.softmax(a, -1)]
h = hashlib.sha1(b"".join(t.numpy().tobytes() for t in parts))
h.update((A @ B).tobytes()); h.update(np.exp(A.astype(np.float32)).tobytes())
print(h.hexdigest())
"""


def _probe(tmp_path, other_cpu=None):
    env = dict(os.environ)
    saved = dict(os.environ)
    try:
        run_notebook.pin_environment(other_cpu)
        env = dict(os.environ)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    startup = tmp_path / "startup.py"
    startup.write_text(run_notebook.KERNEL_STARTUP)
    env["KERNEL_STARTUP_FILE"] = str(startup)
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                         timeout=120, check=True)
    return out.stdout.strip()


def test_pinned_numerics_do_not_depend_on_the_cpu(tmp_path):
    """The same bits as on a four-core CPU without AVX-512: the check scripts/test.sh repeats on
    the chapters that train."""
    assert _probe(tmp_path) == _probe(tmp_path, "avx2")


def test_pins_win_over_what_the_machine_sets():
    saved = dict(os.environ)
    try:
        run_notebook.pin_environment("avx2")
        for key, value in run_notebook.NUMERIC_ENV.items():
            assert os.environ[key] == value
        startup = Path(os.environ["IPYTHONDIR"]) / "profile_default" / "startup"
        assert "mkldnn.enabled = False" in (startup / "00-numeric-env.py").read_text()
        assert "TRITON_INTERPRET" not in os.environ
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_unknown_cpu_is_refused():
    with pytest.raises(SystemExit, match="--as takes one of"):
        run_notebook.main(["--as", "sparc", "--check"])


def _lock():
    pins = {}
    for line in (ROOT / "scripts" / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = Version(version)
    return pins


def test_lock_pins_every_dependency_within_pyproject_ranges():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in ("triton", "book", "test"):
        reqs += project["optional-dependencies"][extra]
    pins = _lock()
    for text in reqs:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate():
            continue
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in pins, f"{req.name} is not pinned in scripts/constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), \
            f"the lock's {req.name}=={pins[name]} is outside pyproject's {req.specifier}"


def test_lock_pins_the_cpu_torch_setup_installs():
    assert _lock()["torch"] == Version("2.13.0+cpu")
    assert "-c scripts/constraints.txt" in (ROOT / "scripts" / "setup.sh").read_text()
