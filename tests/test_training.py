"""Low-precision training layer: the three GEMMs against a float64 reference built from the same
quantized operands, every recipe's scaling logic, the model swap and the errors."""
import dataclasses
import math

import pytest
import torch
from torch import nn

from quantlib.codecs import round_to_format
from quantlib.nn.hadamard import hadamard_matrix, hadamard_transform, random_hadamard_matrix
from quantlib.nn.training import FP8Linear, convert_to_low_precision_training, summarize_stats
from quantlib.nn.training_recipes import (
    TRAINING_RECIPES,
    AmaxHistory,
    get_training_recipe,
    training_recipes,
)
from quantlib.qtensor import quantize
from quantlib.recipes import get_recipe

# The operand recipes of each training recipe, written out independently of
# TrainingRecipe.operand_recipe: (x, w, dy), each applied to a (rows, contraction) layout.
P2 = {"scale_format": "pow2"}
MX = {"scale_rule": "rceil"}
OPERANDS = {
    "fp8_current": ("fp8_e4m3_tensor", "fp8_e4m3_tensor", "fp8_e5m2_tensor", {}, {}),
    "fp8_rowwise": ("fp8_e4m3_rowwise", "fp8_e4m3_rowwise", "fp8_e5m2_rowwise", {}, {}),
    "fp8_block": ("fp8_e4m3_1x128", "fp8_e4m3_128x128", "fp8_e5m2_1x128", P2, P2),
    "mxfp8": ("mxfp8_e4m3", "mxfp8_e4m3", "mxfp8_e5m2", MX, MX),
}


def _q(t, name, **kw):
    recipe = dataclasses.replace(get_recipe(name), **kw) if kw else get_recipe(name)
    return quantize(t.float(), recipe).dequantize().double()


def _bound(a, b):
    """FP32 accumulation error bound of a @ b.T: K * 2^-24 * (|a| @ |b|.T), plus a hair."""
    return a.shape[1] * 2.0 ** -24 * (a.abs() @ b.abs().T) + 1e-30


def _data(m=128, k=256, n=128, seed=0, bias=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g) * 3
    dy = torch.randn(m, n, generator=g) * 1e-3
    lin = nn.Linear(k, n, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n, k, generator=g) * 0.05)
        if bias:
            lin.bias.copy_(torch.randn(n, generator=g))
    return x, dy, lin


def _run(layer, x, dy):
    x = x.clone().requires_grad_(True)
    y = layer(x)
    y.backward(dy)
    return y, x.grad, layer.weight.grad, None if layer.bias is None else layer.bias.grad


@pytest.mark.parametrize("name", list(OPERANDS))
def test_three_gemms_match_float64_reference(name):
    x, dy, lin = _data()
    layer = FP8Linear.from_linear(lin, name)
    y, dx, dw, db = _run(layer, x, dy)
    rx, rw, rg, kw_w, kw_a = OPERANDS[name]
    w = lin.weight.detach()
    xq, wq = _q(x, rx, **kw_a), _q(w, rw, **kw_w)                        # fprop: along K
    gq, wtq = _q(dy, rg, **kw_a), _q(w.T.contiguous(), rw, **kw_w)      # dgrad: along N
    gtq, xtq = _q(dy.T.contiguous(), rg, **kw_a), _q(x.T.contiguous(), rx, **kw_a)  # wgrad: M
    for got, a, b, extra in ((y, xq, wq, lin.bias.detach().double()), (dx, gq, wtq, 0),
                             (dw, gtq, xtq, 0)):
        ref = a @ b.T + extra
        assert ((got.double() - ref).abs() <= _bound(a, b) + 2.0 ** -22 * ref.abs()).all()
    assert torch.equal(db, dy.sum(0))
    # the quantization is real: the unquantized product is measurably different
    assert (y.double() - (x.double() @ w.double().T + lin.bias.double())).abs().max() > 1e-3


def test_rowwise_dgrad_scales_weight_columns():
    """dgrad contracts over N: W's scales must be per column of W (W^T's rows), not per row."""
    x, dy, lin = _data(k=256, n=256, seed=1)
    with torch.no_grad():   # columns of very different size make the two layouts differ
        lin.weight.mul_(torch.logspace(-3, 0, 256)[None, :])
    _, dx, _, _ = _run(FP8Linear.from_linear(lin, "fp8_rowwise"), x, dy)
    w, gq = lin.weight.detach(), _q(dy, "fp8_e5m2_rowwise")
    right = gq @ _q(w.T.contiguous(), "fp8_e4m3_rowwise").T
    wrong = gq @ _q(w, "fp8_e4m3_rowwise")
    err_right, err_wrong = ((dx.double() - r).abs().max() for r in (right, wrong))
    assert err_right <= 1e-6 * right.abs().max()
    assert err_wrong > 1e-3 * right.abs().max()


