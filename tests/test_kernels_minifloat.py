"""The kernels' integer-arithmetic encoders and decoders against ml_dtypes and torch casts.

A tiny Triton kernel runs each @triton.jit helper (on the CPU interpreter without a GPU) over
every code and over 65K fp32 values spanning all magnitudes, ties, carries and specials."""
import numpy as np
import pytest
import torch

triton = pytest.importorskip("triton")
ml_dtypes = pytest.importorskip("ml_dtypes")
import triton.language as tl

from quantlib.kernels import _minifloat as mf
from quantlib.kernels._quantize import encode_e2m1_fast

DEV = "cuda" if torch.cuda.is_available() else "cpu"


@triton.jit
def _roundtrip(x_ptr, c_ptr, d_ptr, n, FMT: tl.constexpr, BLOCK: tl.constexpr):
    off = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = off < n
    x = tl.load(x_ptr + off, mask=m)
    if FMT == 0:
        c = mf.encode_e4m3(x)
        d = mf.decode_e4m3(c)
    elif FMT == 1:
        c = mf.encode_e4m3_nonfinite(x)
        d = mf.decode_e4m3(c)
    elif FMT == 2:
        c = mf.encode_e5m2_nonfinite(x)
        d = mf.decode_e5m2(c)
    elif FMT == 3:
        c = mf.encode_e5m2(x)
        d = mf.decode_e5m2(c)
    elif FMT == 4:
        c = mf.encode_e2m1(x)
        d = mf.decode_e2m1(c)
    else:
        c = encode_e2m1_fast(x)
        d = mf.decode_e2m1(c)
    tl.store(c_ptr + off, c.to(tl.uint8), mask=m)
    tl.store(d_ptr + off, d, mask=m)


@triton.jit
def _decode_e8m0_bf16(c_ptr, d_ptr, x_ptr, b_ptr, BLOCK: tl.constexpr):
    off = tl.arange(0, BLOCK)
    tl.store(d_ptr + off, mf.decode_e8m0(tl.load(c_ptr + off)))
    tl.store(b_ptr + off, mf.bf16_bits_rne(tl.load(x_ptr + off)))


def _values(n=1 << 16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) * torch.exp2(torch.randint(-24, 20, (n,), generator=g).float())
    special = [0.0, -0.0, 464.0, 465.0, 480.0, 31.27, 126.24, 61439.0, 61440.0, 2.0 ** -10,
               1.5 * 2.0 ** -9, 2.0 ** -17, 1e-45, -1e-45, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0,
               7.0, 448.0, 57344.0, 3.4e38, -3.4e38, float("inf"), -float("inf")]
    return torch.cat([x, torch.tensor(special)])


def _run(x, fmt):
    c = torch.empty(x.numel(), dtype=torch.uint8, device=DEV)
    d = torch.empty(x.numel(), dtype=torch.float32, device=DEV)
    _roundtrip[(triton.cdiv(x.numel(), 4096),)](x.to(DEV), c, d, x.numel(), FMT=fmt, BLOCK=4096)
    return c.cpu().numpy(), d.cpu().numpy()


@pytest.mark.parametrize("fmt,dtype,saturate", [
    (1, ml_dtypes.float8_e4m3fn, False),       # ml_dtypes: overflow -> NaN, like "nonfinite"
    (2, ml_dtypes.float8_e5m2, False),         # overflow -> Inf
    (4, ml_dtypes.float4_e2m1fn, True),        # ml_dtypes saturates E2M1
    (5, ml_dtypes.float4_e2m1fn, True),
])
def test_encode_matches_ml_dtypes(fmt, dtype, saturate):
    x = _values()
    c, d = _run(x, fmt)
    ref = x.numpy().astype(dtype)
    rc = ref.view(np.uint8) & (0xF if fmt >= 4 else 0xFF)
    finite = np.isfinite(x.numpy())
    assert np.array_equal(c[finite], rc[finite])
    assert np.array_equal(d[finite], ref.astype(np.float32)[finite], equal_nan=True)


