"""The one-pass quantize paths against their reference twins, bit for bit, on the interpreter
(or a GPU): a given tensor amax (per-tensor FP8, NVFP4) and the fused quantize + transpose."""
import dataclasses
import itertools

import pytest
import torch

pytest.importorskip("triton")

import quantlib.kernels as K
from quantlib.kernels import reference
from quantlib.kernels.dispatch import quiet
from quantlib.recipes import get_recipe
from test_kernels_quantize import same  # NaN-aware equality of codes, scales and outputs

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def planted(R, C, seed=0, nonfinite=True):
    """Normal data over many magnitudes with subnormals, ties, and NaN/Inf in a few rows."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(R, C, generator=g) * torch.exp2(
        torch.randint(-6, 7, (R, 1), generator=g).float())
    x[1] *= 1e-39
    x[3, : C // 2] = 0.0
    x[5] = torch.linspace(-464.0, 464.0, C)
    if nonfinite:
        x[6, 3] = float("nan")
        x[R - 2, C - 5] = float("inf")
        x[9, 0] = -float("inf")
    return x.to(DEV)


def assert_same_qt(a, b):
    assert a.codes.shape == b.codes.shape, (a.codes.shape, b.codes.shape)
    assert torch.equal(a.codes, b.codes), f"{int((a.codes != b.codes).sum())} codes differ"
    assert same(a.scales, b.scales), "scales differ"
    assert same(a.tensor_scale, b.tensor_scale), "tensor scales differ"
    assert a.shape == b.shape and a.dtype == b.dtype and a.recipe == b.recipe


# ---- given amax ----------------------------------------------------------------------------
AMAX_CASES = [("fp8_e4m3_tensor", torch.float32), ("fp8_e4m3_tensor", torch.bfloat16),
              ("fp8_e5m2_tensor", torch.float16), ("nvfp4", torch.bfloat16),
              ("nvfp4", torch.float32)]


@pytest.mark.parametrize(("name", "dtype"), AMAX_CASES)
@pytest.mark.parametrize("which", ["true", "half", "zero", "nan", "negative", "inf"])
def test_given_amax_matches_reference(name, dtype, which):
    x = planted(24, 96, nonfinite=False).to(dtype)
    true = x.float().abs().amax()
    amax = {"true": true, "half": true / 2, "zero": true * 0, "nan": true * float("nan"),
            "negative": -true, "inf": true * float("inf")}[which]
    q = K.nvfp4_quantize if name == "nvfp4" else K.fp8_quantize
    got = q(x, name, path="triton", amax=amax)
    assert_same_qt(got, reference.quantize_ref(x, name, amax=amax))
    if which == "true":      # the caller's amax equal to x's: the two-pass result exactly
        assert_same_qt(got, q(x, name, path="triton"))
    if which == "half":      # beyond the given amax: saturation (NVFP4: of the E4M3 block scale)
        part = got.scales if name == "nvfp4" else got.codes
        assert int((part & 0x7F).max()) == (0x7B if "e5m2" in name else 0x7E)


def test_given_amax_pow2_and_nonfinite_input():
    r = dataclasses.replace(get_recipe("fp8_e4m3_tensor"), scale_format="pow2", name="t_pow2")
    x = planted(16, 64)                           # NaN/Inf in x do not touch a given amax
    amax = torch.tensor(3.0, device=DEV)
    assert_same_qt(K.fp8_quantize(x, r, path="triton", amax=amax),
                   reference.quantize_ref(x, r, amax=amax))


def test_given_amax_refusals():
    x = planted(8, 128, nonfinite=False)
    a = torch.tensor(1.0, device=DEV)
    with pytest.raises(ValueError, match="amax= is for recipes"):
        K.fp8_quantize(x, "fp8_e4m3_1x128", amax=a)
    with pytest.raises(TypeError, match="one-element torch.Tensor"):
        K.fp8_quantize(x, "fp8_e4m3_tensor", amax=1.0)
    with pytest.raises(ValueError, match="one-element float"):
        K.fp8_quantize(x, "fp8_e4m3_tensor", amax=torch.ones(2, device=DEV))
    if DEV == "cuda":
        with pytest.raises(ValueError, match="device"):
            K.fp8_quantize(x, "fp8_e4m3_tensor", amax=a.cpu())


# ---- quantize + transpose -------------------------------------------------------------------
def _rec(name, **kw):
    r = get_recipe(name)
    return dataclasses.replace(r, name=r.name + "_t", **kw) if kw else r


T_CASES = [  # (recipe, dtype, shape): shapes that are not whole tiles, NaN/Inf planted
    (_rec("fp8_e4m3_tensor"), torch.bfloat16, (70, 100)),
    (_rec("fp8_e5m2_tensor"), torch.float32, (33, 64)),
    (_rec("fp8_e4m3_1x128", pad=True), torch.bfloat16, (136, 200)),
    (_rec("fp8_e5m2_1x128"), torch.float16, (128, 256)),
    (_rec("fp8_e4m3_1x128", block=32, pad=True), torch.float32, (72, 40)),
    (_rec("fp8_e4m3_1x128", block=16, scale_format="pow2"), torch.bfloat16, (32, 48)),
    (_rec("fp8_e4m3_128x128", pad=True), torch.bfloat16, (136, 256)),
    (_rec("fp8_e4m3_128x128", block=(16, 16), pad=True), torch.float32, (40, 70)),
    (_rec("fp8_e4m3_rowwise"), torch.bfloat16, (24, 80)),        # two calls (not one read)
]


@pytest.mark.parametrize(("r", "dtype", "shape"), T_CASES, ids=lambda v: getattr(v, "name", None))
def test_quantize_transpose_matches_reference(r, dtype, shape):
    x = planted(*shape).to(dtype)
    q, qt = K.fp8_quantize_transpose(x, r, path="triton")
    rq, rqt = reference.quantize_transpose_ref(x, r)
    assert_same_qt(q, rq)
    assert_same_qt(qt, rqt)


def test_quantize_transpose_given_amax_and_small_tile():
    from quantlib.kernels import _quantize_t as kt
    x = planted(50, 90, nonfinite=False)
    a = x.abs().amax() * 0.5
    q, qt = K.fp8_quantize_transpose(x, "fp8_e4m3_tensor", path="triton", amax=a)
    rq, rqt = reference.quantize_transpose_ref(x, "fp8_e4m3_tensor", amax=a)
    assert_same_qt(q, rq)
    assert_same_qt(qt, rqt)
    r = _rec("fp8_e4m3_1x128", block=16, pad=True)   # T = 32: two 16-groups per tile side
    x = planted(40, 72)
    with quiet():
        (c, s), (ct, st) = kt.quantize_transpose(x, r, tile=32)
    rq, rqt = reference.quantize_transpose_ref(x, r)
    assert torch.equal(c, rq.codes) and same(s, rq.scales)
    assert torch.equal(ct, rqt.codes) and same(st, rqt.scales)


def test_quantize_transpose_refusals():
    with pytest.raises(ValueError, match="2-D"):
        K.fp8_quantize_transpose(torch.zeros(2, 3, 128, device=DEV))
    with pytest.raises(ValueError, match="fp8_quantize_transpose takes recipes"):
        K.fp8_quantize_transpose(torch.zeros(4, 128, device=DEV), "nvfp4")


# ---- persistent FP8 GEMM -----------------------------------------------------------------------
PMM_CASES = [("fp8_e4m3_tensor", "fp8_e4m3_tensor", 208),
             ("fp8_e4m3_rowwise", "fp8_e5m2_rowwise", 256),
             ("fp8_e4m3_1x128", "fp8_e4m3_128x128", 256)]


@pytest.mark.parametrize(("ra", "rb", "Kd"), PMM_CASES)
def test_persistent_gemm_same_bits_as_tiled(ra, rb, Kd):
    """The persistent kernels (fewer programs than tiles, grouped order; pointer or TMA
    descriptor loads) give the tiled kernel's bits, within the FP32-accumulation bound of
    float64 (the FP8 tensor-core term applies on a GPU only, not here)."""
    from quantlib.kernels import _gemm
    rb = dataclasses.replace(get_recipe(rb), pad=True)
    g = torch.Generator().manual_seed(4)
    xa, xb = torch.randn(70, Kd, generator=g).to(DEV), torch.randn(100, Kd, generator=g).to(DEV)
    if ra != "fp8_e4m3_tensor":      # a NaN poisons its row (group); per tensor: everything
        xa[3, 7] = float("nan")
    a, b = K.fp8_quantize(xa, ra), K.fp8_quantize(xb, rb)
    bias = torch.randn(100, generator=g).to(DEV)
    sa, ka, bwa = K._mm_scales(a, "a")
    sb, kb, bwb = K._mm_scales(b, "b")
    outs = {}
    for kind in ("tiled", "persistent", "tma", "tma_lag"):
        for out in (torch.float32, torch.bfloat16):
            with quiet():
                outs[kind, out] = _gemm.fp8_mm(
                    a.codes, b.codes, sa.contiguous(), sb.contiguous(), a.recipe.element,
                    b.recipe.element, ka, kb, bwa or bwb, bias=bias, out_dtype=out,
                    config=(32, 32, 128, 2, 4, 1, kind))
    kinds = ("persistent", "tma", "tma_lag")
    for out, kind in itertools.product((torch.float32, torch.bfloat16), kinds):
        p, t = outs[kind, out], outs["tiled", out]
        assert torch.equal(p.isnan(), t.isnan())
        assert bool(p.isnan().any()) == (ra != "fp8_e4m3_tensor")
        assert torch.equal(p.nan_to_num(), t.nan_to_num())
    ref = K.fp8_scaled_mm(a, b, bias=bias, out_dtype=torch.float32, path="reference")
    assert torch.equal(outs["persistent", torch.float32].isnan(), ref.isnan())
    ok = ~ref.isnan()
    a64, b64 = a.dequantize().double().nan_to_num(), b.dequantize().double().nan_to_num()
    err = (outs["tma", torch.float32].double() - (a64 @ b64.T + bias.double())).abs()
    bound = ((a64.abs() @ b64.abs().T) * (Kd * 2.0 ** -23) + 2.0 ** -23 * bias.double().abs()
             + 1e-30)
    assert float((err[ok] / bound[ok]).max()) <= 1.0


# ---- dequantize: packed bytes read once, scales once per group ---------------------------------
DQ_RECIPES = ["fp8_e4m3_tensor", "fp8_e5m2_rowwise", "fp8_e4m3_1x128", "fp8_e4m3_128x128",
              "nvfp4", "mxfp4", "mxfp8_e4m3", "mxfp6_e2m3", _rec("fp8_e4m3_1x128", block=512)]


@pytest.mark.parametrize("name", DQ_RECIPES, ids=lambda v: getattr(v, "name", v))
@pytest.mark.parametrize("shape", [(33, 300), (7, 40)])
def test_dequantize_bit_exact_odd_shapes(name, shape):
    r = dataclasses.replace(get_recipe(name), pad=True)
    x = planted(*shape, nonfinite=shape[0] > 10)
    qt = reference.quantize_ref(x, r)
    for dt in (torch.float32, torch.bfloat16, torch.float16):
        fn = {"e4m3": K.nvfp4_dequantize, "e8m0": K.mx_dequantize}.get(r.scale_format,
                                                                        K.fp8_dequantize)
        assert same(fn(qt, dt, path="triton"), qt.dequantize(dt)), dt


@pytest.mark.parametrize("name", ["fp8_e4m3_tensor", "fp8_e4m3_1x128", "fp8_e4m3_128x128",
                                  "fp8_e4m3_rowwise"])
@pytest.mark.parametrize("nan", [False, True])
def test_quantize_transpose_returns_amax(name, nan):
    r = dataclasses.replace(get_recipe(name), pad=True)
    x = planted(136, 200, nonfinite=False).to(torch.bfloat16)
    if nan:
        x[7, 9] = float("nan")
    given = {"amax": torch.tensor(2.0, device=DEV)} if name.endswith("tensor") else {}
    q, qt, a = K.fp8_quantize_transpose(x, r, path="triton", return_amax=True, **given)
    want = x.float().abs().amax()
    assert a.dtype == torch.float32 and a.shape == ()
    assert (bool(a.isnan()) and nan) or (not nan and float(a) == float(want))
    rq, rqt = reference.quantize_transpose_ref(x, r, **given)
    assert_same_qt(q, rq)
    assert_same_qt(qt, rqt)
