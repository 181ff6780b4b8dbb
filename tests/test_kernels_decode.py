"""The decode kernels (quantlib.kernels._decode: M = 1..16, transposed packed layout) on the
interpreter, for every weight-only format: the decoded weights bit for bit against the
reference dequantization (one-hot activations pick single columns, every code value present),
products against float64 within the FP32-accumulation bound, every kernel mode (CUDA-core GEMV,
tl.dot, split K, one or several steps per scale group), and the public
int4_matmul / weight_matmul / decode_layout."""
import pytest
import torch

from quantlib import kernels as K
from quantlib.kernels import _decode, _tuning
from quantlib.qtensor import QuantizedTensor, quantize
from quantlib.recipes import Recipe, get_recipe
from tests.test_kernels_gemm import rand, within_fp32_bound

DEV = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(DEV == "cuda", reason="interpreter-sized configs; gpu_check.py "
                                "runs the GPU's")

UINT4_G32 = Recipe("uint4_g32_test", "uint4", "group", 32, description="asymmetric, g32")
UINT4_G64 = Recipe("uint4_g64_test", "uint4", "group", 64, description="asymmetric, g64")
INT4_G64_BF16 = Recipe("int4_g64_bf16_test", "int4", "group", 64, scale_format="bf16")
INT4_CH_FP16 = Recipe("int4_channel_fp16_test", "int4", "channel", scale_format="fp16")
HALF = ["int4_g128_fp16", "int4_g128_asym_fp16", INT4_G64_BF16, INT4_CH_FP16]
RECIPES = ["nvfp4", "mxfp4", "mxfp8_e4m3", "mxfp8_e5m2", "fp8_e4m3_rowwise", "fp8_e4m3_tensor",
           "fp8_e5m2_rowwise", "int8_channel", "int4_channel", "int4_g32", "int4_g64",
           "int4_g128", "int4_g128_asym", UINT4_G32, UINT4_G64] + HALF


def rid(r):
    return r if isinstance(r, str) else r.name


def random_codes(recipe, N, Kd, seed):
    """A QuantizedTensor whose codes are uniform random bytes (every finite code value) and
    whose scales are random finite values of the scale format."""
    r = get_recipe(recipe)
    g = torch.Generator().manual_seed(seed)
    qt = quantize(torch.randn(N, Kd, generator=g), r)
    codes = torch.randint(0, 256, qt.codes.shape, generator=g, dtype=torch.uint8)
    if r.format.bits == 8 and r.element.startswith("e4m3"):
        codes[codes & 0x7F == 0x7F] = 0x3C          # E4M3 NaN: see test_fp8_nan_code
    if r.format.bits == 8 and r.element.startswith("e5m2"):
        codes[codes & 0x7C == 0x7C] = 0x3C          # E5M2 Inf/NaN (Inf x 0 is NaN)
    s = qt.scales
    if r.scale_format == "e4m3":                     # finite positive E4M3 codes
        s = torch.randint(0x08, 0x7E, s.shape, generator=g, dtype=torch.uint8)
    elif r.scale_format == "e8m0":
        s = torch.randint(100, 150, s.shape, generator=g, dtype=torch.uint8)
    else:                                            # fp16/bf16 scales stay in their dtype
        s = (torch.randn(s.shape, generator=g).abs() + 0.01).to(s.dtype)
    zp = None if qt.zero_point is None else torch.randint(
        0, 16, qt.zero_point.shape, generator=g, dtype=torch.uint8)
    return QuantizedTensor(codes=codes, scales=s, recipe=r, shape=qt.shape,
                           tensor_scale=qt.tensor_scale, zero_point=zp)


def configs(dw, M):
    """GEMV (M <= 4) or tl.dot (M > 4) configs: BK 16/32/64 up to the group (one or several
    steps per group), split K 1 and 2, the split reduced by a second kernel or in-kernel by
    the last program (serial)."""
    out = []
    for bk in (16, 32, 64):
        for sk, serial in ((1, False), (2, False), (2, True)):
            c = (M > _decode.GEMV_MAX_M, 16 if M > _decode.GEMV_MAX_M else
                 1 << (M - 1).bit_length(), 16, bk, sk, 4, 1, serial)
            if _decode.config_error(c, M, dw.shape[1], dw) is None:
                out.append(c)
    return out


