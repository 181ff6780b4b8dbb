"""quantlib.explain: the tables that take numbers apart, checked against ml_dtypes and torch casts
and against values worked out by hand from the format definitions."""
import math

import ml_dtypes
import numpy as np
import pytest
import torch

from quantlib import FORMATS, get_format
from quantlib.explain import (
    ANATOMY_FORMATS,
    code_grid,
    compare_casts,
    fields,
    range_report,
    rounding_table,
    special_values,
    split_code,
    take_apart,
)


def ml_round(x, fmt):
    """ml_dtypes' RNE cast of x to a format, back to float."""
    return float(np.array([x], np.float32).astype(get_format(fmt).ml_dtype).astype(np.float64)[0])


@pytest.mark.parametrize("name", list(FORMATS))
def test_fields_cover_every_bit(name):
    f = get_format(name)
    assert sum(n for _, n in fields(f)) == f.bits


def test_fields_of_known_formats():
    assert fields("fp32") == [("sign", 1), ("exponent", 8), ("mantissa", 23)]
    assert fields("e2m1") == [("sign", 1), ("exponent", 2), ("mantissa", 1)]
    assert fields("e8m0") == [("exponent", 8)]
    assert fields("int4") == [("integer", 4)]


@pytest.mark.parametrize("name", ["e4m3", "e5m2", "e2m3", "e2m1", "e8m0"])
def test_split_code_reassembles_every_code(name):
    f = get_format(name)
    for code in range(f.num_codes):
        parts, back, shift = split_code(code, f), 0, f.bits
        for field, n in fields(f):
            shift -= n
            back |= parts[field] << shift
        assert back == code


def test_take_apart_matches_ml_dtypes_and_the_fp8_primer():
    t = take_apart(0.3952)
    rows = {r["format"]: r for r in t.to_dicts()}
    assert list(rows) == [get_format(n).title for n in ANATOMY_FORMATS]
    for name in ANATOMY_FORMATS:
        f, r = get_format(name), rows[get_format(name).title]
        assert r["stored value"] == ml_round(0.3952, f), f.title
        code = int(np.array([0.3952], np.float32).astype(f.ml_dtype).view(np.uint8 if f.bits <= 8
                   else np.uint16 if f.bits == 16 else np.uint32)[0])
        assert r["sign"] + r["exponent"] + r["mantissa"] == format(code, f"0{f.bits}b")
        assert r["error"] == pytest.approx(r["stored value"] - 0.3952, abs=1e-12)
        # the formula column, evaluated, gives the stored value
        assert eval(r["formula"].replace("^", "**").replace(" x ", " * ")) == r["stored value"]
    # TransformerEngine's FP8 primer: 0.3952 is stored as 0.40625 in E4M3 and 0.375 in E5M2
    assert rows["FP8 E4M3"]["stored value"] == 0.40625
    assert rows["FP8 E5M2"]["stored value"] == 0.375


def test_take_apart_subnormal_formula():
    r = take_apart(0.01, ["e4m3"]).to_dicts()[0]     # 0.01 < 2^-6: an E4M3 subnormal
    assert r["exponent"] == "0000"
    assert r["formula"].startswith("+2^-6 x (0 + ")
    assert r["stored value"] == ml_round(0.01, "e4m3")


def test_take_apart_rejects_integers():
    with pytest.raises(ValueError, match="integer"):
        take_apart(0.5, ["int8"])


def test_special_values():
    t = special_values(["fp16", "e4m3", "e5m2", "e2m1"])
    rows = {r["format"]: r for r in t.to_dicts()}
    assert rows["FP16"]["Inf"] == "0x7C00 = inf"
    assert rows["FP16"]["-0"] == "0x8000 = -0"
    assert rows["FP16"]["max"] == "0x7BFF = 65504"
    assert rows["FP16"]["min subnormal"] == "0x0001 = 5.9605e-08"
    assert rows["FP8 E4M3"]["Inf"] == "0x7E = 448"            # saturates by default: no Inf
    assert rows["FP8 E4M3"]["NaN"].endswith("nan")
    assert rows["FP8 E5M2"]["Inf"] == "0x7C = inf"
    assert rows["FP4 E2M1"]["max"] == "0x7 = 6"


@pytest.mark.parametrize("name", ["fp16", "bf16", "e4m3", "e5m2", "e2m3", "e3m2", "e2m1", "e8m0"])
def test_special_value_counts_match_ml_dtypes(name):
    f = get_format(name)
    row = special_values([name]).to_dicts()[0]
    if f.bits < 8:      # ml_dtypes' FP6/FP4 types are all finite, as the OCP spec says
        assert (row["NaN codes"], row["Inf codes"]) == (0, 0)
        return
    codes = np.arange(f.num_codes, dtype=np.int64).astype(np.uint8 if f.bits == 8 else np.uint16)
    vals = codes.view(f.ml_dtype).astype(np.float32)
    assert row["NaN codes"] == int(np.isnan(vals).sum())
    assert row["Inf codes"] == int(np.isinf(vals).sum())


def test_code_grid_e4m3_matches_ml_dtypes():
    t = code_grid("e4m3")
    assert len(t) == 16 and len(t.columns) == 17
    values = np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).astype(np.float32)
    cells = [c for r in t.rows for c in r[1:]]
    assert cells == [f"{v:.4g}" for v in values.tolist()]
    assert t.rows[7][-2:] == ["448", "nan"]
    assert len(code_grid("e2m1")) == 1


