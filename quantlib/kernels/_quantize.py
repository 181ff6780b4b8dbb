"""Triton kernels: quantize and dequantize for FP8 (tensor, row, 1xG, block 2-D), MX (E8M0) and
NVFP4 (E4M3 block scales + FP32 tensor scale), reproducing `quantlib.recipes`' arithmetic bit
for bit (read that docstring first: fl() there is `div_rn` or one fp32 multiply here).

One kernel, `quantize_tile_kernel`, serves every block recipe: a program loads a (BR, NG*G)
tile, views it as (BR, NG, G), reduces the amax of each group of G (of the whole tile for 2-D
blocks), turns it into a scale and encodes. The amax is reduced on integer bit patterns: for
non-negative floats int32 order is float order and NaN (> 0x7F800000) sorts above Inf, so a
NaN or Inf in a group shows up as an amax >= 0x7F800000 (a "bad" group: NaN scale, codes 0).
"""
import triton
import triton.language as tl

from quantlib.kernels._minifloat import (
    bf16_bits_rne,
    ceil_log2,
    decode_e4m3,
    decode_e8m0,
    decode_minifloat,
    div_rn,
    encode_e4m3,
    encode_minifloat,
    exp2i,
    to_f32,
    unpack_pair,
)

FLT_MAX = tl.constexpr(3.4028234663852886e38)   # jit code reads globals only as constexpr

# Element formats the kernels encode: name -> (id, ebits, mbits, bias, maxcode)
ELEMENTS = {"e4m3": (0, 4, 3, 7, 0x7E), "e5m2": (1, 5, 2, 15, 0x7B), "e2m1": (2, 2, 1, 1, 0x7),
            "e2m3": (3, 2, 3, 1, 0x1F), "e3m2": (4, 3, 2, 3, 0x1F)}
SCALES = {"fp32": 0, "pow2": 1, "e8m0": 2, "e4m3": 3}
RULES = {"floor": 0, "ceil": 1, "even": 2, "rceil": 3}


@triton.jit
def encode_e2m1_fast(y):
    """fp32 -> E2M1 code (RNE, saturating at 6, NaN -> +-0) in ~15 integer ops on the fp32 bits,
    equal to seven RNE threshold compares on all 2^32 inputs (scripts/check_e2m1_encoder.py;
    the tests sweep the decision points). |y| >= 1: E2M1 keeps one mantissa bit, so add the RNE
    bias below bit 22 (0x1FFFFF plus the kept bit's parity) and shift: (exponent << 1 | m) -
    (126 << 1) is the code (a carry walks into the exponent by itself: 1.75 -> 2.0). |y| < 1:
    E2M1's subnormal step is 0.5, the ulp of 2^22 in fp32, so the FPU's RNE add |y| + 2^22
    rounds to the step and the bits above 2^22's count the steps: 0, 1 or 2 (= 1.0, code 2)."""
    b = y.to(tl.int32, bitcast=True)
    a = b & 0x7FFFFFFF
    a = tl.where(a > 0x7F800000, 0, a)                  # NaN: magnitude 0, sign kept
    a = tl.minimum(a, 0x40C00000)                       # >= 6 and Inf saturate to 6.0
    n = ((a + 0x1FFFFF + ((a >> 22) & 1)) >> 22) - 252
    s = (a.to(tl.float32, bitcast=True) + 4194304.0).to(tl.int32, bitcast=True) - 0x4A800000
    return tl.where(a < 0x3F800000, s, n) | ((b >> 28) & 8)


