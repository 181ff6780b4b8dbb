"""QAT: fake quantization == quantize/dequantize, STE gradients, LSQ, convert == fake quant."""
import dataclasses

import pytest
import torch
from torch import nn

from quantlib.nn import LSQQuantizer, QuantLinear, convert, fake_quantize, prepare_qat
from quantlib.nn.calibrate import fixed_amax
from quantlib.nn.linear import INT4_TENSOR
from quantlib.qtensor import quantize
from quantlib.recipes import RECIPES

EVERY = [r for r in RECIPES if r not in ("fp8_e4m3_128x128", "fp8_e5m2_128x128")]


@pytest.mark.parametrize("recipe", EVERY)
def test_fake_quantize_forward_is_quantize_dequantize(recipe):
    x = torch.randn(4, 256, requires_grad=True)
    y = fake_quantize(x, recipe)
    assert torch.equal(y, quantize(x.detach(), recipe).dequantize())
    y.sum().backward()
    if quantize(x, recipe).recipe.scale_format != "e8m0":
        assert torch.equal(x.grad, torch.ones_like(x))   # amax / max: nothing clips
    else:   # MX's FLOOR scale can saturate a block's largest elements: those lose their gradient
        clipped = x.grad == 0
        assert clipped.float().mean() < 0.05
        assert (y.abs() < x.abs())[clipped].all()


def test_ste_zeroes_the_gradient_of_clipped_elements():
    x = (torch.linspace(-3, 3, 61) + 0.05).requires_grad_()
    r = dataclasses.replace(INT4_TENSOR, calibrator=fixed_amax(1.4))   # s = 0.2: codes -8..7
    y = fake_quantize(x, r)
    assert y.max().item() == pytest.approx(1.4) and y.min().item() == pytest.approx(-1.6)
    y.backward(torch.ones_like(y))
    # codes reach -1.6..1.4; within half a step (0.1) of the ends x still rounds onto them
    inside = (x.detach() >= -1.7) & (x.detach() <= 1.5)
    assert torch.equal(x.grad, inside.float())


def test_lsq_forward_and_amax_gradient():
    torch.manual_seed(0)
    x = torch.randn(3, 40) * 2
    lsq = LSQQuantizer("int4_channel", torch.tensor([1.0, 2.0, 3.0]))
    y = lsq(x)
    r = dataclasses.replace(lsq.recipe, calibrator=fixed_amax(torch.tensor([1.0, 2.0, 3.0])))
    assert torch.equal(y, quantize(x, r).dequantize())   # the arithmetic convert will store
    y.sum().backward()
    # LSQ: d y / d s = round(v) - v inside, the saturation bound outside; s = amax / 7
    s = torch.tensor([1.0, 2.0, 3.0])[:, None] / 7
    v = x / s
    d_ds = torch.where(v > 7, 7.0, torch.where(v < -8, -8.0, torch.round(v) - v))
    want = d_ds.sum(1) / 7 / (40 * 7) ** 0.5
    torch.testing.assert_close(lsq.amax.grad, want, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="LSQ learns"):
        LSQQuantizer("nvfp4", torch.ones(()))


def small_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


@pytest.mark.parametrize("config,lsq", [("w4a4_int4", False), ("w4a4_int4", True),
                                        ("nvfp4", False), ("w8a8_fp8", False),
                                        ("int4_channel", True), ("nvfp4_w4a4", False),
                                        ("w4a4_fp4", True)])
def test_convert_matches_the_fake_quantized_model(config, lsq):
    model = small_model()
    x = torch.rand(128, 64)
    cal = [x[:64]] if "a4" in config or lsq else None
    qat = prepare_qat(model, config, calibration=cal, lsq=lsq)
    opt = torch.optim.SGD(qat.parameters(), lr=0.05)
    for _ in range(3):                                      # move weights and learned scales
        loss = nn.functional.cross_entropy(qat(x), torch.arange(128) % 10)
        opt.zero_grad()
        loss.backward()
        opt.step()
    real = convert(qat)
    assert all(isinstance(real[i], QuantLinear) for i in (0, 2))
    with torch.no_grad():
        assert torch.equal(real(x), qat(x))


def test_qat_trains_the_weights_through_rounding():
    model = small_model()
    qat = prepare_qat(model, "w4a4_int4", calibration=[torch.rand(64, 64)])
    qat(torch.rand(8, 64)).sum().backward()
    assert qat[0].weight.grad is not None and qat[0].weight.grad.abs().sum() > 0


def test_bad_qat_input():
    with pytest.raises(ValueError, match="no QATLinear"):
        convert(small_model())
    with pytest.raises(ValueError, match="needs calibration"):
        prepare_qat(small_model(), "w4a4_int4", lsq=True)
    with pytest.raises(ValueError, match="no nn.Linear"):
        prepare_qat(nn.Sequential(nn.ReLU()), "int8")