def test_code_grid_rejects_wide_formats():
    with pytest.raises(ValueError, match="at most 8 bits"):
        code_grid("fp16")


def test_rounding_table_e2m1_ties():
    x = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -2.5]
    t = rounding_table(x, "e2m1", modes=("rne", "rna", "rtz"))
    # worked from E2M1's values 0, 0.5, 1, 1.5, 2, 3, 4, 6; RNE agrees with ml_dtypes (REFERENCE.md)
    assert t.column("RNE") == [ml_round(v, "e2m1") for v in x]
    assert t.column("RNE") == [0, 1, 1, 2, 2, 4, 4, -2]
    assert t.column("RNA") == [0.5, 1, 1.5, 2, 3, 4, 6, -3]
    assert t.column("RTZ") == [0, 0.5, 1, 1.5, 2, 3, 4, -2]


def test_rounding_table_stochastic_mean_tends_to_x():
    x = [0.3952, 2.5, 5.0]
    t = rounding_table(x, "e2m1", modes=("rne",), draws=4000)
    means = t.column("stochastic, mean of 4000")
    assert means == pytest.approx(x, abs=0.05)
    assert means[0] != t.column("RNE")[0]


def test_compare_casts_e4m3_overflow():
    x = [448.0, 464.0, 465.0, math.inf]
    t = compare_casts(x, "e4m3")
    assert t.column("quantlib saturate") == [448.0] * 4
    assert t.column("quantlib nonfinite")[:2] == [448.0, 448.0]      # 464 ties down to 448
    assert all(math.isnan(v) for v in t.column("quantlib nonfinite")[2:])
    with np.errstate(all="ignore"):
        assert t.column("ml_dtypes")[:2] == [448.0, 448.0]
    assert all(math.isnan(v) for v in t.column("ml_dtypes")[2:])     # ml_dtypes: NaN past max
    assert t.column("torch") == torch.tensor(x).to(torch.float8_e4m3fn).float().tolist()


def test_compare_casts_without_a_torch_dtype():
    t = compare_casts([7.0, 8.0], "e2m3")           # torch has no FP6
    assert t.column("torch") == [None, None]
    assert t.column("ml_dtypes") == [ml_round(7.0, "e2m3"), ml_round(8.0, "e2m3")]


def test_range_report_fates():
    x = [2.0 ** -30, 2.0 ** -20, 1.0, 2.0 ** 17]      # FP16: flushed, subnormal, normal, overflow
    t = range_report(x, ["fp16", "bf16"], scales=(1.0, 2.0 ** 10))
    rows = t.to_dicts()
    fp16, fp16_scaled, bf16 = rows[0], rows[1], rows[2]
    assert (fp16["flushed to 0 (%)"], fp16["subnormal (%)"], fp16["overflow (%)"]) == (25, 25, 25)
    assert (fp16_scaled["flushed to 0 (%)"], fp16_scaled["subnormal (%)"],
            fp16_scaled["overflow (%)"]) == (0, 25, 25)
    assert (bf16["flushed to 0 (%)"], bf16["subnormal (%)"], bf16["overflow (%)"]) == (0, 0, 0)
    assert bf16["median rel. error"] <= 2.0 ** -8
    assert t.column("scale") == ["2^0", "2^10"] * 2


def test_range_report_rejects_bad_scales():
    with pytest.raises(ValueError, match="positive"):
        range_report([1.0], ["fp16"], scales=(0.0,))


def test_range_report_overflow_is_decided_after_rounding():
    # E4M3 saturates by default; 464 ties down to 448 (no overflow), 465 rounds past it
    t = range_report([464.0, 465.0], ["e4m3"])
    assert t.column("overflow (%)") == [50.0]


@pytest.mark.parametrize("name", ["e4m3", "e5m2", "e2m3", "e3m2", "e2m1"])
@pytest.mark.parametrize("ncol", [8, 4])
def test_narrow_code_grid_keeps_every_code(name, ncol):
    f = get_format(name)
    t = code_grid(name, ncol=ncol)
    assert t.columns == ["code"] + [f"+{c}" for c in range(ncol)]
    assert len(t) == f.num_codes // ncol
    ref = [ml_round_code(c, f) for c in range(f.num_codes)]
    for r, row in enumerate(t.rows):
        assert int(row[0], 16) == r * ncol                          # row label = first code
        for c, cell in enumerate(row[1:]):
            v = ref[r * ncol + c]
            rel = 5e-3 if abs(v) < 0.01 else 5e-4             # 3 or 4 significant digits
            assert (cell == "nan") if np.isnan(v) else float(cell) == pytest.approx(v, rel=rel)
            assert len(cell) <= 8


def ml_round_code(code, f):
    """The value of `code` in format f, decoded by ml_dtypes (FP6/FP4 codes sit in a byte)."""
    return float(np.array([code], np.uint8).view(f.ml_dtype).astype(np.float64)[0])


def test_code_grid_rejects_other_widths():
    with pytest.raises(ValueError, match="ncol"):
        code_grid("e4m3", ncol=6)