@pytest.mark.parametrize("recipe", RECIPES, ids=rid)
@pytest.mark.parametrize("dot", [False, True], ids=["gemv", "dot"])
def test_decoded_weights_bit_exact(recipe, dot):
    """x = 16 one-hot rows: y[m, n] is the weight of column k_m, decoded and scaled by the
    kernel (codes, then the group's scale on the partial sum), bit for bit the reference's
    dequantization, for random bytes covering every finite code."""
    Kd = max(64, get_recipe(recipe).block or 0)
    w = random_codes(recipe, 24, Kd, seed=1)
    dw = K.decode_layout(w)
    ref = w.dequantize(torch.float32)
    group = dw.group or 16
    cfg = (dot, 16, 16, min(32, group), 1, 4, 1)
    for k0 in range(0, Kd, 16):
        x = torch.zeros(16, Kd)
        x[torch.arange(16), k0 + torch.arange(16)] = 1.0
        y = _decode.decode_mm(x.to(torch.bfloat16), dw, out_dtype=torch.float32, config=cfg)
        want = ref[:, k0:k0 + 16].T
        assert torch.equal(y.isnan(), want.isnan())
        assert torch.equal(y.nan_to_num(), want.nan_to_num()), (k0, cfg)


EVERY = [(r, M) for M in (1, 12) for r in RECIPES
         if r not in ("fp8_e5m2_rowwise", "int4_g64", INT4_G64_BF16, INT4_CH_FP16)]
EVERY += [("nvfp4", 3), ("int4_g128_asym", 3), ("mxfp8_e4m3", 3)]


@pytest.mark.parametrize("recipe,M", EVERY, ids=[f"{rid(r)}-M{m}" for r, m in EVERY])
def test_decode_mm_every_config(recipe, M):
    """Each mode and split within the FP32 bound of float64 on the dequantized weight, BF16
    output = its own FP32 output rounded once, and deterministic."""
    Kd = 2 * max(64, get_recipe(recipe).block or 0)       # two steps of 64 or two groups
    w = quantize(rand(24, Kd, seed=2), recipe)
    dw = K.decode_layout(w)
    x = rand(M, Kd, seed=3).to(torch.bfloat16)
    bias = rand(24, seed=4)
    w64 = w.dequantize().double()
    cfgs = configs(dw, M)
    assert len(cfgs) >= 2
    for cfg in cfgs:
        y = _decode.decode_mm(x, dw, bias=bias, out_dtype=torch.float32, config=cfg)
        assert within_fp32_bound(y, x.double(), w64, bias), cfg
    yb = _decode.decode_mm(x, dw, bias=bias, out_dtype=torch.bfloat16, config=cfg)
    assert torch.equal(yb, y.to(torch.bfloat16)), cfg
    assert torch.equal(_decode.decode_mm(x, dw, bias=bias, out_dtype=torch.float32,
                                         config=cfg), y)
    two = [c for c in cfgs if c[4] == 2]        # the serial reduction adds in the same order
    assert torch.equal(_decode.decode_mm(x, dw, bias=bias, config=two[0]),
                       _decode.decode_mm(x, dw, bias=bias, config=two[1]))
    assert not dw.locks.any()                   # the last program reset its lock


@pytest.mark.parametrize("recipe", ["int4_g128", "int4_g128_asym", "int4_g32", "int4_channel",
                                    "int4_g128_fp16"])
@pytest.mark.parametrize("M", [1, 5, 20])
@pytest.mark.parametrize("path", ["triton", "reference"])
def test_int4_matmul(recipe, M, path):
    """The public entry: QuantizedTensor or its decode layout, leading dims, M above 16
    (tensor-core tiles of the same kernel), empty input, BF16 output."""
    w = quantize(rand(40, 256, seed=5), recipe)
    x = rand(2, M, 256, seed=6).to(torch.bfloat16)
    bias = rand(40, seed=7)
    y = K.int4_matmul(x, w, bias=bias, out_dtype=torch.float32, path=path)
    assert y.shape == (2, M, 40)
    assert within_fp32_bound(y.reshape(-1, 40), x.reshape(-1, 256).double(),
                             w.dequantize().double(), bias)
    yl = K.int4_matmul(x, K.decode_layout(w), bias=bias, out_dtype=torch.float32, path=path)
    assert torch.equal(yl, y)
    assert torch.equal(K.weight_matmul(x, w, bias, torch.float32, path=path), y)
    assert K.int4_matmul(x, w, path=path).dtype == torch.bfloat16
    assert K.int4_matmul(x[:, :0], w, bias=bias, path=path).shape == (2, 0, 40)


@pytest.mark.parametrize("recipe", ["nvfp4", "mxfp4", "mxfp8_e4m3", "fp8_e4m3_rowwise",
                                    "int8_channel"])
