"""Per-input-channel rescaling before quantization: SmoothQuant and AWQ.

A linear layer computes y = x W^T. For any positive vector s over the input channels,
y = (x / s) (W * s)^T exactly, so the quantizer may see x / s and W * s instead of x and W:
- **SmoothQuant** (Xiao et al., 2023) moves the difficulty of activation outlier channels into
  the weights: s_j = max|x_j|^alpha / max|W_:j|^(1 - alpha), so channel j's activations shrink
  by s_j and its weight column grows by as much. For W8A8 and W4A4.
- **AWQ** (Lin et al., 2024) protects the weights that meet large activations: s_j = mean|x_j|^alpha
  (normalized so that max(s) min(s) = 1), alpha searched on a grid to minimise the layer's output
  error after weight quantization. For weight-only W4A16.

`QuantLinear` stores s (`smooth`) and divides its input by it; in deployment that division is
folded into the operation before the layer (a LayerNorm's weight and bias, or the previous
linear layer's rows), so it costs nothing. `quantize_model(..., smooth="smoothquant" | "awq")`
applies either to every layer from calibration inputs.
"""
from __future__ import annotations

import torch

from quantlib.qtensor import quantize


def _check(x: torch.Tensor, weight: torch.Tensor) -> None:
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"x must be (tokens, in_features) and weight (out_features, "
                         f"in_features); got x {tuple(x.shape)}, weight {tuple(weight.shape)}")
    if x.shape[0] == 0:
        raise ValueError("no calibration inputs reached this layer: the smoothing factors "
                         "need at least one token")


def smoothquant_factors(x: torch.Tensor, weight: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """s_j = max_t |x_tj|^alpha / max_i |W_ij|^(1 - alpha), float32 over the input channels.

    alpha = 0 leaves x alone (s = 1 / max|W_j|: flattens the weight columns), alpha = 1 moves all
    of x's range into W; 0.5 splits it evenly. A channel that is zero in x or in W gets s = 1."""
    _check(x, weight)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha}: SmoothQuant's migration strength is in [0, 1]")
    a = x.detach().abs().float().amax(0)
    w = weight.detach().abs().float().amax(0).to(a.device)
    s = a.pow(alpha) / w.pow(1.0 - alpha)
    ok = (a > 0) & (w > 0) & torch.isfinite(s) & (s > 0)
    return torch.where(ok, s, torch.ones_like(s))


def awq_factors(x: torch.Tensor, weight: torch.Tensor, recipe, grid: int = 20,
                max_rows: int = 4096) -> tuple[torch.Tensor, float]:
    """AWQ's search: s = mean_t |x_tj|^alpha / sqrt(max * min), alpha in {0, 1/grid, ..., 1}
    minimising || x W^T - (x / s) Q(W * s)^T ||^2 on (at most `max_rows` of) the calibration
    tokens, Q the weight recipe's round trip. Returns (s, alpha); alpha = 0 is s = 1, plain RTN,
    so the search never does worse than RTN on the calibration data."""
    _check(x, weight)
    w = weight.detach().float()
    xs = x.detach().float()[:max_rows].to(w.device)
    ref = xs @ w.T
    mean = xs.abs().mean(0).clamp_min(1e-8)
    best = (float("inf"), torch.ones_like(mean), 0.0)
    for i in range(grid + 1):
        alpha = i / grid
        s = mean.pow(alpha)
        s = s / (s.max() * s.min()).sqrt()
        wq = quantize(w * s, recipe).dequantize(torch.float32)
        err = float(((xs / s) @ wq.T - ref).pow(2).sum())
        if err < best[0]:
            best = (err, s, alpha)
    return best[1], best[2]
