"""Presentation of the quantization debugger (chapter 12): harm per layer along the depth, and
the plan table split to fit a page."""
from __future__ import annotations

import matplotlib.pyplot as plt

from quantlib.nn.sensitivity import harm_matrix
from quantlib.table import Table
from quantlib.viz import book_figure


@book_figure
def harm_by_depth(report, column: str = "error alone", title: str | None = None, ax=None):
    """One line per config: the report's `column` (default the error with only that layer
    quantized) for every layer in depth order, on a log scale. Returns the Figure."""
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(6.0, 3.8))
    for label, values in harm_matrix(report, column).items():
        ax.semilogy(range(len(values)), values, "o-", ms=3, lw=1, label=label)
    ax.set(xlabel="layer (depth order)", ylabel=f"{column} ({report.metric})",
           title=title or "Harm of each layer quantized alone")
    ax.grid(alpha=0.3, which="major")
    # below the axes, so that no line hides behind it
    ax.legend(ncol=3, fontsize=10, loc="upper center", bbox_to_anchor=(0.5, -0.22),
              frameon=False)
    fig.tight_layout()
    return fig


def split_plan_table(table: Table, first: int = 5) -> tuple[Table, Table]:
    """`plan_table`'s rows as two narrower tables: its first `first` columns (model, bytes,
    predicted and measured error, layers per config), then the model column with the rest (the
    quality metrics of `evaluate`). Every value is kept."""
    if not 1 <= first < len(table.columns):
        raise ValueError(f"first must be between 1 and {len(table.columns) - 1} (the table has "
                         f"columns {table.columns}), got {first}")
    title = table.title or "plans"
    rest = [table.columns[0], *table.columns[first:]]
    return (Table(table.columns[:first], [r[:first] for r in table.rows],
                  title=f"{title}: bytes and error", digits=table.digits),
            Table(rest, [[r[0], *r[first:]] for r in table.rows],
                  title=f"{title}: quality", digits=table.digits))
