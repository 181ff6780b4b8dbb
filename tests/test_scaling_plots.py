"""The scaling chapter's figures, headless (Agg): each draws the table or tensor it is given
(read back from the plotted data) in the book's style."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from quantlib import Recipe, qsnr_table, quantize, scaling_plots, viz  # noqa: E402
from quantlib.table import Table  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_group_size_figure_plots_each_element_and_data_column():
    g = torch.Generator().manual_seed(0)
    data = {"Gaussian": torch.randn(8, 512, generator=g),
            "Student-t": torch.randn(8, 512, generator=g)}
    sweep = [Recipe(f"{e}_g{b}", e, "group", b) for e in ("int4", "e2m1") for b in (16, 64)]
    blocks = qsnr_table(data, sweep)
    fig = scaling_plots.group_size_figure(blocks)
    lines = fig.axes[0].get_lines()
    assert [ln.get_label() for ln in lines] == ["INT4, Gaussian", "INT4, Student-t",
                                                "E2M1, Gaussian", "E2M1, Student-t"]
    rows = blocks.to_dicts()
    assert list(lines[1].get_ydata()) == [r["Student-t"] for r in rows[:2]]
    assert list(lines[0].get_xdata()) == [r["bits/element"] for r in rows[:2]]
    assert fig.get_size_inches()[0] <= 6.5                       # book width: readable on a phone
    assert fig.axes[0].xaxis.label.get_fontsize() == viz.BOOK_STYLE["axes.labelsize"]


def test_block_figure_shows_the_dequantized_values_and_their_qsnr():
    vals = torch.randn(32, generator=torch.Generator().manual_seed(1))
    fig = scaling_plots.block_figure(vals)
    lines = fig.axes[0].get_lines()
    assert list(lines[0].get_ydata()) == pytest.approx(vals[:16].tolist())
    deq = quantize(vals.reshape(1, 32), "nvfp4").dequantize()[0, :16]
    assert list(lines[2].get_ydata()) == pytest.approx(deq.tolist())
    assert lines[2].get_label().startswith("nvfp4: QSNR ")
    with pytest.raises(ValueError, match="32"):
        scaling_plots.block_figure(vals[:16])


def test_recipe_bars_figure_has_one_bar_per_recipe_and_column():
    t = Table(["recipe", "bits/element", "A", "B"], [["r1", 8.0, 30.0, 20.0],
                                                     ["r2", 4.0, 18.0, 10.0]])
    fig = scaling_plots.recipe_bars_figure(t, data_columns=("A", "B"))
    widths = [p.get_width() for p in fig.axes[0].patches]
    assert widths == [30.0, 18.0, 20.0, 10.0]
    assert [lb.get_text() for lb in fig.axes[0].get_yticklabels()] == ["r1", "r2"]
