"""Figures shared by the chapters: bit layouts drawn from the format descriptions, number lines
and value spacing, relative error across magnitudes, stochastic rounding, where values fall in a
format's range. Each function returns a matplotlib Figure; every value plotted comes from
quantlib's codecs.

Every figure is drawn in the book's style (`BOOK_STYLE`, applied by the `book_figure`
decorator): 6 inches wide at 100 dpi with 11-12 pt text, so that on a page 390 px wide (a
phone) letters are still ~9 px high; scripts/run_notebook.py stores figures as 2x PNGs.
"""
from __future__ import annotations

import functools
import math

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import Rectangle

from quantlib.codecs import decode, round_to_format
from quantlib.explain import ANATOMY_FORMATS, code_of, fields, value_of
from quantlib.formats import get_format

BOOK_STYLE = {
    "figure.dpi": 100,
    "figure.figsize": (6.0, 3.4),
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
    "font.size": 12,
    "axes.titlesize": 12,
    "axes.labelsize": 12,
    "xtick.labelsize": 11,
    "ytick.labelsize": 11,
    "legend.fontsize": 11,
    "legend.framealpha": 0.9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    # SVG output reproducible run to run (ids from a fixed salt, no date in the metadata)
    "svg.hashsalt": "quantlib-book",
    "svg.fonttype": "path",
}


def book_figure(fn):
    """Decorator: `fn` draws its figure under `BOOK_STYLE` (for plotting functions outside this
    module too)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with plt.rc_context(BOOK_STYLE):
            return fn(*args, **kwargs)
    return wrapper


FIELD_COLORS = {"sign": "#f4a6a6", "exponent": "#9ecae1", "mantissa": "#fdd49e",
                "integer": "#c7e9c0"}
FIELD_LETTER = {"sign": "S", "exponent": "E", "mantissa": "M", "integer": "I"}


def _label(name: str, n: int) -> str:
    if name == "sign":
        return "S"
    return f"{name} {n}" if n >= 7 else f"{FIELD_LETTER[name]}{n}" if n >= 2 else FIELD_LETTER[name]


@book_figure
def bit_layout(formats=ANATOMY_FORMATS, value: float | None = None):
    """Each format's bits as a row of cells coloured by field (sign, exponent, mantissa), one
    cell per bit. With `value`, each cell holds that value's bit in the format and the row ends
    with the stored value; without, it ends with the bias and the largest value."""
    fmts = [get_format(f) for f in formats]
    width = max(f.bits for f in fmts)
    fig, ax = plt.subplots(figsize=(6.0, 0.45 * len(fmts) + 0.8))
    for row, f in enumerate(fmts):
        y = len(fmts) - 1 - row
        bits = format(code_of(value, f), f"0{f.bits}b") if value is not None else None
        x = 0
        for name, n in fields(f):
            ax.add_patch(Rectangle((x, y + 0.1), n, 0.8, facecolor=FIELD_COLORS[name],
                                   edgecolor="black", lw=0.8, gid=name))
            ax.vlines(np.arange(x + 1, x + n), y + 0.1, y + 0.9, colors="grey", lw=0.3)
            if bits is None:
                ax.text(x + n / 2, y + 0.5, _label(name, n), ha="center", va="center", fontsize=9)
            x += n
        if bits is not None:
            for i, b in enumerate(bits):
                ax.text(i + 0.5, y + 0.5, b, ha="center", va="center", fontsize=8, gid="bit")
            stored = value_of(code_of(value, f), f)
            note = f"= {stored:.8g}"
        else:
            note = f"bias {f.bias}, max {f.max:.5g}" if f.is_float else f"max {f.max:.0f}"
        ax.text(f.bits + 0.6, y + 0.5, note, va="center", fontsize=9.5)
    ax.set_xlim(0, width + 14)
    ax.set_ylim(0, len(fmts))
    ax.set_yticks(np.arange(len(fmts)) + 0.5, [f.title for f in reversed(fmts)])
    ax.set_xticks([])
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    ax.tick_params(left=False)
    title = f"{value} in each format" if value is not None else "Bit layouts"
    ax.set_title(title + ": sign (red), exponent (blue), mantissa (orange)")
    fig.tight_layout()
    return fig


def representable_values(fmt, positive: bool = True) -> np.ndarray:
    """The distinct finite values of a format of <= 16 bits, sorted (decoded from every code);
    `positive` keeps those > 0."""
    f = get_format(fmt)
    if f.bits > 16:
        raise ValueError(f"{f.title} has {f.num_codes:,} codes, too many to list: use a format of "
                         f"at most 16 bits")
    dt = np.uint8 if f.bits <= 8 else np.uint16
    v = decode(np.arange(f.num_codes, dtype=np.int64).astype(dt), f)
    with np.errstate(invalid="ignore"):     # NaN codes decode to signalling NaNs, which warn
        v = np.unique(v[np.isfinite(v)].astype(np.float64))
    return v[v > 0] if positive else v


@book_figure
def number_line(formats=("e2m1", "e2m3", "e3m2", "e4m3"), scale: str = "linear",
                xmax: float | None = None, mark_min_normal: bool = False):
    """Every non-negative value of each format as a tick on one line per format ("linear" shows
    the gaps widening with magnitude; "log" shows the same number of values in every binade).
    `mark_min_normal` draws a dashed line where each float format's subnormals end."""
    if scale not in ("linear", "log"):
        raise ValueError(f"scale must be 'linear' or 'log', not {scale!r}")
    fmts = [get_format(f) for f in formats]
    fig, ax = plt.subplots(figsize=(6.0, 0.5 * len(fmts) + 1.5))
    for row, f in enumerate(fmts):
        v = representable_values(f, positive=False)
        v = v[v > 0] if scale == "log" else v[v >= 0]
        if xmax is not None:
            v = v[v <= xmax]
        y = len(fmts) - 1 - row
        ax.eventplot([v], lineoffsets=y, linelengths=0.6, linewidths=0.8, colors=f"C{row}")
        if mark_min_normal and f.is_float and f.subnormals:
            ax.plot([f.min_normal] * 2, [y - 0.45, y + 0.45], "k--", lw=0.8)
    ax.set_xscale(scale, **({"base": 2} if scale == "log" else {}))
    ax.set_yticks(range(len(fmts)), [f.title for f in reversed(fmts)])
    ax.set_xlabel("value" + (" (log scale)" if scale == "log" else ""))
    ax.set_title(f"Representable {'positive' if scale == 'log' else 'non-negative'} values"
                 + (" (dashed: smallest normal value)" if mark_min_normal else ""))
    fig.tight_layout()
    return fig


