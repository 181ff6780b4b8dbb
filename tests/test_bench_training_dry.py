"""benchmarks/bench_training.py --dry-run: the layer-stack benchmark runs end to end on the CPU
(toy sizes, emulated GEMMs), and the stack has the layer widths it claims."""
import os
import subprocess
import sys
from pathlib import Path

from quantlib.nn.training_bench import layer_stack

ROOT = Path(__file__).resolve().parents[1]


def test_layer_stack_widths():
    m = layer_stack(d=64, ffn=96, n_layers=2, kv=16)
    b = m[0]
    assert len(m) == 2
    assert b.qkv.weight.shape == (64 + 32, 64) and b.o.weight.shape == (64, 64)
    assert b.gate_up.weight.shape == (192, 64) and b.down.weight.shape == (64, 96)
    import torch
    assert m(torch.randn(3, 64)).shape == (3, 64)


def test_bench_training_dry_run():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, "benchmarks/bench_training.py", "--dry-run"], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    lines = p.stdout.splitlines()
    assert any(line.startswith("torch bf16 autocast") for line in lines)
    for name in ("fp8_delayed", "fp8_current", "fp8_rowwise", "fp8_block", "mxfp8"):
        row = next(line for line in lines if line.startswith(name + " "))
        assert "emulated" in row
