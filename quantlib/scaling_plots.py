"""The figures of the scaling chapter, drawn from the tables and tensors it computes (in the
book's style, `quantlib.viz.BOOK_STYLE`)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import torch

from quantlib.metrics import qsnr
from quantlib.qtensor import quantize
from quantlib.table import Table
from quantlib.viz import book_figure

_MARKERS = {"int4": "o", "e2m1": "s"}
_LINES = ("-", "--", ":", "-.")


@book_figure
def group_size_figure(blocks: Table, data_columns=("Gaussian", "Student-t")):
    """QSNR against bits per element, one line per element format (the recipe name's prefix,
    e.g. `int4_g32`) and data column of `blocks` (a `qsnr_table` of group-size recipes)."""
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    rows = blocks.to_dicts()
    elems = list(dict.fromkeys(r["recipe"].split("_")[0] for r in rows))
    for elem in elems:
        rs = [r for r in rows if r["recipe"].split("_")[0] == elem]
        for col, ls in zip(data_columns, _LINES):
            ax.plot([r["bits/element"] for r in rs], [r[col] for r in rs],
                    marker=_MARKERS.get(elem, "^"), linestyle=ls, label=f"{elem.upper()}, {col}")
    ax.set_xlabel("bits per element, FP32 scales included")
    ax.set_ylabel("QSNR (dB)")
    ax.set_title("Smaller groups: more scales, less error")
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


@book_figure
def block_figure(values: torch.Tensor, recipes=("mxfp4", "nvfp4"), shown: int = 16):
    """The first `shown` values of one block of 32 before and after each recipe, each recipe's
    QSNR on those values in the legend."""
    if values.numel() != 32:
        raise ValueError(f"block_figure takes one block of 32 values (an MX block), not "
                         f"{values.numel()}")
    vals = values.reshape(1, 32).float()
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    ax.plot(range(shown), vals[0, :shown], "ko", label="original (FP32)")
    for name, marker in zip(recipes, ("x", "+", "^", "v")):
        deq = quantize(vals, name).dequantize()[0, :shown]
        ax.plot(range(shown), deq, marker, markersize=11, markeredgewidth=1.8,
                label=f"{name}: QSNR {qsnr(vals[0, :shown], deq):.1f} dB")
    ax.set_xlabel("element of the block")
    ax.set_ylabel("value")
    ax.set_title(f"{shown} values before and after 4-bit block quantization")
    ax.legend(fontsize=10, loc="best")
    fig.tight_layout()
    return fig


@book_figure
def recipe_bars_figure(table: Table, data_columns=("Gaussian", "Student-t", "MiniLM weights")):
    """QSNR of each recipe (rows of `table`, a `qsnr_table`) as horizontal grouped bars, one bar
    per data column; recipe names on the y axis so they stay readable on a narrow page."""
    names = table.column("recipe")
    n = len(data_columns)
    height = 0.8 / n
    fig, ax = plt.subplots(figsize=(6.0, 0.42 * len(names) + 1.6))
    for i, col in enumerate(data_columns):
        ax.barh([j + (i - (n - 1) / 2) * height for j in range(len(names))], table.column(col),
                height, label=col)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel("QSNR (dB)")
    ax.set_title("Finer scales help most on heavy tails and real weights")
    ax.legend(loc="upper center", bbox_to_anchor=(0.4, -0.12 * 8 / len(names)), ncol=n,
              frameon=False, fontsize=10)
    fig.tight_layout()
    return fig
