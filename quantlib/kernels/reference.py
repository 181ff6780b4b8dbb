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


# ---- decode attention over an FP8 KV cache (twin of kernels._attention) -----------------------
def exp2_poly_ref(x: torch.Tensor) -> torch.Tensor:
    """Twin of `_attention.exp2_poly`: the same float32 operations in the same order."""
    f32 = lambda c: torch.tensor(c, dtype=torch.float32, device=x.device)
    xc = torch.maximum(x, f32(-126.0))
    i = torch.floor(xc + f32(0.5))
    f = xc - i
    p = f32(1.535336188319500e-4) * f + f32(1.339887440266574e-3)
    for c in (9.618437357674640e-3, 5.550332471162809e-2, 2.402264791363012e-1,
              6.931472028550421e-1, 1.0):
        p = p * f + f32(c)
    two_i = ((i.to(torch.int32) + 127) << 23).view(torch.float32)
    return torch.where(x < -126.0, f32(0.0), p * two_i)


def tree_sum_ref(x: torch.Tensor) -> torch.Tensor:
    """Sum over the last axis (a power of two) as the kernel's binary tree of pairs."""
    while x.shape[-1] > 1:
        x = x.reshape(*x.shape[:-1], -1, 2)
        x = x[..., 0] + x[..., 1]
    return x[..., 0]


def _nvfp4_kv(codes, scales, ts):
    """Decoded NVFP4 keys or values as the kernel forms them: E2M1 * (E4M3 scale * ts)."""
    from quantlib.codecs import decode
    from quantlib.packing import unpack_nibbles
    s = decode(scales, "e4m3") * torch.as_tensor(ts, dtype=torch.float32, device=codes.device)
    return decode(unpack_nibbles(codes), "e2m1") * s.repeat_interleave(16, -1)


def decode_attention_partials_ref(q, kc, vc, ks, vs, qk_scale, n_splits, block_n, k_ts=None,
                                  v_ts=None):
    """Twin of `_attention.decode_attention_partials`: per-split (m, l, acc), bit for bit."""
    from quantlib.codecs import decode
    B, Hq, D = q.shape
    Hkv, T = kc.shape[1], kc.shape[2]
    nvfp4 = k_ts is not None
    G = Hq // Hkv
    split_len = -(-(-(-T // n_splits)) // block_n) * block_n
    qs = torch.tensor(qk_scale, dtype=torch.float32, device=q.device)
    qg = q.float().reshape(B, Hkv, G, 1, 1, D)
    if nvfp4:                                                  # (B, Hkv, T, D)
        k, v = _nvfp4_kv(kc, ks, k_ts), _nvfp4_kv(vc, vs, v_ts)
    else:
        k, v = decode(kc, "e4m3"), decode(vc, "e4m3")
    m = torch.full((B, Hkv, G, n_splits), float("-inf"), device=q.device)
    l = torch.zeros_like(m)
    acc = torch.zeros((B, Hkv, G, n_splits, D), device=q.device)
    base = torch.arange(n_splits, device=q.device)[:, None] * split_len
    for j in range(split_len // block_n):
        t = base + j * block_n + torch.arange(block_n, device=q.device)   # (S, BN)
        valid = t < T
        tc = t.clamp(max=T - 1)
        kb, vb = k[:, :, tc], v[:, :, tc]                                 # (B, Hkv, S, BN, D)
        dot = tree_sum_ref(qg * kb[:, :, None])                           # (B, Hkv, G, S, BN)
        if not nvfp4:
            ksb, vsb = ks[:, :, tc], vs[:, :, tc]                         # (B, Hkv, S, BN)
        s = dot * qs if nvfp4 else (dot * ksb[:, :, None]) * qs
        s = torch.where(valid, s, float("-inf"))
        m_new = torch.maximum(m, s.amax(-1))
        p = torch.where(valid, exp2_poly_ref(s - m_new[..., None]), 0.0)
        alpha = torch.where(m == m_new, 1.0, exp2_poly_ref(m - m_new))
        l = l * alpha + tree_sum_ref(p)
        pw = (p if nvfp4 else p * vsb[:, :, None])[..., None, :]          # (.., S, 1, BN)
        pv = tree_sum_ref(pw * vb[:, :, None].transpose(-1, -2))          # (.., S, D)
        acc = acc * alpha[..., None] + pv
        m = m_new
    return m.reshape(B, Hq, n_splits), l.reshape(B, Hq, n_splits), acc.reshape(
        B, Hq, n_splits, D)


def combine_splits(m: torch.Tensor, l: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
    """Merge per-split online-softmax partials (m, l in base 2; acc) into the output, summing
    the splits in index order: the same result for the kernel and its twin."""
    mx = m.amax(-1, keepdim=True)
    w = torch.where(m == float("-inf"), 0.0, torch.exp2(m - mx))
    return (w[..., None] * acc).sum(-2) / (w * l).sum(-1)[..., None]


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