def test_weight_matmul_decode_path(recipe):
    """M <= 16 on the Triton path runs the decode kernel (a DecodeWeight or the canonical
    tensor, whose layout is then built per call); the same numbers either way."""
    w = quantize(rand(48, 128, seed=8), recipe)
    x = rand(7, 128, seed=9).to(torch.bfloat16)
    y = K.weight_matmul(x, w, out_dtype=torch.float32, path="triton")
    assert torch.equal(K.weight_matmul(x, K.decode_layout(w), out_dtype=torch.float32,
                                       path="triton"), y)
    ref = K.weight_matmul(x, w, out_dtype=torch.float32, path="reference")
    assert torch.equal(ref, K.reference.weight_mm_ref(x, w, None, torch.float32))
    assert within_fp32_bound(y, x.double(), w.dequantize().double())


@pytest.mark.parametrize("dot", [False, True], ids=["gemv", "dot"])
def test_fp8_nan_code(dot):
    """An E4M3 NaN code (0x7F, 0xFF) makes its output column NaN, as in the reference."""
    w = quantize(rand(16, 64, seed=14), "fp8_e4m3_rowwise")
    w.codes[5, 7], w.codes[9, 40] = 0x7F, 0xFF
    x = rand(16, 64, seed=15).to(torch.bfloat16)
    cfg = (dot, 16, 16, 16, 2, 4, 1)
    y = _decode.decode_mm(x, K.decode_layout(w), out_dtype=torch.float32, config=cfg)
    ref = K.reference.weight_mm_ref(x, w, None, torch.float32)
    assert ref[:, [5, 9]].isnan().all() and torch.equal(y.isnan(), ref.isnan())


def test_nan_scale_poisons_its_group():
    """A NaN FP32 scale (a NaN weight in the group) makes exactly that column NaN."""
    xw = rand(16, 256, seed=10)
    xw[3, 200] = float("nan")
    w = quantize(xw, "int4_g128")
    x = rand(2, 256, seed=11).to(torch.bfloat16)
    y = K.int4_matmul(x, w, out_dtype=torch.float32, path="triton")
    ref = K.int4_matmul(x, w, out_dtype=torch.float32, path="reference")
    assert ref[:, 3].isnan().all() and torch.equal(y.isnan(), ref.isnan())


def test_layout_is_the_canonical_codes_transposed():
    """Word (k/8, n) holds codes k..k+7 of row n, element k at bits 4(k % 8): the canonical
    packed row read as little-endian int32 words, transposed; scales and zeros transposed."""
    w = quantize(rand(8, 64, seed=12), "int4_g32")
    dw = K.decode_layout(w)
    assert dw.words.shape == (8, 8) and dw.words.dtype == torch.int32
    nib = torch.stack([(dw.words >> (4 * j)) & 15 for j in range(8)], 1).reshape(64, 8)
    from quantlib.packing import unpack_nibbles
    assert torch.equal(nib.T.to(torch.uint8), unpack_nibbles(w.codes))
    assert torch.equal(dw.scales, w.scales.T)
    a = quantize(rand(8, 256, seed=13), "int4_g128_asym")
    assert torch.equal(K.decode_layout(a).zeros, a.zero_point.T)
    assert dw.nbytes() == 8 * 8 * 4 + 2 * 8 * 4 + 4           # words, scales, one lock


def test_decode_bad_input():
    w = quantize(rand(16, 128), "int4_g128")
    x = rand(1, 128).to(torch.bfloat16)
    with pytest.raises(ValueError, match="int4"):
        K.int4_matmul(x, quantize(rand(16, 128), "nvfp4"))
    with pytest.raises(TypeError, match="bfloat16"):
        K.int4_matmul(x.float(), w)
    with pytest.raises(ValueError, match="K=64"):
        K.int4_matmul(rand(1, 64).to(torch.bfloat16), w)
    with pytest.raises(ValueError, match="no decode kernel"):
        K.decode_layout(quantize(rand(16, 128), "fp8_e4m3_1x128"))
    with pytest.raises(TypeError, match="QuantizedTensor"):
        K.decode_layout(rand(16, 128))
    a = quantize(rand(16, 128), "int4_g128_asym")
    a.zero_point = None
    with pytest.raises(ValueError, match="zero point"):
        K.decode_layout(a)
    with pytest.raises(ValueError, match="BM >= M"):
        _decode.decode_mm(rand(4, 128).to(torch.bfloat16), K.decode_layout(w),
                          config=(False, 2, 16, 32, 1, 4, 1))
    with pytest.raises(ValueError, match="BK divides the group"):
        _decode.decode_mm(x, K.decode_layout(quantize(rand(16, 128), "nvfp4")),
                          config=(True, 16, 16, 32, 1, 4, 1))


