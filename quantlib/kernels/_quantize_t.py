"""Triton kernel: FP8 quantize + transpose in one read. Training needs every operand twice: x
for fprop (scales along K) and x^T for wgrad (scales along the tokens); W for fprop and W^T for
dgrad. One program loads a (T, T) tile once and writes both copies, each bit for bit what
`quantlib.quantize` gives for x and for x.T.contiguous():

- MODE 0, per tensor: one scale (amax given, or reduced by a first pass), the codes are the same
  for both copies, stored twice (the second through `tl.trans`).
- MODE 1, 1xG groups (G <= T, T a multiple of G): the row copy's amax is a max over the tile
  viewed (T, T/G, G), the column copy's over the tile viewed (T/G, G, T); each copy is encoded
  with its own scales.
- MODE 2, GxG blocks (T = G): one amax per tile, the same codes for both copies, the scale
  stored at [i, j] and at [j, i].

Amaxes are reduced on integer bit patterns as in `_quantize.py` (NaN/Inf -> a bad group).
"""
import triton
import triton.language as tl

from quantlib.kernels._minifloat import to_f32
from quantlib.kernels._quantize import abs_bits, encode_elem, group_scale


@triton.jit
def quantize_transpose_kernel(x_ptr, q_ptr, s_ptr, qt_ptr, st_ptr, amax_ptr, amax_out_ptr,
                              R, K, KP, RP,
                              stride_s, stride_st, EB: tl.constexpr, MB: tl.constexpr,
                              BIAS: tl.constexpr, MAXC: tl.constexpr, QMAX: tl.constexpr,
                              SCALE: tl.constexpr, MODE: tl.constexpr, T: tl.constexpr,
                              G: tl.constexpr, BF16: tl.constexpr, HW: tl.constexpr,
                              INTERPRET: tl.constexpr, AMAX_OUT: tl.constexpr):
    """x (R, K) -> q (R, KP) with scales s, and qt (K, RP) = the codes of x^T with scales st
    (KP, RP: K and R zero-padded to whole groups; strides are the scales' row strides).
    AMAX_OUT: also reduce x's amax (int bits, atomic max) into amax_out_ptr, for the caller's
    next step (delayed scaling records it without another pass over x)."""
    pid_r = tl.program_id(0)
    pid_c = tl.program_id(1)
    rows = pid_r * T + tl.arange(0, T)
    cols = pid_c * T + tl.arange(0, T)
    x = to_f32(tl.load(x_ptr + rows.to(tl.int64)[:, None] * K + cols[None, :],
                       mask=(rows < R)[:, None] & (cols < K)[None, :], other=0.0), BF16)
    if AMAX_OUT:
        tl.atomic_max(amax_out_ptr, tl.max(tl.max(abs_bits(x), axis=1), axis=0))
    if MODE == 0:
        stored, r, bad = group_scale(tl.load(amax_ptr), 1.0, QMAX, SCALE, 0, 0, 0, INTERPRET)
        q = tl.where(bad, 0, encode_elem(x * r, EB, MB, BIAS, MAXC, HW))
        qc = q
        if (pid_r == 0) & (pid_c == 0):
            tl.store(s_ptr, stored)
            tl.store(st_ptr, stored)
    elif MODE == 1:
        a = abs_bits(x)
        # row copy: groups of G along K
        stored, r, bad = group_scale(tl.max(tl.reshape(a, (T, T // G, G)), axis=2), 1.0, QMAX,
                                     SCALE, 0, 0, 0, INTERPRET)                   # (T, T/G)
        g = pid_c * (T // G) + tl.arange(0, T // G)
        tl.store(s_ptr + rows[:, None] * stride_s + g[None, :], stored,
                 mask=(rows < R)[:, None] & (g * G < KP)[None, :])
        q = encode_elem(tl.reshape(x, (T, T // G, G)) * r[:, :, None], EB, MB, BIAS, MAXC, HW)
        q = tl.reshape(tl.where(bad[:, :, None], 0, q), (T, T))
        # column copy: groups of G along R
        stored, r, bad = group_scale(tl.max(tl.reshape(a, (T // G, G, T)), axis=1), 1.0, QMAX,
                                     SCALE, 0, 0, 0, INTERPRET)                   # (T/G, T)
        g = pid_r * (T // G) + tl.arange(0, T // G)
        tl.store(st_ptr + cols[None, :] * stride_st + g[:, None], stored,
                 mask=(cols < K)[None, :] & (g * G < RP)[:, None])
        qc = encode_elem(tl.reshape(x, (T // G, G, T)) * r[:, None, :], EB, MB, BIAS, MAXC, HW)
        qc = tl.reshape(tl.where(bad[:, None, :], 0, qc), (T, T))
    else:
        amax = tl.max(tl.max(abs_bits(x), axis=1, keep_dims=True), axis=0, keep_dims=True)
        stored, r, bad = group_scale(amax, 1.0, QMAX, SCALE, 0, 0, 0, INTERPRET)  # (1, 1)
        z = tl.zeros((1, 1), dtype=tl.int32)
        tl.store(s_ptr + pid_r * stride_s + pid_c + z, stored)
        tl.store(st_ptr + pid_c * stride_st + pid_r + z, stored)
        q = tl.where(bad, 0, encode_elem(x * r, EB, MB, BIAS, MAXC, HW))
        qc = q
    tl.store(q_ptr + rows.to(tl.int64)[:, None] * KP + cols[None, :], q.to(tl.uint8),
             mask=(rows < R)[:, None] & (cols < KP)[None, :])
    # the column copy: the tile transposed in registers, so the store runs along qt's rows
    tl.store(qt_ptr + cols.to(tl.int64)[:, None] * RP + rows[None, :],
             tl.trans(qc.to(tl.uint8)), mask=(cols < K)[:, None] & (rows < RP)[None, :])


def fused_ok(recipe) -> bool:
    """Recipes the one-read kernel covers: per-tensor, 1xG groups with G <= 128, and square
    GxG blocks with G <= 128 (row-wise scales need the whole column first: not one read)."""
    g = recipe.granularity
    if recipe.element not in ("e4m3", "e5m2") or recipe.scale_format not in ("fp32", "pow2"):
        return False
    if g == "tensor":
        return True
    if g == "group":
        return recipe.block in (16, 32, 64, 128)
    if g == "block2d":
        bh, bw = recipe.block
        return bh == bw and bh in (16, 32, 64, 128)
    return False


def quantize_transpose(x, recipe, amax=None, hw=None, tile=None, amax_out=None):
    """x (R, K) contiguous fp32/bf16/fp16 -> ((q, s), (qt, st)): the codes and scales of x and
    of x^T, as `quantize` lays them out. `amax` (per-tensor recipes): the tensor amax, given.
    `amax_out` (int32 (1,) zeros): receives x's amax as fp32 bits, reduced in the same pass."""
    import torch

    from quantlib.kernels._quantize import HW_CVT, _meta, amax_bits, launch_amax
    R, K = x.shape
    dev, interp = x.device, x.device.type == "cpu"
    if hw is None:
        hw = HW_CVT and not interp and torch.cuda.get_device_capability(dev) >= (8, 9)
    meta, _, _ = _meta(recipe)
    bf16 = x.dtype == torch.bfloat16
    if bf16:
        x = x.view(torch.int16)
    g = recipe.granularity
    if g == "tensor":
        mode, G = 0, 1
        T = tile or 64
        KP, RP = K, R
        s = torch.empty((), dtype=torch.float32, device=dev)
        st = torch.empty((), dtype=torch.float32, device=dev)
        stride_s = stride_st = 0
        if amax is not None:
            a = amax_bits(amax)
        else:
            a = torch.zeros(1, dtype=torch.int32, device=dev)
            launch_amax(x, a, bf16)
    else:
        mode, G = (1, recipe.block) if g == "group" else (2, recipe.block[0])
        T = G if mode == 2 else max(G, tile or 128)
        KP, RP = -(-K // G) * G, -(-R // G) * G
        srows, strows = (R, K) if mode == 1 else (-(-R // G), -(-K // G))
        s = torch.empty((srows, KP // G), dtype=torch.float32, device=dev)
        st = torch.empty((strows, RP // G), dtype=torch.float32, device=dev)
        stride_s, stride_st = s.stride(0), st.stride(0)
        a = s
    q = torch.empty((R, KP), dtype=torch.uint8, device=dev)
    qt = torch.empty((K, RP), dtype=torch.uint8, device=dev)
    grid = (triton.cdiv(R, T), triton.cdiv(K, T))
    out = amax_out if amax_out is not None else a
    quantize_transpose_kernel[grid](x, q, s, qt, st, a, out, R, K, KP, RP, stride_s, stride_st,
                                    MODE=mode, T=T, G=G, BF16=bf16, HW=hw, INTERPRET=interp,
                                    AMAX_OUT=amax_out is not None,
                                    num_warps=8 if T * T >= 8192 else 4, **meta)
    return (q, s), (qt, st)