def test_block_wgrad_scales_run_along_tokens_and_weight_blocks_are_shared():
    """wgrad contracts over the M tokens: 1x128 blocks of x^T and dy^T, not of x and dy. A
    128x128 weight block is the same set of values in W and W^T: fprop and dgrad share W_q."""
    x, dy, lin = _data(m=256, k=256, n=128, seed=1)
    # tokens of x spanning 10^9 (far more than E4M3's range), dy the inverse: every token counts
    x = x * torch.logspace(-9, 0, 256)[:, None]
    dy = dy * torch.logspace(9, 0, 256)[:, None]
    _, _, dw, _ = _run(FP8Linear.from_linear(lin, "fp8_block"), x, dy)
    a, b = ({"scale_format": "pow2"},) * 2
    right = _q(dy.T.contiguous(), "fp8_e5m2_1x128", **a) @ \
        _q(x.T.contiguous(), "fp8_e4m3_1x128", **b).T
    wrong = _q(dy, "fp8_e5m2_1x128", **a).T @ _q(x, "fp8_e4m3_1x128", **b)
    err_right, err_wrong = ((dw.double() - r).abs().max() for r in (right, wrong))
    assert err_right <= 1e-6 * right.abs().max()
    assert err_wrong > 1e-3 * right.abs().max()
    w = lin.weight.detach()
    assert torch.equal(_q(w.T.contiguous(), "fp8_e4m3_128x128", **a),
                       _q(w, "fp8_e4m3_128x128", **a).T)


def test_fp32_recipe_is_nn_linear_and_bf16_rounds_operands():
    x, dy, lin = _data()
    y0 = lin(x)
    y0.backward(dy)
    g0 = lin.weight.grad.clone()
    lin.weight.grad = None
    y, _, dw, _ = _run(FP8Linear.from_linear(lin, "fp32"), x, dy)
    assert torch.allclose(y, y0, rtol=0, atol=1e-5) and torch.allclose(dw, g0, atol=1e-6)
    lin.weight.grad = None
    y, _, _, _ = _run(FP8Linear.from_linear(lin, "bf16"), x, dy)
    xb, wb = (round_to_format(t.detach(), "bf16").double() for t in (x, lin.weight))
    ref = xb @ wb.T + lin.bias.double()
    assert ((y.double() - ref).abs() <= _bound(xb, wb) + 1e-6).all()


def test_nvfp4_gemms_with_rht_and_16x16_weights():
    """NVFP4 without SR (so the reference can repeat it): 16x16 weight blocks in fprop and dgrad,
    the Hadamard transform on both wgrad operands along the tokens."""
    x, dy, lin = _data(m=64, k=128, n=64, seed=2, bias=False)
    recipe = get_training_recipe("nvfp4", stochastic_grad=False)
    layer = FP8Linear.from_linear(lin, recipe, seed=3)
    y, dx, dw, _ = _run(layer, x, dy)
    nv, nv2 = get_recipe("nvfp4"), dataclasses.replace(get_recipe("nvfp4"), granularity="block2d",
                                                       block=(16, 16))
    w = lin.weight.detach()
    h = random_hadamard_matrix(16, seed=3)
    xq, wq = _q(x, nv), _q(w, nv2)
    assert torch.allclose(_q(w.T.contiguous(), nv2), wq.T)    # 16x16 blocks: one W_q for both
    at, bt = hadamard_transform(dy.T.contiguous(), h), hadamard_transform(x.T.contiguous(), h)
    for got, a, b in ((y, xq, wq), (dx, _q(dy, nv), wq.T.contiguous()), (dw, _q(at, nv), _q(bt, nv))):
        assert ((got.double() - a @ b.T).abs() <= _bound(a, b)).all()


