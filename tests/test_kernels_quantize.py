"""Triton quantize/dequantize kernels against quantlib.quantize, bit for bit.

Without a GPU the kernels run on the Triton interpreter (tests/conftest.py); the reference twin
runs on the same inputs. Inputs mix normal data over many magnitudes with rows that hit the
edge cases: an all-zero block, fp32 subnormals, values near FLT_MAX, exact E2M1 ties, NaN, Inf."""
import dataclasses

import pytest
import torch

pytest.importorskip("triton")

import quantlib.kernels as K
from quantlib.recipes import get_recipe

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def edge_tensor(R=40, C=256, seed=0, nonfinite=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(R, C, generator=g) * torch.exp2(torch.randint(-6, 7, (R, 1), generator=g).float())
    x[0] = 0.0
    x[1] *= 1e-39                                     # fp32 subnormals
    x[2] *= 1e37                                      # near the top of fp32
    x[3] = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0]).repeat(C // 8)
    x[4, : C // 2] = 0.0                              # a zero half row: all-zero blocks
    x[5] = torch.linspace(-464.0, 464.0, C)           # E4M3 ties and carries once scaled by 1
    if nonfinite:
        x[6, 3] = float("nan")
        x[7, 40] = float("inf")
        x[8, 100] = -float("inf")
    return x.to(DEV)


def same(a, b):
    if a is None or b is None:
        return a is None and b is None
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.is_floating_point():
        return bool(((a == b) | (a.isnan() & b.isnan())).all())
    return torch.equal(a, b)


def assert_same_qt(a, b):
    assert torch.equal(a.codes, b.codes), f"{int((a.codes != b.codes).sum())} codes differ"
    assert same(a.scales, b.scales)
    assert same(a.tensor_scale, b.tensor_scale)
    assert a.shape == b.shape and a.dtype == b.dtype and a.recipe == b.recipe


QUANTIZERS = {"fp32": K.fp8_quantize, "pow2": K.fp8_quantize, "e4m3": K.nvfp4_quantize,
              "e8m0": K.mx_quantize}
CASES = [  # (recipe, input dtype)
    ("fp8_e4m3_tensor", torch.float32), ("fp8_e5m2_tensor", torch.bfloat16),
    ("fp8_e4m3_rowwise", torch.bfloat16), ("fp8_e5m2_rowwise", torch.float16),
    ("fp8_e4m3_1x128", torch.bfloat16), ("fp8_e5m2_1x128", torch.float32),
    ("fp8_e4m3_128x128", torch.float32), ("nvfp4", torch.bfloat16), ("nvfp4", torch.float32),
    ("mxfp8_e4m3", torch.bfloat16), ("mxfp8_e5m2", torch.float32), ("mxfp6_e2m3", torch.bfloat16),
    ("mxfp6_e3m2", torch.float32), ("mxfp4", torch.bfloat16),
]


@pytest.mark.parametrize("name,dtype", CASES, ids=[f"{n}-{str(d)[6:]}" for n, d in CASES])
def test_quantize_dequantize_bit_exact(name, dtype):
    r = dataclasses.replace(get_recipe(name), pad=True)
    x = edge_tensor(130 if r.granularity == "block2d" else 40).to(dtype)
    fq = QUANTIZERS[r.scale_format]
    a, b = fq(x, r, path="triton"), fq(x, r, path="reference")
    assert_same_qt(a, b)
    for dt in (torch.float32, torch.bfloat16):
        assert same(K.fp8_dequantize(a, dt, path="triton"), b.dequantize(dt))


def test_mxfp6_codes_are_packed_like_quantize():
    # the kernel writes one 6-bit code per byte; the public wrapper stores four per 3 bytes
    x = edge_tensor(12, 128)
    a = K.mx_quantize(x, "mxfp6_e2m3", path="triton")
    assert a.codes.shape == (12, 96) and a.bits_per_element == 6.25
    assert_same_qt(a, K.mx_quantize(x, "mxfp6_e2m3", path="reference"))
    # a block2d E8M0 recipe whose last dimension is not a multiple of 4: zero codes pad the quad
    r = dataclasses.replace(get_recipe("mxfp6_e3m2"), granularity="block2d", block=(2, 2))
    y = torch.randn(8, 6, generator=torch.Generator().manual_seed(2)).to(DEV)
    y[:2, :2] = 0.0                                             # an all-zero 2x2 block
    a, b = K.mx_quantize(y, r, path="triton"), K.mx_quantize(y, r, path="reference")
    assert a.codes.shape == (8, 6)
    assert_same_qt(a, b)
    assert same(K.mx_dequantize(a, path="triton"), b.dequantize())


@pytest.mark.parametrize("name", ["fp8_e4m3_1x128", "fp8_e4m3_tensor", "nvfp4", "mxfp4"])
def test_nan_inf_poison_their_groups(name):
    x = edge_tensor(nonfinite=True)
    r = get_recipe(name)
    fq = QUANTIZERS[r.scale_format]
    a, b = fq(x, r, path="triton"), fq(x, r, path="reference")
    assert_same_qt(a, b)
    assert same(K.fp8_dequantize(a, path="triton"), b.dequantize())


@pytest.mark.parametrize("rule", ["ceil", "even", "rceil"])
def test_mx_scale_rules(rule):
    r = dataclasses.replace(get_recipe("mxfp4"), scale_rule=rule)
    x = edge_tensor(12, 128)
    assert_same_qt(K.mx_quantize(x, r, path="triton"), K.mx_quantize(x, r, path="reference"))


@pytest.mark.parametrize("gran,block", [("group", 128), ("row", None), ("tensor", None)])
def test_pow2_scales(gran, block):
    r = dataclasses.replace(get_recipe("fp8_e4m3_tensor"), granularity=gran, block=block,
                            scale_format="pow2")
    x = edge_tensor(12, 256)
    assert_same_qt(K.fp8_quantize(x, r, path="triton"), K.fp8_quantize(x, r, path="reference"))


def test_odd_shapes_padding_and_long_rows():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 5, 300, generator=g).to(DEV)            # N-d, K not a block multiple
    r = dataclasses.replace(get_recipe("fp8_e4m3_1x128"), pad=True)
    a, b = K.fp8_quantize(x, r, path="triton"), K.fp8_quantize(x, r, path="reference")
    assert_same_qt(a, b)
    assert a.codes.shape == (3, 5, 384) and a.scales.shape == (3, 5, 3)
    assert same(K.fp8_dequantize(a, path="triton"), b.dequantize())
    y = torch.randn(3, 9000, generator=g).to(DEV)              # a row longer than one tile
    assert_same_qt(K.fp8_quantize(y, "fp8_e4m3_rowwise", path="triton"),
                   K.fp8_quantize(y, "fp8_e4m3_rowwise", path="reference"))
    z = torch.randn(1, 33, generator=g).to(DEV)                 # odd size, one row
    r2 = dataclasses.replace(get_recipe("nvfp4"), pad=True)
    assert_same_qt(K.nvfp4_quantize(z, r2, path="triton"), K.nvfp4_quantize(z, r2, path="reference"))


@pytest.mark.parametrize("name", ["nvfp4", "mxfp4"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fp4_pairs_every_input_layout(name, dtype):
    """FP4 codes are made from (element 2i, 2i+1) pairs: read as one word of two elements when K
    is even and the rows are word-aligned, else loaded and split. Each way, bit for bit."""
    r = dataclasses.replace(get_recipe(name), pad=True)
    fq = QUANTIZERS[r.scale_format]
    x = edge_tensor(40, 256, seed=3, nonfinite=True).to(dtype)
    buf = torch.cat([torch.zeros(1, dtype=dtype, device=DEV), x.reshape(-1)])
    shifted = buf[1:].view(40, 256)               # contiguous, one element off word alignment
    odd = x[:7, :67].contiguous()                 # K odd: the split path, padded to whole groups
    for t in (x, shifted, odd, x[:1, :2].contiguous()):
        assert_same_qt(fq(t, r, path="triton"), fq(t, r, path="reference"))


def test_fp4_two_dimensional_blocks():
    r = dataclasses.replace(get_recipe("nvfp4"), granularity="block2d", block=(16, 16), pad=True)
    x = edge_tensor(48, 96, seed=4).to(torch.bfloat16)
    a, b = K.nvfp4_quantize(x, r, path="triton"), K.nvfp4_quantize(x, r, path="reference")
    assert_same_qt(a, b)
    assert same(K.fp8_dequantize(a, torch.float32, path="triton"), b.dequantize(torch.float32))


def test_bad_input_is_refused_clearly():
    x = torch.randn(8, 256, device=DEV)
    with pytest.raises(TypeError, match="float32, bfloat16 or float16"):
        K.fp8_quantize(x.to(torch.int32))
    with pytest.raises(ValueError, match="contiguous"):
        K.fp8_quantize(x.t())
    with pytest.raises(ValueError, match="does not divide"):
        K.fp8_quantize(x[:, :200].contiguous(), "fp8_e4m3_1x128")
    with pytest.raises(ValueError, match="e2m1"):
        K.nvfp4_quantize(x, "mxfp4")
    with pytest.raises(ValueError, match="path"):
        K.fp8_quantize(x, path="fast")
    with pytest.raises(TypeError, match="QuantizedTensor"):
        K.fp8_dequantize(x)


def test_triton_path_on_cpu_without_interpreter_is_refused(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        K.fp8_quantize(torch.randn(4, 128), path="triton")
    # path="auto" falls back to the reference on the same call
    assert K.fp8_quantize(torch.randn(4, 128)).codes.shape == (4, 128)


def test_malformed_and_unsupported_quantized_tensors():
    """The kernels index codes and scales by the shape: a QuantizedTensor whose parts disagree
    with it is refused, not read out of bounds; INT recipes fall back to the reference (auto)
    or are refused (path='triton'); empty tensors give empty results."""
    from quantlib import quantize
    x = torch.randn(8, 64, device=DEV)
    q = K.fp8_quantize(x, "fp8_e4m3_rowwise")
    with pytest.raises(ValueError, match="malformed"):
        K.fp8_dequantize(dataclasses.replace(q, scales=q.scales[:4]), path="triton")
    n = K.nvfp4_quantize(x)
    with pytest.raises(ValueError, match="tensor scale"):
        K.nvfp4_dequantize(dataclasses.replace(n, tensor_scale=None), path="triton")
    i = quantize(x, "int4_g32")
    assert torch.equal(K.fp8_dequantize(i), i.dequantize())            # auto: the reference
    with pytest.raises(ValueError, match="no Triton kernel"):
        K.fp8_dequantize(i, path="triton")
    for shape in [(4, 0), (0, 64)]:
        e = K.fp8_quantize(torch.randn(shape, device=DEV), "fp8_e4m3_rowwise", path="triton")
        assert K.fp8_dequantize(e, path="triton").shape == shape


def test_amax_kernel_over_several_chunks_per_program():
    """The tensor-amax pass of per-tensor and NVFP4 recipes: each program reduces several
    BLOCKs (large tensors), the last one partial; the result is max |x| as int bits."""
    if DEV == "cuda":
        pytest.skip("interpreter-sized launch; gpu_check covers the GPU")
    from quantlib.kernels import _quantize as kq
    x = torch.randn(3, 7000)
    x[2, 6999] = -55.0                                    # in the last, partial chunk
    amax = torch.zeros(1, dtype=torch.int32)
    kq.amax_kernel[(2,)](x, amax, x.numel(), BF16=False, BLOCK=1024, CHUNKS=11)
    assert amax.view(torch.float32).item() == 55.0
