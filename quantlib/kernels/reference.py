"""Plain-torch reference twins of the kernels: the same arguments, the same results.

Quantize/dequantize are `quantlib.quantize` and `QuantizedTensor.dequantize` (the arithmetic
in `quantlib.recipes`), so the kernels reproduce their bits. The GEMMs dequantize both operands
to float32 and multiply in float32 (FP32 accumulation), as the kernels do.
"""
from __future__ import annotations

import torch

from quantlib.qtensor import QuantizedTensor, quantize


def quantize_ref(x: torch.Tensor, recipe) -> QuantizedTensor:
    """Twin of fp8_quantize / nvfp4_quantize / mx_quantize."""
    return quantize(x, recipe)


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


def weight_mm_ref(x: torch.Tensor, w, bias=None,
                  out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Twin of nvfp4_matmul / mx_matmul / fp8_weight_matmul / int4_matmul / weight_matmul
    (and so of the decode kernels): x @ dequantize(w)^T (+ bias), float32, then cast. `w` a
    QuantizedTensor or a DecodeWeight (its canonical `.qt` is used)."""
    w = getattr(w, "qt", w)
    y = x.to(torch.float32) @ w.dequantize(torch.float32).T
    if bias is not None:
        y = y + bias.to(torch.float32)
    return y.to(out_dtype)
