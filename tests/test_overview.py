"""The opening figure: strategies side by side, memory from quantlib.memory."""
import matplotlib
import pytest

matplotlib.use("Agg")

from quantlib.memory import training_memory  # noqa: E402
from quantlib.overview import STRATEGY_LOOPS, strategies_figure, strategy_memory  # noqa: E402


def test_strategy_memory_is_training_memory():
    mems = strategy_memory("Llama-2-7B", batch_size=1, seq_len=1024, fmt="FP8")
    assert list(mems) == ["ptq", "qat", "qt"]
    for s, m in mems.items():
        assert m.total == training_memory("Llama-2-7B", s, batch_size=1, seq_len=1024,
                                          fmt="FP8").total


def test_quantization_enters_where_each_strategy_says():
    quantized = {s: [label for label, _, q in stages if q]
                 for s, (_, stages) in STRATEGY_LOOPS.items()}
    assert quantized["ptq"] == ["after training"]             # the loop itself untouched
    assert "forward" in quantized["qat"] and "backward" not in quantized["qat"]
    assert {"forward", "backward"} <= set(quantized["qt"])


def test_figure_bars_add_up_to_the_totals():
    fig = strategies_figure("Llama-2-7B", batch_size=1, seq_len=1024)
    bar_ax = fig.axes[-1]
    totals = {}
    for patch in bar_ax.patches:
        y = round(patch.get_y() + patch.get_height() / 2)
        totals[y] = max(totals.get(y, 0), patch.get_x() + patch.get_width())
    mems = strategy_memory("Llama-2-7B", batch_size=1, seq_len=1024, fmt="FP8")
    for i, m in enumerate(mems.values()):
        assert totals[i] == pytest.approx(m.total / 1e9)
    with pytest.raises(ValueError):
        strategies_figure("Llama-2-7B", fmt="FP9")
