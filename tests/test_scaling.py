"""Scales: granularity shapes, the E8M0 rules, pow2/fp32/NVFP4 scales, the calibrator hook."""
import dataclasses
import math

import numpy as np
import pytest
import torch

from quantlib.codecs import decode
from quantlib.recipes import Recipe, get_recipe
from quantlib.scaling import (
    blocked,
    ceil_log2,
    e8m0_scale,
    e8m0_values,
    exp2i,
    fp32_scale,
    group_amax,
    max_calibrator,
    nvfp4_scale,
    pad_to_blocks,
    pow2_scale,
    scale_shape,
)

ELEMENTS = {"e4m3": (448.0, 8, 3), "e5m2": (57344.0, 15, 2), "e2m3": (7.5, 2, 3),
            "e3m2": (28.0, 4, 2), "e2m1": (6.0, 2, 1), "int8": (127 / 64, 0, 6)}


def _amaxes():
    """Powers of two, their float32 neighbours, random values over the whole range, zero."""
    rng = np.random.default_rng(0)
    p2 = [2.0 ** k for k in range(-140, 128, 3)]
    vals = p2 + [np.nextafter(np.float32(v), np.float32(np.inf)) for v in p2[:-1]]
    vals += [np.nextafter(np.float32(v), np.float32(0)) for v in p2]
    vals += list(np.float32(2.0) ** rng.uniform(-130, 127, 400))
    vals += [480.0, 448.0, 6.0, 7.5, 28.0, 57344.0, 1.984375, 0.0, 1e-45, 3.4e38]
    return torch.tensor(np.array(vals, dtype=np.float32))


def _e8m0_oracle(a: float, rule: str, qmax: float, emax: int, mbits: int) -> int:
    """The scale byte from math.frexp on Python floats (independent of the bit tricks)."""
    if a == 0 and rule != "rceil":
        return 0
    if rule == "rceil":
        d = float(np.float32(a) / np.float32(qmax))
        if d == 0:
            return 0
        m, e = math.frexp(d)
        e = e - 1 if m == 0.5 else e
    else:
        m, e = math.frexp(a)                       # a = m 2^e, m in [0.5, 1)
        e -= 1                                     # floor(log2 a) (fp32 subnormals: exact too)
        sig = 2 * m                                # significand in [1, 2)
        if rule == "ceil" and sig != 1.0:
            e += 1
        if rule == "even" and sig >= 2 - 2.0 ** -(mbits + 1):
            e += 1
        e -= emax
    return min(max(e, -127), 127) + 127


@pytest.mark.parametrize("rule", ["floor", "ceil", "even", "rceil"])
@pytest.mark.parametrize("elem", list(ELEMENTS))
def test_e8m0_rules_match_frexp_oracle(rule, elem):
    qmax, emax, mbits = ELEMENTS[elem]
    amax = _amaxes()
    # Exclude fp32 subnormal amax from the floor/ceil/even oracle, where "floor(log2)" and the
    # exponent field differ; they all clamp to byte 0 anyway (checked below).
    keep = (amax >= 2.0 ** -126) | (amax == 0) if rule != "rceil" else amax >= 0
    amax = amax[keep]
    b, s, r = e8m0_scale(amax, elem, rule)
    want = [_e8m0_oracle(a, rule, qmax, emax, mbits) for a in amax.tolist()]
    assert b.tolist() == want
    assert torch.equal(s, e8m0_values(b))
    assert torch.all(s * r == 1.0)


@pytest.mark.parametrize("rule", ["floor", "ceil", "even"])
def test_e8m0_subnormal_amax_clamps_to_byte_0_or_1(rule):
    b, _, _ = e8m0_scale(torch.tensor([1e-45, 1e-40, 5e-39]), "e4m3", rule)
    assert b.tolist() == [0, 0, 0]


def test_e8m0_published_corner_cases():
    # a block of 480s in MXFP8 E4M3: FLOOR -> 2^0 (byte 127), RCEIL -> 2^1 (byte 128)
    assert e8m0_scale(torch.tensor([480.0]), "e4m3", "floor")[0].item() == 127
    assert e8m0_scale(torch.tensor([480.0]), "e4m3", "rceil")[0].item() == 128
    for rule in ("floor", "ceil", "even", "rceil"):
        assert e8m0_scale(torch.tensor([0.0]), "e2m1", rule)[0].item() == 0   # zero block
    b, s, _ = e8m0_scale(torch.tensor([float("nan"), float("inf")]), "e2m1", "floor", nonfinite="nan")
    assert b.tolist() == [255, 255] and torch.isnan(s).all()


def test_e8m0_values_against_ml_dtypes():
    ml = pytest.importorskip("ml_dtypes")
    b = torch.arange(256, dtype=torch.uint8)
    want = b.numpy().view(ml.float8_e8m0fnu).astype(np.float32)
    got = e8m0_values(b).numpy()
    assert np.array_equal(got, want, equal_nan=True)