@triton.jit
def encode_elem(y, EB: tl.constexpr, MB: tl.constexpr, BIAS: tl.constexpr, MAXC: tl.constexpr,
                HW: tl.constexpr):
    """fp32 -> element code, RNE, saturating (Inf too). NaN reaches here only under a given
    tensor amax (else its group is bad): it encodes as the reference's saturating encode does,
    E4M3 0x7F, E5M2 0x7E (sign kept). HW (sm_89+): FP8 through the hardware's
    cvt.rn.satfinite, the same bits as the integer path (gpu_check.py verifies both); the
    interpreter and sm_80 use the integer path."""
    if HW and EB == 4 and MB == 3:
        c = y.to(tl.float8e4nv).to(tl.uint8, bitcast=True).to(tl.int32)
    elif HW and EB == 5:
        c = y.to(tl.float8e5).to(tl.uint8, bitcast=True).to(tl.int32)
        c = tl.where(y != y, (c & 0x80) | 0x7E, c)  # noqa: PLR0124 (cvt gives NaN as 0x7F)
    elif EB == 2 and MB == 1:
        c = encode_e2m1_fast(y)
    elif EB == 4 and MB == 3:
        c = encode_minifloat(y, 4, 3, 7, MAXC, MAXC, 0x7F, MAXC)
    elif EB == 5:
        c = encode_minifloat(y, 5, 2, 15, MAXC, MAXC, 0x7E, MAXC)
    else:
        c = encode_minifloat(y, EB, MB, BIAS, MAXC, MAXC, MAXC, MAXC)
    return c


@triton.jit
def decode_elem(c, EB: tl.constexpr, MB: tl.constexpr, BIAS: tl.constexpr):
    if EB == 5:
        v = decode_minifloat(c, 5, 2, 15, True, -1)       # E5M2: Inf and NaN codes
    elif EB == 4:
        v = decode_minifloat(c, 4, 3, 7, False, 0x7F)     # E4M3: S.1111.111 is NaN
    else:
        v = decode_minifloat(c, EB, MB, BIAS, False, -1)  # FP6, FP4: all finite
    return v


@triton.jit
def abs_bits(x):
    return x.to(tl.int32, bitcast=True) & 0x7FFFFFFF


@triton.jit
def group_scale(amax_bits, ts, QMAX: tl.constexpr, SCALE: tl.constexpr, RULE: tl.constexpr,
                EMAX: tl.constexpr, EMB: tl.constexpr, INTERPRET: tl.constexpr):
    """amax (as int bits) -> (stored scale, encoding multiplier r, bad) per recipes.py step 3.
    The stored scale is fp32 (fp32/pow2) or an int32 code (E8M0 byte, E4M3 code)."""
    bad = amax_bits >= 0x7F800000
    a_bits = tl.where(bad, 0, amax_bits)
    amax = a_bits.to(tl.float32, bitcast=True)
    if SCALE == 0:      # fp32: s = amax/qmax (1 if amax or s is 0), r = min(1/s, FLT_MAX)
        s = div_rn(amax, QMAX, INTERPRET)
        s = tl.where((amax == 0.0) | (s == 0.0), 1.0, s)
        r = tl.minimum(div_rn(tl.zeros_like(s) + 1.0, s, INTERPRET), FLT_MAX)
        stored = tl.where(bad, float("nan"), s)
    elif SCALE == 1:    # pow2: s = 2^k, k = ceil(log2(amax/qmax)) in [-126, 127], 0 for amax 0
        k = ceil_log2(div_rn(amax, QMAX, INTERPRET))
        k = tl.minimum(tl.maximum(k, -126), 127)
        k = tl.where(amax == 0.0, 0, k)
        r = exp2i(-k)
        stored = tl.where(bad, float("nan"), exp2i(k))
    elif SCALE == 2:    # E8M0 byte from amax's exponent field by rule
        E = a_bits >> 23
        if RULE == 0:
            e = E - 127 - EMAX
        elif RULE == 1:
            e = E - 127 + ((a_bits & 0x7FFFFF) != 0).to(tl.int32) - EMAX
        elif RULE == 2:
            e = (((a_bits + (1 << (22 - EMB))) & 0x7F800000) >> 23) - 127 - EMAX
        else:
            e = ceil_log2(div_rn(amax, QMAX, INTERPRET))
        e = tl.minimum(tl.maximum(e, -127), 127)
        r = exp2i(-e)
        stored = tl.where(bad, 255, e + 127)
    else:               # E4M3 block scale under the fp32 tensor scale ts (NVFP4)
        s_b = div_rn(div_rn(amax, QMAX, INTERPRET), ts, INTERPRET)
        code = encode_e4m3(s_b)
        t_b = decode_e4m3(code) * ts
        r = tl.minimum(div_rn(tl.zeros_like(t_b) + 1.0, t_b, INTERPRET), FLT_MAX)
        stored = tl.where(ts != ts, 0x7F, tl.where(bad, 0x7F, code))  # noqa: PLR0124 (NaN)
    return stored, r, bad


