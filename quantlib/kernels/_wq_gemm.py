"""Triton weight-only GEMM, Y = X @ dequant(W)^T: BF16 activations X (M, K) times a weight W
(N, K) stored as NVFP4 (packed E2M1 + E4M3 block scales + FP32 tensor scale), MXFP4 or MXFP8
(E8M0 block scales), or FP8 with one FP32 scale per row or tensor (W8A16). This is the W4A16
product of Hopper and Ampere, which have no FP4 tensor cores: an NVFP4 weight is read in 4.5
bits per value and dequantized in registers.

Two kernels, one result (FP32 accumulation of exact products): `wq_mm_kernel` on the BF16
tensor cores for prefill-sized M (for MX weights on sm_90+ also through Triton's
`tl.dot_scaled`, the block-scaled tensor cores on sm_100), `wq_gemv_kernel` on the CUDA cores
for decode-sized M; both can split K across programs, with a deterministic reduction. For
compute-bound M a third candidate dequantizes W to BF16 once and multiplies on cuBLAS
(`_dequant_then_mm`). The launcher tunes the choice per shape (`_tuning`).
"""
import triton
import triton.language as tl

from quantlib.kernels._gemm import _store_out, _tile_ids, decode_fp8
from quantlib.kernels._minifloat import bf16_bits_rne, decode_e4m3, decode_e8m0, to_f32
from quantlib.kernels._tuning import tuned

# E2M1 byte -> two BF16 in PTX (GPU only). The 8 magnitudes' BF16 patterns are a byte table:
# high bytes 00 3F 3F 3F 40 40 40 40, low bytes 00 00 80 C0 00 40 80 C0. `prmt` looks up both
# nibbles of a byte at once (selector = byte & 0x77), a third `prmt` interleaves them into a
# bf16x2 word, and the two sign bits are moved to bits 15 and 31: ~10 integer instructions for
# two weights, no float conversions (which run at a quarter of the ALU rate).
_E2M1X2_TO_BF16X2 = tl.constexpr("""{
.reg .b32 s, h, l, o, t, a0, a1, b0, b1;
mov.b32 a0, 0x3F3F3F00;
mov.b32 a1, 0x40404040;
mov.b32 b0, 0xC0800000;
mov.b32 b1, 0xC0804000;
and.b32 s, $2, 0x77;
prmt.b32 h, a0, a1, s;
prmt.b32 l, b0, b1, s;
prmt.b32 o, l, h, 0x5140;
shl.b32 t, $2, 12;
and.b32 t, t, 0x8000;
or.b32 o, o, t;
shl.b32 t, $2, 24;
and.b32 t, t, 0x80000000;
or.b32 o, o, t;
mov.b32 {$0, $1}, o;
}""")


