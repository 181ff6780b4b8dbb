"""Equivalent transforms of a linear layer's input channels, applied before quantization.

A linear layer computes y = x W^T. For an orthonormal H and positive factors s over the input
channels, y = T(x) W'^T exactly, with T(x) = (x H) / s and W' = (W H) * s; the quantizers may
therefore be handed T(x) and W' instead of x and W, whichever is easier to round:
- **Rotation** (QuaRot, Ashkboos et al., 2024): H a random Hadamard matrix applied to every run
  of n input channels spreads each outlier over n channels, so the values look Gaussian.
- **SmoothQuant** (Xiao et al., 2023) moves the difficulty of activation outlier channels into
  the weights: s_j = max|x_j|^alpha / max|W_:j|^(1 - alpha), so channel j's activations shrink
  by s_j and its weight column grows by as much. For W8A8 and W4A4.
- **AWQ** (Lin et al., 2024) protects the weights that meet large activations: s_j = mean|x_j|^alpha
  (normalized so that max(s) min(s) = 1), alpha searched on a grid to minimise the layer's output
  error after weight quantization. For weight-only W4A16.

`QuantLinear` keeps H (`rotation`, one matrix shared by all layers) and s (`smooth`) and applies
T to its input; in deployment the division by s folds into the operation before the layer (a
LayerNorm's weight and bias, or the previous linear layer's rows) and H into the previous
layer's weights or a fast Walsh-Hadamard transform. `quantize_model(..., rotate=n,
smooth="smoothquant" | "awq")` applies them to every layer (rotation first: the factors are
computed on the rotated inputs and weights).
"""
from __future__ import annotations

import torch

from quantlib.nn.hadamard import hadamard_transform
from quantlib.qtensor import quantize

SMOOTHING = ("smoothquant", "awq")


def transformed_input(x: torch.Tensor, rotation: torch.Tensor | None = None,
                      smooth: torch.Tensor | None = None) -> torch.Tensor:
    """T(x) = (x H) / s, each step only when given; the rotation in FP32 (1/sqrt(n) is not a
    BF16 number), the result in x's dtype."""
    if rotation is not None:
        x = hadamard_transform(x.float(), rotation).to(x.dtype)
    return x if smooth is None else x / smooth.to(device=x.device, dtype=x.dtype)


def transformed_weight(weight: torch.Tensor, rotation: torch.Tensor | None = None,
                       smooth: torch.Tensor | None = None) -> torch.Tensor:
    """W' = (W H) * s in FP32, so that T(x) W'^T = x W^T."""
    w = weight.detach().float()
    if rotation is not None:
        w = hadamard_transform(w, rotation)
    return w if smooth is None else w * smooth.to(w.device)


def _check(x: torch.Tensor, weight: torch.Tensor) -> None:
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"x must be (tokens, in_features) and weight (out_features, "
                         f"in_features); got x {tuple(x.shape)}, weight {tuple(weight.shape)}")
    if x.shape[0] == 0:
        raise ValueError("no calibration inputs reached this layer: the smoothing factors "
                         "need at least one token")
    from quantlib.nn.calibrate import check_finite_inputs
    check_finite_inputs(x, "the calibration inputs x")
    check_finite_inputs(weight, "the weight")


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


def smoothing_factors(method: str, x: torch.Tensor, weight: torch.Tensor, recipe,
                      alpha: float = 0.5) -> torch.Tensor:
    """The factors s of `method`: "smoothquant" (migration strength alpha) or "awq" (alpha
    searched, the weight recipe's rounding in the loop)."""
    if method == "smoothquant":
        return smoothquant_factors(x, weight, alpha)
    if method == "awq":
        return awq_factors(x, weight, recipe)[0]
    raise ValueError(f"smooth={method!r}: use None, 'smoothquant' or 'awq'")
