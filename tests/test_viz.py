"""quantlib.viz, headless (Agg): each figure draws what its format description says, checked by
counting what was drawn and reading the plotted data back."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest

from quantlib import get_format, viz
from quantlib.explain import ANATOMY_FORMATS, fields


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def field_patches(fig):
    return [p for p in fig.axes[0].patches if p.get_gid() in viz.FIELD_COLORS]


def test_bit_layout_draws_every_field_with_its_width():
    fig = viz.bit_layout()
    patches = field_patches(fig)
    expected = [(name, n) for f in ANATOMY_FORMATS for name, n in fields(f)]
    assert [(p.get_gid(), int(p.get_width())) for p in patches] == expected
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == [get_format(f).title for f in reversed(ANATOMY_FORMATS)]


def test_bit_layout_of_a_value_shows_its_bits():
    fig = viz.bit_layout(["fp16", "e4m3", "int8"], value=1.0)
    bits = "".join(t.get_text() for t in fig.axes[0].texts if t.get_gid() == "bit")
    # 1.0 is 0x3C00 in FP16 and 0x38 (0.0111.000) in E4M3; INT8 1 is 0x01
    assert bits == "0011110000000000" + "00111000" + "00000001"
    assert len(field_patches(fig)) == 3 + 3 + 1


def test_representable_values_against_ml_dtypes():
    assert viz.representable_values("e2m1").tolist() == [0.5, 1, 1.5, 2, 3, 4, 6]
    for name in ("e4m3", "e5m2", "fp16", "bf16"):
        f = get_format(name)
        codes = np.arange(f.num_codes, dtype=np.int64).astype(np.uint8 if f.bits == 8
                                                              else np.uint16)
        with np.errstate(invalid="ignore"):     # NaN codes cast to float64 warn
            ref = codes.view(f.ml_dtype).astype(np.float64)
        ref = np.unique(ref[np.isfinite(ref) & (ref > 0)])
        assert np.array_equal(viz.representable_values(f), ref), name
    assert len(viz.representable_values("e4m3")) == 126       # codes 0x01 ... 0x7E
    with pytest.raises(ValueError, match="at most 16 bits"):
        viz.representable_values("fp32")


@pytest.mark.parametrize("scale", ["linear", "log"])
def test_number_line_one_tick_per_value(scale):
    formats = ["e2m1", "e3m2", "e4m3"]
    fig = viz.number_line(formats, scale=scale)
    ticks = [len(c.get_positions()) for c in fig.axes[0].collections]
    extra = 1 if scale == "linear" else 0                        # zero only fits a linear axis
    assert ticks == [len(viz.representable_values(f)) + extra for f in formats]


def test_number_line_marks_where_subnormals_end():
    fig = viz.number_line(["e4m3", "int4", "e2m1"], mark_min_normal=True)
    marks = sorted(ln.get_xdata()[0] for ln in fig.axes[0].get_lines())
    assert marks == [2.0 ** -6, 1.0]                  # E4M3 and E2M1; integers have none


def test_number_line_rejects_unknown_scale():
    with pytest.raises(ValueError, match="linear"):
        viz.number_line(scale="symlog")


def test_value_spacing_plots_the_gaps():
    fig = viz.value_spacing(["e2m1", "e4m3"])
    lines = fig.axes[0].get_lines()
    assert len(lines) == 2
    assert lines[0].get_ydata().tolist() == [0.5, 0.5, 0.5, 1, 1, 2]   # E2M1: 0.5 ... 6
    fig = viz.value_spacing(["e4m3"], relative=True)
    rel = fig.axes[0].get_lines()[0].get_ydata()
    normal = viz.representable_values("e4m3")[:-1] >= get_format("e4m3").min_normal
    assert rel[normal].max() == 2.0 ** -3 and rel[normal].min() > 2.0 ** -4


def test_relative_error_stays_under_unit_roundoff_in_the_normal_range():
    formats = ["fp16", "e4m3", "e2m1"]
    fig = viz.relative_error(formats, lo=2.0 ** -12, hi=2.0 ** 8, n=4000, bins=80)
    curves = [ln for ln in fig.axes[0].get_lines() if ln.get_linestyle() == "-"]
    assert len(curves) == len(formats)
    for name, ln in zip(formats, curves):
        f = get_format(name)
        x, worst = ln.get_xdata(), ln.get_ydata()
        inside = (x > 2 * f.min_normal) & (x < f.max / 2)
        assert np.nanmax(worst[inside]) <= 2.0 ** -(f.mbits + 1), name
        assert np.nanmax(worst[inside]) > 2.0 ** -(f.mbits + 2), name


def test_relative_error_gap_where_values_overflow():
    fig = viz.relative_error(["fp16"], lo=2.0 ** 10, hi=2.0 ** 20, overflow="nonfinite")
    x, worst = fig.axes[0].get_lines()[0].get_data()
    assert np.isnan(worst[x > 2.0 ** 17]).all() and np.isfinite(worst[x < 2.0 ** 15]).all()


def test_stochastic_rounding_mean_converges():
    fig = viz.stochastic_rounding(0.3952, "e2m1", draws=20_000, seed=0)
    mean = fig.axes[0].get_lines()[0].get_ydata()
    assert len(mean) == 20_000
    assert mean[-1] == pytest.approx(0.3952, abs=0.01)
    assert set(np.round(mean[:1], 6)) <= {0.0, 0.5}        # each draw is a neighbour


def test_range_histogram_marks_format_limits_in_view():
    rng = np.random.default_rng(0)
    g = 2.0 ** rng.normal(-20, 3, 10_000)
    fig = viz.range_histogram(g, ["fp16", "bf16"], scales=(1.0, 2.0 ** 12), xlim=(-40, 20))
    ax = fig.axes[0]
    assert len(ax.patches) == 2                              # one step histogram per scale
    marks = sorted(round(ln.get_xdata()[0]) for ln in ax.get_lines())
    assert marks == [-24, -14, 16]                           # BF16's limits are out of view


def test_representable_values_is_silent_on_nan_payloads():
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")      # BF16's NaN codes decode to signalling NaNs
        assert len(viz.representable_values("bf16")) == 0x7F7F