def test_hadamard_is_orthogonal_and_cancels_in_wgrad():
    for n in (2, 4, 16, 64):
        for h in (hadamard_matrix(n, torch.float64), random_hadamard_matrix(n, 5, torch.float64)):
            assert torch.allclose(h @ h.T, torch.eye(n, dtype=torch.float64), atol=1e-14)
            assert torch.allclose(h.abs(), torch.full_like(h, n ** -0.5))
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(8, 64, generator=g, dtype=torch.float64), torch.randn(5, 64, generator=g,
                                                                             dtype=torch.float64)
    h = random_hadamard_matrix(16, 1, torch.float64)
    ta, tb = hadamard_transform(a, h), hadamard_transform(b, h)
    assert not torch.allclose(ta, a)
    assert torch.allclose(ta @ tb.T, a @ b.T, atol=1e-12)
    with pytest.raises(ValueError, match="power of two"):
        hadamard_matrix(12)
    with pytest.raises(ValueError, match="multiple of the Hadamard size 16"):
        hadamard_transform(torch.zeros(2, 40), h)


def test_rht_spreads_outliers_over_the_block():
    """What the transform does to a 16-element block with an outlier: its amax / rms (crest
    factor) falls toward a Gaussian block's. (Its MSE under NVFP4 does not fall: see chapter 9.)"""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 256, generator=g)
    x[:, ::37] *= 50

    def crest(t):
        b = t.reshape(-1, 16)
        return (b.abs().amax(-1) / b.square().mean(-1).sqrt()).mean().item()
    xt = hadamard_transform(x, random_hadamard_matrix(16, 0))
    assert crest(xt) < 0.7 * crest(x)
    assert crest(xt) < 1.2 * crest(torch.randn(64, 256, generator=g))


def test_amax_history_max_most_recent_margin():
    h = AmaxHistory(qmax=448.0, length=3, algo="max")
    assert h.scale().item() == 1.0                         # empty history: scale 1
    for a in (10.0, 448.0, 20.0):
        h.update(torch.tensor(a))
    assert h.history.tolist() == [20.0, 448.0, 10.0]       # newest first
    assert h.scale().item() == 1.0                          # max 448 -> 448 / 448
    h.update(torch.tensor(5.0))                             # 10 falls out of the window
    assert h.history.tolist() == [5.0, 20.0, 448.0]
    h.update(torch.tensor(7.0))
    h.update(torch.tensor(9.0))                             # 448 falls out
    assert h.scale().item() == pytest.approx(9.0 / 448)
    recent = AmaxHistory(qmax=57344.0, length=4, algo="most_recent", margin=2,
                         history=torch.tensor([3.0, 100.0, 0.0, 0.0]))
    assert recent.scale().item() == pytest.approx(3.0 * 4 / 57344)
    with pytest.raises(ValueError, match="max', 'most_recent"):
        AmaxHistory(448.0, algo="mean")


def test_delayed_layer_uses_previous_steps_and_records_this_one():
    recipe = get_training_recipe("fp8_delayed", amax_history_len=4)
    layer = FP8Linear(128, 128, bias=False, recipe=recipe)
    layer.record_stats = True
    g = torch.Generator().manual_seed(0)
    amaxes = []
    for step in range(3):
        x = torch.randn(16, 128, generator=g) * (step + 1)
        layer.stats = []
        layer(x).sum().backward()
        sx = next(s for s in layer.stats if s["role"] == "x" and s["gemm"] == "fprop")
        expect = 1.0 if step == 0 else max(amaxes) / 448
        assert sx["scale"] == pytest.approx(expect, rel=1e-6)
        # wgrad reuses the FP8 x of fprop (transposed): x is cast once per step
        assert [s["gemm"] for s in layer.stats if s["role"] == "x"] == ["fprop"]
        amaxes.append(x.abs().max().item())
    assert layer.amax_history_x[:3].tolist() == pytest.approx(amaxes[::-1])
    assert "amax_history_x" not in layer.state_dict()


def test_delayed_scale_lags_a_spike_and_clips():
    from quantlib.nn.training_runs import delayed_scaling_spike
    t = delayed_scaling_spike(steps=6, spike_at=3, factor=64.0, history=4, d=128, tokens=32)
    rows = t.to_dicts()
    assert rows[3]["clipped: delayed, max"] > 100 and rows[3]["clipped: delayed, most_recent"] > 100
    assert all(r["clipped: current"] == 0 for r in rows)
    assert rows[4]["clipped: delayed, max"] == 0
    assert rows[3]["QSNR delayed, max"] < 15 and rows[3]["QSNR current"] > 28


