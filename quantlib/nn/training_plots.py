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
    ax.text(x, y, text, ha="center", va="center", fontsize=9.5, zorder=3)
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
    format it is stored in under `recipe`, arrows for what feeds what."""
    r = get_training_recipe(recipe)
    fx, fw, fg = _fmt(r, "x"), _fmt(r, "w"), _fmt(r, "dy")
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    ys = {"f": 5.0, "d": 3.2, "w": 1.4}
    sr = ", SR" if r.stochastic_grad else ""
    rht = "\nRHT on both operands" if r.hadamard_wgrad else ""
    src = {"f": _box(ax, (0.9, ys["f"]), "x (activation)\nFP32", _COLORS["FP32"]),
           "d": _box(ax, (0.9, ys["d"]), "W (master)\nFP32", _COLORS["FP32"]),
           "w": _box(ax, (0.9, ys["w"]), "dy (grad of y)\nFP32", _COLORS["FP32"])}
    q = {"f": _box(ax, (3.3, ys["f"]), f"x_q {fx}\n+ scales", _COLORS.get(fx, "w")),
         "d": _box(ax, (3.3, ys["d"]), f"W_q {fw}\n+ scales", _COLORS.get(fw, "w")),
         "w": _box(ax, (3.3, ys["w"]), f"dy_q {fg}\n+ scales{sr}", _COLORS.get(fg, "w"))}
    g = {"f": _box(ax, (6.1, ys["f"]), "fprop  x_q W_q^T\nFP32 accumulate", _COLORS["GEMM"]),
         "d": _box(ax, (6.1, ys["d"]), "dgrad  dy_q W_q\nFP32 accumulate", _COLORS["GEMM"]),
         "w": _box(ax, (6.1, ys["w"]), f"wgrad  dy_q^T x_q\nFP32 accumulate{rht}",
                   _COLORS["GEMM"], w=2.3, h=1.25 if rht else 1.0)}
    out = {k: _box(ax, (8.7, ys[k]), t, _COLORS["FP32"], w=1.3)
           for k, t in (("f", "y  FP32"), ("d", "dx  FP32"), ("w", "dW  FP32"))}
    for k in ys:
        _path(ax, _right(src[k]), _left(q[k]))
        _path(ax, _right(g[k]), _left(out[k]))
    for a, b, da, db in (("f", "f", 0.1, 0.15), ("d", "f", 0.1, -0.15), ("d", "d", 0, 0.15),
                         ("w", "d", 0.1, -0.15), ("w", "w", -0.1, 0.0), ("f", "w", -0.2, 0.2)):
        _path(ax, _right(q[a], da), _left(g[b], db))
    opt = _box(ax, (4.6, -0.3), "AdamW: m, v and the W update, all FP32", _COLORS["FP32"],
               w=4.6, h=0.6)
    _path(ax, (8.7, ys["w"] - out["w"]["h"] / 2), (8.7, -0.3), _right(opt))
    _path(ax, _left(opt), (-0.3, -0.3), (-0.3, ys["d"]), _left(src["d"]))
    names = list(dict.fromkeys(["FP32", fx, fw, fg]))
    ax.legend([plt.Rectangle((0, 0), 1, 1, fc=_COLORS.get(k, "w"), ec="0.3") for k in names],
              names, loc="lower right", fontsize=10, frameon=False, ncol=len(names))
    ax.set_xlim(-0.5, 9.5)
    ax.set_ylim(-1.3, 5.6)
    ax.axis("off")
    ax.set_title(f"One training step of a linear layer, recipe {r.name}")
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
