"""FP8 GEMMs through `torch._scaled_mm` (cuBLASLt on NVIDIA GPUs) where it takes the scaling.

On a GPU with FP8 tensor cores the vendor GEMM is the fastest FP8 GEMM there is for the scalings
it supports, so `fp8_scaled_mm(path="auto")` hands those to it and keeps quantlib's Triton kernel
for the rest (1x128 and 128x128 block scales, the sm_80 emulation, the interpreter). The result
keeps the same contract: FP32 accumulation (`use_fast_accum=False`: the products are promoted
to FP32 as the Triton kernel does every 128), then one rounding to the output type.

What torch._scaled_mm takes on CUDA sm_89+: A (M, K) row-major and B^T column-major, i.e. our
(N, K) weight transposed as a view; K and N multiples of 16; FP32 scales, either one per tensor
(scalars) for both operands, with any E4M3/E5M2 pair but E5M2 x E5M2 (cuBLASLt), or one per row
of A (M, 1) and per row of B (1, N), E4M3 both, BF16 output (a CUTLASS kernel inside PyTorch, or
cuBLASLt with CUDA 12.9+ on Hopper; on sm_89 from torch 2.7). A case the installed torch refuses
falls back to Triton, remembered per case. A bias is added here, in FP32 before the one rounding
(per tensor: an FP32 result, + bias, then rounded: one extra pass over the output).
"""
from __future__ import annotations

import torch

_REFUSED: dict = {}    # (shape, formats, scaling, out dtype) -> the error torch gave once


def unsupported(a, b, bias, out_dtype) -> str | None:
    """Why torch._scaled_mm cannot compute this product with quantlib's contract, or None."""
    ga, gb = a.recipe.granularity, b.recipe.granularity
    ea, eb = a.recipe.element, b.recipe.element
    (M, K), N = a.shape, b.shape[0]
    if (ga, gb) not in (("tensor", "tensor"), ("row", "row")):
        return f"scales {ga} x {gb}: torch._scaled_mm takes per-tensor or per-row on both sides"
    if K % 16 or N % 16:
        return f"K={K}, N={N}: torch._scaled_mm needs multiples of 16"
    if ga == "row" and (ea, eb) != ("e4m3", "e4m3"):
        return f"per-row scales with {ea} x {eb}: torch._scaled_mm takes E4M3 x E4M3 there"
    if ga == "row" and (out_dtype != torch.bfloat16 or bias is not None):
        return "per-row scales: torch._scaled_mm gives BF16 only, so no FP32 output or FP32 bias"
    if (ea, eb) == ("e5m2", "e5m2"):
        return "E5M2 x E5M2: torch._scaled_mm needs at least one E4M3 operand"
    return None


def _fp8(qt):
    dt = torch.float8_e4m3fn if qt.recipe.element == "e4m3" else torch.float8_e5m2
    return qt.codes.view(dt)


def scaled_mm(a, b, bias, out_dtype) -> torch.Tensor:
    """(A * sa) @ (B * sb)^T (+ bias) by torch._scaled_mm; the caller checked `unsupported`."""
    M, N = a.shape[0], b.shape[0]
    if a.recipe.granularity == "row":
        sa, sb = a.scales.reshape(M, 1).float(), b.scales.reshape(1, N).float()
    else:
        sa, sb = a.scales.reshape(()).float(), b.scales.reshape(()).float()
    out = torch.float32 if bias is not None else out_dtype
    y = torch._scaled_mm(_fp8(a), _fp8(b).t(), sa, sb, out_dtype=out, use_fast_accum=False)
    if bias is not None:
        y = (y + bias.float()).to(out_dtype)
    return y


def try_scaled_mm(a, b, bias, out_dtype) -> torch.Tensor | None:
    """scaled_mm where torch takes it on this device, else None (the caller runs Triton). A
    refusal torch raises (a version without a case, say) is remembered per case, not retried."""
    key = (tuple(a.shape), tuple(b.shape), a.recipe.element, b.recipe.element,
           a.recipe.granularity, out_dtype, bias is None, a.codes.device)
    if key in _REFUSED or unsupported(a, b, bias, out_dtype) is not None:
        return None
    try:
        return scaled_mm(a, b, bias, out_dtype)
    except (RuntimeError, ValueError) as e:    # TORCH_CHECK / TORCH_CHECK_VALUE
        _REFUSED[key] = str(e)
        return None
