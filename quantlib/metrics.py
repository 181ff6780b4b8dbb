"""Error metrics of a quantized tensor against the original: QSNR, MSE, max abs/rel error.

Every function takes the original x and its approximation (a tensor, or a `QuantizedTensor`,
which is dequantized first) and computes in float64, so the metric adds no error of its own.
"""
from __future__ import annotations

import math

import torch

from quantlib.table import Table


def _pair(x, xq) -> tuple[torch.Tensor, torch.Tensor]:
    if hasattr(xq, "dequantize"):
        xq = xq.dequantize()
    from quantlib.qtensor import QuantizedTensor
    if isinstance(x, QuantizedTensor):
        raise TypeError("the first argument is the original tensor and the second its "
                        "approximation (a tensor or a QuantizedTensor): swap them")
    try:
        x, xq = torch.as_tensor(x), torch.as_tensor(xq)
    except (TypeError, RuntimeError, ValueError) as e:
        raise TypeError(f"metrics take tensors or arrays of numbers: {e}") from None
    if x.shape != xq.shape:
        raise ValueError(f"shapes differ: original {tuple(x.shape)}, "
                         f"approximation {tuple(xq.shape)}")
    return x.detach().to(torch.float64), xq.detach().to(torch.float64)


def qsnr(x, xq) -> float:
    """Quantization signal-to-noise ratio in dB: 10 log10(sum x^2 / sum (x - xq)^2); inf if
    exact."""
    x, xq = _pair(x, xq)
    if bool(torch.isnan(x).any() | torch.isnan(xq).any()):
        return math.nan                 # undefined, not "infinitely bad": NaN in, NaN out
    noise = (x - xq).square().sum().item()
    signal = x.square().sum().item()
    if noise == 0:
        return math.inf
    return 10 * math.log10(signal / noise) if signal > 0 else -math.inf


def mse(x, xq) -> float:
    """Mean squared error."""
    x, xq = _pair(x, xq)
    return (x - xq).square().mean().item()


def max_abs_error(x, xq) -> float:
    """max |x - xq|."""
    x, xq = _pair(x, xq)
    return (x - xq).abs().max().item() if x.numel() else 0.0


def max_rel_error(x, xq) -> float:
    """max |x - xq| / |x| over the elements with x != 0 (zeros have no relative error)."""
    x, xq = _pair(x, xq)
    nz = x != 0
    if not nz.any():
        return 0.0
    return ((x - xq).abs()[nz] / x.abs()[nz]).max().item()


def clipped_fraction(x, q) -> float:
    """Fraction of elements beyond the largest code's rounding interval, (max + ulp/2) * scale:
    the ones the scale clipped rather than rounded (MX FLOOR scales clip; RCEIL never does)."""
    r = q.recipe
    if r.asymmetric or x.numel() == 0:
        return 0.0
    f = r.format
    top = f.max + (0.5 if f.is_int else 2.0 ** (math.frexp(f.max)[1] - 1 - f.mbits) / 2)
    lim = top * q.element_scales().double()
    return (x.detach().double().abs() > lim).double().mean().item()


def error_table(x, recipes, title: str = "Quantization error") -> Table:
    """One tensor, several recipes: bits/element, QSNR, MSE, max abs error and % clipped."""
    from quantlib.qtensor import quantize
    from quantlib.recipes import get_recipe
    t = Table(["recipe", "bits/element", "QSNR dB", "MSE", "max abs error", "clipped %"],
              title=title, digits=3)
    for rec in recipes:
        q = quantize(x, get_recipe(rec))
        xq = q.dequantize()
        t.append([q.recipe.name, q.bits_per_element, qsnr(x, xq), mse(x, xq),
                  max_abs_error(x, xq), 100 * clipped_fraction(x, q)])
    return t


def outlier_table(x, recipes, outlier: float = 100.0, title: str | None = None) -> Table:
    """What one outlier does: QSNR of the other elements of x (flattened) when x[0] is replaced by
    `outlier`, against the QSNR of the same elements without it, per recipe."""
    from quantlib.qtensor import quantize
    from quantlib.recipes import get_recipe
    x = x.detach().float()
    spiked = x.clone().reshape(-1)
    spiked[0] = outlier
    spiked = spiked.reshape(x.shape)
    rest = slice(1, None)
    t = Table(["recipe", "QSNR dB", f"QSNR dB, one {outlier:g}", "loss dB"],
              title=title or f"QSNR of the other elements, without and with one {outlier:g}",
              digits=2)
    for rec in recipes:
        rec = get_recipe(rec)
        a = qsnr(x.reshape(-1)[rest], quantize(x, rec).dequantize().reshape(-1)[rest])
        b = qsnr(x.reshape(-1)[rest], quantize(spiked, rec).dequantize().reshape(-1)[rest])
        t.append([rec.name, a, b, a - b])
    return t


def qsnr_table(data: dict, recipes, title: str = "QSNR (dB)") -> Table:
    """QSNR of every recipe (rows) on every named tensor (columns), with bits per element.

    `data` maps a column name to a tensor (or a list of tensors, e.g. a model's weights: the
    QSNR is then taken over all of them together); `recipes` are Recipes or names."""
    from quantlib.qtensor import quantize
    from quantlib.recipes import get_recipe
    t = Table(["recipe", "bits/element", *data], title=title, digits=2)
    for rec in recipes:
        rec = get_recipe(rec)
        row, bits = [rec.name], None
        for tensors in data.values():
            tensors = tensors if isinstance(tensors, (list, tuple)) else [tensors]
            qts = [quantize(x, rec) for x in tensors]
            xs = torch.cat([x.reshape(-1).double() for x in tensors])
            xqs = torch.cat([q.dequantize().reshape(-1).double() for q in qts])
            row.append(qsnr(xs, xqs))
            if bits is None:
                bits = (8 * sum(q.nbytes for q in qts)) / max(xs.numel(), 1)
        t.append([row[0], bits, *row[1:]])
    return t