def test_exp2i_exact_and_ceil_log2():
    k = torch.arange(-127, 128)
    assert exp2i(k).tolist() == [math.ldexp(1.0, i) for i in range(-127, 128)]
    p = exp2i(torch.arange(-120, 120))
    assert torch.equal(ceil_log2(p), torch.arange(-120, 120, dtype=torch.int32))
    up = torch.nextafter(p, torch.tensor(float("inf")))
    assert torch.equal(ceil_log2(up), torch.arange(-119, 121, dtype=torch.int32))


def test_fp32_scale_guards():
    s, r = fp32_scale(torch.tensor([0.0, 448.0, 1e-44]), 448.0)
    assert s.tolist()[:2] == [1.0, 1.0]
    assert torch.isfinite(r).all() and r[0] == 1.0


def test_pow2_scale_rounds_up_so_nothing_saturates():
    amax = _amaxes()
    amax = amax[(amax > 1e-30) & (amax < 1e35)]
    s, r = pow2_scale(amax, 448.0)
    m, _ = torch.frexp(s)
    assert torch.all(m == 0.5)                              # powers of two
    assert torch.all(amax / s <= 448.0) and torch.all(amax / (s / 2) > 448.0)
    assert torch.all(s * r == 1.0)
    assert pow2_scale(torch.tensor([0.0]), 448.0)[0].item() == 1.0


def test_nvfp4_scale_reproduces_block_amax():
    torch.manual_seed(0)
    x = torch.randn(64, 256) * torch.logspace(-3, 3, 64).unsqueeze(1)
    amax_b = x.reshape(64, 16, 16).abs().amax(-1)
    code_b, s_t, t_b, r = nvfp4_scale(amax_b, amax_b.amax(), 6.0)
    assert s_t.item() == np.float32(amax_b.amax().item()) / np.float32(2688.0)
    rec = decode(code_b, "e4m3") * 6 * s_t
    ok = (amax_b / s_t / 6) >= 2.0 ** -6                   # E4M3 normal range: relative 2^-4
    assert torch.all(((rec - amax_b).abs() / amax_b)[ok] <= 2.0 ** -4)
    assert torch.equal(r, torch.clamp(1.0 / t_b, max=torch.finfo(torch.float32).max))


def test_nvfp4_scale_zero_tensor_guard():
    code_b, s_t, _t_b, r = nvfp4_scale(torch.zeros(4), torch.tensor(0.0), 6.0)
    assert s_t.item() == 1.0 and code_b.tolist() == [0] * 4
    assert torch.all(r == torch.finfo(torch.float32).max)  # no lower clamp: 1/0 capped


@pytest.mark.parametrize("name, shape, want", [
    ("fp8_e4m3_tensor", (6, 10), ()),
    ("fp8_e4m3_rowwise", (2, 3, 10), (2, 3, 1)),
    ("int8_channel", (6, 10), (6, 1)),
    ("mxfp4", (2, 3, 64), (2, 3, 2)),
    ("fp8_e4m3_128x128", (2, 128, 256), (2, 2)),
])
def test_scale_shapes(name, shape, want):
    r = get_recipe(name)
    assert scale_shape(r, shape) == want
    x = torch.randn(shape)
    xb, dims = blocked(pad_to_blocks(x, r), r)
    assert group_amax(xb, dims).reshape(want).shape == want


def test_channel_axis_and_block2d_amax_match_loops():
    torch.manual_seed(1)
    x = torch.randn(4, 5, 6)
    r = Recipe("c1", "int8", "channel", axis=1)
    xb, dims = blocked(x, r)
    assert torch.equal(group_amax(xb, dims).reshape(5), x.abs().amax((0, 2)))
    y = torch.randn(8, 12)
    r2 = Recipe("b", "e4m3", "block2d", (4, 3))
    xb, dims = blocked(y, r2)
    a = group_amax(xb, dims).reshape(2, 4)
    loop = torch.tensor([[y[4 * i:4 * i + 4, 3 * j:3 * j + 3].abs().max() for j in range(4)]
                         for i in range(2)])
    assert torch.equal(a, loop)


def test_calibrator_hook_gets_one_row_per_scale():
    seen = []

    def half_max(rows, dim):
        seen.append(tuple(rows.shape))
        return max_calibrator(rows, dim) / 2

    torch.manual_seed(2)
    x = torch.randn(8, 64)
    r = dataclasses.replace(get_recipe("int4_g128"), block=32, calibrator=half_max)
    xb, dims = blocked(x, r)
    assert torch.equal(group_amax(xb, dims, r.calibrator).reshape(8, 2),
                       x.reshape(8, 2, 32).abs().amax(-1) / 2)
    assert seen == [(16, 32)]
    r2 = Recipe("b", "e4m3", "block2d", (4, 32), calibrator=half_max)
    xb, dims = blocked(x, r2)
    group_amax(xb, dims, r2.calibrator)
    assert seen[-1] == (4, 128)


def test_pad_to_blocks_error_and_padding():
    r = get_recipe("mxfp4")
    with pytest.raises(ValueError, match="pad=True"):
        pad_to_blocks(torch.zeros(3, 40), r)
    p = pad_to_blocks(torch.ones(3, 40), dataclasses.replace(r, pad=True))
    assert p.shape == (3, 64) and p[:, 40:].abs().sum() == 0