@triton.jit
def _dequant_tile(p, sc, W_FMT: tl.constexpr, S_FMT: tl.constexpr, GROUP: tl.constexpr,
                  BN: tl.constexpr, BK: tl.constexpr, FAST: tl.constexpr):
    """Dequantize a loaded (BN, BK) weight tile in registers: codes p times block scales sc.
    W_FMT 0: E2M1 packed two per byte (element 2i in the low nibble), p is (BN, BK/2);
    1/2: E4M3/E5M2 bytes. S_FMT 0: E4M3 block scales; 1: E8M0; 2: none (the scale is per
    tensor or per row, applied to the accumulator like NVFP4's tensor scale). FAST (GPU): E2M1 decoded by the PTX table above and scaled in BF16 (an
    E2M1 value times an E4M3 scale has at most 6 significant bits: exact in BF16)."""
    if S_FMT == 0:
        s = decode_e4m3(sc)
    elif S_FMT == 1:
        s = decode_e8m0(sc)
    if W_FMT == 0:
        p = p.to(tl.int32)
        if FAST:
            lo, hi = tl.inline_asm_elementwise(_E2M1X2_TO_BF16X2, "=h,=h,r", [p],
                                               dtype=(tl.int16, tl.int16), is_pure=True, pack=1)
            w = tl.reshape(tl.join(lo, hi), (BN, BK)).to(tl.bfloat16, bitcast=True)
            if S_FMT != 2:
                s = s.to(tl.bfloat16)
        else:
            c = tl.reshape(tl.join(p & 0xF, p >> 4), (BN, BK))
            # E2M1 -> fp16 bits: the 3 magnitude bits land on fp16's exponent LSBs and mantissa
            # MSB ((c & 7) << 9): the fp16 value is the E2M1 value times 2^-14, exact (0.5 too).
            h = ((c & 7) << 9) | ((c & 8) << 12)
            w = h.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32) * 16384.0
    else:
        w = decode_fp8(p, W_FMT - 1)
    if S_FMT != 2:
        w = tl.reshape(tl.reshape(w, (BN, BK // GROUP, GROUP)) * s[:, :, None], (BN, BK))
    return w


@triton.jit
def _load_scales(ptrs, S_FMT: tl.constexpr):
    """One K step's block scales, or nothing when the weight has none (S_FMT 2)."""
    if S_FMT == 2:
        sc = 0
    else:
        sc = tl.load(ptrs)
    return sc


@triton.jit
def _epilogue(acc, ts_ptr, bias_ptr, y_ptr, offs_m, offs_n, M, N, TS: tl.constexpr,
              HAS_BIAS: tl.constexpr, OUT_BF16: tl.constexpr, INTERPRET: tl.constexpr):
    """y = acc * scale + bias, then stored (fp32, or RNE bf16) for a (BM, BN) tile. TS: 0 no
    scale, 1 one tensor scale (NVFP4), 2 one scale per output row (FP8 weights per channel)."""
    if TS == 1:
        acc = acc * tl.load(ts_ptr)
    elif TS == 2:
        acc = acc * tl.load(ts_ptr + offs_n, mask=offs_n < N, other=0.0)[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    _store_out(y_ptr, acc, offs_m, offs_n, M, N, OUT_BF16, INTERPRET)


@triton.jit
def _store_partial(p_ptr, acc, pid_k, offs_m, offs_n, M, N):
    """Split-K: this program's K slice's partial sums into slot pid_k of the (SPLIT_K, M, N)
    fp32 buffer; `splitk_reduce_kernel` adds the slots in a fixed order (deterministic, unlike
    atomic adds)."""
    ptrs = p_ptr + (pid_k * M + offs_m.to(tl.int64))[:, None] * N + offs_n[None, :]
    tl.store(ptrs, acc, mask=(offs_m < M)[:, None] & (offs_n < N)[None, :])


@triton.jit
def _finish(acc, pid_k, ts_ptr, bias_ptr, y_ptr, offs_m, offs_n, M, N, SPLIT_K: tl.constexpr,
            TS: tl.constexpr, HAS_BIAS: tl.constexpr, OUT_BF16: tl.constexpr,
            INTERPRET: tl.constexpr):
    """A GEMM program's last step: its partial sums to their split-K slot, or (no split) the
    epilogue straight away."""
    if SPLIT_K > 1:
        _store_partial(y_ptr, acc, pid_k, offs_m, offs_n, M, N)
    else:
        _epilogue(acc, ts_ptr, bias_ptr, y_ptr, offs_m, offs_n, M, N, TS, HAS_BIAS,
                  OUT_BF16, INTERPRET)


@triton.jit
def _k_slice(x_ptr, w_ptr, ws_ptr, offs_m, offs_n, M, N, K, pid_k, SPLIT_K: tl.constexpr,
             W_FMT: tl.constexpr, GROUP: tl.constexpr, BK: tl.constexpr):
    """Where this program's K slice starts (scalar bases of x, weight bytes, block scales) and
    the int32 offset tiles of one BK step, built once (the launcher checks they fit): the loop
    advances the bases only. Out-of-range rows read row 0 and are never stored."""
    xm = tl.where(offs_m < M, offs_m, 0)
    wn = tl.where(offs_n < N, offs_n, 0)
    WB: tl.constexpr = BK // 2 if W_FMT == 0 else BK          # weight bytes per row per step
    x_off = xm[:, None] * K + tl.arange(0, BK)[None, :]
    w_off = wn[:, None] * (K * WB // BK) + tl.arange(0, WB)[None, :]
    s_off = wn[:, None] * (K // GROUP) + tl.arange(0, BK // GROUP)[None, :]
    k_start = pid_k * (K // SPLIT_K)
    return (x_ptr + k_start, w_ptr + k_start * WB // BK, ws_ptr + k_start // GROUP,
            x_off, w_off, s_off)


@triton.jit
def wq_mm_kernel(x_ptr, w_ptr, ws_ptr, ts_ptr, bias_ptr, y_ptr, M, N, K,
                 W_FMT: tl.constexpr, S_FMT: tl.constexpr, GROUP: tl.constexpr,
                 TS: tl.constexpr, HAS_BIAS: tl.constexpr, OUT_BF16: tl.constexpr,
                 INTERPRET: tl.constexpr, SPLIT_K: tl.constexpr, FAST: tl.constexpr,
                 SCALED_DOT: tl.constexpr, W_DOT_FMT: tl.constexpr,
                 BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr):
    """Y = X @ dequant(W)^T with X (M, K) BF16 and W quantized (N, K): the W4A16 GEMM on the
    tensor cores. The weight tile is dequantized in registers (E2M1 x E4M3 scale is exact in
    BF16, so the tensor cores see exactly the reference's numbers), the tensor scale multiplies
    the fp32 accumulator. SCALED_DOT (MX weights): Triton's `tl.dot_scaled` takes the packed
    codes and E8M0 scales as they are (block-scaled MMA on sm_100; an upcast it generates
    itself elsewhere). SPLIT_K > 1: program axis 1 takes one K slice and writes its partial
    sums for `splitk_reduce_kernel`. x holds bf16 bit patterns (int16): see to_f32."""
    pid_m, pid_n = _tile_ids(M, N, BM, BN, GROUP_M)
    pid_k = tl.program_id(1)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    x_base, w_base, s_base, x_off, w_off, s_off = _k_slice(
        x_ptr, w_ptr, ws_ptr, offs_m, offs_n, M, N, K, pid_k, SPLIT_K, W_FMT, GROUP, BK)
    k_per = K // SPLIT_K
    WB: tl.constexpr = BK // 2 if W_FMT == 0 else BK
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for _ in range(0, k_per, BK):
        x = tl.load(x_base + x_off)
        if SCALED_DOT:  # rhs is (K, N): the (BN, WB) code tile transposed; scales stay (BN, .)
            acc = tl.dot_scaled(x.to(tl.bfloat16, bitcast=True), None, "bf16",
                                tl.trans(tl.load(w_base + w_off)), _load_scales(s_base + s_off, S_FMT),
                                W_DOT_FMT, acc)
        else:
            w = _dequant_tile(tl.load(w_base + w_off), _load_scales(s_base + s_off, S_FMT), W_FMT, S_FMT,
                              GROUP, BN, BK, FAST)
            if INTERPRET:   # fp32 products (exact) on the interpreter, whose bf16 is not IEEE
                acc = tl.dot(to_f32(x, True), tl.trans(w), acc, input_precision="ieee")
            else:
                acc = tl.dot(x.to(tl.bfloat16, bitcast=True), tl.trans(w.to(tl.bfloat16)), acc)
        x_base += BK
        w_base += WB
        s_base += BK // GROUP
    _finish(acc, pid_k, ts_ptr, bias_ptr, y_ptr, offs_m, offs_n, M, N, SPLIT_K, TS,
            HAS_BIAS, OUT_BF16, INTERPRET)


@triton.jit
def wq_gemv_kernel(x_ptr, w_ptr, ws_ptr, ts_ptr, bias_ptr, y_ptr, M, N, K,
                   W_FMT: tl.constexpr, S_FMT: tl.constexpr, GROUP: tl.constexpr,
                   TS: tl.constexpr, HAS_BIAS: tl.constexpr, OUT_BF16: tl.constexpr,
                   INTERPRET: tl.constexpr, SPLIT_K: tl.constexpr, FAST: tl.constexpr,
                   BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """The same product for decode-sized M (all M <= BM rows in one program), on the CUDA
    cores: a tensor-core tile would be at least 16 rows, mostly padding, and would need the
    dequantized weights moved into its operand layout. Each program streams BN weight rows
    (a K slice of them with SPLIT_K), dequantizes them once for all M rows, and keeps a
    (BM, BN, BK) fp32 accumulator of products (exact: at most 8 + 6 significant bits) that is
    summed along K once, at the end."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_m = tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    x_base, w_base, s_base, x_off, w_off, s_off = _k_slice(
        x_ptr, w_ptr, ws_ptr, offs_m, offs_n, M, N, K, pid_k, SPLIT_K, W_FMT, GROUP, BK)
    k_per = K // SPLIT_K
    WB: tl.constexpr = BK // 2 if W_FMT == 0 else BK
    acc = tl.zeros((BM, BN, BK), dtype=tl.float32)
    for _ in range(0, k_per, BK):
        x = to_f32(tl.load(x_base + x_off), True)                       # (BM, BK)
        w = _dequant_tile(tl.load(w_base + w_off), _load_scales(s_base + s_off, S_FMT), W_FMT, S_FMT, GROUP,
                          BN, BK, FAST).to(tl.float32)                 # (BN, BK)
        acc += x[:, None, :] * w[None, :, :]
        x_base += BK
        w_base += WB
        s_base += BK // GROUP
    out = tl.sum(acc, axis=2)                                           # (BM, BN)
    _finish(out, pid_k, ts_ptr, bias_ptr, y_ptr, offs_m, offs_n, M, N, SPLIT_K, TS,
            HAS_BIAS, OUT_BF16, INTERPRET)


@triton.jit
def splitk_reduce_kernel(p_ptr, ts_ptr, bias_ptr, y_ptr, M, N, SPLIT_K: tl.constexpr,
                         TS: tl.constexpr, HAS_BIAS: tl.constexpr, OUT_BF16: tl.constexpr,
                         INTERPRET: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    """Sum the SPLIT_K partial products slot by slot (the same order every run), then the
    tensor scale, bias and output cast of `_epilogue`."""
    offs_m = tl.program_id(0) * BM + tl.arange(0, BM)
    offs_n = tl.program_id(1) * BN + tl.arange(0, BN)
    mask = (offs_m < M)[:, None] & (offs_n < N)[None, :]
    ptrs = p_ptr + offs_m.to(tl.int64)[:, None] * N + offs_n[None, :]
    acc = tl.load(ptrs, mask=mask, other=0.0)
    for s in tl.static_range(1, SPLIT_K):
        acc += tl.load(ptrs + s * M * N, mask=mask, other=0.0)
    _epilogue(acc, ts_ptr, bias_ptr, y_ptr, offs_m, offs_n, M, N, TS, HAS_BIAS, OUT_BF16,
              INTERPRET)


@triton.jit
def wq_dequant_kernel(w_ptr, ws_ptr, out_ptr, N, K, W_FMT: tl.constexpr, S_FMT: tl.constexpr,
                      GROUP: tl.constexpr, INTERPRET: tl.constexpr, FAST: tl.constexpr,
                      BN: tl.constexpr, BK: tl.constexpr):
    """dequant(W) to BF16 without the tensor (or per-row) scale: the numbers the tensor-core
    kernel feeds its MMA, exact in BF16 (see `_dequant_tile`), written once for a cuBLAS
    GEMM. One (BN, BK) tile per program."""
    offs_n = tl.program_id(0) * BN + tl.arange(0, BN)
    wn = tl.where(offs_n < N, offs_n, 0)
    WB: tl.constexpr = BK // 2 if W_FMT == 0 else BK
    kb = tl.program_id(1)
    codes = tl.load(w_ptr + wn[:, None] * (K * WB // BK) + kb * WB + tl.arange(0, WB)[None, :])
    sc = _load_scales(ws_ptr + wn[:, None] * (K // GROUP) + kb * (BK // GROUP)
                      + tl.arange(0, BK // GROUP)[None, :], S_FMT)
    w = _dequant_tile(codes, sc, W_FMT, S_FMT, GROUP, BN, BK, FAST)
    ptrs = out_ptr + offs_n.to(tl.int64)[:, None] * K + kb * BK + tl.arange(0, BK)[None, :]
    if INTERPRET:       # bf16 bit patterns: the interpreter's fp32 -> bf16 cast truncates
        w = bf16_bits_rne(w.to(tl.float32))
    else:
        w = w.to(tl.bfloat16)
    tl.store(ptrs, w, mask=(offs_n < N)[:, None])


def _dequant_then_mm(x, w, ws, ts_arg, bias_arg, y_arg, ts_mode, cfg, common):
    """The "dequant" config, for compute-bound M: dequantize W to BF16 once (O(NK) work, not
    the O(MNK / BM) of dequantizing in every row tile's main loop), multiply on cuBLAS with
    FP32 output (`torch.mm(..., out_dtype=float32)`: exact BF16 products, FP32 accumulation),
    then the same epilogue (tensor scale, bias, one rounding) as the Triton kernels. vLLM's
    AWQ layer makes the same switch for large batches. Costs a transient BF16 copy of W."""
    import torch
    M, K = x.shape
    N = w.shape[0]
    BN, BK, nw = cfg[1:]
    while K % BK:
        BK //= 2
    interp = common["INTERPRET"]
    wdq = torch.empty((N, K), dtype=torch.int16 if interp else torch.bfloat16, device=x.device)
    wq_dequant_kernel[(triton.cdiv(N, BN), K // BK)](
        w, ws, wdq, N, K, W_FMT=common["W_FMT"], S_FMT=common["S_FMT"], GROUP=common["GROUP"],
        INTERPRET=interp, FAST=common["FAST"], BN=BN, BK=BK, num_warps=nw)
    if interp:          # CPU: the same exact products, FP32 accumulation
        y32 = x.float() @ wdq.view(torch.bfloat16).float().t()
    else:
        y32 = torch.mm(x, wdq.t(), out_dtype=torch.float32)
    RB, RN = 16, 256
    splitk_reduce_kernel[(triton.cdiv(M, RB), triton.cdiv(N, RN))](
        y32, ts_arg, bias_arg, y_arg, M, N, SPLIT_K=1, TS=ts_mode, HAS_BIAS=common["HAS_BIAS"],
        OUT_BF16=common["OUT_BF16"], INTERPRET=interp, BM=RB, BN=RN)


# ---- launcher (host side) ------------------------------------------------------------------
FAST_E2M1 = True   # the PTX E2M1 decoder on GPUs (gpu_check.py verifies it; False: fp32 path)
_WQ = {"nvfp4": (0, 0, 16), "mxfp4": (0, 1, 32), "mxfp8_e4m3": (1, 1, 32),
       "mxfp8_e5m2": (2, 1, 32), "fp8_e4m3": (1, 2, 1), "fp8_e5m2": (2, 2, 1)}
# name -> (W_FMT, S_FMT, GROUP): FP8 weights with a per-tensor or per-row FP32 scale have no
# block scales (S_FMT 2): `ts` carries that scale, one value or one per output row
_best_wq = {}
GEMV_MAX_M = 4     # the CUDA-core kernel is a candidate up to this many rows
DEQUANT_MIN_M = 512  # dequantize-once + cuBLAS is a candidate from this many rows


def scaled_dot_supported(kind: str, capability) -> bool:
    """Whether `tl.dot_scaled` can take this weight on a GPU of this compute capability: MX
    weights only (E8M0 scales per 32, the scale format the Triton API takes; NVFP4's E4M3
    scales per 16 and FP8 weights' FP32 scales are not), on a Hopper or newer GPU (sm_100:
    block-scaled tensor cores), with a Triton that has it."""
    return _WQ[kind][1] == 1 and hasattr(tl, "dot_scaled") and tuple(capability) >= (9, 0)


def scaled_dot_ok(kind: str, device) -> bool:
    """`scaled_dot_supported` for the GPU `device` is on (never on the CPU interpreter's
    candidate list: the tests force those configs)."""
    import torch
    return device.type == "cuda" and scaled_dot_supported(
        kind, torch.cuda.get_device_capability(device))


def wq_configs(M: int, interpret: bool, scaled: bool = False):
    """Candidate configs, first = the default: ("gemv", BM, BN, BK, SPLIT_K, warps, stages),
    ("dot" or "scaled", BM, BN, BK, SPLIT_K, GROUP_M, warps, stages), ("dequant", BN, BK,
    warps); "scaled" (tl.dot_scaled) only where `scaled_dot_ok`. Decode-sized M gets deep
    split-K candidates: a 1-row product has too few output tiles to keep every SM streaming
    weights, and splitting K multiplies the programs in flight."""
    if interpret:      # small tiles; split K so the tests exercise the reduction
        if M <= GEMV_MAX_M:
            return [("gemv", triton.next_power_of_2(M), 16, 64, 2, 4, 1)]
        return [("dot", 16, 32, 64, 2 if M <= 16 else 1, 4, 4, 1)]
    cfgs = []
    if M <= GEMV_MAX_M:    # accumulator BM*BN*BK = 8K or 16K fp32 over 128 or 256 threads
        bm = triton.next_power_of_2(M)
        cfgs += [("gemv", bm, 8192 // (bm * 128), 128, sk, 4, 3) for sk in (1, 4, 16)]
        cfgs += [("gemv", bm, 16384 // (bm * 256), 256, sk, 8, 3) for sk in (2, 8)]
        cfgs += [("gemv", bm, 4096 // (bm * 128), 128, 32, 4, 2)]
    if M <= 16:            # tensor cores with a 16-row tile: narrow N tiles or split K
        cfgs += [("dot", 16, 64, 256, 4, 1, 4, 3), ("dot", 16, 32, 256, 1, 1, 4, 4),
                 ("dot", 16, 64, 256, 1, 1, 4, 4), ("dot", 16, 64, 128, 16, 1, 4, 2),
                 ("dot", 16, 128, 128, 8, 1, 4, 3)]
    elif M <= 256:
        cfgs += [("dot", 64, 128, 128, 1, 8, 4, 3), ("dot", 32, 128, 128, 2, 8, 4, 3)]
    else:
        cfgs += [("dot", 128, 256, 64, 1, 8, 8, 3), ("dot", 128, 128, 64, 1, 8, 4, 4),
                 ("dot", 128, 128, 128, 1, 8, 8, 3)]
    if M >= DEQUANT_MIN_M:  # compute-bound: dequantize W once, then cuBLAS (see wq_mm)
        cfgs += [("dequant", 64, 128, 4)]
    if scaled:
        cfgs += ([("scaled", 16, 64, 256, 1, 1, 4, 4), ("scaled", 16, 64, 256, 4, 1, 4, 3)]
                 if M <= 16 else [("scaled", 64, 128, 128, 1, 8, 4, 3)] if M <= 256 else
                 [("scaled", 128, 256, 128, 1, 8, 8, 3), ("scaled", 128, 128, 128, 1, 8, 4, 3)])
    return cfgs


def wq_mm(x, w, ws, ts, kind: str, bias=None, out_dtype=None, config=None, fast=None):
    """Y = X @ dequant(W)^T: x (M, K) bf16, w codes (N, K/2) packed E2M1 or (N, K) FP8 bytes,
    ws (N, K/GROUP) uint8 block scales (E4M3 for NVFP4, E8M0 for MX; None for the "fp8_*"
    kinds), ts fp32 scale applied to the accumulator: NVFP4's tensor scale (one value), or for
    "fp8_*" the weight's per-tensor (one value) or per-row (N values) scale; None for MX.
    `config` forces one of `wq_configs`' tuples; otherwise they are tuned per shape."""
    import torch
    M, K = x.shape
    N = w.shape[0]
    if max(M, N) * K >= 2**31:
        raise ValueError(f"wq_mm: {M}x{K} or {N}x{K} exceeds the kernel's int32 offsets")
    out_dtype = out_dtype or torch.bfloat16
    if M == 0 or N == 0 or K == 0:       # nothing to launch: an empty product (plus the bias)
        y = torch.zeros((M, N), dtype=torch.float32, device=x.device)
        return (y if bias is None else y + bias.float()).to(out_dtype)
    interp = x.device.type == "cpu"
    W_FMT, S_FMT, GROUP = _WQ[kind]
    fast = (FAST_E2M1 if fast is None else fast) and not interp and W_FMT == 0
    cfgs = [config] if config else wq_configs(M, interp, scaled_dot_ok(kind, x.device))
    if any(c[0] == "gemv" and c[1] < M for c in cfgs):
        raise ValueError(f"wq_mm: a GEMV config computes at most BM rows in one program; x has "
                         f"M={M} rows: use BM >= M (a power of two) or a 'dot' config")
    if any(c[0] == "scaled" for c in cfgs) and S_FMT != 1:
        has = "E4M3 scales per 16" if S_FMT == 0 else "FP32 scales per row or tensor"
        raise ValueError(f"wq_mm: tl.dot_scaled takes E8M0 scales per 32 (MX); {kind} has "
                         f"{has}: use a 'dot' or 'gemv' config")
    y = torch.empty((M, N), dtype=out_dtype, device=x.device)
    y_arg = y.view(torch.int16) if (interp and out_dtype == torch.bfloat16) else y
    if S_FMT == 2 and K % 16:
        raise ValueError(f"wq_mm: K={K} is not a multiple of 16, the smallest K step of the "
                         f"kernels; pad K or use the reference path")
    ts_mode = 0 if ts is None else 1 if ts.numel() == 1 else 2
    if ws is None:
        ws = w                          # never read (S_FMT 2): any pointer will do
    common = {"W_FMT": W_FMT, "S_FMT": S_FMT, "GROUP": GROUP, "TS": ts_mode,
              "HAS_BIAS": bias is not None, "OUT_BF16": out_dtype == torch.bfloat16,
              "INTERPRET": interp, "FAST": fast}
    ts_arg = ts if ts is not None else ws
    bias_arg = bias if bias is not None else ws
    xb = x.view(torch.int16)            # bf16 bits, read exactly everywhere (see to_f32)

    def launch(cfg):
        if cfg[0] == "dequant":
            return _dequant_then_mm(x, w, ws, ts_arg, bias_arg, y_arg, ts_mode, cfg, common)
        gemv = cfg[0] == "gemv"
        BM, BN, BK, SK = cfg[1:5]
        nw, ns = cfg[-2:]
        while K % BK:
            BK //= 2
        while SK > 1 and K % (SK * BK):
            SK //= 2
        out = torch.empty((SK, M, N), dtype=torch.float32, device=x.device) if SK > 1 else y_arg
        args = (xb, w, ws, ts_arg, bias_arg, out, M, N, K)
        if gemv:
            wq_gemv_kernel[(triton.cdiv(N, BN), SK)](*args, SPLIT_K=SK, BM=BM, BN=BN, BK=BK,
                                                     num_warps=nw, num_stages=ns, **common)
        else:
            grid = (triton.cdiv(M, BM) * triton.cdiv(N, BN), SK)
            wq_mm_kernel[grid](*args, SPLIT_K=SK, BM=BM, BN=BN, BK=BK, GROUP_M=cfg[5],
                               SCALED_DOT=cfg[0] == "scaled",
                               W_DOT_FMT=("e2m1", "e4m3", "e5m2")[W_FMT],
                               num_warps=nw, num_stages=ns, **common)
        if SK > 1:
            RB, RN = 16, 256
            splitk_reduce_kernel[(triton.cdiv(M, RB), triton.cdiv(N, RN))](
                out, ts_arg, bias_arg, y_arg, M, N, SPLIT_K=SK, TS=ts_mode,
                HAS_BIAS=bias is not None, OUT_BF16=out_dtype == torch.bfloat16,
                INTERPRET=interp, BM=RB, BN=RN)

    tuned(_best_wq, (M, N, K, kind, fast, out_dtype), cfgs, launch, interp)
    return y
