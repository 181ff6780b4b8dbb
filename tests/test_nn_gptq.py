"""GPTQ: identity Hessian == round to nearest, correlated inputs -> lower output error, exact storage."""
import dataclasses

import pytest
import torch
from torch import nn

from quantlib.nn import gptq_quantize, hessian, quantize_model
from quantlib.nn.calibrate import mse_calibrator
from quantlib.qtensor import quantize

RECIPES = ["int4_channel", "int4_g128", "int4_g128_asym", "int4_g128_fp16", "int4_g128_asym_fp16",
           "nvfp4", "mxfp4", "mxint8",
           "fp8_e4m3_rowwise"]


def correlated_inputs(n=512, k=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(k, k, generator=g) / k ** 0.5 + torch.eye(k)
    return torch.randn(n, k, generator=g) @ mix * torch.linspace(0.2, 3, k)


def weight(n=64, k=256, seed=1):
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("recipe", RECIPES)
def test_identity_hessian_is_round_to_nearest(recipe):
    # with uncorrelated unit inputs no error can be compensated: GPTQ must equal RTN exactly
    W = weight()
    qt, Q = gptq_quantize(W, torch.eye(256), recipe, act_order=False)
    assert torch.equal(Q, quantize(W, recipe).dequantize())
    assert torch.equal(qt.codes, quantize(W, recipe).codes)


@pytest.mark.parametrize("recipe", RECIPES)
def test_gptq_lowers_layer_output_error(recipe):
    X, W = correlated_inputs(), weight()
    qt, Q = gptq_quantize(W, hessian(X), recipe)
    assert torch.equal(qt.dequantize(), Q)                    # stored exactly as returned
    err = lambda A: ((X @ (A - W).T) ** 2).mean().item()
    rtn = quantize(W, recipe).dequantize()
    assert err(Q) < 0.8 * err(rtn)


def test_gptq_keeps_the_recipe_scales_and_calibrator():
    X, W = correlated_inputs(), weight()
    r = dataclasses.replace(quantize(W, "int4_g128").recipe, calibrator=mse_calibrator("int4_g128"))
    qt, _ = gptq_quantize(W, hessian(X), r)
    assert torch.equal(qt.scales, quantize(W, r).scales)


def test_dead_inputs_get_zero_weights_and_bad_shapes_raise():
    X = correlated_inputs(k=128)
    X[:, 5] = 0
    _, Q = gptq_quantize(weight(k=128), hessian(X), "int8_channel")
    assert (Q[:, 5] == 0).all()
    with pytest.raises(ValueError, match="Hessian"):
        gptq_quantize(weight(k=128), torch.eye(64), "int8_channel")
    with pytest.raises(ValueError, match="0 rows"):
        hessian(torch.empty(0, 8))


def test_quantize_model_gptq_beats_rtn_on_a_small_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 128), nn.GELU(), nn.Linear(128, 64))
    X = correlated_inputs(1024)
    ref = model(X)
    rtn = quantize_model(model, "int4_channel")(X)
    gptq = quantize_model(model, "int4_channel", calibration=[X[:512]], method="gptq")(X)
    assert ((gptq - ref) ** 2).mean() < ((rtn - ref) ** 2).mean()
