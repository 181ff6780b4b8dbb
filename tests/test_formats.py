"""Formats: every derived property against ml_dtypes' and torch's finfo/iinfo, look-up, tables."""
import math

import ml_dtypes
import numpy as np
import pytest
import torch

import quantlib
from quantlib.formats import FORMATS, Format, compare_formats, get_format, value_table

FLOATS = ["fp32", "fp16", "bf16", "e4m3", "e5m2", "e2m3", "e3m2", "e2m1", "e8m0"]
INTS = ["int8", "int4", "uint8", "uint4"]


@pytest.mark.parametrize("name", FLOATS)
def test_float_properties_match_ml_dtypes_finfo(name):
    f = get_format(name)
    fi = ml_dtypes.finfo(f.ml_dtype)
    assert f.bits == fi.bits
    assert f.mbits == fi.nmant
    assert f.max == float(fi.max)
    assert f.min == float(fi.min)
    assert f.min_normal == float(fi.smallest_normal)
    assert f.eps == float(fi.eps)
    if f.subnormals:
        assert f.min_subnormal == float(fi.smallest_subnormal)
    else:
        assert f.min_subnormal is None


@pytest.mark.parametrize("name", ["fp32", "fp16", "bf16", "e4m3", "e5m2", "e8m0"])
def test_float_properties_match_torch_finfo(name):
    f = get_format(name)
    fi = torch.finfo(f.torch_dtype)
    assert (f.bits, f.max, f.min, f.min_normal, f.eps) == \
        (fi.bits, fi.max, fi.min, fi.smallest_normal, fi.eps)


@pytest.mark.parametrize("name", INTS)
def test_int_properties_match_iinfo(name):
    f = get_format(name)
    ii = ml_dtypes.iinfo(f.ml_dtype)
    assert (f.bits, f.max, f.min) == (ii.bits, ii.max, ii.min)
    assert f.eps == 1.0 and f.num_finite == 2 ** f.bits


@pytest.mark.parametrize("name", [n for n in FLOATS if n != "fp32"])
def test_num_finite_counts_decoded_codes(name):
    f = get_format(name)
    codes = np.arange(2 ** f.bits, dtype=np.uint16 if f.bits == 16 else np.uint8)
    values = codes.view(f.ml_dtype)
    assert f.num_finite == int(np.isfinite(values.astype(np.float32)).sum())


# The specification table (REFERENCE.md): values typed from the specs, checked against our fields.
SPEC = [  # name, max, min normal, min subnormal, Inf, NaN
    ("fp32", 3.4028234663852886e38, 2.0 ** -126, 2.0 ** -149, True, True),
    ("fp16", 65504.0, 2.0 ** -14, 2.0 ** -24, True, True),
    ("bf16", 3.3895313892515355e38, 2.0 ** -126, 2.0 ** -133, True, True),
    ("e4m3", 448.0, 2.0 ** -6, 2.0 ** -9, False, True),
    ("e5m2", 57344.0, 2.0 ** -14, 2.0 ** -16, True, True),
    ("e2m3", 7.5, 1.0, 0.125, False, False),
    ("e3m2", 28.0, 0.25, 0.0625, False, False),
    ("e2m1", 6.0, 1.0, 0.5, False, False),
    ("e8m0", 2.0 ** 127, 2.0 ** -127, None, False, True),
]


@pytest.mark.parametrize("name,mx,mn,ms,inf,nan", SPEC)
def test_spec_table(name, mx, mn, ms, inf, nan):
    f = get_format(name)
    assert (f.max, f.min_normal, f.min_subnormal, f.has_inf, f.has_nan) == (mx, mn, ms, inf, nan)


def test_derived_figures():
    e4m3, e5m2 = get_format("e4m3"), get_format("e5m2")
    assert e4m3.binades == pytest.approx(math.log2(448 * 2 ** 9))
    assert e5m2.binades == pytest.approx(math.log2(57344 * 2 ** 16))
    assert get_format("fp32").decimal_digits == pytest.approx(24 * math.log10(2))
    assert get_format("e8m0").signed is False and get_format("e8m0").min == 2.0 ** -127
    assert [FORMATS[n].default_overflow for n in ("fp32", "bf16", "e5m2")] == ["nonfinite"] * 3
    assert [FORMATS[n].default_overflow for n in ("e4m3", "e2m1", "e2m3", "int4")] == \
        ["saturate"] * 4


