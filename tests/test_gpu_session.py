"""benchmarks/gpu_session.py, the one call a lent GPU gets: its plan must name scripts, tests and
checks that exist, so a session is not spent on a typo. Runs on the CPU (no step is executed)."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_session  # noqa: E402


def test_every_step_names_files_that_exist():
    for name, est, argv, _ in gpu_session.STEPS:
        assert est > 0
        files = [a for a in argv[1:] if a.endswith(".py")]
        assert files, name
        for f in files:
            assert (ROOT / f).is_file(), f"step {name}: {f} does not exist"


def test_only_patterns_match_gpu_check_names():
    """Each --only regex matches at least one check or benchmark name gpu_check.py defines."""
    src = (ROOT / "benchmarks/gpu_check.py").read_text()
    names = re.findall(r'run_(?:check|bench)\(\s*f?"([^"]+)"', src)
    assert len(names) > 30
    for name, _, argv, _ in gpu_session.STEPS:
        if "--only" in argv:
            pat = argv[argv.index("--only") + 1]
            assert any(re.search(pat, n) for n in names), f"step {name}: {pat} matches nothing"


def test_list_prints_the_plan_with_output_folders(tmp_path, capsys):
    assert gpu_session.main(["--list", "--out", str(tmp_path), "--from", "decode"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines] == gpu_session.NAMES[gpu_session.NAMES.index("decode"):]
    assert f"--out {tmp_path / 'decode'}" in lines[0] and "GPU_CHECK_BUDGET_S=" in lines[0]


@pytest.mark.skipif(sys.platform != "linux", reason="subprocess smoke test")
def test_without_a_gpu_it_says_so():
    p = subprocess.run([sys.executable, "benchmarks/gpu_session.py"], cwd=ROOT,
                       capture_output=True, text=True, env={"CUDA_VISIBLE_DEVICES": "",
                                                            "PATH": "/usr/bin:/bin"})
    assert p.returncode == 2 and "CUDA GPU" in p.stdout