@pytest.mark.parametrize("recipe", ["nvfp4", "mxfp4", "fp8_e4m3_rowwise", "int4_g128",
                                    "int4_g128_asym", "int8_channel"])
def test_gpu_configs_fit(recipe):
    """The heuristic's config and every tuning candidate compute the full product for the
    issue's shapes (Llama FFN, attention) and every M the decode kernels take."""
    dw = K.decode_layout(quantize(rand(32, 256), recipe))
    for N, Kd in [(8192, 8192), (4096, 14336), (28672, 8192), (1024, 4096), (14336, 4096),
                  (4096, 4096), (256, 768)]:
        for M in range(1, 17):
            c = _decode.decode_config(M, N, Kd, dw, False, 132)
            assert _decode.config_error(c, M, Kd, dw) is None, (N, Kd, M, c)
            assert c[0] == (M > _decode.GEMV_MAX_M)                 # no tl.dot for M <= 4
            cands = _decode.decode_candidates(M, N, Kd, dw, 132)
            assert cands[0] == c and 1 <= len(cands) <= 9
    c = _decode.decode_config(1, 8192, 8192, dw, False, 132)
    assert c[4] > 1                     # a 1-row product splits K to fill the GPU


def test_no_tuning_inside_a_capture(monkeypatch):
    """Inside a CUDA-graph capture the tuner times nothing: an untuned key gets the first
    (default) config, a tuned one its winner."""
    monkeypatch.setattr(_tuning, "capturing", lambda: True)
    monkeypatch.setattr(_tuning, "pick", lambda *a: pytest.fail("timed inside a capture"))
    ran = []
    _tuning.tuned({}, "k", ["a", "b"], ran.append, interpret=False)
    _tuning.tuned({"k": "b"}, "k", ["a", "b"], ran.append, interpret=False)
    assert ran == ["a", "b"]


def test_quant_linear_keeps_its_decode_layout(monkeypatch):
    """QuantLinear builds the kernel layout once, beside the canonical buffers (the state_dict
    holds only those), rebuilds it when they change, and inside a capture never caches one."""
    from torch import nn

    from quantlib.nn import linear as qlinear
    from quantlib.nn.linear import QuantLinear, decode_weight, kernel_gemm
    torch.manual_seed(0)
    lin = nn.Linear(256, 32)
    q = QuantLinear.from_linear(lin, "int4_g128")
    x = torch.randn(3, 256)
    y = kernel_gemm(q, x, path="triton")
    torch.testing.assert_close(y, q.reference_forward(x), rtol=0.02, atol=0.02)
    dw = decode_weight(q)
    assert decode_weight(q) is dw and not any("decode" in k for k in q.state_dict())
    other = QuantLinear.from_linear(nn.Linear(256, 32), "int4_g128")
    q.load_state_dict(other.state_dict())             # in-place copies: a new layout
    assert decode_weight(q) is not dw
    assert torch.equal(kernel_gemm(q, x, path="triton"), kernel_gemm(other, x, path="triton"))
    monkeypatch.setattr(_tuning, "capturing", lambda: True)
    fresh = QuantLinear.from_linear(lin, "int4_g128")
    qlinear._WARNED.clear()
    with pytest.warns(UserWarning, match="warm up first"):
        assert isinstance(decode_weight(fresh), QuantizedTensor)
    assert "_decode_cache" not in fresh.__dict__


@pytest.mark.parametrize("recipe", ["int4_g128_fp16", "int4_g128_asym_fp16"])
def test_quant_linear_half_scales_on_the_decode_kernel(recipe):
    """FP16 group scales reach the kernel as FP32, exactly: the layout's scales are the stored
    ones converted, and QuantLinear's kernel GEMM is within the FP32 bound of its weight."""
    from torch import nn

    from quantlib.nn.linear import QuantLinear, decode_weight, kernel_gemm
    torch.manual_seed(0)
    q = QuantLinear.from_linear(nn.Linear(256, 32), recipe)
    assert q.weight_scales.dtype == torch.float16
    dw = decode_weight(q)
    assert dw.scales.dtype == torch.float32
    assert torch.equal(dw.scales, q.weight_scales.float().reshape(32, -1).t())
    x = rand(3, 256, seed=8).to(torch.bfloat16).float()
    y = kernel_gemm(q, x, path="triton")
    assert within_fp32_bound(y, x.double(), q.qweight.dequantize().double(), q.bias.detach())
