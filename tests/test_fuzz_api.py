"""Fuzzing the public API: random recipes, shapes, dtypes, devices ('meta' included), special
values (NaN, Inf, zeros, subnormals, huge) and misuse. Every call must give a correct result or a
clear ValueError/TypeError: any other exception fails the test (it propagates), and the checks
below catch a silent change (inputs modified, shapes or dtypes off, a NaN hidden or invented,
signs flipped, a round trip that moves a value)."""
import dataclasses
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

from quantlib import kernels as K
from quantlib.codecs import decode, encode
from quantlib.formats import FORMATS
from quantlib.nn import CONFIGS, QuantLinear, quantize_model
from quantlib.qtensor import QuantizedTensor, quantize
from quantlib.recipes import GRANULARITIES, RECIPES, SCALE_FORMATS, SCALE_RULES, Recipe
from quantlib.scaling import blocked, compute_scale, pad_to_blocks

FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
REFUSED = object()

SPECIALS = [0.0, -0.0, float("nan"), float("inf"), -float("inf"), 1e-40, -1e-45, 3e38, -3e38,
            65504.0, 1e-8, 448.0, 6.0]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def attempt(fn):
    """fn() or REFUSED for a ValueError/TypeError (the clear refusals); anything else raises."""
    try:
        return fn()
    except (ValueError, TypeError) as e:
        assert str(e), "an error must say what was wrong"
        return REFUSED


@st.composite
def recipes(draw):
    """A named recipe, or a custom one from random fields (which may be refused on creation)."""
    if draw(st.booleans()):
        r = RECIPES[draw(st.sampled_from(sorted(RECIPES)))]
        return dataclasses.replace(r, pad=draw(st.booleans())) if r.block else r
    g = draw(st.sampled_from(GRANULARITIES))
    block = {"group": draw(st.sampled_from([1, 3, 16, 32, 0, -4])),
             "block2d": draw(st.sampled_from([(2, 16), (4, 4), (1, 32), (0, 2)]))}.get(g)
    kw = dict(name="fuzz", element=draw(st.sampled_from([f for f in FORMATS] + ["e9m9"])),
              granularity=g, block=block, axis=draw(st.sampled_from([0, 1, -1, 3])),
              scale_format=draw(st.sampled_from(SCALE_FORMATS)),
              scale_rule=draw(st.sampled_from(SCALE_RULES)), pad=draw(st.booleans()))
    r = attempt(lambda: Recipe(**kw))
    return r if r is not REFUSED else RECIPES["nvfp4"]


@st.composite
def tensors(draw, max_dims=3, finite_only=False):
    """A tensor of random shape (0 to 3 dims, some sizes 0), dtype and values, specials mixed in."""
    shape = draw(st.lists(st.sampled_from([0, 1, 2, 3, 16, 32, 33, 64]), min_size=0,
                          max_size=max_dims))
    dtype = draw(st.sampled_from(DTYPES))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    scale = draw(st.sampled_from([1.0, 1e-30, 1e4, 1e30]))
    x = torch.randn(shape, generator=g, dtype=torch.float64) * scale
    if x.numel() and draw(st.booleans()):
        specials = [v for v in SPECIALS if not finite_only or np.isfinite(v)]
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, x.numel() - 1))
            x.view(-1)[i] = draw(st.sampled_from(specials))
    return x.to(dtype)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(
        torch.nan_to_num(a.float(), nan=7.0), torch.nan_to_num(b.float(), nan=7.0)) and torch.equal(
        torch.isnan(a), torch.isnan(b))


# ---- quantize / dequantize ----------------------------------------------------------------------
@FUZZ
@given(x=tensors(), recipe=recipes(), meta=st.booleans(), out=st.sampled_from(DTYPES))
def test_quantize_dequantize(x, recipe, meta, out):
    if meta:
        assert attempt(lambda: quantize(x.to("meta"), recipe)) is REFUSED
        return
    x0 = x.clone()
    q = attempt(lambda: quantize(x, recipe))
    assert _same(x, x0)                                   # the input is never changed
    if q is REFUSED:
        return
    assert q.shape == x.shape and q.dtype == x.dtype and q.codes.dtype == torch.uint8
    y = q.dequantize(out)
    assert y.shape == x.shape and y.dtype == out
    yf, xf = y.double(), x.double()
    if bool(torch.isfinite(xf).all()):
        assert bool(torch.isfinite(q.dequantize()).all())           # no NaN invented
    else:
        assert bool(torch.isnan(q.dequantize()).any())               # a NaN group stays visible
    ok = torch.isfinite(yf) & torch.isfinite(xf)
    assert bool((yf[ok] * xf[ok] >= 0).all())                       # never a flipped sign
    if x.numel():                                       # within the range the scales allow
        amax = xf[torch.isfinite(xf)].abs().max() if bool(torch.isfinite(xf).any()) else 0.0
        fmax = torch.finfo(out).max
        assert bool((yf[ok].abs() <= min(2.0 * float(amax) + 1e-30, fmax)).all())
    back = QuantizedTensor.from_state_dict(q.state_dict())          # state dict round trip
    assert _same(back.dequantize(), q.dequantize())
    assert attempt(lambda: q.to(torch.float16)) is REFUSED


