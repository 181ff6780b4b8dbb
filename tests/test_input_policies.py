"""Bad or extreme input to the core API: a clear error or the documented result, never a
silently wrong one (float64 rounding, ranges near FP32's limits, codes wider than their format,
impossible recipes, non-numbers, NaN in metrics)."""
from fractions import Fraction

import numpy as np
import pytest
import torch

from quantlib import decode, encode, get_recipe, qsnr, quantize, round_to_format
from quantlib.codecs import float64_to_float32_odd
from quantlib.packing import pack_nibbles, unpack_nibbles
from quantlib.qtensor import QuantizedTensor
from quantlib.recipes import Recipe


def test_float64_input_is_rounded_once():
    """float64 -> float32 -> format would round twice (2.5000000001 -> 2.5 -> tie -> 2); the
    codecs round the float64 value itself, in every mode."""
    assert float(round_to_format(np.array([2.5000000001]), "e2m1")[0]) == 3.0
    assert float(round_to_format(np.array([0.99999999999]), "e4m3", rounding="rtz")[0]) == 0.9375
    assert float(round_to_format(np.array([126.9999999999]), "int8", rounding="rtz")[0]) == 126
    x = np.random.default_rng(0).standard_normal(300) * 10
    for fmt in ("bf16", "e4m3", "e5m2"):
        codes = encode(x, fmt).astype(np.int64)
        got = decode(codes, fmt)
        for v, c, g in zip(x, codes, got):               # no neighbour code is nearer to v
            for n in decode(np.array([c - 1, c + 1]).astype(codes.dtype if fmt != "bf16"
                                                           else np.uint16), fmt):
                if np.isfinite(n):
                    assert abs(Fraction(float(v)) - Fraction(float(g))) <= \
                        abs(Fraction(float(v)) - Fraction(float(n)))


def test_round_to_odd_helper():
    x = torch.tensor([1.0, 1 + 2.0 ** -30, -(1 + 2.0 ** -30), 1e39, -1e39, float("inf"),
                      float("nan"), 2.0 ** -160, 0.0], dtype=torch.float64)
    t = float64_to_float32_odd(x)
    bits = t.view(torch.int32)
    assert t[0] == 1.0                                   # exact values stay
    assert (bits[1] & 1) == 1 and t[1] > 1.0 and float(t[1]) < 1 + 2.0 ** -22
    assert t[2] == -t[1]
    assert t[3] == torch.finfo(torch.float32).max and t[4] == -t[3]     # never Inf
    assert torch.isinf(t[5]) and torch.isnan(t[6])
    assert t[7] == 2.0 ** -149 and t[8] == 0.0           # below the last subnormal: odd = it


def test_huge_finite_input_is_not_nan():
    x = torch.tensor([[1e39, -2.0, 0.5, 3.0]], dtype=torch.float64)
    q = quantize(x, "int8_tensor")            # 1e39 saturates to FP32's max, not Inf -> NaN
    assert torch.isfinite(q.scales).all() and int(q.codes[0, 0]) == 127
    a = quantize(torch.tensor([[2e38, -2e38, 1.0, 0.5]]), "int8_channel_asym")
    assert torch.isfinite(a.scales).all() and torch.isfinite(a.dequantize()).all()


def test_impossible_recipes_are_refused():
    with pytest.raises(ValueError, match="at most 8 bits"):
        Recipe("r", "bf16", "group", 16, scale_format="e4m3")
    with pytest.raises(ValueError, match="out of range"):
        quantize(torch.randn(4, 8), Recipe("c", "int8", "channel", axis=2))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        quantize(torch.randn(8), "int8_channel")


def test_codes_wider_than_the_format_are_refused():
    with pytest.raises(ValueError, match="outside"):
        decode(torch.tensor([256, 0x138]), "e4m3")
    with pytest.raises(ValueError, match="outside"):
        decode([300], "uint8")
    with pytest.raises(ValueError, match="outside"):
        decode(torch.tensor([0x13C00], dtype=torch.int32), "fp16")
    assert float(decode(torch.tensor([0x3C00], dtype=torch.int32), "fp16")) == 1.0
    assert float(decode(torch.tensor([-1], dtype=torch.int64), "fp16").isnan()) == 1.0  # 0xFFFF


def test_non_numbers_are_refused():
    for bad in (None, "1.5", [1.0, None], np.array([1 + 2j]), torch.tensor([1 + 2j])):
        with pytest.raises(TypeError, match="real numbers"):
            encode(bad, "e4m3")
    q = quantize(torch.randn(4, 32), "nvfp4")
    for bad in (torch.int8, "float16"):
        with pytest.raises(TypeError, match="floating torch dtype"):
            q.dequantize(bad)


def test_metrics_on_nan_and_swapped_arguments():
    assert np.isnan(qsnr(torch.tensor([1.0, float("nan")]), torch.tensor([1.0, 1.0])))
    x = torch.randn(4, 32)
    q = quantize(x, "nvfp4")
    assert qsnr(x, q) == qsnr(x, q.dequantize())
    with pytest.raises(TypeError, match="swap"):
        qsnr(q, x)


def test_fp8_input_round_trips_through_state_dict():
    q = quantize(torch.randn(4, 32).to(torch.float8_e4m3fn), "nvfp4")
    r = QuantizedTensor.from_state_dict(q.state_dict())
    assert r.dtype == torch.float8_e4m3fn and torch.equal(r.codes, q.codes)


def test_packing_takes_any_numpy_layout():
    a = np.arange(16, dtype=np.uint8)[::-1]              # negative strides
    assert np.array_equal(unpack_nibbles(pack_nibbles(a)), a)
    with pytest.raises(TypeError, match="uint8"):
        pack_nibbles([1, 2])
    assert get_recipe("nvfp4").format.bits == 4


def test_calibrator_answers_are_checked():
    import dataclasses
    base = get_recipe("int8_rowwise")
    x = torch.randn(4, 8)
    for cal, err in [(lambda rows, d: rows.abs().amax(), ValueError),       # one for all rows
                     (lambda rows, d: [1.0] * rows.shape[0], TypeError),
                     (lambda rows, d: -rows.abs().amax(d), ValueError)]:
        with pytest.raises(err, match="calibrator|amax"):
            quantize(x, dataclasses.replace(base, calibrator=cal))


def test_big_endian_codes_decode():
    assert float(decode(np.array([0x3C00], dtype=">u2"), "fp16")[0]) == 1.0
