"""Triton decode attention over an FP8 KV cache (split along the sequence, flash-decoding).

One query token per sequence attends to T cached tokens, stored as FP8 E4M3 codes with one FP32
scale per token, head or tensor, or as NVFP4 (E2M1 codes two per byte, an E4M3 scale per 16
values of head_dim, an FP32 tensor scale). A program owns one KV head of one
sequence, its GROUP query heads (grouped-query attention) and one split of the tokens; it walks
the split BLOCK_N tokens at a time, decodes the key and value codes in registers, and keeps
an online softmax (running max m, running sum l, accumulator acc) in base 2. Each split writes
(m, l, acc); `reference.combine_splits` merges them in a fixed order (deterministic).

Bit-exact on the interpreter with the twin (`reference.decode_attention_ref`): every sum is a
fixed binary tree (pairs (0,1), (2,3), ... then pairs of pairs), and exp2 is a polynomial
(Cephes' exp2f) in plain multiplies and adds, so numpy and torch round the same operations.
On a GPU the compiler fuses multiply-adds: results agree to FP32 accuracy, not bit for bit.
"""
import triton
import triton.language as tl

from quantlib.kernels._minifloat import decode_e2m1, decode_e4m3


@triton.jit
def exp2_poly(x):
    """2^x for x <= 0 (fp32): 2^round(x) * p(f), f in [-0.5, 0.5]; 0 below 2^-126."""
    xc = tl.maximum(x, -126.0)
    i = tl.floor(xc + 0.5)
    f = xc - i
    p = 1.535336188319500e-4 * f + 1.339887440266574e-3
    p = p * f + 9.618437357674640e-3
    p = p * f + 5.550332471162809e-2
    p = p * f + 2.402264791363012e-1
    p = p * f + 6.931472028550421e-1
    p = p * f + 1.0
    two_i = ((i.to(tl.int32) + 127) << 23).to(tl.float32, bitcast=True)
    return tl.where(x < -126.0, 0.0, p * two_i)


@triton.jit
def tree_sum_last3(x, A: tl.constexpr, B: tl.constexpr, N: tl.constexpr, LOGN: tl.constexpr):
    """Sum of x (A, B, N) over its last axis as a binary tree of pairs: (A, B)."""
    for i in tl.static_range(LOGN):
        a, b = tl.split(tl.reshape(x, (A, B, N >> (i + 1), 2)))
        x = a + b
    return tl.reshape(x, (A, B))


