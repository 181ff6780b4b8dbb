"""Figure of the quantization debugger (chapter 12): harm per layer along the depth."""
from __future__ import annotations

import matplotlib.pyplot as plt

from quantlib.nn.sensitivity import harm_matrix


def harm_by_depth(report, column: str = "error alone", title: str | None = None, ax=None):
    """One line per config: the report's `column` (default the error with only that layer
    quantized) for every layer in depth order, on a log scale. Returns the Figure."""
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(8, 3.4), dpi=100)
    for label, values in harm_matrix(report, column).items():
        ax.semilogy(range(len(values)), values, "o-", ms=3, lw=1, label=label)
    ax.set(xlabel="layer (depth order)", ylabel=f"{column} ({report.metric})",
           title=title or "Harm of each layer quantized alone")
    ax.grid(alpha=0.3, which="major")
    ax.legend(fontsize=8, ncol=3)
    fig.tight_layout()
    return fig
