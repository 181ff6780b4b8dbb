"""FP16/BF16 group scales (scale_format "fp16"/"bf16", recipes int4_g128_fp16 and
int4_g128_asym_fp16): codes and scales bit for bit against a plain-torch GPTQ/AWQ-style oracle
written here (torch's own float16/bfloat16 casts), over many magnitudes, FP16 saturation,
subnormal and vanishing scales, zeros and NaN/Inf groups; storage, casts and state dicts."""
import dataclasses

import pytest
import torch
from torch import nn

from quantlib.memory.inference import storage_format
from quantlib.nn.linear import QuantLinear
from quantlib.qtensor import QuantizedTensor, quantize
from quantlib.recipes import Recipe, get_recipe

FLT_MAX = torch.finfo(torch.float32).max
HALF = {"fp16": torch.float16, "bf16": torch.bfloat16}


def oracle(x, half, block=128, asym=False, wrong=None):
    """(codes (rows, K) as integers, scales (rows, K/block) in `half`) as GPTQ/AWQ compute them:
    s = fl32(amax / qmax) (asymmetric: fl32(max(x,0) - min(x,0)) / 15), cast to the half dtype
    after clamping to its max, 0 -> 1, r = 1 / float32(s_half), q = clamp(round(x * r) [+ z]).
    `wrong` picks a deliberately wrong rule, to show the comparison can fail."""
    xg = x.float().reshape(x.shape[0], -1, block)
    if asym:
        lo, hi = xg.amin(-1).clamp(max=0), xg.amax(-1).clamp(min=0)
        s32 = (hi - lo) / torch.tensor(15.0)
        s32 = torch.where(s32 == 0, torch.ones_like(s32), s32)
        bad = ~(torch.isfinite(lo) & torch.isfinite(hi))
    else:
        amax = xg.abs().amax(-1)
        s32 = amax / torch.tensor(7.0)
        s32 = torch.where((amax == 0) | (s32 == 0), torch.ones_like(s32), s32)
        bad = ~torch.isfinite(amax)              # NaN or Inf in the group: a NaN scale
    hmax = torch.finfo(half).max
    sh = (s32 if wrong == "no_saturation" else s32.clamp(max=hmax)).to(half)
    sh = torch.where(sh == 0, torch.ones_like(sh), sh)
    r = torch.clamp(1.0 / (s32 if wrong == "r_from_fp32" else sh.float()), max=FLT_MAX)
    y = torch.where(bad[..., None], 0.0, xg * r[..., None])
    if asym:
        z = torch.where(bad, 0.0, torch.round(-lo * r).clamp(0, 15))
        q = (torch.round(y) + z[..., None]).clamp(0, 15)
    else:
        z = None
        q = torch.round(y).clamp(-8, 7)
    sh = torch.where(bad, torch.tensor(float("nan"), dtype=half), sh)
    return q.reshape(x.shape).to(torch.int64), sh, z


def data(half, rows=96, seed=0):
    """Rows of normal values at magnitudes 2^e spread over the half format's range and beyond
    it, plus an all-zero row, a row with a NaN, one with +Inf, one with -Inf, and rows whose
    amax sits at the FP16 saturation point and at the vanishing-scale point."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = (-34, 24) if half == torch.float16 else (-140, 122)
    e = torch.linspace(lo, hi, rows).round()
    x = torch.randn(rows, 256, generator=g) * torch.exp2(e)[:, None]
    extra = torch.randn(8, 256, generator=g)
    extra[0] = 0.0
    extra[1, 5] = float("nan")
    extra[2, 130] = float("inf")
    extra[3, 0] = -float("inf")
    extra[4, 7] = 7 * 65504.0          # s = 65504 exactly (first group)
    extra[4, 200] = 7 * 65520.0        # s rounds past FP16's max: saturates (second group)
    extra[5, :128] *= 2.0 ** -30       # FP16: s32 < 2^-25 (rounds to 0 -> 1)
    extra[6, :128] *= 2.0 ** -17       # FP16 subnormal scales
    extra[7, :128] = 2.0 ** -25 * 7    # s32 == 2^-25: FP16 RNE tie to 0 -> 1
    return torch.cat([x, extra])


def unpacked(qt, asym):
    u = qt._codes_unpacked().to(torch.int64)
    return u if asym else torch.where(u >= 8, u - 16, u)


def bits(t):
    return t.view(torch.int16)


@pytest.mark.parametrize("sf", ["fp16", "bf16"])
@pytest.mark.parametrize("asym", [False, True], ids=["sym", "asym"])
def test_codes_and_scales_match_the_oracle(sf, asym):
    half = HALF[sf]
    r = Recipe("t", "uint4" if asym else "int4", "group", 128, scale_format=sf)
    x = data(half)
    qt = quantize(x, r)
    q, s, z = oracle(x, half, asym=asym)
    assert qt.scales.dtype == half
    assert torch.equal(bits(qt.scales), bits(s))          # NaN payloads included
    assert torch.equal(unpacked(qt, asym), q)
    if asym:
        assert torch.equal(qt.zero_point.long(), z.long())
    # the data reaches the cases named: saturation, subnormal and vanishing scales, NaN groups
    s32 = qt.scales.float()
    assert bool(torch.isnan(s32).any())
    if half == torch.float16:
        assert bool((s32 == 65504).any()) and bool((s32 < 2.0 ** -14).any())
        assert (x.abs() > 7 * 65504).any()
    assert bool((s32 == 1).any())
    # dequantize multiplies by the stored scale exactly, in float32
    deq = qt.dequantize()
    zz = 0 if not asym else z.float().repeat_interleave(128, -1)
    want = (q.float() - zz) * s.float().repeat_interleave(128, -1)
    assert torch.equal(deq.isnan(), want.isnan())
    assert torch.equal(deq.nan_to_num(), want.nan_to_num())


@pytest.mark.parametrize("wrong", ["r_from_fp32", "no_saturation"])
def test_the_oracle_comparison_can_fail(wrong):
    """A wrong rule (r from the unrounded FP32 scale, as if the half scale were stored after
    encoding; or no saturation at 65504) gives other codes or scales on the same data."""
    x = data(torch.float16)
    qt = quantize(x, "int4_g128_fp16")
    q, s, _ = oracle(x, torch.float16, wrong=wrong)
    assert not (torch.equal(unpacked(qt, False), q) and torch.equal(bits(qt.scales), bits(s)))


def test_fp32_rule_unchanged_and_half_is_its_rounding():
    """The half scale is the fp32 rule's scale rounded once: int4_g128 is untouched."""
    x = data(torch.float16)
    a, b = quantize(x, "int4_g128"), quantize(x, "int4_g128_fp16")
    ok = torch.isfinite(a.scales) & (a.scales.clamp(max=65504).half().float() != 0)
    assert torch.equal(b.scales.float()[ok], a.scales.clamp(max=65504).half().float()[ok])
    assert a.scales.dtype == torch.float32


def test_recipes_and_bits():
    g, ga = get_recipe("int4_g128_fp16"), get_recipe("int4_g128_asym_fp16")
    assert (g.element, g.block, g.scale_format) == ("int4", 128, "fp16")
    assert (ga.element, ga.block, ga.scale_format, ga.asymmetric) == ("uint4", 128, "fp16", True)
    assert g.bits_per_element() == 4 + 16 / 128                 # GPTQ's layout
    assert ga.bits_per_element() == 4 + 16 / 128 + 8 / 128      # zero point: one byte here
    x = torch.randn(64, 256)
    for r in (g, ga, dataclasses.replace(g, scale_format="bf16")):
        qt = quantize(x, r)
        assert qt.bits_per_element == r.bits_per_element((64, 256))
    assert storage_format("int4_g128_fp16").bits_per_element == 4.125
    assert get_recipe("int4_g128").bits_per_element() == 4.25    # existing recipes unchanged
    assert get_recipe("int4_g128_asym").bits_per_element() == 4.3125


def test_validation():
    Recipe("a", "uint4", "group", 128, scale_format="bf16")      # asymmetric takes half scales
    Recipe("c", "int8", "channel", scale_format="fp16")
    with pytest.raises(ValueError, match="scale_format"):
        Recipe("b", "int4", "group", 128, scale_format="fp8")
    with pytest.raises(ValueError, match="asymmetric"):
        Recipe("d", "uint4", "group", 128, scale_format="pow2")
    qt = quantize(torch.randn(4, 128), "int4_g128_fp16")
    with pytest.raises(TypeError, match="float16"):
        dataclasses.replace(qt, scales=qt.scales.float())
    q32 = quantize(torch.randn(4, 128), "int4_g128")
    with pytest.raises(TypeError, match="float32"):
        dataclasses.replace(q32, scales=q32.scales.half())


@pytest.mark.parametrize("name", ["int4_g128_fp16", "int4_g128_asym_fp16"])
def test_state_dict_round_trip(name, tmp_path):
    qt = quantize(data(torch.float16)[:, :256], name)
    torch.save(qt.state_dict(), tmp_path / "q.pt")
    back = QuantizedTensor.from_state_dict(torch.load(tmp_path / "q.pt", weights_only=True))
    assert back.recipe == qt.recipe and back.scales.dtype == torch.float16
    assert torch.equal(bits(back.scales), bits(qt.scales))
    assert torch.equal(back.codes, qt.codes)


@pytest.mark.parametrize("cast", ["half", "bfloat16", "float", "double"])
def test_quant_linear_casts_keep_half_scales(cast, tmp_path):
    lin = nn.Linear(256, 16)
    q = QuantLinear.from_linear(lin, "int4_g128_fp16")
    before = q.weight_scales.clone()
    getattr(q, cast)()
    assert q.weight_scales.dtype == torch.float16 and torch.equal(q.weight_scales, before)
    sd = q.state_dict()
    fresh = QuantLinear(256, 16, "int4_g128_fp16")
    fresh.load_state_dict(sd)
    assert torch.equal(fresh.qweight.dequantize(), q.qweight.dequantize())
    x = torch.randn(3, 256)
    ref = x @ q.qweight.dequantize().T + q.bias.float()
    assert torch.allclose(fresh.float()(x), ref, atol=1e-5)