def test_unscaled_gradients_underflow():
    x, dy, lin = _data()
    dy = dy * 1e-2                            # LM gradients are small: |dy| ~ 1e-5
    res = {}
    for fmt in ("HYBRID", "E4M3"):
        for scaling in ("none", "current"):
            layer = FP8Linear.from_linear(lin, get_training_recipe(
                "fp8_current", scaling=scaling, fp8_format=fmt))
            layer.record_stats = True
            _run(layer, x, dy)
            dy_casts = [s for s in layer.stats if s["role"] == "dy"]
            res[fmt, scaling] = summarize_stats(dy_casts)["flushed"]
    assert res["E4M3", "none"] == 1.0                      # |dy| < 2^-9 / 2: all flush to zero
    assert 0.2 < res["HYBRID", "none"] < 1.0               # E5M2 keeps the larger ones
    assert res["HYBRID", "current"] < 1e-3 and res["E4M3", "current"] < 1e-2


def test_stochastic_rounding_of_gradients_is_unbiased():
    """The mean of many SR casts of dy tends to dy (RNE's error does not average out). Values
    beyond 6 * scale (a block scale rounded down to E4M3) saturate and are excluded."""
    layer = FP8Linear(16, 16, bias=False, recipe="nvfp4", seed=0)
    t = torch.randn(16, 16, generator=torch.Generator().manual_seed(1))
    n = 2000    # n copies in one cast: same amax, same block scales, independent draws
    draws = layer.cast(t.repeat(n, 1), "dy", "dgrad").reshape(n, 16, 16).double()
    qt = quantize(t, "nvfp4")
    s = (qt.scale_values() * qt.tensor_scale).repeat_interleave(16, -1).double()
    inside = (t.double() / s).abs() <= 6
    assert inside.sum() > 200
    err_sr = (draws.mean(0) - t.double()).abs()[inside]
    err_rne = (qt.dequantize().double() - t.double()).abs()[inside]
    # E2M1's widest gap is 2 (4 -> 6): one draw's std is <= s; 5 sigma of the mean of n
    assert (err_sr <= 5 * s[inside] / math.sqrt(n)).all()
    assert err_sr.mean() < 0.2 * err_rne.mean()
    assert not torch.equal(draws[0], draws[1])
    again = FP8Linear(16, 16, bias=False, recipe="nvfp4", seed=0)
    first = again.cast(t.repeat(n, 1), "dy", "dgrad").reshape(n, 16, 16).double()
    assert torch.equal(first, draws)                         # seeded: reproducible


def test_convert_swaps_linears_keeps_state_dict():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Sequential(nn.Linear(256, 128)),
                          nn.Linear(128, 10))
    ref = {k: v.clone() for k, v in model.state_dict().items()}
    params = list(model.parameters())
    out = convert_to_low_precision_training(model, "fp8_block", skip=["3"])
    assert out is model
    assert [type(m).__name__ for m in (model[0], model[2][0], model[3])] == \
        ["FP8Linear", "FP8Linear", "Linear"]
    assert list(model.state_dict()) == list(ref)
    assert all(p is q for p, q in zip(model.parameters(), params))
    model.load_state_dict(ref)               # strict: no extra or missing keys
    fresh = nn.Linear(128, 256)
    fresh.load_state_dict(model[0].state_dict())
    assert "recipe=fp8_block" in repr(model)


def test_errors_are_clear():
    with pytest.raises(ValueError, match="unknown training recipe 'fp9'.*fp8_delayed, "
                                         "fp8_current"):
        get_training_recipe("fp9")
    with pytest.raises(ValueError, match=r"layer '0': in_features=100 is not a multiple of the "
                                         r"128-element block"):
        convert_to_low_precision_training(nn.Sequential(nn.Linear(100, 128)), "fp8_block")
    with pytest.raises(ValueError, match="out_features=40 is not a multiple of the 32"):
        FP8Linear(64, 40, recipe="mxfp8")
    with pytest.raises(ValueError, match="skip pattern 'lm_head' matches no nn.Linear"):
        convert_to_low_precision_training(nn.Sequential(nn.Linear(16, 16)), "fp8_current",
                                          skip="lm_head")
    with pytest.raises(ValueError, match="needs per-tensor FP8"):
        get_training_recipe("fp8_rowwise", scaling="delayed")
    with pytest.raises(ValueError, match="granularity='tile'"):
        get_training_recipe("fp8_current", granularity="tile")
    layer = FP8Linear(128, 128, recipe="fp8_block")
    with pytest.raises(ValueError, match="100 tokens .* not a multiple of 128"):
        layer(torch.randn(100, 128, requires_grad=True)).sum().backward()


def test_recipe_table_lists_every_recipe():
    t = training_recipes()
    assert t.column("recipe") == list(TRAINING_RECIPES)
    row = t.to_dicts()[t.column("recipe").index("fp8_current")]
    assert (row["x"], row["w"], row["dy"]) == ("E4M3", "E4M3", "E5M2")
