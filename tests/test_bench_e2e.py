"""benchmarks/bench_e2e.py --dry-run (a tiny Llama on the CPU) runs every config and the
baselines, and the tinygemm baseline computes what quantlib's INT4 weight means."""
import importlib.util
import json
import os
import sys

import pytest
import torch
from torch import nn

from quantlib.qtensor import quantize

BENCH = os.path.join(os.path.dirname(__file__), "..", "benchmarks")


def load(name):
    sys.path.insert(0, BENCH)
    spec = importlib.util.spec_from_file_location(name, os.path.join(BENCH, f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(torch.cuda.is_available(), reason="the dry run is the CPU's")
def test_bench_e2e_dry_run(tmp_path, capsys):
    bench = load("bench_e2e")
    assert bench.main(["--dry-run", "--out", str(tmp_path)]) == 0
    out = json.loads((tmp_path / "bench_e2e.json").read_text())
    rows = {r["config"]: r for r in out["results"]["tiny"]}
    assert set(rows) == {"bf16", "tinygemm_int4_g128", *bench.CONFIGS}
    for name, r in rows.items():
        assert "error" not in r, (name, r.get("error"))
        assert r["finite logits"] and r["decode b1 kv32 ms"] > 0 and r["prefill 32 ms"] > 0
    assert rows["int4_g128"]["bytes"] < 0.5 * rows["bf16"]["bytes"]
    assert rows["fp8"]["bytes"] < rows["bf16"]["bytes"]
    table = capsys.readouterr().out
    assert "time of BF16 / time of the config" in table and "int4_g128" in table


@pytest.mark.parametrize("recipe", ["int4_g128", "int4_g128_asym"])
def test_tinygemm_baseline_matches_the_int4_weight(recipe):
    """tinygemm's (q - 8) * scale + zero with BF16 scales and zeros reproduces quantlib's
    dequantized INT4 weight to BF16 precision (the baseline multiplies the same weights)."""
    base = load("_baselines")
    torch.manual_seed(0)
    lin = nn.Linear(256, 48)
    layer = base.TinyGemmLinear(lin, recipe)
    x = torch.randn(5, 256).to(torch.bfloat16)
    w = quantize(lin.weight.detach(), recipe).dequantize()
    ref = x.float() @ w.T + lin.bias.detach()
    y = layer(x).float()
    assert (y - ref).abs().max() <= 0.02 * ref.abs().max()
    with pytest.raises(ValueError, match="group scales"):
        base.tinygemm_weight(quantize(lin.weight.detach(), "int4_channel"))
