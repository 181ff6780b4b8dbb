"""Scales: who shares one (granularity), how big it is (amax, calibrators), how it is stored.

The arithmetic is written out once, in `quantlib.recipes`' docstring; this module implements it
on whole tensors at once (no Python loop over blocks). A scale is always a *dequantization*
scale s (x ~= decode(q) * s), used for encoding through its float32 reciprocal r.

Calibrator hook: a calibrator is any callable `calibrator(rows, dim) -> Tensor` that receives a
float32 tensor `rows` of shape (n_scales, elements_per_scale), one row per scale, and returns the
non-negative amax (clipping range) of each row, shape (n_scales,), reduced over `dim` (always
-1). The default, `max_calibrator`, is max |x|; percentile or MSE-search calibrators (PTQ) plug in
through `Recipe(calibrator=...)`. Asymmetric recipes use the group's min and max and ignore it.
"""
from __future__ import annotations

import math

import torch

from quantlib.codecs import decode, encode
from quantlib.formats import get_format

FLT_MAX = torch.finfo(torch.float32).max


def max_calibrator(rows: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """amax = max |x| of each row (NaN propagates): the default calibrator."""
    return rows.abs().amax(dim)


def as_recipe(recipe):
    """A Recipe, or a recipe name ("nvfp4") looked up; anything else is a TypeError."""
    from quantlib.recipes import get_recipe      # recipes imports this module
    return get_recipe(recipe)


def check_amax(amax, what: str = "amax", nonfinite: str = "raise") -> torch.Tensor:
    """amax as a float32 tensor of magnitudes: a negative amax is a ValueError; a NaN or Inf
    amax too unless nonfinite="nan" (quantize's own calls: such a group gets a NaN scale)."""
    if not isinstance(amax, torch.Tensor):
        if isinstance(amax, (int, float)) and not isinstance(amax, bool):
            amax = torch.tensor(float(amax))
        else:
            raise TypeError(f"{what} must be a tensor (or a number), got {type(amax).__name__}")
    if not (amax.is_floating_point() or amax.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"{what} must be a real tensor, got {amax.dtype}")
    if amax.is_meta:
        raise ValueError(f"{what} is on the 'meta' device (no values): scales need data")
    amax = amax.to(torch.float32)
    if bool((amax < 0).any()):
        raise ValueError(f"{what} has negative values: an amax is a magnitude, max |x| >= 0")
    if nonfinite == "raise" and not bool(torch.isfinite(amax).all()):
        raise ValueError(f"{what} has NaN or Inf values: a scale needs a finite amax (clean "
                         f"the data it was measured on)")
    return amax


def _check_qmax(qmax) -> float:
    if isinstance(qmax, bool) or not isinstance(qmax, (int, float)) or not (
            0 < qmax < float("inf")):
        raise ValueError(f"qmax={qmax!r}: the largest code magnitude is a positive finite number "
                         f"(the element format's max, e.g. 448 for E4M3)")
    return float(qmax)


# ---- groups -------------------------------------------------------------------------------------
def _block_dims(recipe) -> tuple[int, int]:
    """(rows, cols) of a block in the 2-D view; cols only for 1-D groups."""
    if recipe.granularity == "group":
        return 1, recipe.block
    if recipe.granularity == "block2d":
        return recipe.block
    return 1, 1


def pad_to_blocks(x: torch.Tensor, recipe) -> torch.Tensor:
    """x zero-padded to whole blocks (last dim; rows of the 2-D view too for 2-D blocks), or a
    ValueError when the block does not divide the shape and `recipe.pad` is False."""
    recipe = as_recipe(recipe)
    bh, bw = _block_dims(recipe)
    k = x.shape[-1]
    m = math.prod(x.shape[:-1])
    pk, pm = -k % bw, (-m % bh if bh > 1 else 0)
    if pk == 0 and pm == 0:
        return x
    if not recipe.pad:
        what = f"block {bh}x{bw}" if bh > 1 else f"block {bw}"
        raise ValueError(f"recipe {recipe.name!r}: {what} does not divide shape "
                         f"{tuple(x.shape)}; pad the tensor, or use "
                         f"dataclasses.replace(recipe, pad=True) to zero-pad to whole blocks")
    x = torch.nn.functional.pad(x, (0, pk))
    if pm:
        x2 = torch.nn.functional.pad(x.reshape(m, -1), (0, 0, 0, pm))
        return x2                    # 2-D blocks work on the 2-D view; rows cropped later
    return x


def channel_axis(recipe, ndim: int) -> int:
    """The recipe's channel axis for a tensor of `ndim` dimensions (negative axes count from the
    end), or a clear error when it has no such axis or only one dimension."""
    recipe = as_recipe(recipe)
    if ndim < 2:
        raise ValueError(f"recipe {recipe.name!r} has one scale per channel along axis "
                         f"{recipe.axis}: it needs a tensor of at least 2 dimensions, got {ndim}; "
                         f"use a per-tensor recipe for a vector")
    if not -ndim <= recipe.axis < ndim:
        raise ValueError(f"recipe {recipe.name!r}: channel axis {recipe.axis} is out of range "
                         f"for a tensor of {ndim} dimensions")
    return recipe.axis % ndim


def blocked(x: torch.Tensor, recipe) -> tuple[torch.Tensor, tuple[int, ...]]:
    """View of a padded x in which each scale's elements span `dims` (keepdim scales broadcast)."""
    recipe = as_recipe(recipe)
    g = recipe.granularity
    if g == "tensor":
        return x, tuple(range(x.dim()))
    if g == "row":
        return x, (x.dim() - 1,)
    if g == "channel":
        return x, tuple(d for d in range(x.dim()) if d != channel_axis(recipe, x.dim()))
    if g == "group":
        return x.reshape(*x.shape[:-1], x.shape[-1] // recipe.block, recipe.block), (x.dim(),)
    bh, bw = recipe.block
    x2 = x.reshape(math.prod(x.shape[:-1]), x.shape[-1])    # -1 is ambiguous for 0 rows
    return x2.reshape(x2.shape[0] // bh, bh, x2.shape[1] // bw, bw), (1, 3)


def scale_shape(recipe, shape) -> tuple[int, ...]:
    """Shape of the stored scales for a tensor of `shape` (padded to whole blocks)."""
    recipe = as_recipe(recipe)
    shape = tuple(shape)
    g = recipe.granularity
    if g == "tensor":
        return ()
    if g == "row":
        return (*shape[:-1], 1)
    if g == "channel":
        a = channel_axis(recipe, len(shape))
        return tuple(n if d == a else 1 for d, n in enumerate(shape))
    bh, bw = _block_dims(recipe)
    k = -(-shape[-1] // bw)
    if g == "group":
        return (*shape[:-1], k)
    return (-(-math.prod(shape[:-1]) // bh), k)


def _keepdim_shape(xb, dims):
    return tuple(1 if d in dims else n for d, n in enumerate(xb.shape))


def group_amax(xb: torch.Tensor, dims, calibrator=None) -> torch.Tensor:
    """amax of each group of the blocked view, in keepdim form (the calibrator hook applies)."""
    keep = _keepdim_shape(xb, dims)
    if xb.numel() == 0:
        return torch.zeros(keep, dtype=torch.float32, device=xb.device)
    if calibrator is None:
        return xb.abs().amax(dims, keepdim=True)
    kept = [d for d in range(xb.dim()) if d not in dims]
    rows = xb.permute(*kept, *dims).reshape(-1, math.prod(xb.shape[d] for d in dims))
    return checked_amax(calibrator(rows, -1), rows.shape[0]).reshape(keep)


def checked_amax(amax, n: int) -> torch.Tensor:
    """A calibrator's answer for n groups: n non-negative amaxes (NaN allowed: a group with NaN
    is a bad group), as float32; anything else is a clear error."""
    if not isinstance(amax, torch.Tensor):
        raise TypeError(f"a calibrator must return a tensor of amaxes, got "
                        f"{type(amax).__name__}")
    if amax.numel() != n:
        raise ValueError(f"the calibrator returned {amax.numel()} amaxes for {n} groups: it is "
                         f"called as calibrator(rows, -1) and must reduce each row to one value")
    amax = amax.to(torch.float32).reshape(n)
    if bool((amax < 0).any()):
        raise ValueError("the calibrator returned a negative amax: amaxes are magnitudes")
    return amax


# ---- exact powers of two ------------------------------------------------------------------------
def exp2i(k: torch.Tensor) -> torch.Tensor:
    """2^k as float32, exactly, for integer k in [-127, 127] (2^-127 is an fp32 subnormal)."""
    k = k.to(torch.int32)
    normal = ((k + 127).clamp(min=1) << 23).view(torch.float32)
    return torch.where(k >= -126, normal, torch.tensor(2.0 ** -127, device=k.device))


def ceil_log2(d: torch.Tensor) -> torch.Tensor:
    """ceil(log2(d)) exactly for finite d > 0 (frexp: d = m * 2^e, m in [0.5, 1))."""
    m, e = torch.frexp(d)
    return torch.where(m == 0.5, e - 1, e).to(torch.int32)


# ---- scale formats ------------------------------------------------------------------------------
def div(a: torch.Tensor, q: float) -> torch.Tensor:
    """a / q correctly rounded on every device. On CUDA, torch turns division by a Python number
    into multiplication by its reciprocal (two roundings: some scales differ by one ulp), so
    divide by a 0-dim tensor on a's device instead."""
    return a / torch.tensor(q, dtype=a.dtype, device=a.device)


def fp32_scale(amax: torch.Tensor, qmax: float, nonfinite: str = "raise"):
    """s = amax / qmax in float32 (1 when amax or s is 0); r = min(1/s, FLT_MAX).
    A negative amax is refused; a NaN/Inf one too unless nonfinite="nan" (see `check_amax`)."""
    amax, qmax = check_amax(amax, nonfinite=nonfinite), _check_qmax(qmax)
    s = div(amax, qmax)
    s = torch.where((amax == 0) | (s == 0), torch.ones_like(s), s)
    return s, torch.clamp(1.0 / s, max=FLT_MAX)


HALF_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def half_scale(s: torch.Tensor, scale_format: str):
    """An FP32 scale s rounded once (RNE) to FP16/BF16 ("fp16"/"bf16"): beyond the format's
    max it saturates to the max (FP16 65504), a scale that rounds to 0 becomes 1, NaN stays NaN.
    Returns (s_half in float16/bfloat16, r = min(1 / float32(s_half), FLT_MAX))."""
    if scale_format not in HALF_DTYPES:
        raise ValueError(f"half_scale: scale_format {scale_format!r}: use 'fp16' or 'bf16'")
    dt = HALF_DTYPES[scale_format]
    s = s.to(torch.float32)
    h = s.to(dt)                      # RNE; overflow gives Inf, saturated next
    h = torch.where(torch.isinf(h) & torch.isfinite(s),
                    torch.tensor(torch.finfo(dt).max, dtype=dt, device=h.device).copysign(h), h)
    h = torch.where(h == 0, torch.ones_like(h), h)
    return h, torch.clamp(1.0 / h.to(torch.float32), max=FLT_MAX)


def pow2_scale(amax: torch.Tensor, qmax: float, nonfinite: str = "raise"):
    """s = 2^ceil(log2(amax / qmax)), k clamped to [-126, 127]; amax == 0 gives s = 1.
    A negative amax is refused; a NaN/Inf one too unless nonfinite="nan" (see `check_amax`)."""
    amax, qmax = check_amax(amax, nonfinite=nonfinite), _check_qmax(qmax)
    d = div(amax, qmax)
    k = torch.where(d > 0, ceil_log2(torch.where(d > 0, d, 1.0)), -126).clamp(-126, 127)
    k = torch.where(amax == 0, 0, k)
    return exp2i(k), exp2i(-k)


def mx_element(fmt) -> tuple[float, int, int]:
    """(qmax, emax, mbits) of an MX element; integers are fixed point (INT8: int8 * 2^-6)."""
    fmt = get_format(fmt)
    if fmt.is_int:
        frac = fmt.bits - 2
        return fmt.max / 2 ** frac, 0, frac
    return fmt.max, math.frexp(fmt.max)[1] - 1, fmt.mbits


def e8m0_scale(amax: torch.Tensor, fmt, rule: str = "floor", nonfinite: str = "raise"):
    """The E8M0 byte b of each block by rule floor/ceil/even/rceil; s = 2^(b-127), r = 2^(127-b).

    A negative amax is refused; a NaN/Inf one too, unless nonfinite="nan": then b = 0xFF (NaN)
    and s = NaN."""
    amax = check_amax(amax, nonfinite=nonfinite)
    qmax, emax, mbits = mx_element(fmt)
    a = torch.where(torch.isfinite(amax), amax, 0.0)
    bits = a.view(torch.int32)
    expo = (bits >> 23) - 127
    if rule == "floor":
        e = expo - emax
    elif rule == "ceil":
        e = expo + ((bits & 0x7FFFFF) != 0).to(torch.int32) - emax
    elif rule == "even":
        rounded = (bits + (1 << (22 - mbits))) & 0x7F800000
        e = (rounded >> 23) - 127 - emax
    elif rule == "rceil":
        d = div(a, qmax)
        e = torch.where(d > 0, ceil_log2(torch.where(d > 0, d, 1.0)), -127)
    else:
        raise ValueError(f"E8M0 scale rule {rule!r}: use floor, ceil, even or rceil")
    e = e.clamp(-127, 127)
    finite = torch.isfinite(amax)
    b = torch.where(finite, e + 127, 255).to(torch.uint8)
    s = torch.where(finite, exp2i(e), float("nan"))
    return b, s, exp2i(-e)


def e8m0_values(b: torch.Tensor) -> torch.Tensor:
    """Decoded E8M0 bytes: 2^(b - 127), 0xFF -> NaN."""
    b = b.to(torch.int32)
    return torch.where(b == 255, float("nan"), exp2i(b - 127))


def nvfp4_scale(amax_b: torch.Tensor, amax_t: torch.Tensor, qmax: float,
                nonfinite: str = "raise"):
    """Two-level scales (TransformerEngine's NVFP4): E4M3 block codes, FP32 tensor scale s_t.

    Returns (code_b, s_t, t_b, r): t_b = decode(code_b) * s_t is the block's whole scale and
    r = min(1 / t_b, FLT_MAX) its encoding multiplier. No lower clamp on the block scale.
    Negative amaxes are refused; NaN/Inf ones too unless nonfinite="nan"."""
    amax_b = check_amax(amax_b, "amax_b", nonfinite)
    amax_t, qmax = check_amax(amax_t, "amax_t", nonfinite), _check_qmax(qmax)
    s_t = div(amax_t.to(torch.float32), 448.0 * qmax)
    s_t = torch.where((amax_t == 0) | (s_t == 0), torch.ones_like(s_t), s_t)
    s_b = div(amax_b, qmax) / s_t
    code_b = encode(s_b, "e4m3", rounding="rne", overflow="saturate")
    code_b = torch.where(torch.isfinite(amax_b) & torch.isfinite(s_t), code_b,
                         torch.tensor(0x7F, dtype=torch.uint8, device=code_b.device))
    s_t = torch.where(torch.isfinite(amax_t), s_t, float("nan"))
    t_b = decode(code_b, "e4m3") * s_t
    return code_b, s_t, t_b, torch.clamp(1.0 / t_b, max=FLT_MAX)


def asym_scale(lo: torch.Tensor, hi: torch.Tensor, qmax: float, nonfinite: str = "raise",
               scale_format: str = "fp32"):
    """Asymmetric INT scale and zero point from a group's range [min(x, 0), max(x, 0)].
    NaN/Inf bounds are refused unless nonfinite="nan" (quantize marks those groups bad).
    scale_format "fp16"/"bf16": s is rounded to that format (`half_scale`) before r and the
    zero point are taken from it, and returned in that dtype."""
    qmax = _check_qmax(qmax)
    for name, t in (("lo", lo), ("hi", hi)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {type(t).__name__}")
        if nonfinite == "raise" and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} has NaN or Inf values: the group range must be finite")
    lo, hi = lo.clamp(max=0.0), hi.clamp(min=0.0)
    span = hi - lo                     # beyond FLT_MAX for a range near both fp32 ends:
    span = torch.where(torch.isinf(span) & torch.isfinite(lo) & torch.isfinite(hi),
                       (hi.double() - lo.double()).clamp(max=FLT_MAX).float(), span)
    s = div(span, qmax)
    s = torch.where(s == 0, torch.ones_like(s), s)
    if scale_format in HALF_DTYPES:
        s, r = half_scale(s, scale_format)
    elif scale_format == "fp32":
        r = torch.clamp(1.0 / s, max=FLT_MAX)
    else:
        raise ValueError(f"asym_scale: scale_format {scale_format!r}: use fp32, fp16 or bf16")
    z = torch.round(-lo * r).clamp(0, qmax)
    return s, r, z


def qmax_of(recipe) -> float:
    """The largest magnitude the scale maps amax to: the format max; 2^(b-1)-1 for INT; MX INT
    fixed point; 2^b - 1 for asymmetric (unsigned) INT."""
    recipe = as_recipe(recipe)
    fmt = recipe.format
    if recipe.mx_int8:
        return mx_element(fmt)[0]
    return fmt.max


def compute_scale(xb: torch.Tensor, dims, recipe) -> dict:
    """All scales of the blocked view xb for a recipe, as a dict:

    scales (stored form, keepdim), tensor_scale (NVFP4-style recipes), zero_point (asymmetric),
    s (float32 dequantization scale, keepdim), r (encoding multiplier, keepdim), bad (groups
    with a non-finite amax, keepdim)."""
    recipe = as_recipe(recipe)
    if not isinstance(xb, torch.Tensor) or not xb.is_floating_point():
        raise TypeError(f"compute_scale takes a floating-point tensor (the blocked view from "
                        f"`blocked(x, recipe)`), got {getattr(xb, 'dtype', type(xb).__name__)}")
    if xb.is_meta:
        raise ValueError("compute_scale: x is on the 'meta' device (no values): scales need data")
    dims = (dims,) if isinstance(dims, int) else dims
    if not (isinstance(dims, (tuple, list)) and all(
            isinstance(d, int) and -xb.dim() <= d < max(xb.dim(), 1) for d in dims)):
        raise ValueError(f"dims={dims!r}: the dimensions of xb ({xb.dim()}-D) each scale "
                         f"spans, as `blocked(x, recipe)` returns them")
    dims = tuple(d % max(xb.dim(), 1) for d in dims)
    fmt, qmax = recipe.format, qmax_of(recipe)
    out = {"tensor_scale": None, "zero_point": None}
    if recipe.asymmetric:
        keep = _keepdim_shape(xb, dims)
        if xb.numel() == 0:
            lo = hi = torch.zeros(keep, dtype=torch.float32, device=xb.device)
        else:
            lo, hi = xb.amin(dims, keepdim=True), xb.amax(dims, keepdim=True)
        s, r, z = asym_scale(lo, hi, qmax, nonfinite="nan", scale_format=recipe.scale_format)
        bad = ~(torch.isfinite(lo) & torch.isfinite(hi))
        s = torch.where(bad, torch.tensor(float("nan"), dtype=s.dtype, device=s.device), s)
        z = torch.where(bad, 0.0, z)
        out.update(scales=s, s=s.to(torch.float32), r=r, bad=bad, zero_point=z.to(torch.uint8))
        return out
    amax = group_amax(xb, dims, recipe.calibrator)
    bad = ~torch.isfinite(amax)
    sf = recipe.scale_format
    if sf == "fp32":
        s, r = fp32_scale(amax, qmax, nonfinite="nan")
        s = torch.where(bad, float("nan"), s)
        out.update(scales=s, s=s, r=r)
    elif sf in HALF_DTYPES:
        s, _ = fp32_scale(amax, qmax, nonfinite="nan")
        h, r = half_scale(s, sf)
        h = torch.where(bad, torch.tensor(float("nan"), dtype=h.dtype, device=h.device), h)
        out.update(scales=h, s=h.to(torch.float32), r=r)
    elif sf == "pow2":
        s, r = pow2_scale(amax, qmax, nonfinite="nan")
        s = torch.where(bad, float("nan"), s)
        out.update(scales=s, s=s, r=r)
    elif sf == "e8m0":
        b, s, r = e8m0_scale(amax, fmt, recipe.scale_rule, nonfinite="nan")
        out.update(scales=b, s=s, r=r)
    else:
        rows = xb.reshape(1, -1)
        if xb.numel() == 0:
            amax_t = torch.zeros((), device=xb.device)
        elif recipe.calibrator is None:
            amax_t = amax.amax()
        else:
            amax_t = checked_amax(recipe.calibrator(rows, -1), 1).reshape(())
        code_b, s_t, t_b, r = nvfp4_scale(amax, amax_t, qmax, nonfinite="nan")
        bad = bad | ~torch.isfinite(amax_t)
        out.update(scales=code_b, tensor_scale=s_t, s=t_b, r=r)
    out["bad"] = bad
    return out
