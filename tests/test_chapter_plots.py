"""The figures of chapters 7 and 8 draw the numbers they are given, in the book's style (read back
from the drawn lines and bars, headless)."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from quantlib.nn.ptq_plots import channel_amax, smoothing_ranges, smoothquant_sweep
from quantlib.nn.qat_plots import qat_curves, ste_figure
from quantlib.viz import BOOK_STYLE


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def _acts():
    g = torch.Generator().manual_seed(0)
    acts = torch.randn(50, 24, generator=g)
    acts[:, 5] *= 30
    return acts, torch.randn(12, 24, generator=g) * 0.1


def test_channel_amax_draws_one_bar_per_channel_at_its_max():
    acts, _ = _acts()
    fig = channel_amax(acts, "encoder.layer.3.intermediate.dense")
    heights = [p.get_height() for p in fig.axes[0].patches]
    assert np.allclose(heights, acts.abs().amax(0).numpy())
    assert fig.dpi == BOOK_STYLE["figure.dpi"] and fig.get_figwidth() == 6.0


def test_smoothing_ranges_draws_both_operands_before_and_after():
    acts, w = _acts()
    s = torch.rand(24) + 0.5
    fig = smoothing_ranges(acts, w, s, alpha=0.5)
    before, after = fig.axes
    assert np.allclose(before.lines[0].get_ydata(), acts.abs().amax(0).numpy())
    assert np.allclose(after.lines[0].get_ydata(), (acts / s).abs().amax(0).numpy())
    assert np.allclose(after.lines[1].get_ydata(), (w * s).abs().amax(0).numpy())


def test_smoothquant_sweep_plots_one_minus_cosine():
    fig = smoothquant_sweep([0.0, 0.5], {"a": [0.9, 0.99], "b": [0.98, 0.999]},
                            {"a": 0.95, "b": 0.997})
    lines = fig.axes[0].lines
    assert np.allclose(lines[0].get_ydata(), [0.1, 0.01])
    assert np.allclose(lines[1].get_ydata(), [0.05, 0.05])        # 'a' without smoothing
    assert np.allclose(lines[2].get_ydata(), [0.02, 0.001])


def test_ste_figure_and_qat_curves_draw_their_inputs():
    x = torch.linspace(-2, 2, 9)
    y, g = x.round().clamp(-1, 1), (x.abs() <= 1.5).float()
    fig = ste_figure(x, y, g)
    assert np.allclose(fig.axes[0].lines[1].get_ydata(), y.numpy())
    assert np.allclose(fig.axes[1].lines[0].get_ydata(), g.numpy())
    fig = qat_curves({"QAT": [0.8, 0.9]}, fp32=0.95, ptq=0.7)
    ys = [list(line.get_ydata()) for line in fig.axes[0].lines]
    assert ys[0] == [0.8, 0.9] and ys[1] == [0.95, 0.95] and ys[2] == [0.7, 0.7]