@FUZZ
@given(x=tensors(), recipe=recipes())
def test_compute_scale(x, recipe):
    xf = x.float()
    xb_dims = attempt(lambda: blocked(pad_to_blocks(xf.reshape(tuple(x.shape) or (1,)), recipe),
                                      recipe))
    if xb_dims is REFUSED:
        return
    xb, dims = xb_dims
    assert attempt(lambda: compute_scale(xb.to("meta"), dims, recipe)) is REFUSED
    sc = compute_scale(xb, dims, recipe.name if recipe.name in RECIPES and recipe == RECIPES[
        recipe.name] else recipe)
    s, bad = sc["s"], sc["bad"].expand_as(sc["s"])
    assert bool((torch.isnan(s) == bad).all()) if recipe.scale_format != "e4m3" else True
    assert bool((s[~bad] >= 0).all()) and bool(torch.isfinite(s[~bad]).all())
    assert bool((sc["r"][~bad.expand_as(sc["r"])] > 0).all())


# ---- codecs -----------------------------------------------------------------------------------
@FUZZ
@given(x=tensors(max_dims=2), fmt=st.sampled_from(sorted(FORMATS)),
       rounding=st.sampled_from(["rne", "rtz", "rna", "stochastic", "nearest"]),
       overflow=st.sampled_from([None, "saturate", "nonfinite", "wrap"]))
def test_encode_decode(x, fmt, rounding, overflow):
    g = torch.Generator().manual_seed(0) if rounding == "stochastic" else None
    codes = attempt(lambda: encode(x, fmt, rounding=rounding, overflow=overflow, generator=g))
    if codes is REFUSED:
        return
    bits = FORMATS[fmt].bits
    assert codes.shape == x.shape and codes.dtype == (
        torch.uint8 if bits <= 8 else torch.int16 if bits == 16 else torch.int32)
    v = decode(codes, fmt)
    assert v.dtype == torch.float32 and v.shape == x.shape
    # decoded values are on the grid: encoding them again gives the same values
    again = decode(encode(v, fmt, overflow=overflow), fmt)
    assert _same(again, v)
    xf = x.double()
    ok = torch.isfinite(v.double()) & torch.isfinite(xf)
    assert bool((v.double()[ok] * xf[ok] >= 0).all())


# ---- QuantLinear and quantize_model --------------------------------------------------------
@FUZZ
@given(config=st.sampled_from(sorted(CONFIGS)), k=st.sampled_from([16, 32, 48, 64, 128]),
       n=st.sampled_from([1, 8, 16]), batch=st.lists(st.integers(0, 3), max_size=2),
       dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float64]),
       bias=st.booleans(), seed=st.integers(0, 1000))
def test_quant_linear(config, k, n, batch, dtype, bias, seed):
    torch.manual_seed(seed)
    lin = nn.Linear(k, n, bias=bias)
    q = attempt(lambda: QuantLinear.from_linear(lin, config))
    if q is REFUSED:                                  # only a block that does not divide k
        rec = CONFIGS[config]
        assert any(r is not None and r.block and k % (r.block if isinstance(r.block, int)
                                                       else r.block[1]) for r in
                   (rec.weight, rec.activation)) or rec.weight.granularity == "block2d"
        return
    x = torch.randn(*batch, k, dtype=dtype)
    x0 = x.clone()
    y = attempt(lambda: q(x))
    assert torch.equal(x, x0)
    if y is REFUSED:
        return
    assert y.shape == (*batch, n) and y.dtype == dtype
    a = q.activation_recipe()
    xq = x if a is None or x.numel() == 0 else \
        quantize(x.reshape(-1, k), a).dequantize(dtype).reshape(x.shape)
    want = F.linear(xq, q.qweight.dequantize(dtype), None if lin.bias is None else
                    lin.bias.detach().to(dtype))
    assert torch.equal(y, want)
    for bad in (torch.randn(2, k + 1), torch.tensor(1.0), torch.ones(2, k, dtype=torch.int32),
                torch.empty(2, k, device="meta")):
        assert attempt(lambda: q(bad)) is REFUSED