LOOKUPS = [
    ("e4m3", "e4m3"), ("fp8_e4m3", "e4m3"), ("FP8-E4M3", "e4m3"), ("float8_e4m3fn", "e4m3"),
    ("torch.float8_e4m3fn", "e4m3"), (torch.float8_e4m3fn, "e4m3"),
    (ml_dtypes.float8_e4m3fn, "e4m3"), (np.dtype(ml_dtypes.float8_e5m2), "e5m2"),
    (torch.float8_e5m2, "e5m2"), ("bfloat16", "bf16"), (torch.bfloat16, "bf16"),
    (ml_dtypes.bfloat16, "bf16"), (np.float32, "fp32"), (torch.float32, "fp32"),
    (torch.float16, "fp16"), ("half", "fp16"), (ml_dtypes.float4_e2m1fn, "e2m1"),
    (torch.float4_e2m1fn_x2, "e2m1"), ("fp6_e3m2", "e3m2"), (ml_dtypes.float6_e2m3fn, "e2m3"),
    (torch.float8_e8m0fnu, "e8m0"), (ml_dtypes.float8_e8m0fnu, "e8m0"), (ml_dtypes.int4, "int4"),
    (torch.int8, "int8"), (np.uint8, "uint8"), ("uint4", "uint4"),
]


@pytest.mark.parametrize("key,name", LOOKUPS)
def test_lookup(key, name):
    assert get_format(key) is FORMATS[name]


def test_lookup_passes_formats_and_dtypes_round_trip():
    for f in FORMATS.values():
        assert get_format(f) is f
        if f.torch_dtype is not None and f.name != "e2m1":
            assert get_format(f.torch_dtype) is f
        assert get_format(f.ml_dtype) is f


def test_lookup_errors():
    with pytest.raises(ValueError, match="unknown format 'e9m9'.*e4m3"):
        get_format("e9m9")
    with pytest.raises(ValueError, match="not one of quantlib's formats"):
        get_format(torch.int16)
    with pytest.raises(TypeError, match="cannot read a format"):
        get_format(3.5)


def test_value_table_e2m1_and_e4m3():
    t = value_table("e2m1")
    assert len(t) == 16
    assert t.column("value")[:8] == [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    assert t.column("bits")[7] == "0.11.1"
    e4 = value_table("e4m3").to_dicts()
    assert e4[0x7E]["value"] == 448.0 and math.isnan(e4[0x7F]["value"])
    assert e4[0x01]["class"] == "subnormal" and e4[0x08]["class"] == "normal"
    assert [r["value"] for r in value_table("int4").to_dicts()][8:] == list(range(-8, 0))


def test_value_table_matches_ml_dtypes_for_every_small_format():
    for f in FORMATS.values():
        if f.bits > 8:
            continue
        ref = np.arange(f.num_codes, dtype=np.uint8).view(f.ml_dtype).astype(np.float32)
        ours = np.array(value_table(f).column("value"), dtype=np.float32)
        np.testing.assert_array_equal(ours, ref)


def test_value_table_refuses_wide_formats():
    with pytest.raises(ValueError, match="at most 8 bits"):
        value_table("bf16")


def test_compare_formats_is_the_seed_table_computed():
    t = compare_formats()
    assert t.column("format") == ["FP32", "FP16", "BF16", "FP8 E4M3", "FP8 E5M2", "FP4 E2M1"]
    assert t.column("max") == [float(np.finfo(np.float32).max), 65504.0,
                               float(ml_dtypes.finfo(ml_dtypes.bfloat16).max), 448.0, 57344.0, 6.0]
    assert t.column("memory vs FP32") == [1.0, 0.5, 0.5, 0.25, 0.25, 0.125]
    assert [round(d) for d in t.column("decimal digits")] == [7, 3, 2, 1, 1, 1]
    assert compare_formats(["int8", "e8m0"]).column("bits") == [8, 8]


def test_public_names():
    for n in ("Format", "get_format", "FORMATS", "value_table", "compare_formats"):
        assert hasattr(quantlib, n)
    assert isinstance(quantlib.FORMATS["e4m3"], Format)