@pytest.mark.parametrize("fmt,tdtype", [(0, torch.float8_e4m3fn), (3, torch.float8_e5m2)])
def test_saturating_encode_matches_torch(fmt, tdtype):
    """torch's casts saturate E4M3 (Inf too); E5M2 saturation is a clamp before the cast."""
    x = _values()
    c, _ = _run(x, fmt)
    fmax = torch.finfo(tdtype).max
    ref = x.clamp(-fmax, fmax).to(tdtype).view(torch.uint8).numpy()
    finite = np.isfinite(x.numpy()) | np.isinf(x.numpy())
    assert np.array_equal(c[finite], ref[finite])


def test_special_codes():
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 465.0, 61440.0])
    assert _run(x, 0)[0].tolist() == [0x7F, 0x7E, 0xFE, 0x7E, 0x7E]
    assert _run(x, 1)[0].tolist()[1:] == [0x7F, 0xFF, 0x7F, 0x7F]
    assert _run(x, 2)[0].tolist()[1:] == [0x7C, 0xFC, 0x5F, 0x7C]   # 465 -> 448 in E5M2
    assert _run(x, 3)[0].tolist()[1:] == [0x7B, 0xFB, 0x5F, 0x7B]


@pytest.mark.parametrize("name,dtype", [("e4m3", ml_dtypes.float8_e4m3fn),
                                        ("e5m2", ml_dtypes.float8_e5m2)])
def test_decode_every_code(name, dtype):
    """Decoding all 256 codes: encode(decode(c)) == c for every non-NaN code."""
    codes = np.arange(256, dtype=np.uint8)
    vals = torch.from_numpy(codes.view(dtype).astype(np.float32))
    fmt = 1 if name == "e4m3" else 2
    c, d = _run(vals, fmt)
    ok = ~np.isnan(vals.numpy())
    assert np.array_equal(d, vals.numpy(), equal_nan=True)
    assert np.array_equal(c[ok], codes[ok])


def test_e8m0_decode_and_bf16_rounding():
    codes = torch.arange(256, dtype=torch.uint8, device=DEV)
    x = (torch.randn(256) * 1e3).to(DEV)
    x[:4] = torch.tensor([1.01171875, 3.14, float("nan"), -3.4e38])
    d = torch.empty(256, device=DEV)
    b = torch.empty(256, dtype=torch.int16, device=DEV)
    _decode_e8m0_bf16[(1,)](codes, d, x, b, BLOCK=256)
    want = torch.exp2(torch.arange(256, dtype=torch.float64) - 127).float()
    want[255] = float("nan")
    assert torch.equal(torch.isnan(d.cpu()), torch.isnan(want))
    assert torch.equal(d.cpu()[:255], want[:255])
    ref = x.cpu().to(torch.bfloat16)
    got = b.cpu().view(torch.bfloat16)
    assert torch.equal(torch.isnan(got), torch.isnan(ref))
    fin = ~torch.isnan(ref)
    assert torch.equal(got[fin].view(torch.int16), ref[fin].view(torch.int16))


def test_e2m1_fast_dense_sweep():
    """encode_e2m1_fast (the quantize kernels' FP4 encoder, bit arithmetic plus one RNE add)
    against ml_dtypes on every 4096th fp32 bit pattern of both signs and on every pattern within
    4096 ulps of each E2M1 value and midpoint (the decision points); Inf saturates, NaN -> +-0."""
    pts = np.array([0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0,
                    2.0 ** -126, 1.0e-30], np.float32).view(np.int32)
    near = (pts[:, None] + np.arange(-4096, 4097, dtype=np.int32)[None, :]).ravel()
    grid = np.arange(0, 1 << 31, 4096, dtype=np.int64).astype(np.int32)
    bits = np.concatenate([near, grid])
    bits = np.concatenate([bits, bits | np.int32(-(1 << 31))])
    x = torch.from_numpy(bits.view(np.float32).copy())
    c, _ = _run(x, 5)
    xf = x.numpy()
    finite = np.isfinite(xf)
    ref = (xf[finite].astype(ml_dtypes.float4_e2m1fn).view(np.uint8) & 0xF)
    assert np.array_equal(c[finite], ref)
    sign = np.signbit(xf).astype(np.uint8) << 3
    inf, nan = np.isinf(xf), np.isnan(xf)
    assert np.array_equal(c[inf], 0x7 | sign[inf])
    assert np.array_equal(c[nan], sign[nan])