@FUZZ
@given(config=st.sampled_from(sorted(CONFIGS) + ["int4_g128", "fp8_e4m3_128x128"]),
       widths=st.lists(st.sampled_from([16, 24, 32, 100, 128]), min_size=2, max_size=4),
       pad=st.booleans(), shared=st.booleans(), seed=st.integers(0, 100))
def test_quantize_model_tiny(config, widths, pad, shared, seed):
    torch.manual_seed(seed)
    layers = [nn.Linear(a, b) for a, b in zip(widths, widths[1:])]
    seq = nn.Sequential(*layers)
    if shared:
        seq.append(nn.Linear(widths[-1], widths[-1]))
        seq.append(seq[-1])                                 # one module under two names
    x = torch.randn(3, widths[0])
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        q = attempt(lambda: quantize_model(seq, config, pad=pad))
    if q is REFUSED:
        assert not pad
        return
    listed = " ".join(str(w.message) for w in rec if "full precision" in str(w.message))
    assert len([w for w in rec if "full precision" in str(w.message)]) <= 1
    for name, m in seq.named_children():
        got = q.get_submodule(name)
        assert isinstance(got, QuantLinear) or f"'{name}'" in listed
    if shared:
        assert q[-1] is q[-2]
    assert attempt(lambda: quantize_model(seq.to("meta"), config, pad=True)) is REFUSED
    y = q(x)
    assert y.shape == (3, widths[-1]) and bool(torch.isfinite(y).all())


# ---- kernels: reference paths against quantize ------------------------------------------------
@FUZZ
@given(x=tensors(max_dims=2), which=st.sampled_from(["fp8", "nvfp4", "mx"]), recipe=recipes())
def test_kernel_reference_paths(x, which, recipe):
    fn = {"fp8": K.fp8_quantize, "nvfp4": K.nvfp4_quantize, "mx": K.mx_quantize}[which]
    deq = {"fp8": K.fp8_dequantize, "nvfp4": K.nvfp4_dequantize, "mx": K.mx_dequantize}[which]
    q = attempt(lambda: fn(x, recipe, path="reference"))
    if q is REFUSED:
        return
    want = quantize(x, recipe)
    assert torch.equal(q.codes, want.codes)
    assert _same(deq(q, torch.float32, path="reference"), want.dequantize())


@FUZZ
@given(shape=st.lists(st.sampled_from([0, 1, 3, 32, 64]), min_size=0, max_size=3),
       recipe=st.sampled_from(["nvfp4", "mxfp4", "mxfp8_e4m3", "fp8_e4m3_rowwise", "int8_channel"]),
       xdtype=st.sampled_from([torch.bfloat16, torch.float32]), seed=st.integers(0, 100))
def test_weight_only_matmuls(shape, recipe, xdtype, seed):
    torch.manual_seed(seed)
    w = quantize(torch.randn(16, 64), recipe)
    x = torch.randn(shape, dtype=xdtype)
    for fn in (K.nvfp4_matmul, K.mx_matmul, K.fp8_weight_matmul):
        y = attempt(lambda: fn(x, w, path="reference", out_dtype=torch.float32))
        if y is REFUSED:
            continue
        want = x.float() @ w.dequantize(torch.float32).T
        assert y.shape == (*shape[:-1], 16)
        assert torch.allclose(y, want, rtol=1e-5, atol=1e-5)


@FUZZ
@given(junk=st.sampled_from([None, "nvfp4", 3, 2.5, [1.0, 2.0], (4, 4), {"a": 1},
                             np.ones((2, 32), np.float32), torch.ones(2, 32, dtype=torch.int64),
                             torch.ones(2, 32, dtype=torch.complex64), torch.float16]),
       slot=st.integers(0, 5))
def test_misuse_gives_clear_errors(junk, slot):
    x = torch.randn(2, 32)
    calls = [lambda: quantize(junk, "mxfp4"), lambda: quantize(x, junk),
             lambda: QuantLinear.from_linear(nn.Linear(32, 8), junk),
             lambda: quantize_model(nn.Sequential(nn.Linear(32, 8)), "int8", skip=junk),
             lambda: K.fp8_linear(junk, torch.randn(8, 32), path="reference"),
             lambda: quantize(x, "mxfp4").dequantize(junk)]
    out = attempt(calls[slot])
    if out is not REFUSED:                 # accepted: only where the junk is a valid argument
        assert (slot, junk) in ((1, "nvfp4"), (2, "nvfp4"), (3, None), (5, torch.float16)) or (
            slot == 3 and isinstance(junk, str))


@pytest.mark.parametrize("fmt", ["e2m1", "e4m3", "int4", "int8", "e8m0", "bf16"])
def test_encode_on_meta_is_a_clear_error(fmt):
    with pytest.raises(ValueError, match="meta"):
        encode(torch.empty(4, device="meta"), fmt)