@book_figure
def value_spacing(formats=("e4m3", "e5m2", "e3m2", "e2m1"), relative: bool = False):
    """The gap from each representable value to the next, against the value (log-log). The gap
    doubles every binade (relative: it stays between 2^-M and 2^-(M-1)) and is flat among
    subnormals."""
    fig, ax = plt.subplots()
    for i, name in enumerate(formats):
        f = get_format(name)
        v = representable_values(f)
        gap = np.diff(v)
        ax.step(v[:-1], gap / v[:-1] if relative else gap, where="post", label=f.title,
                color=f"C{i}", lw=1.2)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("value")
    ax.set_ylabel("gap to next value / value" if relative else "gap to next value")
    ax.set_title("Spacing of representable values")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


@book_figure
def relative_error(formats=("fp16", "bf16", "e4m3", "e5m2"), lo: float = 2.0 ** -30,
                   hi: float = 2.0 ** 20, n: int = 6000, bins: int = 120,
                   overflow: str | None = None):
    """The worst relative error |round_to_format(x) - x| / x over x in each of `bins` slices of
    [lo, hi] (log scale, n points in all), per format, with its unit roundoff 2^-(M+1) dashed.
    Flat in the normal range, rising to 1 where values flush to zero; a line stops where values
    become Inf or NaN (`overflow` as in `encode`)."""
    x = np.geomspace(lo, hi, n).astype(np.float32)
    edges = np.geomspace(lo, hi, bins + 1)
    which = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, bins - 1)
    mid = np.sqrt(edges[:-1] * edges[1:])
    fig, ax = plt.subplots()
    for i, name in enumerate(formats):
        f = get_format(name)
        q = np.asarray(round_to_format(x, f, overflow=overflow), dtype=np.float64)
        rel = np.abs(q - x) / x                              # Inf/NaN stay non-finite
        worst = np.full(bins, -np.inf)
        np.maximum.at(worst, which, np.where(np.isfinite(rel), rel, np.inf))
        worst[~np.isfinite(worst)] = np.nan                  # no point where a value overflowed
        ax.plot(mid, worst, color=f"C{i}", lw=1.5, label=f.title)
        ax.axhline(2.0 ** -(f.mbits + 1), color=f"C{i}", ls="--", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_ylim(2.0 ** -14, 2.0 ** 1)
    ax.set_xlabel("x")
    ax.set_ylabel("worst relative error")
    ax.set_title("Relative error of rounding (dashed: unit roundoff $2^{-(M+1)}$)")
    ax.legend(loc="lower left", ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


@book_figure
def stochastic_rounding(x: float, fmt="e4m3", draws: int = 10_000, seed: int = 0):
    """The running mean of `draws` stochastic roundings of x: it converges to x itself, where
    round-to-nearest always returns the same neighbour."""
    f = get_format(fmt)
    g = torch.Generator().manual_seed(seed)
    q = round_to_format(torch.full((draws,), float(x)), f, rounding="stochastic", generator=g)
    mean = torch.cumsum(q.double(), 0) / torch.arange(1, draws + 1)
    nearest = float(round_to_format(torch.tensor([float(x)]), f)[0])
    fig, ax = plt.subplots()
    ax.plot(np.arange(1, draws + 1), mean.numpy(), lw=1, label="mean of stochastic roundings")
    ax.axhline(float(np.float32(x)), color="black", ls="--", lw=1, label=f"x = {x}")
    ax.axhline(nearest, color="C3", ls=":", lw=1.5, label=f"RNE = {nearest:g}")
    ax.set_xscale("log")
    ax.set_xlabel("number of draws")
    ax.set_ylabel("running mean")
    ax.set_title(f"Stochastic rounding to {f.title} is unbiased")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


@book_figure
def range_histogram(values, formats=("fp16", "bf16"), scales=(1.0,), bins: int = 80,
                    xlim: tuple[float, float] | None = None):
    """Histogram of log2|value * scale| for each scale, with each format's smallest subnormal
    (dotted), smallest normal (dashed) and largest value (solid) where they fall in `xlim`
    (log2 units; default: the data's range)."""
    x = np.abs(np.asarray(values, dtype=np.float64).ravel())
    x = x[x > 0]
    logs = [np.log2(x * s) for s in scales]
    lo, hi = xlim or (min(h.min() for h in logs) - 1, max(h.max() for h in logs) + 1)
    edges = np.linspace(lo, hi, bins + 1)
    fig, ax = plt.subplots()
    peak = 0
    for s, h in zip(scales, logs):
        label = "values" if s == 1 else f"values x 2^{math.log2(s):g}"
        counts, _, _ = ax.hist(h, bins=edges, histtype="step", lw=1.2, label=label)
        peak = max(peak, counts.max())
    for i, name in enumerate(formats):
        f = get_format(name)
        for v, ls, what in ((f.min_subnormal, ":", "min subnormal"),
                            (f.min_normal, "--", "min normal"), (f.max, "-", "max")):
            if v and lo <= math.log2(v) <= hi:
                ax.axvline(math.log2(v), color=f"C{i + len(scales)}", ls=ls, lw=1.2,
                           label=f"{f.title} {what} 2^{math.log2(v):.0f}")
    ax.set_xlim(lo, hi)
    ax.set_ylim(0, 1.45 * peak)                                  # headroom for the legend
    ax.set_xlabel("log2 |value|")
    ax.set_ylabel("count")
    ax.set_title("Where the values fall in each format's range")
    ax.legend(fontsize=10, loc="upper left", ncol=2)
    fig.tight_layout()
    return fig
