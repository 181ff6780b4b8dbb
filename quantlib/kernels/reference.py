"""Plain-torch reference twins of the kernels: the same arguments, the same results.

Quantize/dequantize are `quantlib.quantize` and `QuantizedTensor.dequantize` (the arithmetic
in `quantlib.recipes`), so the kernels reproduce their bits. The GEMMs dequantize both operands
to float32 and multiply in float32 (FP32 accumulation), as the kernels do.
"""
from __future__ import annotations

import torch

from quantlib.qtensor import QuantizedTensor, quantize


def quantize_ref(x: torch.Tensor, recipe, amax=None) -> QuantizedTensor:
    """Twin of fp8_quantize / nvfp4_quantize / mx_quantize (`amax`: see given_amax_recipe)."""
    return quantize(x, recipe if amax is None else given_amax_recipe(recipe, amax))


def dequantize_ref(qt: QuantizedTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Twin of fp8_dequantize / nvfp4_dequantize / mx_dequantize."""
    return qt.dequantize(dtype)


def scaled_mm_ref(a: QuantizedTensor, b: QuantizedTensor, bias=None,
                  out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Twin of fp8_scaled_mm: dequantize(a) @ dequantize(b)^T (+ bias), float32, then cast."""
    c = a.dequantize(torch.float32) @ b.dequantize(torch.float32).T
    if bias is not None:
        c = c + bias.to(torch.float32)
    return c.to(out_dtype)


def weight_mm_ref(x: torch.Tensor, w: QuantizedTensor, bias=None,
                  out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Twin of nvfp4_matmul / mx_matmul: x @ dequantize(w)^T (+ bias), float32, then cast."""
    y = x.to(torch.float32) @ w.dequantize(torch.float32).T
    if bias is not None:
        y = y + bias.to(torch.float32)
    return y.to(out_dtype)


class _GivenTensorAmax:
    """NVFP4 calibrator for a given tensor amax: compute_scale asks first for the block amaxes
    (max |x|, as without a calibrator), then for the tensor amax (this answer)."""

    def __init__(self, amax):
        self.amax, self.calls = amax, 0

    def __call__(self, rows, dim=-1):
        from quantlib.scaling import max_calibrator
        self.calls += 1
        if self.calls == 1:
            return max_calibrator(rows, dim)
        return self.amax.reshape(1).to(rows.device)


def given_amax_recipe(recipe, amax):
    """`recipe` with its tensor amax fixed to `amax` (a negative one taken as NaN: a bad
    tensor, NaN scale, zero codes), as the kernels' amax= option does."""
    import dataclasses

    from quantlib.nn.calibrate import FixedAmax
    from quantlib.recipes import get_recipe
    r = get_recipe(recipe)
    a = torch.as_tensor(amax, dtype=torch.float32).detach().reshape(())
    a = torch.where(a >= 0, a + 0.0, float("nan")).cpu()
    cal = _GivenTensorAmax(a) if r.scale_format == "e4m3" else FixedAmax(a)
    return dataclasses.replace(r, calibrator=cal)


def quantize_transpose_ref(x: torch.Tensor, recipe, amax=None):
    """Twin of fp8_quantize_transpose: x and x^T quantized separately."""
    return quantize_ref(x, recipe, amax), quantize_ref(x.t().contiguous(), recipe, amax)
