"""Figures of chapter 9: where each tensor of a training step lives and in which format, and the
loss curves of training runs. Each function returns a matplotlib Figure, drawn in the book's
style (`quantlib.viz.BOOK_STYLE`)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import FancyBboxPatch

from quantlib.nn.training_recipes import TrainingRecipe, get_training_recipe
from quantlib.viz import book_figure

_COLORS = {"FP32": "#9ecae1", "BF16": "#c6dbef", "E4M3": "#fdae6b", "E5M2": "#fb6a4a",
           "E2M1": "#bcbddc", "GEMM": "#e0e0e0"}


def _fmt(recipe: TrainingRecipe, role: str) -> str:
    return "FP32" if recipe.kind == "none" else recipe.element(role).upper()


def _box(ax, xy, text, color, w=2.0, h=1.0):
    x, y = xy
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.05",
                                fc=color, ec="0.3", lw=0.8, zorder=2))
    ax.text(x, y, text, ha="center", va="center", fontsize=10, zorder=3)
    return {"x": x, "y": y, "w": w + 0.1, "h": h + 0.1}


def _right(b, dy=0.0):
    return b["x"] + b["w"] / 2, b["y"] + dy


def _left(b, dy=0.0):
    return b["x"] - b["w"] / 2, b["y"] + dy


def _path(ax, *pts):
    """Straight segments through `pts`, an arrow head on the last one."""
    xs, ys = zip(*pts)
    ax.plot(xs[:-1], ys[:-1], color="0.3", lw=0.8, zorder=1)
    ax.annotate("", xy=pts[-1], xytext=pts[-2], zorder=1,
                arrowprops={"arrowstyle": "-|>", "color": "0.3", "lw": 0.8, "shrinkA": 0, "shrinkB": 0})


@book_figure
def draw_training_step(recipe: TrainingRecipe | str = "fp8_current"):
    """The three GEMMs of one linear layer's training step: each tensor as a box coloured by the
    format it is stored in under `recipe`, arrows for what feeds what (drawn top to bottom, so
    it stays readable on a phone)."""
    r = get_training_recipe(recipe)
    fx, fw, fg = _fmt(r, "x"), _fmt(r, "w"), _fmt(r, "dy")
    fig, ax = plt.subplots(figsize=(6.0, 7.2))
    cols = {"f": 1.0, "d": 3.1, "w": 5.2}               # x / fprop, W / dgrad, dy / wgrad
    rows = [7.0, 5.4, 3.6, 1.9, 0.6]                    # source, quantized, GEMM, output, optimizer
    sr = ", SR" if r.stochastic_grad else ""
    rht = "\nRHT on both operands" if r.hadamard_wgrad else ""
    src = {"f": _box(ax, (cols["f"], rows[0]), "x (activation)\nFP32", _COLORS["FP32"], w=1.9),
           "d": _box(ax, (cols["d"], rows[0]), "W (master)\nFP32", _COLORS["FP32"], w=1.9),
           "w": _box(ax, (cols["w"], rows[0]), "dy (grad of y)\nFP32", _COLORS["FP32"], w=1.9)}
    q = {"f": _box(ax, (cols["f"], rows[1]), f"x_q {fx}\n+ scales", _COLORS.get(fx, "w"), w=1.9),
         "d": _box(ax, (cols["d"], rows[1]), f"W_q {fw}\n+ scales", _COLORS.get(fw, "w"), w=1.9),
         "w": _box(ax, (cols["w"], rows[1]), f"dy_q {fg}\n+ scales{sr}", _COLORS.get(fg, "w"),
                   w=1.9)}
    g = {"f": _box(ax, (cols["f"], rows[2]), "fprop\nx_q W_q^T\nFP32 acc.", _COLORS["GEMM"],
                   w=1.9, h=1.2),
         "d": _box(ax, (cols["d"], rows[2]), "dgrad\ndy_q W_q\nFP32 acc.", _COLORS["GEMM"],
                   w=1.9, h=1.2),
         "w": _box(ax, (cols["w"], rows[2]), f"wgrad\ndy_q^T x_q\nFP32 acc.{rht}",
                   _COLORS["GEMM"], w=1.9, h=1.5 if rht else 1.2)}
    out = {k: _box(ax, (cols[k], rows[3]), t, _COLORS["FP32"], w=1.3, h=0.6)
           for k, t in (("f", "y  FP32"), ("d", "dx  FP32"), ("w", "dW  FP32"))}
    top = lambda b, dx=0.0: (b["x"] + dx, b["y"] + b["h"] / 2)
    bottom = lambda b, dx=0.0: (b["x"] + dx, b["y"] - b["h"] / 2)
    for k in cols:
        _path(ax, bottom(src[k]), top(q[k]))
        _path(ax, bottom(g[k]), top(out[k]))
    for a, b, da, db in (("f", "f", 0.0, -0.3), ("d", "f", -0.3, 0.3), ("d", "d", 0.1, -0.3),
                         ("w", "d", -0.3, 0.3), ("w", "w", 0.1, 0.3), ("f", "w", 0.4, -0.4)):
        _path(ax, bottom(q[a], da), top(g[b], db))
    opt = _box(ax, (cols["d"], rows[4]), "AdamW: m, v, W update\nall FP32", _COLORS["FP32"],
               w=3.2, h=0.8)
    _path(ax, bottom(out["w"]), (cols["w"], rows[4]), _right(opt))
    _path(ax, _left(opt), (-0.05, rows[4]), (-0.05, rows[0] + 0.8), (cols["d"], rows[0] + 0.8),
          top(src["d"]))
    names = list(dict.fromkeys(["FP32", fx, fw, fg]))
    ax.legend([plt.Rectangle((0, 0), 1, 1, fc=_COLORS.get(k, "w"), ec="0.3") for k in names],
              names, loc="upper center", bbox_to_anchor=(0.5, 0.0), fontsize=10, frameon=False,
              ncol=len(names))
    ax.set_xlim(-0.2, 6.3)
    ax.set_ylim(0.0, 8.0)
    ax.axis("off")
    ax.set_title(f"One training step of a linear layer\nrecipe {r.name}")
    fig.tight_layout()
    return fig


def smooth(values, window: int = 10) -> np.ndarray:
    """Trailing moving average (the first points average what exists so far)."""
    v = np.asarray(values, dtype=np.float64)
    c = np.cumsum(np.insert(v, 0, 0.0))
    i = np.arange(len(v))
    n = np.minimum(i + 1, window)
    return (c[i + 1] - c[i + 1 - n]) / n


@book_figure
def plot_loss_curves(results: dict, window: int = 10, skip: int = 0):
    """Training loss per step (moving average over `window`) of every run in `results`
    ({name: TrainResult}), on one axis; `skip` leaves out the first steps."""
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    for name, res in results.items():
        y = smooth(res.losses, window)
        ax.plot(np.arange(skip, len(y)), y[skip:], label=name, lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel(f"training loss\n(nats/byte, mean of {window})")
    ax.legend(fontsize=9.5, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
