"""Triton kernels for FP8, NVFP4 and MX, each beside its plain-torch twin (`reference`).

Every function returns what the reference returns, bit for bit for quantize/dequantize
(`quantlib.quantize`'s QuantizedTensor: same codes, same scales), so kernels and reference swap
freely. `path="auto"` lets `dispatch` choose (Triton on sm_80+ GPUs and under
TRITON_INTERPRET=1 on the CPU, the reference elsewhere); "triton" or "reference" force one.

GEMM layouts follow nn.Linear: activations (M, K), weights (N, K); the result is
x @ w^T of shape (M, N) (w^T is the "column-major B" of cuBLAS and torch._scaled_mm).

Weight-only GEMMs (nvfp4_matmul, mx_matmul, fp8_weight_matmul, int4_matmul, weight_matmul) run
the decode kernels for M <= 16 rows (and for INT formats at any M): they read the weight in a
layout prepared once, `decode_layout(w)`, which these functions take in place of w; given the
QuantizedTensor itself they build that layout on every call (a transposing copy of w).
"""
from __future__ import annotations

import math

import torch

from quantlib.kernels import reference
from quantlib.kernels._decode import DecodeWeight, decode_kind
from quantlib.kernels.dispatch import quiet, use_triton
from quantlib.qtensor import QuantizedTensor, pack_codes, unpack_codes
from quantlib.recipes import get_recipe, padded_last_dim
from quantlib.scaling import scale_shape

__all__ = [
    "DecodeWeight",
    "decode_layout",
    "fp8_dequantize",
    "fp8_linear",
    "fp8_quantize",
    "fp8_quantize_transpose",
    "fp8_scaled_mm",
    "fp8_weight_matmul",
    "int4_matmul",
    "mx_dequantize",
    "mx_matmul",
    "mx_quantize",
    "nvfp4_dequantize",
    "nvfp4_matmul",
    "nvfp4_quantize",
    "reference",
    "weight_matmul",
]

_FLOATS = (torch.float32, torch.bfloat16, torch.float16)


# ---- checks: bad input gets a clear error --------------------------------------------------
def _check_input(x, name="x"):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOATS:
        raise TypeError(f"{name} has dtype {x.dtype}: the kernels read float32, bfloat16 or "
                        f"float16; convert with {name}.float()")
    if not x.is_contiguous():
        raise ValueError(f"{name} is not contiguous (shape {tuple(x.shape)}, strides "
                         f"{x.stride()}): pass {name}.contiguous()")
    if x.dim() == 0:
        raise ValueError(f"{name} is a scalar: quantize a tensor of at least one dimension")


def _check_recipe(recipe, elements, scale_formats, what):
    r = get_recipe(recipe)
    if r.element not in elements or r.scale_format not in scale_formats:
        raise ValueError(f"{what} takes recipes with elements {elements} and "
                         f"{scale_formats} scales; {r.name!r} has {r.element} elements and "
                         f"{r.scale_format} scales")
    return r


_KERNEL_ELEMENTS = ("e4m3", "e5m2", "e2m1", "e2m3", "e3m2")


def _kernel_ok(r) -> bool:
    """Recipes the Triton kernels cover; the rest (INT elements, channel axis, calibrators, odd
    blocks, FP16/BF16 scales) run the reference."""
    if r.element not in _KERNEL_ELEMENTS or r.asymmetric or r.mx_int8:
        return False
    if r.scale_format not in ("fp32", "pow2", "e8m0", "e4m3"):
        return False
    if r.calibrator is not None or r.granularity == "channel":
        return False
    if r.granularity == "group":
        return r.block in (16, 32, 64, 128, 256, 512)
    if r.granularity == "block2d":
        bh, bw = r.block
        return bh * bw <= 16384 and all(b >= 1 and (b & (b - 1)) == 0 for b in (bh, bw))
    return True


def _run_quantize(x, r, path, amax=None):
    _check_input(x)
    amax = _check_amax(amax, x, r)
    if not (use_triton(x, path) and _kernel_ok(r)) or x.numel() == 0:
        if path == "triton" and not _kernel_ok(r):
            raise ValueError(f"recipe {r.name!r} has no Triton kernel (channel axis, "
                             f"calibrator or block {r.block}): use path='auto'")
        return reference.quantize_ref(x, r, amax=amax)
    from quantlib.kernels import _quantize as kq
    from quantlib.scaling import pad_to_blocks
    shape = x.shape
    K = shape[-1]
    x2 = x.reshape(-1, K)
    pad_to_blocks(torch.empty((x2.shape[0], K), device="meta"), r)  # same ValueError as quantize
    with quiet():
        q, s, ts = kq.quantize(x2, r, amax=amax)
    q = q.reshape(*shape[:-1], q.shape[-1])
    if r.format.bits == 6:        # the kernel writes one 6-bit code per byte; store them packed
        q = pack_codes(q, 6)
    return QuantizedTensor(codes=q, scales=s.reshape(scale_shape(r, shape)), recipe=r,
                           shape=shape, dtype=x.dtype, tensor_scale=ts)