@triton.jit
def amax_kernel(x_ptr, amax_ptr, n, BF16: tl.constexpr, BLOCK: tl.constexpr,
                CHUNKS: tl.constexpr):
    """Tensor amax as int bits: each program reduces CHUNKS x BLOCK elements, then one atomic
    max (fewer programs hitting the one address than one per BLOCK)."""
    base = tl.program_id(0).to(tl.int64) * (CHUNKS * BLOCK)
    m = tl.zeros((BLOCK,), dtype=tl.int32)
    for i in range(CHUNKS):
        off = base + i * BLOCK + tl.arange(0, BLOCK)
        m = tl.maximum(m, abs_bits(to_f32(tl.load(x_ptr + off, mask=off < n, other=0.0), BF16)))
    tl.atomic_max(amax_ptr, tl.max(m, axis=0))


def launch_amax(x, amax, bf16: bool) -> None:
    """amax_kernel over x, with enough elements per program that large tensors (>= 16M
    elements) issue a few thousand atomics, not one per 4096 elements."""
    n, BLOCK = x.numel(), 4096
    chunks = 8 if n >= 2**24 else 1
    amax_kernel[(triton.cdiv(n, BLOCK * chunks),)](x, amax, n, BF16=bf16, BLOCK=BLOCK,
                                                   CHUNKS=chunks)


@triton.jit
def tensor_scale_kernel(amax_ptr, ts_ptr, QMAX: tl.constexpr, INTERPRET: tl.constexpr):
    """NVFP4 tensor scale s_t = amax_t / (448 * qmax) (1 if either is 0; NaN if amax_t is not
    finite), stored as fp32: one program."""
    a_bits = tl.load(amax_ptr)
    amax = a_bits.to(tl.float32, bitcast=True)
    s = div_rn(amax, 448.0 * QMAX, INTERPRET)
    s = tl.where((amax == 0.0) | (s == 0.0), 1.0, s)
    tl.store(ts_ptr, tl.where(a_bits >= 0x7F800000, float("nan"), s))


@triton.jit
def quantize_tensor_kernel(x_ptr, q_ptr, s_ptr, amax_ptr, n, EB: tl.constexpr, MB: tl.constexpr,
                           BIAS: tl.constexpr, MAXC: tl.constexpr, QMAX: tl.constexpr,
                           SCALE: tl.constexpr, BLOCK: tl.constexpr, BF16: tl.constexpr,
                           HW: tl.constexpr, INTERPRET: tl.constexpr):
    """Per-tensor fp32/pow2 scale, second pass: read the amax, encode BLOCK elements."""
    pid = tl.program_id(0)
    stored, r, bad = group_scale(tl.load(amax_ptr), 1.0, QMAX, SCALE, 0, 0, 0, INTERPRET)
    off = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    x = to_f32(tl.load(x_ptr + off, mask=off < n, other=0.0), BF16)
    q = tl.where(bad, 0, encode_elem(x * r, EB, MB, BIAS, MAXC, HW))
    tl.store(q_ptr + off, q.to(tl.uint8), mask=off < n)
    if pid == 0:
        tl.store(s_ptr, stored)


