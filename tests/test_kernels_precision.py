"""The mixed-precision measurements behind chapter 5."""
import math

import torch

from quantlib.kernels.precision import (
    accumulate,
    accumulation_error_table,
    fp8_products_table,
    layer_roles_table,
)


def test_fp8_products_exact_in_fp32_and_bf16_not_fp16():
    t = fp8_products_table("e4m3")
    rows = {r[0]: r for r in t.rows}
    assert rows["FP32"][1] == rows["BF16"][1] == 254 * 254
    assert rows["FP16"][3] > 0 and rows["FP16"][2] == 0      # only overflow: 448^2 > 65504


def test_accumulate_rounds_after_every_add():
    p = torch.tensor([[256.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    assert accumulate(p, "bf16").item() == 256.0             # each +1 is lost (ulp 2 at 256)
    assert accumulate(p, "fp32").item() == 259.0


def test_accumulation_error_grows_with_k_for_narrow_accumulators():
    t = accumulation_error_table(ks=(16, 1024), positive=True, trials=8)
    small, large = t.rows
    assert large[2] > 10 * small[2]                          # BF16 swamps
    assert large[1] < 1e-6 and large[2] > large[3] > large[1]


def test_layer_roles():
    t = layer_roles_table(m=16, k=256, n=16)
    q = {(r[1], r[2]): r[3] for r in t.rows}
    assert q[("accumulation", "FP32")] > 100 > q[("accumulation", "BF16")]
    assert q[("accumulation", "FP16")] == -math.inf
    assert 25 < q[("layer output", "W8A8, FP32 acc, BF16 out")] < 35


def test_accumulation_figure_plots_both_tables():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from quantlib.kernels.precision import accumulation_figure
    ks = (16, 64)
    zero = accumulation_error_table(ks, trials=2, seed=0)
    pos = accumulation_error_table(ks, positive=True, trials=2, seed=0)
    fig = accumulation_figure(zero, pos)
    assert len(fig.axes) == 2
    for ax, t in zip(fig.axes, (zero, pos)):
        assert [ln.get_label() for ln in ax.get_lines()] == ["FP32", "BF16", "FP16"]
        bf16 = ax.get_lines()[1]
        assert list(bf16.get_xdata()) == list(ks)
        assert list(bf16.get_ydata()) == [max(e, 1e-12) for e in t.column("BF16")]
    plt.close(fig)