def _check_qtensor(qt, what):
    """A QuantizedTensor whose parts agree with its recipe and shape (the kernels index codes
    and scales by the shape: a malformed one would be read out of bounds)."""
    if not isinstance(qt, QuantizedTensor):
        raise TypeError(f"{what} takes a QuantizedTensor, got {type(qt).__name__}")
    r, shape = qt.recipe, tuple(qt.shape)
    kp = padded_last_dim(r, shape or (1,))
    per_row = {4: -(-kp // 2), 6: 3 * -(-kp // 4)}.get(r.format.bits, kp)
    want_codes = (*shape[:-1], per_row) if shape else None
    want_scales = tuple(scale_shape(r, shape or (1,)))
    bad = []
    if want_codes is not None and tuple(qt.codes.shape) != want_codes:
        bad.append(f"codes {tuple(qt.codes.shape)} (expected {want_codes})")
    if tuple(qt.scales.shape) != want_scales:
        bad.append(f"scales {tuple(qt.scales.shape)} (expected {want_scales})")
    if r.scale_format == "e4m3" and qt.tensor_scale is None:
        bad.append("no tensor scale (NVFP4-style recipes have one)")
    if bad:
        raise ValueError(f"{what}: this {r.name!r} QuantizedTensor of shape {shape} is "
                         f"malformed: {'; '.join(bad)}")


def _run_dequantize(qt, dtype, path, what):
    _check_qtensor(qt, what)
    if dtype not in _FLOATS:
        raise TypeError(f"dtype {dtype}: use torch.float32, torch.bfloat16 or torch.float16")
    r = qt.recipe
    if not (use_triton(qt.codes, path) and _kernel_ok(r)) or qt.numel == 0:
        if path == "triton" and not _kernel_ok(r):
            raise ValueError(f"recipe {r.name!r} has no Triton kernel (INT elements, channel "
                             f"axis, calibrator or block {r.block}): use path='auto'")
        return reference.dequantize_ref(qt, dtype)
    from quantlib.kernels import _quantize as kq
    shape = tuple(qt.shape) or (1,)
    K = shape[-1]
    R = math.prod(shape[:-1])
    q = qt.codes
    if r.format.bits == 6:        # the kernel reads one 6-bit code per byte
        q = unpack_codes(q, 6, padded_last_dim(r, shape))
    q = q.reshape(R, q.shape[-1]) if R else q.reshape(0, 1)
    s = qt.scales.reshape(1, 1) if r.granularity == "tensor" else qt.scales.reshape(
        -1, qt.scales.shape[-1])
    out = torch.float32 if dtype == torch.float16 else dtype
    with quiet():
        y = kq.dequantize(q.contiguous(), s.contiguous(), qt.tensor_scale, r, R, K, out)
    return y.to(dtype).reshape(qt.shape)


# ---- FP8 -----------------------------------------------------------------------------------
_FP8_ELEMENTS = ("e4m3", "e5m2")


def fp8_quantize(x: torch.Tensor, recipe="fp8_e4m3_1x128", path: str = "auto",
                 amax=None) -> QuantizedTensor:
    """FP8 (E4M3/E5M2) codes + FP32 (or power-of-two) scales: per tensor, per row, 1xG groups
    or 2-D blocks; saturating RNE. Same result as quantlib.quantize(x, recipe).
    Per-tensor recipes: `amax` (a one-element tensor on x's device) is used as the tensor's
    amax instead of reducing x first (one pass instead of two; the previous step's amax or one
    computed in the producer): values beyond it saturate, a negative or NaN amax gives a NaN
    scale and zero codes. The twin is `reference.quantize_ref(x, recipe, amax=amax)`."""
    r = _check_recipe(recipe, _FP8_ELEMENTS, ("fp32", "pow2"), "fp8_quantize")
    return _run_quantize(x, r, path, amax)


def fp8_dequantize(qt: QuantizedTensor, dtype=torch.float32, path: str = "auto") -> torch.Tensor:
    """decode(codes) * scale, as QuantizedTensor.dequantize(dtype)."""
    return _run_dequantize(qt, dtype, path, "fp8_dequantize")


def _mm_scales(qt: QuantizedTensor, name: str):
    """An FP8 operand's scales as the kernel indexes them: (2-D fp32 scales, rows per scale,
    blockwise along K)."""
    r = qt.recipe
    g = r.granularity
    rows = qt.codes.shape[0]
    if g == "tensor":
        return qt.scales.reshape(1, 1), 1 << 30, False
    if g == "row":
        return qt.scales.reshape(rows, 1), 1, False
    if g == "group" and r.block == 128:
        return qt.scales, 1, True
    if g == "block2d" and r.block == (128, 128):
        return qt.scales, 128, True
    raise ValueError(f"fp8_scaled_mm: operand {name} has granularity {g} {r.block or ''}: use "
                     f"per-tensor, per-row, 1x128 or 128x128 FP8 recipes")


def _check_mm_operand(qt, name):
    if not isinstance(qt, QuantizedTensor):
        raise TypeError(f"fp8_scaled_mm: {name} must be a QuantizedTensor from fp8_quantize, "
                        f"got {type(qt).__name__}")
    r = qt.recipe
    if r.element not in _FP8_ELEMENTS or r.scale_format not in ("fp32", "pow2"):
        raise ValueError(f"fp8_scaled_mm: {name} has recipe {r.name!r}; FP8 elements with "
                         f"fp32/pow2 scales are needed")
    if len(qt.shape) != 2:
        raise ValueError(f"fp8_scaled_mm: {name} must be 2-D, got shape {tuple(qt.shape)}")
    want = scale_shape(r, qt.shape)
    if tuple(qt.scales.shape) != tuple(want):
        raise ValueError(f"fp8_scaled_mm: {name}'s scales have shape {tuple(qt.scales.shape)}, "
                         f"its recipe {r.name!r} needs {tuple(want)}")


def fp8_scaled_mm(a: QuantizedTensor, b: QuantizedTensor, bias: torch.Tensor | None = None,
                  out_dtype=torch.bfloat16, path: str = "auto") -> torch.Tensor:
    """(A * sa) @ (B * sb)^T with FP32 accumulation: A (M, K) and the weight B (N, K) FP8
    QuantizedTensors with per-tensor, per-row, 1x128 or 128x128 scales; optional bias (N,);
    BF16 or FP32 output. The role torch._scaled_mm plays (FP8 tensor cores on sm_89+).

    path "auto": on a GPU with FP8 tensor cores (sm_89+), torch._scaled_mm (cuBLASLt) for the
    scalings it takes (per tensor, or per row with E4M3 and BF16 output), quantlib's Triton
    kernel for the rest (block scales, the sm_80 emulation); elsewhere as `use_triton` decides.
    "triton" and "reference" force quantlib's kernel or its twin; "torch" forces
    torch._scaled_mm (any device torch runs it on)."""
    _check_mm_operand(a, "a")
    _check_mm_operand(b, "b")
    (M, K), (N, Kb) = a.shape, b.shape
    if K != Kb:
        raise ValueError(f"fp8_scaled_mm: a is {M}x{K} but b is {N}x{Kb}: b is the (N, K) "
                         f"weight (a @ b^T), K must match")
    if a.device != b.device:
        raise ValueError(f"fp8_scaled_mm: a is on {a.device}, b on {b.device}")
    if out_dtype not in (torch.bfloat16, torch.float32):
        raise TypeError(f"out_dtype {out_dtype}: use torch.bfloat16 or torch.float32")
    if bias is not None and (bias.shape != (N,) or bias.device != a.device):
        raise ValueError(f"bias must have shape ({N},) on {a.device}, got "
                         f"{tuple(bias.shape)} on {bias.device}")
    sa, ra, bwa = _mm_scales(a, "a")
    sb, rb, bwb = _mm_scales(b, "b")
    blockwise = bwa or bwb
    if blockwise and K % 128:
        raise ValueError(f"fp8_scaled_mm: K={K} is not a multiple of the 128-element scale "
                         f"block; pad K to a multiple of 128")
    from quantlib.kernels import _torch_mm
    if path == "torch":
        why = _torch_mm.unsupported(a, b, bias, out_dtype)
        if why is not None:
            raise ValueError(f"fp8_scaled_mm(path='torch'): {why}; use path='auto' (Triton "
                             f"takes every case)")
        return _torch_mm.scaled_mm(a, b, bias, out_dtype)
    if path == "auto" and a.codes.is_cuda \
            and torch.cuda.get_device_capability(a.codes.device) >= (8, 9):
        y = _torch_mm.try_scaled_mm(a, b, bias, out_dtype)
        if y is not None:
            return y
    if not use_triton(a.codes, path):
        return reference.scaled_mm_ref(a, b, bias, out_dtype)
    from quantlib.kernels import _gemm
    with quiet():
        return _gemm.fp8_mm(a.codes, b.codes, sa.contiguous(), sb.contiguous(),
                            a.recipe.element, b.recipe.element, ra, rb, blockwise,
                            bias=None if bias is None else bias.contiguous(), out_dtype=out_dtype)


def fp8_linear(x: torch.Tensor, w, bias: torch.Tensor | None = None,
               recipe="fp8_e4m3_rowwise", out_dtype=torch.bfloat16,
               path: str = "auto") -> torch.Tensor:
    """A W8A8 linear layer, y = x @ w^T (+ bias): the activations x (..., K) are quantized on
    the fly with `recipe`, w is an FP8 QuantizedTensor (N, K) or a float weight quantized with
    the same recipe; FP32 accumulation, `out_dtype` output. Inference only: with autograd
    on, an input that requires grad is refused (the result would have no gradient); train with
    `quantlib.nn.FP8Linear` (FP8 GEMMs in forward and backward) or call under torch.no_grad()."""
    _check_input(x)
    grads = [n for n, t in (("x", x), ("w", w), ("bias", bias))
             if isinstance(t, torch.Tensor) and t.requires_grad]
    if grads and torch.is_grad_enabled():
        raise ValueError(f"fp8_linear: {', '.join(grads)} requires grad, but this W8A8 GEMM is "
                         f"inference-only (no backward: the result would silently carry no "
                         f"gradient); call it under torch.no_grad(), pass .detach(), or train "
                         f"with quantlib.nn.FP8Linear")
    if not isinstance(w, QuantizedTensor):
        _check_input(w, "w")
        w = fp8_quantize(w, recipe, path=path)
    xq = fp8_quantize(x.reshape(-1, x.shape[-1]), recipe, path=path)
    y = fp8_scaled_mm(xq, w, bias=bias, out_dtype=out_dtype, path=path)
    return y.reshape(*x.shape[:-1], y.shape[-1])


# ---- NVFP4 and MX --------------------------------------------------------------------------
def nvfp4_quantize(x: torch.Tensor, recipe="nvfp4", path: str = "auto",
                   amax=None) -> QuantizedTensor:
    """NVFP4: E2M1 codes packed two per byte, one E4M3 scale per 16, an FP32 tensor scale.
    `amax` (a one-element tensor): the tensor amax the tensor scale is made from, given instead
    of reduced from x (one pass instead of two); the block amaxes still come from x."""
    r = _check_recipe(recipe, ("e2m1",), ("e4m3",), "nvfp4_quantize")
    return _run_quantize(x, r, path, amax)


def nvfp4_dequantize(qt: QuantizedTensor, dtype=torch.float32, path: str = "auto"):
    """decode(code) * decode(block scale) * tensor scale, as QuantizedTensor.dequantize."""
    return _run_dequantize(qt, dtype, path, "nvfp4_dequantize")


_MX_ELEMENTS = ("e4m3", "e5m2", "e2m3", "e3m2", "e2m1")


def mx_quantize(x: torch.Tensor, recipe="mxfp8_e4m3", path: str = "auto") -> QuantizedTensor:
    """OCP MX: one E8M0 scale per 32 (rule floor, ceil, even or rceil); MXFP8, MXFP6, MXFP4
    (4-bit codes packed two per byte, 6-bit codes four per 3 bytes)."""
    r = _check_recipe(recipe, _MX_ELEMENTS, ("e8m0",), "mx_quantize")
    return _run_quantize(x, r, path)


def mx_dequantize(qt: QuantizedTensor, dtype=torch.float32, path: str = "auto"):
    """decode(code) * 2^(scale byte - 127), as QuantizedTensor.dequantize."""
    return _run_dequantize(qt, dtype, path, "mx_dequantize")


def decode_layout(w: QuantizedTensor) -> DecodeWeight:
    """w (N, K) in the decode kernels' layout, prepared once (e.g. at quantize time) and
    passed to the *_matmul functions in place of w: the packed codes transposed to
    (K / codes_per_word, N) int32 words, N contiguous, scales and zero points to (K / group, N).
    Holds w itself too (`.qt`: the canonical form, what a state_dict saves). Any device."""
    from quantlib.kernels import _decode
    if not isinstance(w, QuantizedTensor):
        raise TypeError(f"decode_layout takes a QuantizedTensor, got {type(w).__name__}")
    _check_qtensor(w, "decode_layout")
    return _decode.decode_layout(w)


def _weight_mm(x, w, bias, out_dtype, path, kinds, what):
    dw = w if isinstance(w, DecodeWeight) else None
    w = w.qt if dw is not None else w
    if not isinstance(w, QuantizedTensor):
        raise TypeError(f"{what}: w must be a QuantizedTensor, got {type(w).__name__}")
    r = w.recipe
    kind = next((k for k, ok in kinds.items() if ok(r)), None)
    if kind is None:
        raise ValueError(f"{what}: w has recipe {r.name!r}; use one of {list(kinds)}")
    if not isinstance(x, torch.Tensor) or x.dtype != torch.bfloat16:
        raise TypeError(f"{what}: x must be a bfloat16 tensor (W4A16: BF16 activations), got "
                        f"{getattr(x, 'dtype', type(x).__name__)}; use x.to(torch.bfloat16)")
    if not x.is_contiguous():
        raise ValueError(f"{what}: x is not contiguous: pass x.contiguous()")
    if x.dim() == 0:
        raise ValueError(f"{what}: x is a scalar; it must be (..., K) activations, e.g. "
                         f"x.reshape(1, -1)")
    if len(w.shape) != 2:
        raise ValueError(f"{what}: w must be a 2-D (N, K) weight, got {tuple(w.shape)}")
    N, K = w.shape
    if x.shape[-1] != K:
        raise ValueError(f"{what}: x has K={x.shape[-1]} but w is {N}x{K} (x @ w^T)")
    step = r.block if r.granularity == "group" else 16    # FP8 per row/tensor: the kernel's
    if K % step:                                          # smallest K step
        raise ValueError(f"{what}: K={K} is not a multiple of "
                         f"{'the ' + str(step) + '-element block' if step == r.block else step}")
    want = scale_shape(r, (N, K))
    if tuple(w.scales.shape) != tuple(want):
        raise ValueError(f"{what}: w's scales have shape {tuple(w.scales.shape)}, expected "
                         f"{tuple(want)}")
    if x.device != w.device:
        raise ValueError(f"{what}: x is on {x.device}, w on {w.device}")
    if bias is not None and (bias.shape != (N,) or bias.device != x.device):
        raise ValueError(f"{what}: bias must have shape ({N},) on {x.device}")
    if out_dtype not in (torch.bfloat16, torch.float32):
        raise TypeError(f"out_dtype {out_dtype}: use torch.bfloat16 or torch.float32")
    if not use_triton(x, path):
        return reference.weight_mm_ref(x, w, bias, out_dtype)
    from quantlib.kernels import _decode, _wq_gemm
    M = x.numel() // K
    if decode_kind(r) is not None and (M <= _decode.DECODE_MAX_M or kind not in _wq_gemm._WQ):
        with quiet():       # decode-sized M (or an INT format): the transposed-layout kernels
            y = _decode.decode_mm(x.reshape(-1, K), dw if dw is not None else
                                  _decode.decode_layout(w),
                                  bias=None if bias is None else bias.contiguous(),
                                  out_dtype=out_dtype)
        return y.reshape(*x.shape[:-1], N)
    if kind.startswith("fp8"):      # one FP32 scale per tensor or per row, on the accumulator
        ws, ts = None, w.scales.reshape(-1).float().contiguous()
    else:
        ws, ts = w.scales, w.tensor_scale
    with quiet():
        y = _wq_gemm.wq_mm(x.reshape(-1, K), w.codes, ws, ts, kind,
                           bias=None if bias is None else bias.contiguous(), out_dtype=out_dtype)
    return y.reshape(*x.shape[:-1], N)


def nvfp4_matmul(x: torch.Tensor, w: QuantizedTensor, bias: torch.Tensor | None = None,
                 out_dtype=torch.bfloat16, path: str = "auto") -> torch.Tensor:
    """x @ dequantize(w)^T for an NVFP4 weight w (N, K) and BF16 activations x (..., K): the
    W4A16 GEMM; the packed weight is dequantized in registers, FP32 accumulation. On a GPU, for
    M >= 512 rows the autotuner may instead dequantize w to BF16 once and multiply on cuBLAS
    (same numbers; a transient N x K BF16 buffer): set
    `quantlib.kernels._wq_gemm.DEQUANT_MIN_M` higher to rule that out."""
    kinds = {"nvfp4": lambda r: (r.element, r.scale_format, r.block) == ("e2m1", "e4m3", 16)}
    return _weight_mm(x, w, bias, out_dtype, path, kinds, "nvfp4_matmul")


def fp8_weight_matmul(x: torch.Tensor, w: QuantizedTensor, bias: torch.Tensor | None = None,
                      out_dtype=torch.bfloat16, path: str = "auto") -> torch.Tensor:
    """x @ dequantize(w)^T for an FP8 weight w (N, K) with one FP32 (or power-of-two) scale per
    tensor or per output row, and BF16 activations x (..., K): the W8A16 GEMM (weight-only FP8,
    e.g. the "fp8" config of quantlib.nn); codes decoded in registers, the scale applied to the
    FP32 accumulator. For FP8 activations as well, use fp8_scaled_mm."""
    fp8 = lambda e: (lambda r: r.element == e and r.scale_format in ("fp32", "pow2")
                     and r.granularity in ("tensor", "row"))
    kinds = {"fp8_e4m3": fp8("e4m3"), "fp8_e5m2": fp8("e5m2")}
    return _weight_mm(x, w, bias, out_dtype, path, kinds, "fp8_weight_matmul")


def mx_matmul(x: torch.Tensor, w: QuantizedTensor, bias: torch.Tensor | None = None,
              out_dtype=torch.bfloat16, path: str = "auto") -> torch.Tensor:
    """x @ dequantize(w)^T for an MXFP4 or MXFP8 weight w (N, K) and BF16 activations."""
    mx = lambda e: (lambda r: (r.element, r.scale_format, r.block) == (e, "e8m0", 32))
    kinds = {"mxfp4": mx("e2m1"), "mxfp8_e4m3": mx("e4m3"), "mxfp8_e5m2": mx("e5m2")}
    return _weight_mm(x, w, bias, out_dtype, path, kinds, "mx_matmul")


# ---- decode attention over an FP8 KV cache -----------------------------------------------------
__all__ += ["decode_attention"]


def _kv_scales(qt: QuantizedTensor, name: str) -> torch.Tensor:
    """The FP32 scale of every cached token as a (B, H, T) view (stride 0 where shared)."""
    r = qt.recipe
    B, H, T, _ = qt.shape
    ok = r.element == "e4m3" and r.scale_format == "fp32" and (
        r.granularity in ("tensor", "row") or (r.granularity == "channel" and r.axis == 1))
    if not ok:
        raise ValueError(f"decode_attention: {name} has recipe {r.name!r}; the kernel reads "
                         f"FP8 E4M3 with one FP32 scale per tensor, per KV head (channel axis "
                         f"1) or per token (row), or NVFP4: see quantlib.attention.KV_RECIPES")
    return qt.scales.reshape((1, 1, 1) if r.granularity == "tensor" else
                             (1, H, 1) if r.granularity == "channel" else (B, H, T)).expand(
        B, H, T).float()


def decode_attention(q: torch.Tensor, k: QuantizedTensor, v: QuantizedTensor,
                     softmax_scale: float | None = None, num_splits: int | None = None,
                     block_n: int = 16, path: str = "auto") -> torch.Tensor:
    """softmax(q K^T * softmax_scale) V for one query token per sequence over an FP8 KV cache.

    q (B, Hq, D) float; k, v: QuantizedTensors (B, Hkv, T, D), both FP8 E4M3 (quantlib.attention
    KV recipes fp8_tensor*, fp8_head*, fp8_token) or both NVFP4 (nvfp4*); Hq a multiple of Hkv
    (grouped-query attention), D a power of two. The codes are decoded in registers; the sequence is split in
    `num_splits` parts (default: about one per 512 tokens, at most 32) merged in a fixed order.
    Keys stored rotated (K H) need the query rotated the same way (q H). Returns (B, Hq, D)
    float32."""
    if not isinstance(q, torch.Tensor) or q.dtype not in _FLOATS or q.dim() != 3:
        raise TypeError(f"decode_attention: q must be a (batch, heads, head_dim) float tensor, "
                        f"got {getattr(q, 'dtype', type(q).__name__)} "
                        f"{tuple(getattr(q, 'shape', ()))}")
    for name, t in (("k", k), ("v", v)):
        if not isinstance(t, QuantizedTensor) or len(t.shape) != 4:
            raise TypeError(f"decode_attention: {name} must be a 4-D QuantizedTensor (batch, "
                            f"kv_heads, tokens, head_dim), got {type(t).__name__}")
    B, Hq, D = q.shape
    if tuple(k.shape) != tuple(v.shape) or k.shape[0] != B or k.shape[3] != D:
        raise ValueError(f"decode_attention: q {tuple(q.shape)}, k {tuple(k.shape)} and v "
                         f"{tuple(v.shape)} disagree (batch and head_dim must match)")
    Hkv, T = k.shape[1], k.shape[2]
    if Hq % Hkv or D & (D - 1) or T == 0:
        raise ValueError(f"decode_attention: needs Hq ({Hq}) a multiple of Hkv ({Hkv}), "
                         f"head_dim ({D}) a power of two and at least one cached token")
    if block_n < 2 or block_n & (block_n - 1):
        raise ValueError(f"block_n must be a power of two >= 2, got {block_n}")
    nvfp4 = [(t.recipe.element, t.recipe.scale_format, t.recipe.block) == ("e2m1", "e4m3", 16)
             for t in (k, v)]
    if nvfp4[0] != nvfp4[1]:
        raise ValueError("decode_attention: k and v must both be NVFP4 or both FP8")
    if nvfp4[0]:
        if D % 16:
            raise ValueError(f"decode_attention: NVFP4 needs head_dim a multiple of 16, got {D}")
        ks, vs, kts, vts = k.scales, v.scales, k.tensor_scale, v.tensor_scale
    else:
        ks, vs, kts, vts = _kv_scales(k, "k"), _kv_scales(v, "v"), None, None
    if num_splits is None:
        num_splits = max(1, min(32, -(-T // 512)))
    scale = softmax_scale if softmax_scale is not None else D ** -0.5
    qk_scale = float(torch.tensor(scale * 1.4426950408889634, dtype=torch.float32))  # base 2
    qf = q.float().contiguous()
    args = (qf, k.codes.contiguous(), v.codes.contiguous(), ks, vs, qk_scale, num_splits,
            block_n)
    ts = {} if kts is None else {"k_ts": kts.reshape(()).item(), "v_ts": vts.reshape(()).item()}
    if use_triton(k.codes, path):
        from quantlib.kernels import _attention
        with quiet():
            m, l, acc = _attention.decode_attention_partials(*args, **ts)
    else:
        m, l, acc = reference.decode_attention_partials_ref(*args, **ts)
    return reference.combine_splits(m, l, acc)


def int4_matmul(x: torch.Tensor, w, bias: torch.Tensor | None = None,
                out_dtype=torch.bfloat16, path: str = "auto") -> torch.Tensor:
    """x @ dequantize(w)^T for an INT4 weight w (N, K) and BF16 activations x (..., K): the
    W4A16 GEMM of GPTQ/AWQ-style checkpoints. w: a QuantizedTensor (or its `decode_layout`)
    with INT4 codes and FP32 (or FP16/BF16) scales per group of 32/64/128/256 (symmetric), UINT4
    codes with a zero point per group (asymmetric, w = (q - z) * s), or INT4 with one scale per
    output row.
    FP32 accumulation; BF16 or FP32 output."""
    int4 = lambda r: (decode_kind(r) or ("",))[0].startswith(("int4", "uint4"))
    return _weight_mm(x, w, bias, out_dtype, path, {"int4": int4}, "int4_matmul")


def weight_matmul(x: torch.Tensor, w, bias: torch.Tensor | None = None,
                  out_dtype=torch.bfloat16, path: str = "auto") -> torch.Tensor:
    """x @ dequantize(w)^T for any weight-only format with a kernel (NVFP4, MXFP4, MXFP8, FP8 or
    INT8 per row/tensor, INT4 per group or row): nvfp4_matmul, mx_matmul, fp8_weight_matmul,
    int4_matmul, or the decode kernel directly (INT8). `w` a QuantizedTensor or DecodeWeight."""
    qt = w.qt if isinstance(w, DecodeWeight) else w
    if not isinstance(qt, QuantizedTensor):
        raise TypeError(f"weight_matmul: w must be a QuantizedTensor, got {type(w).__name__}")
    spec = decode_kind(qt.recipe)
    if spec is None:
        raise ValueError(f"weight_matmul: recipe {qt.recipe.name!r} has no weight-only kernel")
    kind = spec[0]
    if kind == "nvfp4":
        return nvfp4_matmul(x, w, bias, out_dtype, path)
    if kind.startswith("mx"):
        return mx_matmul(x, w, bias, out_dtype, path)
    if kind.startswith(("e4m3", "e5m2")):
        return fp8_weight_matmul(x, w, bias, out_dtype, path)
    if kind.startswith(("int4", "uint4")):
        return int4_matmul(x, w, bias, out_dtype, path)
    int8 = lambda r: (decode_kind(r) or ("",))[0].startswith("int8")
    return _weight_mm(x, w, bias, out_dtype, path, {"int8": int8}, "weight_matmul")


# ---- given amax; quantize + transpose in one read (training's two copies of an operand) -------
def _check_amax(amax, x, r):
    """A caller's tensor amax: None, or a one-element float tensor on x's device, for recipes
    whose scale comes from the whole tensor's amax (per-tensor FP8, NVFP4's tensor scale)."""
    if amax is None:
        return None
    if r.granularity != "tensor" and r.scale_format != "e4m3":
        raise ValueError(f"amax= is for recipes scaled by the tensor's amax (per-tensor FP8, "
                         f"NVFP4); {r.name!r} has {r.granularity} scales, computed from each "
                         f"block in the same pass: drop amax=")
    if not isinstance(amax, torch.Tensor):
        raise TypeError(f"amax must be a one-element torch.Tensor, got {type(amax).__name__}: "
                        f"use torch.tensor(value, device=x.device)")
    if amax.numel() != 1 or not amax.is_floating_point():
        raise ValueError(f"amax must be a one-element float tensor, got shape "
                         f"{tuple(amax.shape)} dtype {amax.dtype}")
    if amax.device != x.device:
        raise ValueError(f"amax is on {amax.device}, x on {x.device}: move amax to x's device")
    return amax.detach().float().reshape(())


def fp8_quantize_transpose(x: torch.Tensor, recipe="fp8_e4m3_1x128", path: str = "auto",
                           amax=None, return_amax: bool = False):
    """(fp8_quantize(x, recipe), fp8_quantize(x.T.contiguous(), recipe)) from one read of the
    2-D x: the row-wise and column-wise FP8 copies training needs (fprop reads x, wgrad x^T;
    fprop W, dgrad W^T). One kernel for per-tensor, 1xG (G <= 128) and square GxG block
    recipes; other recipes (row-wise: the column copy needs each column's amax first) run two
    quantize calls. `amax` as in fp8_quantize (per-tensor recipes). `return_amax=True` adds a
    third result, x's own amax (fp32 scalar, NaN if x has one), reduced in the same read by the
    one-read kernel: delayed scaling scales with the history's amax and records this one."""
    r = _check_recipe(recipe, _FP8_ELEMENTS, ("fp32", "pow2"), "fp8_quantize_transpose")
    _check_input(x)
    if x.dim() != 2:
        raise ValueError(f"fp8_quantize_transpose takes a 2-D (rows, K) tensor, got shape "
                         f"{tuple(x.shape)}: pass x.reshape(-1, x.shape[-1])")
    amax = _check_amax(amax, x, r)
    from quantlib.kernels import _quantize_t as kt
    if not (use_triton(x, path) and kt.fused_ok(r)) or x.numel() == 0:
        if use_triton(x, path) and _kernel_ok(r) and x.numel():
            out = (_run_quantize(x, r, path, amax),
                   _run_quantize(x.t().contiguous(), r, path, amax))
        else:
            out = reference.quantize_transpose_ref(x, r, amax=amax)
        if return_amax:
            xa = x.detach().abs()
            out = (*out, (xa.amax() if x.numel() else xa.new_zeros(())).float())
        return out
    from quantlib.scaling import pad_to_blocks
    R, K = x.shape
    pad_to_blocks(torch.empty((R, K), device="meta"), r)   # same ValueError as quantize
    pad_to_blocks(torch.empty((K, R), device="meta"), r)
    amax_out = torch.zeros(1, dtype=torch.int32, device=x.device) if return_amax else None
    with quiet():
        (q, s), (qt, st) = kt.quantize_transpose(x, r, amax=amax, amax_out=amax_out)
    out = (QuantizedTensor(codes=q, scales=s.reshape(scale_shape(r, (R, K))), recipe=r,
                           shape=(R, K), dtype=x.dtype),
           QuantizedTensor(codes=qt, scales=st.reshape(scale_shape(r, (K, R))), recipe=r,
                           shape=(K, R), dtype=x.dtype))
    return (*out, amax_out.view(torch.float32).reshape(())) if return_amax else out
