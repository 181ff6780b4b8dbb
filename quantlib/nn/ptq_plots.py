"""Figures of the post-training quantization chapter (7), drawn in the book's style from numbers
the chapter computed: the per-channel activation range of one layer, SmoothQuant's migration of
that range into the weights, and the model quality over SmoothQuant's strength."""
from __future__ import annotations

import matplotlib.pyplot as plt
import torch

from quantlib.viz import book_figure


@book_figure
def channel_amax(acts: torch.Tensor, name: str):
    """Bar per input channel: the largest |activation| over the tokens of `acts` (tokens,
    channels), the inputs of layer `name`."""
    amax = acts.abs().amax(0).numpy()
    fig, ax = plt.subplots()
    ax.bar(range(len(amax)), amax, width=1.0)
    ax.set(xlabel="input channel", ylabel="max |activation|",
           title=f"Inputs of {name.split('.', 1)[-1]}\n({acts.shape[0]} tokens)")
    fig.tight_layout()
    return fig


@book_figure
def smoothing_ranges(acts: torch.Tensor, weight: torch.Tensor, s: torch.Tensor, alpha: float):
    """Two panels: each input channel's largest |x| (solid) and the largest |W| of its weight
    column (dashed), as trained and after dividing x by `s` and multiplying W by it."""
    fig, axes = plt.subplots(1, 2, figsize=(6.0, 3.6), sharey=True)
    panels = [("as trained", acts, weight),
              (f"after SmoothQuant\n(alpha {alpha})", acts / s, weight * s)]
    for ax, (title, a, w) in zip(axes, panels):
        ax.plot(a.abs().amax(0).numpy(), lw=0.8, label="activations")
        ax.plot(w.abs().amax(0).numpy(), "--", lw=0.8, label="weights")
        ax.set(yscale="log", xlabel="input channel", title=title)
    axes[0].set_ylabel("largest magnitude")
    axes[0].legend(loc="upper left")
    fig.tight_layout()
    return fig


@book_figure
def smoothquant_sweep(alphas, smoothed: dict, plain: dict):
    """1 - mean cosine to FP32 against SmoothQuant's alpha, one line per config (`smoothed`:
    {config: [value per alpha]}), each config without smoothing (`plain`: {config: value})
    dashed in the same colour."""
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    for i, (c, values) in enumerate(smoothed.items()):
        ax.semilogy(alphas, [1 - v for v in values], "o-", color=f"C{i}", label=c)
        ax.axhline(1 - plain[c], color=f"C{i}", ls="--", lw=0.8)
    ax.set(xlabel="SmoothQuant strength alpha", ylabel="1 - mean cosine to FP32",
           title="MiniLM W8A8 with SmoothQuant\n(dashed: without)")
    ax.legend()
    fig.tight_layout()
    return fig