@triton.jit
def load_kv(c_ptr, s_ptr, ts, t, d, valid, sc_t, ss_t, ROWS_ARE_TOKENS: tl.constexpr,
            NVFP4: tl.constexpr):
    """Decoded key or value tile, (BLOCK_N, D) or transposed (D, BLOCK_N). FP8: E4M3 codes
    (the per-token scale is applied later, to scores or to P). NVFP4: two E2M1 codes per byte,
    element 2i in the low nibble, times its block's E4M3 scale times the tensor scale ts."""
    if ROWS_ARE_TOKENS:
        tt, dd, vm = t[:, None], d[None, :], valid[:, None]
    else:
        tt, dd, vm = t[None, :], d[:, None], valid[None, :]
    if NVFP4:
        byte = tl.load(c_ptr + tt * sc_t + dd // 2, mask=vm, other=0).to(tl.int32)
        sc = tl.load(s_ptr + tt * ss_t + dd // 16, mask=vm, other=0)
        x = decode_e2m1((byte >> ((dd % 2) * 4)) & 0xF) * (decode_e4m3(sc) * ts)
    else:
        x = decode_e4m3(tl.load(c_ptr + tt * sc_t + dd, mask=vm, other=0))
    return x


@triton.jit
def decode_attention_kernel(
        q_ptr, kc_ptr, vc_ptr, ks_ptr, vs_ptr, m_ptr, l_ptr, acc_ptr,
        T, H_KV, SPLIT_LEN, N_BLOCKS, qk_scale, k_ts, v_ts,
        sq_b, sq_h, sk_b, sk_h, sk_t, sv_b, sv_h, sv_t,
        sks_b, sks_h, sks_t, svs_b, svs_h, svs_t,
        GROUP: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, LOGD: tl.constexpr,
        BLOCK_N: tl.constexpr, LOGN: tl.constexpr, NVFP4: tl.constexpr):
    bh = tl.program_id(0)
    split = tl.program_id(1)
    n_splits = tl.num_programs(1)
    b = bh // H_KV
    h = bh % H_KV
    g = tl.arange(0, GP)
    d = tl.arange(0, D)
    n = tl.arange(0, BLOCK_N)
    gmask = g < GROUP
    q = tl.load(q_ptr + b * sq_b + (h * GROUP + g)[:, None] * sq_h + d[None, :],
                mask=gmask[:, None], other=0.0)                                  # (GP, D)
    m_i = tl.zeros((GP,), tl.float32) - float("inf")
    l_i = tl.zeros((GP,), tl.float32)
    acc = tl.zeros((GP, D), tl.float32)
    start = split * SPLIT_LEN
    for j in range(0, N_BLOCKS):
        t = start + j * BLOCK_N + n
        valid = t < T
        k = load_kv(kc_ptr + b * sk_b + h * sk_h, ks_ptr + b * sks_b + h * sks_h, k_ts, t, d,
                    valid, sk_t, sks_t, True, NVFP4)                            # (BN, D)
        dot = tree_sum_last3(q[:, None, :] * k[None, :, :], GP, BLOCK_N, D, LOGD)
        if NVFP4:
            s = dot * qk_scale                                                  # (GP, BN)
        else:
            ks = tl.load(ks_ptr + b * sks_b + h * sks_h + t * sks_t, mask=valid, other=0.0)
            s = (dot * ks[None, :]) * qk_scale
        s = tl.where(valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        p = tl.where(valid[None, :], exp2_poly(s - m_new[:, None]), 0.0)
        alpha = tl.where(m_i == m_new, 1.0, exp2_poly(m_i - m_new))
        p3 = tl.reshape(p, (1, GP, BLOCK_N))
        l_i = l_i * alpha + tl.reshape(tree_sum_last3(p3, 1, GP, BLOCK_N, LOGN), (GP,))
        vt = load_kv(vc_ptr + b * sv_b + h * sv_h, vs_ptr + b * svs_b + h * svs_h, v_ts, t, d,
                     valid, sv_t, svs_t, False, NVFP4)                          # (D, BN)
        if NVFP4:
            pw = p
        else:
            vs = tl.load(vs_ptr + b * svs_b + h * svs_h + t * svs_t, mask=valid, other=0.0)
            pw = p * vs[None, :]
        pv = tree_sum_last3(pw[:, None, :] * vt[None, :, :], GP, D, BLOCK_N, LOGN)
        acc = acc * alpha[:, None] + pv
        m_i = m_new
    row = (b * H_KV * GROUP + h * GROUP + g) * n_splits + split
    tl.store(m_ptr + row, m_i, mask=gmask)
    tl.store(l_ptr + row, l_i, mask=gmask)
    tl.store(acc_ptr + row[:, None] * D + d[None, :], acc, mask=gmask[:, None])


def decode_attention_partials(q, kc, vc, ks, vs, qk_scale, n_splits, block_n, k_ts=None,
                              v_ts=None):
    """Launch: q (B, Hq, D) fp32; FP8: codes (B, Hkv, T, D) uint8 and scales (B, Hkv, T) fp32
    (any strides, 0 for broadcast); NVFP4 (k_ts, v_ts given): packed codes (B, Hkv, T, D/2),
    E4M3 block-scale codes (B, Hkv, T, D/16), FP32 tensor scales. Returns m, l (B, Hq, S) and
    acc (B, Hq, S, D), float32."""
    import torch
    B, Hq, D = q.shape
    Hkv, T = kc.shape[1], kc.shape[2]
    nvfp4 = k_ts is not None
    group = Hq // Hkv
    split_len = -(-(-(-T // n_splits)) // block_n) * block_n
    m = torch.empty((B, Hq, n_splits), dtype=torch.float32, device=q.device)
    l = torch.empty_like(m)
    acc = torch.empty((B, Hq, n_splits, D), dtype=torch.float32, device=q.device)
    decode_attention_kernel[(B * Hkv, n_splits)](
        q, kc, vc, ks, vs, m, l, acc, T, Hkv, split_len, split_len // block_n, qk_scale,
        float(k_ts) if nvfp4 else 1.0, float(v_ts) if nvfp4 else 1.0,
        q.stride(0), q.stride(1), kc.stride(0), kc.stride(1), kc.stride(2),
        vc.stride(0), vc.stride(1), vc.stride(2), ks.stride(0), ks.stride(1), ks.stride(2),
        vs.stride(0), vs.stride(1), vs.stride(2),
        GROUP=group, GP=triton.next_power_of_2(group), D=D, LOGD=D.bit_length() - 1,
        BLOCK_N=block_n, LOGN=block_n.bit_length() - 1, NVFP4=nvfp4)
    return m, l, acc
