"""Triton decode kernels (M = 1..16 rows), Y = X @ dequant(W)^T for every weight-only format:
NVFP4, MXFP4, MXFP8, FP8 with a per-row or per-tensor scale, INT8 per row, INT4 per group
(symmetric, or asymmetric with a zero point) or per row.

At decode time a GEMM is a matrix-vector product: every weight is read once and used by a few
rows, so the time is the time to stream the weight bytes. The kernel is built for that:

- Kernel layout (prepared once, `decode_layout`): the packed codes are stored TRANSPOSED as
  (K / per_word, N) int32 words, N contiguous: 8 INT4/E2M1 codes or 4 FP8/INT8 codes of one
  output column per word (the canonical little-endian bytes of a row, read 4 at a time), so a
  warp's load of one word row is 32 consecutive columns: fully coalesced, 4 bytes per thread.
  Block scales (and zero points) are transposed the same way, (K / group, N).
- No `tl.dot` for M <= 4: each program unpacks a (BK / per_word, per_word, BN) weight tile in
  registers and reduces along K inside each thread (x as (BM, BK / per_word, per_word) times
  the codes, summed over the two K axes), products exact in FP32. For M 5..16 the same
  unpacked tile, as (BK, BN), feeds `tl.dot` (a 16-row tile; exact BF16 operands).
- Scales read once per group: the unscaled codes are summed over a group first, then the group
  partial is multiplied by its scale (one multiply per group and column, not per weight).
- Bit tricks instead of conversions: a nibble is `(word >> 4j) & 15`; INT4 is `(c ^ 8) - 8`,
  UINT4 is `c - zero`; E2M1 lands on FP16's exponent/mantissa with one shift and mask (the
  FP16 value is the E2M1 value x 2^-14, 0.5 included as an FP16 subnormal, which the FP16 ->
  FP32 conversion keeps exact) and the 2^14 re-bias multiplies the group partial, not each
  weight; E5M2 is the top byte of an FP16; E4M3's 7 magnitude bits go to FP16 bits 7..13
  (x 2^-8, its 2^8 re-bias again on the partial).
- Split-K for parallelism (a 1-row product has N / BN output tiles, too few to fill a GPU):
  program axis 1 takes one K slice and writes its partial sums; `splitk_reduce_kernel` adds
  the slots in a fixed order, or (a "serial" config) the tile's last program does, counted in
  by an integer lock. Deterministic either way: no float atomics.
- The configuration is chosen ahead from the shape (`decode_config`, or `TABLE`); on a GPU the
  candidates of `decode_candidates` are timed once per shape on the first eager call
  (`_tuning.tuned`), never inside a CUDA-graph capture (there the heuristic's choice runs).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import triton
import triton.language as tl

from quantlib.kernels import _tuning
from quantlib.kernels._minifloat import decode_e4m3, decode_e8m0, to_f32
from quantlib.kernels._tuning import tuned
from quantlib.kernels._wq_gemm import _epilogue, _finish, _store_partial, splitk_reduce_kernel
from quantlib.kernels.dispatch import quiet

# W_FMT: 0 E2M1, 1 E4M3, 2 E5M2, 3 INT4, 4 UINT4 with zero point, 5 INT8
# S_FMT: 0 E4M3 block scale (x tensor scale), 1 E8M0, 2 none (per row/tensor on the
#        accumulator), 3 FP32 block scale (FP16/BF16 scales converted to FP32 by
#        decode_layout, exactly)
BITS = {0: 4, 1: 8, 2: 8, 3: 4, 4: 4, 5: 8}
REBIAS = {0: 16384.0, 1: 256.0, 2: 1.0, 3: 1.0, 4: 1.0, 5: 1.0}


@triton.jit
def _codes(words, zero, W_FMT: tl.constexpr):
    """(W, BN) int32 words -> (W, per_word, BN) fp32 code values, exact; E2M1 and E4M3 come
    out times 2^-14 and 2^-8 (see REBIAS). Element j of a word sits at bits j * bits."""
    if W_FMT == 1 or W_FMT == 2 or W_FMT == 5:
        c = (words[:, None, :] >> (tl.arange(0, 4) * 8)[None, :, None]) & 0xFF
    else:
        c = (words[:, None, :] >> (tl.arange(0, 8) * 4)[None, :, None]) & 0xF
    if W_FMT == 0:    # E2M1 s.ee.m -> FP16 bits s.00ee.m000000000: value x 2^-14
        h = ((c & 7) << 9) | ((c & 8) << 12)
        v = h.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    elif W_FMT == 1:  # E4M3 s.eeee.mmm -> FP16 bits s.0eeee.mmm0000000: value x 2^-8
        h = ((c & 0x7F) << 7) | ((c & 0x80) << 8)
        v = h.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
        v = tl.where((c & 0x7F) == 0x7F, float("nan"), v)
    elif W_FMT == 2:  # E5M2 is the high byte of an FP16
        v = (c << 8).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    elif W_FMT == 3:  # two's complement nibble: flip the sign bit, subtract the offset
        v = ((c ^ 8) - 8).to(tl.float32)
    elif W_FMT == 4:  # unsigned nibble minus the group's zero point (exact integers)
        v = (c - zero[None, :, :]).to(tl.float32)
    else:             # INT8
        v = ((c ^ 0x80) - 0x80).to(tl.float32)
    return v


@triton.jit
def _group_scale(s_ptr, ts_ptr, S_FMT: tl.constexpr):
    """A group's scales (any shape of pointers) as fp32; NVFP4's tensor scale folded in, as
    the reference does (decode(code_b) * s_t, then times the code)."""
    if S_FMT == 0:
        s = decode_e4m3(tl.load(s_ptr)) * tl.load(ts_ptr)
    elif S_FMT == 1:
        s = decode_e8m0(tl.load(s_ptr))
    else:
        s = tl.load(s_ptr)
    return s


@triton.jit
def decode_mm_kernel(x_ptr, w_ptr, s_ptr, z_ptr, ts_ptr, bias_ptr, y_ptr, p_ptr, lock_ptr,
                     M, N, K,
                     W_FMT: tl.constexpr, S_FMT: tl.constexpr, GROUP: tl.constexpr,
                     TS: tl.constexpr, HAS_BIAS: tl.constexpr, OUT_BF16: tl.constexpr,
                     INTERPRET: tl.constexpr, SPLIT_K: tl.constexpr, SERIAL: tl.constexpr,
                     DOT: tl.constexpr, REBIAS: tl.constexpr, BM: tl.constexpr,
                     BN: tl.constexpr, BK: tl.constexpr):
    """x (M, K) bf16 bits; w (K / per_word, N) int32 words; s, z (K / GROUP, N) scales and
    zero points (S_FMT 2: none, GROUP = BK). Grid (N / BN, SPLIT_K, M / BM). A step is BK
    codes (W = BK / per_word words) of BN columns, inside one group (BK <= GROUP); a group is
    INNER = GROUP / BK steps whose unscaled sum then takes the group's scale. GEMV (not DOT):
    the (W, per_word, BN) codes times x as (BM, W, per_word), reduced over K in registers."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_m = tl.program_id(2) * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    xm = tl.where(offs_m < M, offs_m, 0)          # rows/columns past the end read row/column 0
    wn = tl.where(offs_n < N, offs_n, 0)          # and are never stored
    EPW: tl.constexpr = 8 if (W_FMT == 0 or W_FMT == 3 or W_FMT == 4) else 4
    W: tl.constexpr = BK // EPW
    INNER: tl.constexpr = GROUP // BK
    w_off = tl.arange(0, W)[:, None] * N + wn[None, :]                     # (W, BN)
    if DOT:
        x_off = xm[:, None] * K + tl.arange(0, BK)[None, :]                # (BM, BK)
    else:
        x_off = (xm[:, None, None] * K + tl.arange(0, W)[None, :, None] * EPW
                 + tl.arange(0, EPW)[None, None, :])                       # (BM, W, EPW)
    k_per = K // SPLIT_K
    k0 = pid_k * k_per
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k in range(k0, k0 + k_per, GROUP):
        g = k // GROUP
        zero = 0
        if W_FMT == 4:
            zero = tl.load(z_ptr + g * N + wn[None, :]).to(tl.int32)       # (1, BN)
        part = tl.zeros((BM, BN), dtype=tl.float32)
        for i in tl.static_range(INNER):
            kk = k + i * BK
            v = _codes(tl.load(w_ptr + (kk // EPW) * N + w_off), zero, W_FMT)  # (W, EPW, BN)
            xb = tl.load(x_ptr + kk + x_off)
            if DOT:
                v = tl.reshape(v, (BK, BN))
                if INTERPRET:   # fp32 products (exact) on the interpreter, whose bf16 is not IEEE
                    part = tl.dot(to_f32(xb, True), v, part, input_precision="ieee")
                else:           # the code values are exact in BF16
                    part = tl.dot(xb.to(tl.bfloat16, bitcast=True), v.to(tl.bfloat16), part)
            else:               # exact fp32 products, summed along K inside each thread
                prod = to_f32(xb, True)[:, :, :, None] * v[None, :, :, :]
                part += tl.sum(tl.sum(prod, axis=2), axis=1)
        if S_FMT == 2:
            acc += part
        else:   # the group's scale, once per group and column; the re-bias is exact
            acc += (part * REBIAS) * _group_scale(s_ptr + g * N + wn[None, :], ts_ptr, S_FMT)
    if S_FMT == 2:
        acc = acc * REBIAS                       # a power of two: exact
    if SPLIT_K > 1 and SERIAL:
        _serial_reduce(acc, pid_k, p_ptr, lock_ptr, ts_ptr, bias_ptr, y_ptr, offs_m, offs_n,
                       M, N, SPLIT_K, TS, HAS_BIAS, OUT_BF16, INTERPRET)
    else:
        _finish(acc, pid_k, ts_ptr, bias_ptr, p_ptr if SPLIT_K > 1 else y_ptr, offs_m,
                offs_n, M, N, SPLIT_K, TS, HAS_BIAS, OUT_BF16, INTERPRET)


@triton.jit
def _serial_reduce(acc, pid_k, p_ptr, lock_ptr, ts_ptr, bias_ptr, y_ptr, offs_m, offs_n, M, N,
                   SPLIT_K: tl.constexpr, TS: tl.constexpr, HAS_BIAS: tl.constexpr,
                   OUT_BF16: tl.constexpr, INTERPRET: tl.constexpr):
    """Split-K without a second launch and still deterministic: every program stores its
    partial sums in its slot, then counts itself in on the output tile's lock (an integer
    atomic, release/acquire); the program that arrives last adds the SPLIT_K slots in slot
    order (the same sums as splitk_reduce_kernel, whoever arrives last), runs the epilogue and
    resets the lock to 0 for the next call (so a CUDA-graph replay finds it zeroed)."""
    _store_partial(p_ptr, acc, pid_k, offs_m, offs_n, M, N)
    tl.debug_barrier()                        # the whole tile is stored before the release
    lock = lock_ptr + tl.program_id(2) * tl.num_programs(0) + tl.program_id(0)
    if tl.atomic_add(lock, 1, sem="acq_rel") == SPLIT_K - 1:
        mask = (offs_m < M)[:, None] & (offs_n < N)[None, :]
        ptrs = p_ptr + offs_m.to(tl.int64)[:, None] * N + offs_n[None, :]
        total = tl.load(ptrs, mask=mask, other=0.0, cache_modifier=".cg")
        for i in tl.static_range(1, SPLIT_K):   # L2, never a stale L1 line of another SM
            total += tl.load(ptrs + i * M * N, mask=mask, other=0.0, cache_modifier=".cg")
        tl.atomic_xchg(lock, 0)
        _epilogue(total, ts_ptr, bias_ptr, y_ptr, offs_m, offs_n, M, N, TS, HAS_BIAS,
                  OUT_BF16, INTERPRET)


# ---- the kernel layout (host side) ---------------------------------------------------------
@dataclass(eq=False)
class DecodeWeight:
    """A weight in the decode kernels' layout, beside its canonical QuantizedTensor `qt`
    (which a state_dict keeps): `words` (K / per_word, N) int32, `scales` and `zeros`
    (K / group, N) or None, `ts` the FP32 scale applied to the accumulator (per row or per
    tensor) or NVFP4's tensor scale, or None. `kind` names the format."""

    qt: object
    kind: str
    words: object
    scales: object
    zeros: object
    ts: object
    w_fmt: int
    s_fmt: int
    group: int
    locks: object = None    # int32 zeros, one per output tile: the serial split-K reduction

    @property
    def shape(self):
        return self.qt.shape

    @property
    def device(self):
        return self.words.device

    def nbytes(self) -> int:
        """Bytes of the kernel layout (the canonical codes are held besides)."""
        return sum(t.numel() * t.element_size() for t in
                   (self.words, self.scales, self.zeros, self.ts, self.locks) if t is not None)


def decode_kind(r):
    """(kind, W_FMT, S_FMT, group) for a weight recipe the decode kernels take, else None."""
    g, sf, e = r.granularity, r.scale_format, r.element
    if r.calibrator is not None or r.mx_int8:
        return None
    if g == "group" and r.block in (16, 32, 64, 128, 256):
        if (e, sf, r.block) == ("e2m1", "e4m3", 16):
            return "nvfp4", 0, 0, 16
        if sf == "e8m0" and r.block == 32 and e in ("e2m1", "e4m3", "e5m2"):
            return {"e2m1": "mxfp4", "e4m3": "mxfp8_e4m3", "e5m2": "mxfp8_e5m2"}[e], \
                {"e2m1": 0, "e4m3": 1, "e5m2": 2}[e], 1, 32
        if sf in ("fp32", "fp16", "bf16") and e in ("int4", "uint4") and r.block >= 32:
            return f"{e}_g{r.block}", 3 if e == "int4" else 4, 3, r.block
        return None
    per_row = g in ("tensor", "row") or (g == "channel" and r.axis in (0, -2))
    if per_row and sf in ("fp32", "pow2", "fp16", "bf16") and e in ("e4m3", "e5m2", "int8", "int4"):
        return f"{e}_{'tensor' if g == 'tensor' else 'row'}", \
            {"e4m3": 1, "e5m2": 2, "int8": 5, "int4": 3}[e], 2, 0
    return None


def decode_layout(qt) -> DecodeWeight:
    """The kernel layout of a 2-D (N, K) QuantizedTensor (see the module docstring)."""
    import torch
    if sys.byteorder != "little":
        raise RuntimeError("the decode layout reads code bytes as little-endian int32 words")
    spec = decode_kind(qt.recipe)
    if spec is None:
        raise ValueError(f"recipe {qt.recipe.name!r} has no decode kernel: use NVFP4, MXFP4, "
                         f"MXFP8, FP8 or INT8 per row/tensor, INT4 per row or per group "
                         f"(32..256, fp32/fp16/bf16 scales, optional zero point)")
    kind, w_fmt, s_fmt, group = spec
    if len(qt.shape) != 2:
        raise ValueError(f"decode_layout takes a 2-D (N, K) weight, got {tuple(qt.shape)}")
    N, K = qt.shape
    if K % 16 or (group and K % group):
        raise ValueError(f"decode_layout: K={K} must be a multiple of 16 and of the group "
                         f"({group or 16}); pad K")
    if w_fmt == 4 and (qt.zero_point is None
                       or tuple(qt.zero_point.shape) != tuple(qt.scales.shape)):
        raise ValueError(f"decode_layout: the asymmetric {qt.recipe.name!r} weight needs a "
                         f"zero point of the scales' shape {tuple(qt.scales.shape)}")
    codes = qt.codes.contiguous()
    words = codes.view(torch.int32).reshape(N, -1).t().contiguous()
    scales = zeros = ts = None
    if s_fmt == 2:
        ts = qt.scales.reshape(-1).float().contiguous()
    else:
        scales = qt.scales.reshape(N, -1).t().contiguous()
        if scales.dtype in (torch.float16, torch.bfloat16):     # the kernel reads FP32 scales:
            scales = scales.float()                             # this conversion is exact
        if qt.zero_point is not None:
            zeros = qt.zero_point.reshape(N, -1).t().contiguous()
        if s_fmt == 0:
            ts = qt.tensor_scale.reshape(1).float().contiguous()
    locks = torch.zeros(LOCKS_PER_ROW_TILE * -(-N // 16), dtype=torch.int32,
                        device=words.device)
    return DecodeWeight(qt, kind, words, scales, zeros, ts, w_fmt, s_fmt, group, locks)


# ---- configuration chosen ahead (a heuristic by shape; no tuning) -------------------------
DECODE_MAX_M = 16       # the decode kernels' rows; larger M uses the tensor-core GEMMs
LOCKS_PER_ROW_TILE = 1  # serial split-K: one row tile (M <= BM) of N / 16 column tiles at most
GEMV_MAX_M = 4          # up to here, the CUDA-core reduction; above, tl.dot on 16-row tiles
TABLE: dict = {}        # (M bucket, N, K, kind) -> config, filled by benchmarks if wanted
AUTOTUNE = True         # on a GPU, time decode_candidates once per shape (never in a capture)
_best: dict = {}


def _pow2_floor(v: int) -> int:
    return 1 << (max(int(v), 1).bit_length() - 1)


def decode_config(M: int, N: int, K: int, dw: DecodeWeight, interpret: bool,
                  sm_count: int = 132):
    """(DOT, BM, BN, BK, SPLIT_K, warps, stages) for this shape: a table entry when one was
    stored, else the heuristic. GEMV: BK 32 codes per step (16 for NVFP4's groups of 16), BN so
    that a thread holds about 64 products (BM * BK * BN / 128 threads), 4-32 KB of words per
    step; tl.dot: BK 64 (at most the group), BN 64. SPLIT_K so that about 4 programs per SM
    stream the weight (a 1-row product has only N / BN tiles)."""
    group = dw.group or 0
    dot = M > GEMV_MAX_M
    bm = 16 if dot and M <= 16 else (triton.next_power_of_2(M) if not dot else 64)
    if interpret:       # small tiles; split K so the tests exercise the reduction
        bk = 16 if group in (0, 16) else 32
        sk = 2 if K % (2 * (group or bk)) == 0 else 1
        return (dot, bm, 16, bk, sk, 4, 1)
    key = (M if M <= GEMV_MAX_M else 16 if M <= 16 else 64, N, K, dw.kind)
    if key in TABLE:
        return TABLE[key]
    if dot:
        bk, bn = 64, (64 if M <= 16 else 128)
    else:
        bk = 32
        bn = min(512, 8192 // (bm * min(bk, group or bk)))
    return _fit(M, N, K, dw, dot, bm, bn, bk, sm_count)


def _fit(M, N, K, dw, dot, bm, bn, bk, sm_count, programs_per_sm=4):
    """A config with BK shrunk to divide the group and K, and SPLIT_K chosen for about
    programs_per_sm programs per SM, each with at least two groups (or steps) of K."""
    group = dw.group or 0
    lo = 16 if dot else 32 // BITS[dw.w_fmt]
    while bk > lo and (K % bk or (group and group % bk)):
        bk //= 2
    step = group or bk
    tiles = triton.cdiv(N, bn) * triton.cdiv(M, bm)
    sk = _pow2_floor(max(1, programs_per_sm * sm_count // max(tiles, 1)))
    while sk > 1 and (K % (sk * step) or K // sk < 2 * step):
        sk //= 2
    return (dot, bm, bn, bk, sk, 4, 3 if dot else 2)


def decode_candidates(M: int, N: int, K: int, dw: DecodeWeight, sm_count: int):
    """What a GPU run may time (outside any capture), the heuristic's choice first: two other
    tile shapes, fewer or more programs per SM, and for two of them the split-K sums reduced
    inside the kernel (`_serial_reduce`) instead of a second launch (at most 9 configs: each is
    a compile)."""
    first = decode_config(M, N, K, dw, False, sm_count)
    dot, bm = first[:2]
    shapes = [(32, 64), (64, 128)] if dot else [(128 // bm, 64), (512 // bm, 16)]
    out = [first]
    for bn, bk in [first[2:4]] + shapes:
        for pps in (2, 8):
            out.append(_fit(M, N, K, dw, dot, bm, max(bn, 16), bk, sm_count, pps))
    if M <= bm:                 # one row tile: split K reduced inside the kernel, no 2nd launch
        out += [c + (True,) for c in (first, out[2]) if c[4] > 1]
    seen = set()
    return [c for c in out if not (c in seen or seen.add(c))
            and config_error(c, M, K, dw) is None]


def config_error(config, M: int, K: int, dw: DecodeWeight) -> str | None:
    """Why `config` cannot compute this product (None when it can)."""
    dot, BM, BN, BK, SK = config[:5]
    group = dw.group or BK
    if not dot and BM < M:
        return "a GEMV program holds every row: BM >= M"
    if BN < 16 or (dot and (BM < 16 or BK < 16)):
        return "tl.dot needs tiles of at least 16"
    if BK > group or group % BK:
        return "a step stays inside one scale group: BK divides the group"
    if BK < 32 // BITS[dw.w_fmt] or BK & (BK - 1) or BN & (BN - 1) or BM & (BM - 1):
        return "BK (at least one word per column), BN and BM are powers of two"
    if K % (SK * group):
        return "K must split into SPLIT_K slices of whole steps"
    if len(config) > 7 and config[7] and (SK < 2 or -(-M // BM) > LOCKS_PER_ROW_TILE):
        return "the serial split-K reduction needs SPLIT_K > 1 and one row tile"
    return None


def decode_mm(x, dw: DecodeWeight, bias=None, out_dtype=None, config=None):
    """Y = X @ dequant(W)^T with x (M, K) bf16 and dw a DecodeWeight; `config` forces one of
    `decode_config`'s tuples."""
    import torch
    M, K = x.shape
    N = dw.words.shape[1]
    out_dtype = out_dtype or torch.bfloat16
    if max(M, N) * K >= 2**31:
        raise ValueError(f"decode_mm: {M}x{K} or {N}x{K} exceeds the kernel's int32 offsets")
    if M == 0 or N == 0:
        y = torch.zeros((M, N), dtype=torch.float32, device=x.device)
        return (y if bias is None else y + bias.float()).to(out_dtype)
    interp = x.device.type == "cpu"
    if config is None and not interp and AUTOTUNE:
        sms = torch.cuda.get_device_properties(x.device).multi_processor_count
        key = (M, N, K, dw.kind, out_dtype, bias is not None)
        return tuned(_best, key, decode_candidates(M, N, K, dw, sms),
                     lambda c: decode_mm(x, dw, bias, out_dtype, c), False)
    if config is None:
        sms = 132 if interp else torch.cuda.get_device_properties(x.device).multi_processor_count
        config = decode_config(M, N, K, dw, interp, sms)
    _tuning.LAST_CONFIG = config
    why = config_error(config, M, K, dw)
    if why:
        raise ValueError(f"decode_mm: config {config} does not fit M={M}, K={K}, {dw.kind}: "
                         f"{why}")
    dot, BM, BN, BK, SK, nw, ns = config[:7]
    serial = len(config) > 7 and bool(config[7]) and SK > 1
    group = dw.group or BK
    y = torch.empty((M, N), dtype=out_dtype, device=x.device)
    y_arg = y.view(torch.int16) if (interp and out_dtype == torch.bfloat16) else y
    out = torch.empty((SK, M, N), dtype=torch.float32, device=x.device) if SK > 1 else y_arg
    ts_mode = 0 if dw.s_fmt != 2 else (1 if dw.ts.numel() == 1 else 2)
    dummy = dw.words
    s = dw.scales if dw.scales is not None else dummy
    z = dw.zeros if dw.zeros is not None else dummy
    ts = dw.ts if dw.ts is not None else dummy
    bias_arg = bias if bias is not None else dummy
    grid = (triton.cdiv(N, BN), SK, triton.cdiv(M, BM))
    with quiet():
        _launch(grid, x, dw, s, z, ts, bias, bias_arg, out, y_arg, M, N, K, SK, serial,
                ts_mode, out_dtype, interp, dot, group, BM, BN, BK, nw, ns)
    return y


def _launch(grid, x, dw, s, z, ts, bias, bias_arg, out, y_arg, M, N, K, SK, serial, ts_mode,
            out_dtype, interp, dot, group, BM, BN, BK, nw, ns):
    import torch
    fused = SK == 1 or serial                   # the epilogue runs in this kernel
    decode_mm_kernel[grid](
        x.view(torch.int16), dw.words, s, z, ts, bias_arg, y_arg, out, dw.locks, M, N, K,
        W_FMT=dw.w_fmt, S_FMT=dw.s_fmt, GROUP=group, TS=ts_mode if fused else 0,
        HAS_BIAS=bias is not None and fused, OUT_BF16=out_dtype == torch.bfloat16,
        INTERPRET=interp, SPLIT_K=SK, SERIAL=serial, DOT=dot, REBIAS=REBIAS[dw.w_fmt],
        BM=BM, BN=BN, BK=BK, num_warps=nw, num_stages=ns)
    if not fused:
        RB, RN = 16, 256
        splitk_reduce_kernel[(triton.cdiv(M, RB), triton.cdiv(N, RN))](
            out, ts, bias_arg, y_arg, M, N, SPLIT_K=SK, TS=ts_mode, HAS_BIAS=bias is not None,
            OUT_BF16=out_dtype == torch.bfloat16, INTERPRET=interp, BM=RB, BN=RN)
