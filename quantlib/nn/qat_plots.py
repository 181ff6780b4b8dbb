"""Figures of the quantization-aware training chapter (8), drawn in the book's style from numbers
the chapter computed: fake quantization with its straight-through gradient, and the accuracy of
each QAT run per epoch."""
from __future__ import annotations

import matplotlib.pyplot as plt
import torch

from quantlib.viz import book_figure


@book_figure
def ste_figure(x: torch.Tensor, y: torch.Tensor, grad: torch.Tensor):
    """Two panels against x: the fake-quantized value y (forward) beside the identity, and the
    straight-through gradient dy/dx (backward) beside the true derivative, 0 almost everywhere."""
    x, y, grad = (t.detach().numpy() for t in (x, y, grad))
    fig, (a, b) = plt.subplots(1, 2, figsize=(6.0, 3.4))
    a.plot(x, x, ":", color="gray", label="identity")
    a.plot(x, y, label="fake_quantize")
    a.set(xlabel="x", ylabel="value in the forward pass", title="forward:\nround and clip")
    b.plot(x, grad, color="C1", label="STE gradient")
    b.plot(x, 0 * x, ":", color="gray", label="true derivative")
    b.set(xlabel="x", ylabel="d value / d x", title="backward:\nstraight through",
          ylim=(-0.1, 1.45))
    for ax in (a, b):
        ax.legend(loc="upper left", fontsize=9)
    fig.tight_layout()
    return fig


@book_figure
def qat_curves(curves: dict, fp32: float, ptq: float):
    """Test accuracy per QAT epoch of each run (`curves`: {label: [accuracy per epoch]}), with the
    FP32 accuracy dashed and the PTQ (max) accuracy dotted."""
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    for label, curve in curves.items():
        ax.plot(range(1, len(curve) + 1), curve, marker=".", label=label)
    ax.axhline(fp32, color="gray", ls="--", label="FP32")
    ax.axhline(ptq, color="C3", ls=":", label="PTQ (max)")
    ax.set(xlabel="QAT epoch", ylabel="test accuracy\n(fake-quantized W4A4)",
           title="QAT recovers what PTQ loses")
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig
