"""Triton FP8 x FP8 GEMM with scales (W8A8), the role torch._scaled_mm plays, and the jit
helpers the GEMMs share (program order, output store). The weight-only W4A16 GEMM is in
`_wq_gemm.py`.

Layouts follow nn.Linear: activations A are (M, K) row-major, the weight B is (N, K) row-major
(K contiguous: the "column-major B" of cuBLAS and torch._scaled_mm), C = A @ B^T.

Paths (constexpr NATIVE / INTERPRET):
- native: FP8 codes are loaded as float8 and fed to the FP8 tensor cores (sm_89+).
- emulated: codes are decoded to BF16 in registers (exact: every FP8 value fits in BF16), then
  a BF16 tensor-core dot; FP32 accumulation either way (sm_80).
- interpreter: decoded to fp32 and multiplied in fp32 (the interpreter's bf16 arithmetic is
  not IEEE); products of decoded codes are exact in fp32, so only the accumulation rounds.
"""
import triton
import triton.language as tl

from quantlib.kernels._minifloat import bf16_bits_rne, decode_e4m3, decode_e5m2
from quantlib.kernels._tuning import tuned


@triton.jit
def decode_fp8(c, FMT: tl.constexpr):
    """E4M3 (FMT 0) or E5M2 (FMT 1) code -> fp32, exact."""
    if FMT == 0:
        v = decode_e4m3(c)
    else:
        v = decode_e5m2(c)
    return v


@triton.jit
def _store_out(c_ptr, acc, offs_m, offs_n, M, N, OUT_BF16: tl.constexpr, INTERPRET: tl.constexpr):
    ptrs = c_ptr + offs_m.to(tl.int64)[:, None] * N + offs_n[None, :]
    mask = (offs_m < M)[:, None] & (offs_n < N)[None, :]
    if OUT_BF16:
        if INTERPRET:   # c_ptr is the bf16 output viewed as int16
            tl.store(ptrs, bf16_bits_rne(acc), mask=mask)
        else:
            tl.store(ptrs, acc.to(tl.bfloat16), mask=mask)
    else:
        tl.store(ptrs, acc, mask=mask)


@triton.jit
def _grouped_tile(tile_id, num_m, num_n, GROUP_M: tl.constexpr):
    """Tile id -> (pid_m, pid_n) in grouped order: GROUP_M row tiles share each column tile
    while it is in L2 (Triton tutorial 03); the persistent kernel walks tile ids with it."""
    width = GROUP_M * num_n
    first_m = (tile_id // width) * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    return first_m + ((tile_id % width) % size_m), (tile_id % width) // size_m


@triton.jit
def _tile_ids(M, N, BM: tl.constexpr, BN: tl.constexpr, GROUP_M: tl.constexpr):
    """This program's output tile in grouped order (one program per tile)."""
    return _grouped_tile(tl.program_id(0), tl.cdiv(M, BM), tl.cdiv(N, BN), GROUP_M)


@triton.jit
def _fp8_tile(a_ptr, b_ptr, a_desc, b_desc, sa_ptr, sb_ptr, bias_ptr, c_ptr, pid_m, pid_n, M, N,
              K,
              stride_sam, stride_sak, stride_sbn, stride_sbk,
              SA_ROWS: tl.constexpr, SB_ROWS: tl.constexpr,
              A_FMT: tl.constexpr, B_FMT: tl.constexpr, BLOCKWISE: tl.constexpr,
              HAS_BIAS: tl.constexpr, OUT_BF16: tl.constexpr, NATIVE: tl.constexpr,
              INTERPRET: tl.constexpr, EVEN_K: tl.constexpr,
              BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, TMA: tl.constexpr,
              LAG: tl.constexpr):
    """One (BM, BN) output tile: C = (A * sa) @ (B * sb)^T. Scale of A element (m, k) is
    sa[m // SA_ROWS, k // BK] (strides 0 for per-tensor); same for B with n. Without BLOCKWISE
    the scales do not depend on k and are applied once to the fp32 accumulator; with it
    (BK = 128 = the scale block) each K-step's partial product is scaled in registers before it
    is added (DeepSeek-V3's block-scaled GEMM). TMA: A and B tiles come through the tensor
    descriptors a_desc (M, K) and b_desc (N, K), which zero-fill beyond the edges.
    LAG (blockwise): chunk k's partial product is scaled and added after chunk k+1's dot is
    issued, so the FP32 scaling can run while the asynchronous (wgmma) dot does; the sums are
    the same, in the same order (chunk -1 is 0 * 0 * 0 = +0 added to +0), bit for bit."""
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_k = tl.arange(0, BK)
    am = tl.where(offs_m < M, offs_m, 0).to(tl.int64)        # clamped rows: loads stay in bounds
    bn = tl.where(offs_n < N, offs_n, 0).to(tl.int64)
    a_ptrs = a_ptr + am[:, None] * K + offs_k[None, :]
    b_ptrs = b_ptr + bn[None, :] * K + offs_k[:, None]        # (BK, BN) view of the (N, K) weight
    sa_row = sa_ptr + (am // SA_ROWS) * stride_sam
    sb_row = sb_ptr + (bn // SB_ROWS) * stride_sbn
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    if LAG:
        prev = tl.zeros((BM, BN), dtype=tl.float32)
        psa = tl.zeros((BM,), dtype=tl.float32)
        psb = tl.zeros((BN,), dtype=tl.float32)
    for kb in range(tl.cdiv(K, BK)):
        if TMA:
            a = a_desc.load([pid_m * BM, kb * BK])
            b = tl.trans(b_desc.load([pid_n * BN, kb * BK]))
        elif EVEN_K:
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
        else:
            kmask = offs_k < K - kb * BK
            a = tl.load(a_ptrs, mask=kmask[None, :], other=0)
            b = tl.load(b_ptrs, mask=kmask[:, None], other=0)
        if not NATIVE:
            a = decode_fp8(a, A_FMT)
            b = decode_fp8(b, B_FMT)
            if not INTERPRET:
                a = a.to(tl.bfloat16)
                b = b.to(tl.bfloat16)
        if BLOCKWISE and LAG:
            part = tl.dot(a, b, out_dtype=tl.float32)
            acc += prev * psa[:, None] * psb[None, :]
            prev = part
            psa = tl.load(sa_row + kb * stride_sak)
            psb = tl.load(sb_row + kb * stride_sbk)
        elif BLOCKWISE:
            sa = tl.load(sa_row + kb * stride_sak)
            sb = tl.load(sb_row + kb * stride_sbk)
            part = tl.dot(a, b, out_dtype=tl.float32)
            acc += part * sa[:, None] * sb[None, :]
        elif NATIVE:
            # Hopper's FP8 MMA accumulates in fewer bits than FP32 (DeepSeek-V3 measured ~14
            # kept bits on H800; cuBLAS's result misses the FP32 error bound): promote the
            # partial sum to the FP32 accumulator after every BK products.
            acc = tl.dot(a, b, acc, max_num_imprecise_acc=BK, out_dtype=tl.float32)
        else:
            acc = tl.dot(a, b, acc, out_dtype=tl.float32)
        a_ptrs += BK
        b_ptrs += BK
    if LAG:
        acc += prev * psa[:, None] * psb[None, :]
    if not BLOCKWISE:
        sa = tl.load(sa_row)
        sb = tl.load(sb_row)
        acc = acc * sa[:, None] * sb[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + bn).to(tl.float32)[None, :]
    _store_out(c_ptr, acc, offs_m, offs_n, M, N, OUT_BF16, INTERPRET)


@triton.jit
def fp8_mm_kernel(a_ptr, b_ptr, sa_ptr, sb_ptr, bias_ptr, c_ptr, M, N, K,
                  stride_sam, stride_sak, stride_sbn, stride_sbk,
                  SA_ROWS: tl.constexpr, SB_ROWS: tl.constexpr,
                  A_FMT: tl.constexpr, B_FMT: tl.constexpr, BLOCKWISE: tl.constexpr,
                  HAS_BIAS: tl.constexpr, OUT_BF16: tl.constexpr, NATIVE: tl.constexpr,
                  INTERPRET: tl.constexpr, EVEN_K: tl.constexpr,
                  BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr,
                  NUM_SMS: tl.constexpr):
    """One program per output tile (grouped order); see _fp8_tile. NUM_SMS: unused here."""
    pid_m, pid_n = _tile_ids(M, N, BM, BN, GROUP_M)
    _fp8_tile(a_ptr, b_ptr, a_ptr, b_ptr, sa_ptr, sb_ptr, bias_ptr, c_ptr, pid_m, pid_n, M, N,
              K, stride_sam, stride_sak, stride_sbn, stride_sbk, SA_ROWS, SB_ROWS, A_FMT, B_FMT,
              BLOCKWISE, HAS_BIAS, OUT_BF16, NATIVE, INTERPRET, EVEN_K, BM, BN, BK, False,
              False)


@triton.jit
def fp8_mm_persistent_kernel(a_ptr, b_ptr, sa_ptr, sb_ptr, bias_ptr, c_ptr, M, N, K,
                             stride_sam, stride_sak, stride_sbn, stride_sbk,
                             SA_ROWS: tl.constexpr, SB_ROWS: tl.constexpr,
                             A_FMT: tl.constexpr, B_FMT: tl.constexpr, BLOCKWISE: tl.constexpr,
                             HAS_BIAS: tl.constexpr, OUT_BF16: tl.constexpr,
                             NATIVE: tl.constexpr, INTERPRET: tl.constexpr,
                             EVEN_K: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                             BK: tl.constexpr, GROUP_M: tl.constexpr, NUM_SMS: tl.constexpr,
                             TMA: tl.constexpr, LAG: tl.constexpr):
    """Persistent variant (Triton tutorial 09): NUM_SMS programs, each walking the output tiles
    tile_id = pid, pid + NUM_SMS, ... in grouped order, so one wave covers the whole GEMM (no
    tail of half-empty waves, no per-tile launch) and neighbouring programs share A/B tiles in
    L2. The arithmetic per tile is _fp8_tile's: same numbers as fp8_mm_kernel, bit for bit.
    TMA (sm_90+): A and B tiles are loaded through device-side tensor descriptors (Triton
    tutorial 09), made once per program; the interpreter runs this path too (tests), but its
    speed and its compilation on Hopper are unverified until a GPU run (gpu_check.py)."""
    if TMA:
        a_desc = tl.make_tensor_descriptor(a_ptr, shape=[M, K], strides=[K, 1],
                                           block_shape=[BM, BK])
        b_desc = tl.make_tensor_descriptor(b_ptr, shape=[N, K], strides=[K, 1],
                                           block_shape=[BN, BK])
    else:
        a_desc = a_ptr
        b_desc = b_ptr
    num_m = tl.cdiv(M, BM)
    num_n = tl.cdiv(N, BN)
    for tile_id in tl.range(tl.program_id(0), num_m * num_n, NUM_SMS):
        pid_m, pid_n = _grouped_tile(tile_id, num_m, num_n, GROUP_M)
        _fp8_tile(a_ptr, b_ptr, a_desc, b_desc, sa_ptr, sb_ptr, bias_ptr, c_ptr, pid_m, pid_n,
                  M, N, K, stride_sam, stride_sak, stride_sbn, stride_sbk, SA_ROWS, SB_ROWS,
                  A_FMT, B_FMT, BLOCKWISE, HAS_BIAS, OUT_BF16, NATIVE, INTERPRET, EVEN_K, BM,
                  BN, BK, TMA, LAG and BLOCKWISE)


# ---- launchers (host side) -------------------------------------------------------------------
# The FP8 tensor cores of sm_89/sm_90 do not accumulate in full FP32: inside one MMA chain the
# accumulator keeps about 13 mantissa bits (FP22, SageAttention2's measurement on Ada and Hopper;
# DeepSeek-V3 reports ~14 bits on H800). The kernel promotes each chain of BK = 128 products to
# the FP32 accumulator, so its error is FP32 accumulation's plus at most this much of
# sum_k |a_k b_k| for the chains. The H100 measured 2^-13.7 at K = 256 (cuBLAS's
# `torch._scaled_mm` the same); 2^-10 leaves a margin and still catches any wrong scale or
# dropped chunk (errors of order 1). The BF16 paths (sm_80, interpreter) need no such term.
FP8_MMA_REL_ERR = 2.0 ** -10


INTERP_SMS = 3   # "SMs" of the interpreter: fewer programs than tiles, so the loop is exercised


def _num_sms(device, interp: bool) -> int:
    import torch
    if interp:
        return INTERP_SMS
    return torch.cuda.get_device_properties(device).multi_processor_count


def _tma_alloc(size: int, alignment: int, stream):
    """Global scratch for device-side TMA descriptors (triton.set_allocator)."""
    import torch
    return torch.empty(size, device="cuda", dtype=torch.int8)


def _native_fp8(t) -> bool:
    import torch
    return t.is_cuda and torch.cuda.get_device_capability(t.device) >= (8, 9)


_FP8_CONFIGS = [  # (BM, BN, BK, GROUP_M, num_warps, num_stages): few, so tuning stays short;
    (128, 256, 128, 8, 8, 3),  # BK stays 128, the scale block of the blockwise recipes
    (128, 256, 128, 8, 8, 4),
    (256, 128, 128, 8, 8, 3),
    (128, 128, 128, 8, 4, 4),
    (64, 128, 128, 8, 4, 4),
]
# persistent candidates (7th field "persistent"): one wave of num_SMs programs walking the tiles
_FP8_CONFIGS += [(128, 256, 128, 8, 8, 3, "persistent"), (128, 128, 128, 8, 4, 4, "persistent")]
# sm_90+ only, K % 16 == 0 (TMA needs 16-byte row strides): persistent with TMA loads
_FP8_TMA_CONFIGS = [(128, 256, 128, 8, 8, 3, "tma"), (128, 256, 128, 8, 8, 4, "tma"),
                    (128, 128, 128, 8, 4, 4, "tma")]
# block scales only: TMA + the scaling of chunk k deferred past chunk k+1's dot (two FP32 tiles
# live: BN = 128 with 8 warps keeps them in registers)
_FP8_TMA_LAG_CONFIGS = [(128, 128, 128, 8, 8, 3, "tma_lag"), (128, 128, 128, 8, 8, 4, "tma_lag")]
_FP8_EMU_CONFIGS = [  # decoded to bf16 in registers: smaller tiles (the bf16 copies need room)
    (128, 128, 128, 8, 8, 3),
    (64, 128, 128, 8, 4, 3),
]
_best_fp8 = {}


def fp8_mm(a, b, sa, sb, a_fmt, b_fmt, sa_rows, sb_rows, blockwise, bias=None,
           out_dtype=None, config=None, native=None):
    """C = (A*sa) @ (B*sb)^T from raw codes: a (M, K), b (N, K) uint8; sa/sb fp32 2-D scales
    indexed [row // sa_rows, k // 128] (per-tensor: shape (1, 1) and sa_rows >= M)."""
    import torch
    M, K = a.shape
    N = b.shape[0]
    out_dtype = out_dtype or torch.bfloat16
    interp = a.device.type == "cpu"
    native = _native_fp8(a) if native is None else native   # False: the sm_80 path anywhere
    c = torch.empty((M, N), dtype=out_dtype, device=a.device)
    fmt = {"e4m3": 0, "e5m2": 1}
    if native:
        tdt = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}
        a, b = a.view(tdt[a_fmt]), b.view(tdt[b_fmt])
    cfgs = [config] if config else ([(32, 32, 128, 4, 4, 1)] if interp else
                                    _FP8_CONFIGS if native else _FP8_EMU_CONFIGS)
    if (config is None and native and K % 16 == 0
            and torch.cuda.get_device_capability(a.device) >= (9, 0)):
        cfgs = cfgs + _FP8_TMA_CONFIGS + (_FP8_TMA_LAG_CONFIGS if blockwise else [])
    key = (M, N, K, a_fmt, b_fmt, sa_rows, sb_rows, blockwise, native, out_dtype)

    def launch(cfg):
        BM, BN, BK, GM, nw, ns = cfg[:6]
        kind = cfg[6] if len(cfg) > 6 else "tiled"
        if kind not in ("tiled", "persistent", "tma", "tma_lag"):
            raise ValueError(f"config kind {kind!r}: use 'tiled', 'persistent', 'tma' or "
                             f"'tma_lag'")
        persistent, tma = kind != "tiled", kind.startswith("tma")
        if tma and K % 16:
            raise ValueError(f"the TMA config needs K % 16 == 0 (16-byte rows), K={K}")
        if tma and not interp:
            triton.set_allocator(_tma_alloc)
        if interp and not blockwise:
            BK = min(BK, max(16, triton.next_power_of_2(K)))
        tiles = triton.cdiv(M, BM) * triton.cdiv(N, BN)
        sms = _num_sms(a.device, interp) if persistent else 1
        grid = (min(sms, tiles),) if persistent else (tiles,)
        (fp8_mm_persistent_kernel if persistent else fp8_mm_kernel)[grid](
            a, b, sa, sb, bias if bias is not None else sa,
            c.view(torch.int16) if (interp and out_dtype == torch.bfloat16) else c, M, N, K,
            sa.stride(0) if sa.shape[0] > 1 else 0, sa.stride(1) if sa.shape[1] > 1 else 0,
            sb.stride(0) if sb.shape[0] > 1 else 0, sb.stride(1) if sb.shape[1] > 1 else 0,
            SA_ROWS=sa_rows, SB_ROWS=sb_rows, A_FMT=fmt[a_fmt], B_FMT=fmt[b_fmt],
            BLOCKWISE=blockwise, HAS_BIAS=bias is not None,
            OUT_BF16=out_dtype == torch.bfloat16, NATIVE=native, INTERPRET=interp,
            EVEN_K=K % BK == 0, BM=BM, BN=BN, BK=BK, GROUP_M=GM, NUM_SMS=sms,
            num_warps=nw, num_stages=ns,
            **({"TMA": tma, "LAG": kind == "tma_lag"} if persistent else {}))

    tuned(_best_fp8, key, cfgs, launch, interp)
    return c
