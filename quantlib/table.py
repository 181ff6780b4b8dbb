"""A small table of results: rows of values, printed as aligned text and rendered as HTML.

Every table in the book (format comparisons, QSNR grids, benchmark results) is a `Table`, so a
chapter shows exactly what a function returned and a test can read the same rows.
"""
from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from typing import Any


def _fmt(v: Any, digits: int) -> str:
    if isinstance(v, bool) or v is None:
        return "" if v is None else str(v)
    if isinstance(v, int):
        return f"{v:,}" if abs(v) >= 10_000 else str(v)
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return str(v)
        if v != 0 and (abs(v) >= 1e6 or abs(v) < 10 ** -digits):
            return f"{v:.{digits}g}"
        return f"{v:.{digits}f}"
    return str(v)


class Table:
    """Rows (sequences or dicts) under named columns; floats shown with `digits` decimals."""

    def __init__(self, columns: Sequence[str], rows: Iterable[Sequence[Any] | dict] = (),
                 title: str | None = None, digits: int = 4):
        self.columns = list(columns)
        self.rows: list[list[Any]] = []
        self.title = title
        self.digits = digits
        for r in rows:
            self.append(r)

    def append(self, row: Sequence[Any] | dict) -> None:
        if isinstance(row, dict):
            row = [row.get(c) for c in self.columns]
        if len(row) != len(self.columns):
            raise ValueError(f"row has {len(row)} values but the table has {len(self.columns)} "
                             f"columns {self.columns}")
        self.rows.append(list(row))

    def column(self, name: str) -> list[Any]:
        """The values of one column, in row order."""
        i = self.columns.index(name)
        return [r[i] for r in self.rows]

    def select(self, columns: Sequence[str] | dict, title: str | None = None) -> Table:
        """A narrower view (a wide table shown as two narrower ones): `select(self, ...)`."""
        return select(self, columns, title)

    def to_dicts(self) -> list[dict]:
        return [dict(zip(self.columns, r)) for r in self.rows]

    def _cells(self) -> list[list[str]]:
        return [[_fmt(v, self.digits) for v in r] for r in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def _numeric(self) -> list[bool]:
        """Which columns hold only numbers (None cells aside): those align right."""
        return [all(isinstance(r[i], (int, float)) and not isinstance(r[i], bool)
                    for r in self.rows if r[i] is not None) for i in range(len(self.columns))]

    def __str__(self) -> str:
        cells = self._cells()
        widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(self.columns)]
        numeric = self._numeric()

        def line(vals):
            return "  ".join(v.rjust(w) if num else v.ljust(w)
                             for v, w, num in zip(vals, widths, numeric)).rstrip()

        out = [self.title] if self.title else []
        out += [line(self.columns), "  ".join("-" * w for w in widths)]
        out += [line(r) for r in cells]
        return "\n".join(out)

    __repr__ = __str__

    def to_markdown(self) -> str:
        out = ["| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        out += ["| " + " | ".join(r) + " |" for r in self._cells()]
        return "\n".join(out)

    def _repr_html_(self) -> str:
        """The title, then the table in a scroll container (classes styled by the book's
        _static/book.css): a table wider than the page scrolls sideways under a title that
        stays in place, instead of being cut; numeric columns carry class "num" so their
        digits align right."""
        num = self._numeric()

        def cell(tag, v, n):
            return f'<{tag} class="num">{html.escape(v)}</{tag}>' if n else \
                f"<{tag}>{html.escape(v)}</{tag}>"

        head = "".join(cell("th", c, n) for c, n in zip(self.columns, num))
        body = "".join("<tr>" + "".join(cell("td", v, n) for v, n in zip(r, num)) + "</tr>"
                       for r in self._cells())
        title = f'<div class="ql-table-title">{html.escape(self.title)}</div>' if self.title else ""
        label = html.escape(self.title or "table", quote=True)
        return (f'<div class="ql-table">{title}'
                f'<div class="ql-table-scroll" role="region" tabindex="0" aria-label="{label}">'
                f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div></div>")


def select(table: Table, columns: Sequence[str] | dict, title: str | None = None) -> Table:
    """A narrower view of `table` (for a page narrower than all its columns): the named columns
    in that order, or with a dict {column: shorter name}, those columns renamed; the title is
    the table's unless one is given. The table itself is unchanged."""
    names = dict(columns) if isinstance(columns, dict) else {c: c for c in columns}
    missing = [c for c in names if c not in table.columns]
    if missing:
        raise ValueError(f"no column {missing} in the table; it has {table.columns}")
    idx = [table.columns.index(c) for c in names]
    return Table(list(names.values()), ([r[i] for i in idx] for r in table.rows),
                 title=table.title if title is None else title, digits=table.digits)


def transpose(table: Table, title: str | None = None, corner: str | None = None) -> Table:
    """`table` with rows and columns swapped (a wide table of few rows becomes a narrow one): the
    first column's values become the column names, the other column names the first column,
    headed `corner` (default: the first column's name)."""
    head = [table.columns[0] if corner is None else corner, *(str(r[0]) for r in table.rows)]
    return Table(head, ([c, *(r[i] for r in table.rows)] for i, c in enumerate(table.columns)
                        if i > 0),
                 title=table.title if title is None else title, digits=table.digits)