@triton.jit
def quantize_tile_kernel(x_ptr, q_ptr, s_ptr, ts_ptr, R, K, KP, stride_sr, stride_sc,
                         EB: tl.constexpr, MB: tl.constexpr, BIAS: tl.constexpr,
                         MAXC: tl.constexpr, QMAX: tl.constexpr, SCALE: tl.constexpr,
                         RULE: tl.constexpr, EMAX: tl.constexpr, EMB: tl.constexpr,
                         PACK: tl.constexpr, WORD: tl.constexpr, GROUP_ROWS: tl.constexpr,
                         BR: tl.constexpr, NG: tl.constexpr, G: tl.constexpr,
                         BF16: tl.constexpr, HW: tl.constexpr, INTERPRET: tl.constexpr):
    """Block quantization of the (R, K) view; codes are (R, KP) (KP = K zero-padded to whole
    groups), or (R, KP/2) with PACK (two 4-bit codes a byte, element 2i in the low nibble).
    Groups are G consecutive elements of a row, or the whole BR x G tile with GROUP_ROWS.
    PACK works on pairs from the start: the tile is two (BR, NG*G/2) halves, elements 2i and
    2i+1, so the byte is lo | hi << 4 with no shuffle. WORD > 0 (K even): x is viewed as words
    of two elements (`unpack_pair`): one wide load, then a shift and a mask (BF16) give both
    halves; else the tile is loaded and split."""
    pid_r = tl.program_id(0)
    pid_c = tl.program_id(1)
    rows = pid_r * BR + tl.arange(0, BR)
    rmask = rows < R
    r64 = rows.to(tl.int64)[:, None]
    cols = pid_c * (NG * G) + tl.arange(0, NG * G)
    pc = pid_c * (NG * G // 2) + tl.arange(0, NG * G // 2)
    if PACK and WORD > 0:
        w = tl.load(x_ptr + r64 * (K // 2) + pc[None, :],
                    mask=rmask[:, None] & (pc < K // 2)[None, :], other=0)
        lo, hi = unpack_pair(w, WORD)
    else:
        x = to_f32(tl.load(x_ptr + r64 * K + cols[None, :],
                           mask=rmask[:, None] & (cols < K)[None, :], other=0.0), BF16)
        if PACK:
            lo, hi = tl.split(tl.reshape(x, (BR, NG * G // 2, 2)))
    if PACK:
        lo = tl.reshape(lo, (BR, NG, G // 2))
        hi = tl.reshape(hi, (BR, NG, G // 2))
        amax = tl.max(tl.maximum(abs_bits(lo), abs_bits(hi)), axis=2)    # (BR, NG)
    else:
        x = tl.reshape(x, (BR, NG, G))
        amax = tl.max(abs_bits(x), axis=2)                               # (BR, NG)
    if SCALE == 3:
        ts = tl.load(ts_ptr)
    else:
        ts = 1.0
    gidx = pid_c * NG + tl.arange(0, NG)
    if GROUP_ROWS:
        amax1 = tl.max(amax, axis=0)                                     # (NG,): NG == 1
        stored, r, bad = group_scale(amax1, ts, QMAX, SCALE, RULE, EMAX, EMB, INTERPRET)
        tl.store(s_ptr + pid_r * stride_sr + gidx * stride_sc, stored.to(s_ptr.dtype.element_ty))
        r = r[None, :, None]
        bad = bad[None, :, None]
    else:
        stored, r, bad = group_scale(amax, ts, QMAX, SCALE, RULE, EMAX, EMB, INTERPRET)
        tl.store(s_ptr + rows[:, None] * stride_sr + gidx[None, :] * stride_sc,
                 stored.to(s_ptr.dtype.element_ty),
                 mask=rmask[:, None] & (gidx * G < KP)[None, :])
        r = r[:, :, None]
        bad = bad[:, :, None]
    if PACK:
        q = (encode_elem(lo * r, EB, MB, BIAS, MAXC, HW)
             | (encode_elem(hi * r, EB, MB, BIAS, MAXC, HW) << 4))
    else:
        q = encode_elem(x * r, EB, MB, BIAS, MAXC, HW)
    q = tl.where(bad, 0, q)
    if SCALE == 3:
        q = tl.where(ts != ts, 0, q)  # noqa: PLR0124 (a NaN tensor scale: all of x is bad)
    if PACK:
        tl.store(q_ptr + r64 * (KP // 2) + pc[None, :],
                 tl.reshape(q, (BR, NG * G // 2)).to(tl.uint8),
                 mask=rmask[:, None] & (pc < KP // 2)[None, :])
    else:
        tl.store(q_ptr + r64 * KP + cols[None, :], tl.reshape(q, (BR, NG * G)).to(tl.uint8),
                 mask=rmask[:, None] & (cols < KP)[None, :])


@triton.jit
def quantize_rows_kernel(x_ptr, q_ptr, s_ptr, R, K, EB: tl.constexpr, MB: tl.constexpr,
                         BIAS: tl.constexpr, MAXC: tl.constexpr, QMAX: tl.constexpr,
                         SCALE: tl.constexpr, BC: tl.constexpr, NCHUNK: tl.constexpr,
                         BF16: tl.constexpr, HW: tl.constexpr, INTERPRET: tl.constexpr):
    """One fp32/pow2 scale per row, for rows too long for one tile: a program owns a row, reads
    it once for the amax and again (mostly from L2) to encode."""
    row = tl.program_id(0).to(tl.int64)
    amax = tl.zeros((BC,), dtype=tl.int32)
    for i in range(NCHUNK):
        c = i * BC + tl.arange(0, BC)
        x = to_f32(tl.load(x_ptr + row * K + c, mask=c < K, other=0.0), BF16)
        amax = tl.maximum(amax, abs_bits(x))
    stored, r, bad = group_scale(tl.max(amax, axis=0), 1.0, QMAX, SCALE, 0, 0, 0, INTERPRET)
    tl.store(s_ptr + row, stored)
    for i in range(NCHUNK):
        c = i * BC + tl.arange(0, BC)
        x = to_f32(tl.load(x_ptr + row * K + c, mask=c < K, other=0.0), BF16)
        q = tl.where(bad, 0, encode_elem(x * r, EB, MB, BIAS, MAXC, HW))
        tl.store(q_ptr + row * K + c, q.to(tl.uint8), mask=c < K)


@triton.jit
def dequantize_kernel(q_ptr, s_ptr, ts_ptr, y_ptr, R, K, KQ, stride_sr, stride_sc,
                      SR: tl.constexpr, SC: tl.constexpr, EB: tl.constexpr, MB: tl.constexpr,
                      BIAS: tl.constexpr, SCALE: tl.constexpr, PACK: tl.constexpr,
                      OUT_BF16: tl.constexpr, HW: tl.constexpr, BR: tl.constexpr,
                      BC: tl.constexpr, GROUPED: tl.constexpr):
    """y[i, j] = decode(q[i, j]) * s[i // SR, j // SC] for the (R, K) output (codes rows are KQ
    elements long, so padding is cropped); E8M0 scales decode to 2^(b-127), E4M3 block scales to
    fl(decode(code) * s_t). Output fp32 or RNE bf16. HW (sm_89+): FP8 codes widen through the
    hardware's cvt and the bf16 output rounds in hardware (both exact or RNE, as the integer
    path; the interpreter's casts are not).
    Wide and once: packed codes are read as BC/2 whole bytes a row and split into nibbles with
    integer ops (tl.interleave puts element 2i, the low nibble, first); scales are read once
    per group, (BR, BC/SC) when a tile holds whole groups (GROUPED: SC divides BC), else
    (BR, 1): a group spans the tile (per row: SC = K; per tensor: stride 0; blocks that BC
    divides), and broadcast in registers."""
    pid_c = tl.program_id(1)
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    cols = pid_c * BC + tl.arange(0, BC)
    rmask = rows < R
    mask = rmask[:, None] & (cols < K)[None, :]
    r64 = rows.to(tl.int64)[:, None]
    if PACK:
        pc = pid_c * (BC // 2) + tl.arange(0, BC // 2)
        byte = tl.load(q_ptr + r64 * (KQ // 2) + pc[None, :],
                       mask=rmask[:, None] & (pc < KQ // 2)[None, :], other=0).to(tl.int32)
        q = tl.interleave(byte & 0xF, (byte >> 4) & 0xF)
    else:
        q = tl.load(q_ptr + r64 * KQ + cols[None, :], mask=mask, other=0)
    srow = s_ptr + (rows // SR)[:, None] * stride_sr
    if GROUPED:
        g = pid_c * (BC // SC) + tl.arange(0, BC // SC)
        s = tl.load(srow + g[None, :] * stride_sc, mask=rmask[:, None] & (g * SC < K)[None, :],
                    other=0)                                         # (BR, BC / SC)
    else:
        s = tl.load(srow + ((pid_c * BC) // SC) * stride_sc, mask=rmask[:, None], other=0)
    if SCALE == 2:
        s = decode_e8m0(s)
    elif SCALE == 3:
        s = decode_e4m3(s) * tl.load(ts_ptr)
    if HW and EB == 4 and MB == 3:
        v = q.to(tl.uint8).to(tl.float8e4nv, bitcast=True).to(tl.float32)
    elif HW and EB == 5:
        v = q.to(tl.uint8).to(tl.float8e5, bitcast=True).to(tl.float32)
    else:
        v = decode_elem(q, EB, MB, BIAS)
    if GROUPED:
        y = tl.reshape(tl.reshape(v, (BR, BC // SC, SC)) * s[:, :, None], (BR, BC))
    else:
        y = v * s
    off = r64 * K + cols[None, :]
    if OUT_BF16 and HW:
        tl.store(y_ptr + off, y.to(tl.bfloat16).to(tl.int16, bitcast=True), mask=mask)
    elif OUT_BF16:   # y_ptr: the bf16 output viewed as int16 (the interpreter's cast truncates)
        tl.store(y_ptr + off, bf16_bits_rne(y), mask=mask)
    else:
        tl.store(y_ptr + off, y.to(y_ptr.dtype.element_ty), mask=mask)


# ---- launchers (host side): a 2-D contiguous x and a recipe in, raw tensors out -------------
def _meta(recipe):
    from quantlib.scaling import mx_element, qmax_of
    _, eb, mb, bias, maxc = ELEMENTS[recipe.element]
    emax, emb = (mx_element(recipe.format)[1:] if recipe.scale_format == "e8m0" else (0, 0))
    meta = {"EB": eb, "MB": mb, "BIAS": bias, "MAXC": maxc, "QMAX": float(qmax_of(recipe)),
            "SCALE": SCALES[recipe.scale_format]}
    return meta, emax, emb


HW_CVT = True     # use the hardware FP8 conversion on sm_89+ (False: integer path everywhere)


def amax_bits(amax):
    """A caller's amax (fp32 scalar tensor) as the int32 bit pattern the kernels reduce to: a
    negative amax becomes NaN (a bad group: NaN scale, codes 0), -0.0 becomes +0.0."""
    import torch
    a = amax.detach().reshape(1).to(torch.float32)
    return torch.where(a >= 0, a + 0.0, float("nan")).view(torch.int32)


def quantize(x, recipe, hw=None, amax=None):
    """x (R, K) contiguous fp32/bf16/fp16 on a CUDA device (or the CPU under TRITON_INTERPRET)
    -> (codes, scales, tensor_scale) laid out as `quantlib.quantize` stores them (2-D view).
    `amax` (fp32 scalar tensor, per-tensor FP8 and NVFP4 only): the tensor amax to scale with,
    taken as given (the previous step's, or one fused into the producer): one pass over x
    instead of two; values beyond it saturate."""
    import torch
    R, K = x.shape
    dev, interp = x.device, x.device.type == "cpu"
    if hw is None:
        hw = HW_CVT and not interp and torch.cuda.get_device_capability(dev) >= (8, 9)
    meta, emax, emb = _meta(recipe)
    meta["HW"] = hw
    g, sf = recipe.granularity, recipe.scale_format
    bf16 = x.dtype == torch.bfloat16
    if bf16:                      # bf16 read as raw bits (see to_f32)
        x = x.view(torch.int16)
    pack = recipe.format.bits == 4
    ts = None
    if g == "tensor":
        q = torch.empty((R, K), dtype=torch.uint8, device=dev)
        given = amax is not None
        amax = amax_bits(amax) if given else torch.zeros(1, dtype=torch.int32, device=dev)
        s = torch.empty((), dtype=torch.float32, device=dev)
        BLOCK = 4096
        grid = (triton.cdiv(x.numel(), BLOCK),)
        if x.numel():
            if not given:
                launch_amax(x, amax, bf16)
            quantize_tensor_kernel[grid](x, q, s, amax, x.numel(), BLOCK=BLOCK,
                                         BF16=bf16, INTERPRET=interp, **meta)
        else:
            s.fill_(1.0)
        return q, s, ts
    if g == "row" and K > 8192:
        q = torch.empty((R, K), dtype=torch.uint8, device=dev)
        s = torch.empty((R, 1), dtype=torch.float32, device=dev)
        BC = 4096
        quantize_rows_kernel[(R,)](x, q, s, R, K, BC=BC, NCHUNK=triton.cdiv(K, BC),
                                   BF16=bf16, INTERPRET=interp, num_warps=8, **meta)
        return q, s, ts
    if g == "row":
        G, BR, NG, KP, group_rows = max(triton.next_power_of_2(K), 2), 1, 1, K, False
        BR = max(1, 4096 // G)
        s_shape = (R, 1)
    elif g == "group":
        G = recipe.block
        KP = triton.cdiv(K, G) * G
        NG = max(1, 128 // G)
        BR = max(1, 4096 // (NG * G))
        group_rows = False
        s_shape = (R, KP // G)
    else:  # block2d
        BR, G = recipe.block
        NG, group_rows = 1, True
        KP = triton.cdiv(K, G) * G
        s_shape = (triton.cdiv(R, BR), KP // G)
    sdt = torch.float32 if sf in ("fp32", "pow2") else torch.uint8
    s = torch.empty(s_shape, dtype=sdt, device=dev)
    q = torch.empty((R, KP // 2 if pack else KP), dtype=torch.uint8, device=dev)
    tsb = s
    if sf == "e4m3":
        given = amax is not None
        amax = amax_bits(amax) if given else torch.zeros(1, dtype=torch.int32, device=dev)
        ts = torch.empty((), dtype=torch.float32, device=dev)
        if x.numel() and not given:
            launch_amax(x, amax, bf16)
        tensor_scale_kernel[(1,)](amax, ts, QMAX=meta["QMAX"], INTERPRET=interp)
        tsb = ts
    word, xk = 0, x
    if pack and K % 2 == 0 and x.data_ptr() % (2 * x.element_size()) == 0:
        word = {torch.int16: 1, torch.float16: 2, torch.float32: 3}.get(x.dtype, 0)
        if word:       # rows of K elements as K/2 words of two (see unpack_pair)
            xk = x.view(torch.int64 if word == 3 else torch.int32)
    if R and K:
        grid = (triton.cdiv(R, BR), triton.cdiv(KP, NG * G))
        quantize_tile_kernel[grid](xk, q, s, tsb, R, K, KP, s.stride(0), s.stride(1),
                                   RULE=RULES[recipe.scale_rule], EMAX=emax, EMB=emb, PACK=pack,
                                   WORD=word,
                                   GROUP_ROWS=group_rows, BR=BR, NG=NG, G=G, BF16=bf16,
                                   INTERPRET=interp,
                                   num_warps=8 if BR * NG * G >= 8192 else 4, **meta)
    return q, s, ts


def dequantize(q, s, ts, recipe, R, K, out_dtype, hw=None):
    """Inverse of `quantize` on the (R, K) view: y = decode(q) * scale, fp32 then RNE to
    out_dtype (fp32, bf16 or fp16)."""
    import torch
    if hw is None:
        hw = (HW_CVT and q.device.type == "cuda"
              and torch.cuda.get_device_capability(q.device) >= (8, 9))
    meta, _, _ = _meta(recipe)
    g = recipe.granularity
    pack = recipe.format.bits == 4
    kq = q.shape[1] * (2 if pack else 1)
    y = torch.empty((R, K), dtype=out_dtype, device=q.device)
    if g == "tensor":
        sr, sc, st0, st1 = 1, 1 << 30, 0, 0
    else:
        sr, sc = {"row": (1, max(K, 1)), "group": (1, recipe.block)}.get(g, recipe.block)
        st0, st1 = s.stride(0), s.stride(1)
    bf16 = out_dtype == torch.bfloat16
    BR, BC = 32, 256
    if R and K:
        grid = (triton.cdiv(R, BR), triton.cdiv(K, BC))
        dequantize_kernel[grid](q, s, ts if ts is not None else s,
                                y.view(torch.int16) if bf16 else y, R, K, kq, st0, st1,
                                SR=sr, SC=sc, EB=meta["EB"], MB=meta["MB"], BIAS=meta["BIAS"],
                                SCALE=meta["SCALE"], PACK=pack, OUT_BF16=bf16, HW=hw,
                                BR=BR, BC=BC, GROUPED=BC % sc == 0)
    return y
