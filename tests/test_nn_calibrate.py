"""Calibrators: percentile against numpy, MSE search against a brute-force search, static scales."""
import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from quantlib.nn.calibrate import (
    calibrate_activations,
    collect_inputs,
    fixed_amax,
    max_calibrator,
    mse_calibrator,
    percentile_calibrator,
    with_calibrator,
)
from quantlib.qtensor import quantize


def heavy_tailed(n_rows=8, n=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_rows, n, generator=g)
    x[:, :4] *= 20                                            # a few outliers per row
    return x


@pytest.mark.parametrize("p", [50, 99, 99.9, 100])
def test_percentile_matches_numpy(p):
    x = heavy_tailed()
    got = percentile_calibrator(p)(x, -1)
    want = np.percentile(np.abs(x.numpy()), p, axis=-1)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)


def test_percentile_rejects_bad_p():
    with pytest.raises(ValueError, match="percentile"):
        percentile_calibrator(0)


def test_mse_search_matches_brute_force_int4():
    x = heavy_tailed()
    alphas = [1.0 - 0.05 * i for i in range(11)]
    got = mse_calibrator("int4_channel", alphas)(x, -1)
    for row, a in zip(x, got):
        amax = row.abs().max()
        errs = []
        for al in alphas:                    # independent: scale = clip / 7, round, saturate
            s = al * amax / 7
            q = torch.clamp(torch.round(row / s), -8, 7) * s
            errs.append(((q - row) ** 2).sum().item())
        best = alphas[int(np.argmin(errs))]
        assert a.item() == pytest.approx(best * amax.item(), rel=1e-6)


@pytest.mark.parametrize("recipe", ["int4_channel", "int4_g128", "mxfp4", "nvfp4", "fp8_e4m3_rowwise"])
def test_mse_clipping_never_worse_than_max(recipe):
    x = heavy_tailed(16, 256)
    rtn = quantize(x, recipe).dequantize()
    mse = quantize(x, with_calibrator(recipe, mse_calibrator(recipe))).dequantize()
    assert ((mse - x) ** 2).sum() <= ((rtn - x) ** 2).sum() * (1 + 1e-6)
    if recipe in ("int4_channel", "int4_g128"):
        assert ((mse - x) ** 2).sum() < 0.9 * ((rtn - x) ** 2).sum()   # outliers: clip wins


def test_fixed_amax_is_static_and_checks_counts():
    x = torch.randn(4, 64)
    r = with_calibrator("int8_channel", fixed_amax(torch.full((4,), 2.0)))
    assert torch.equal(quantize(x, r).scales.flatten(), torch.full((4,), 2.0 / 127))
    with pytest.raises(ValueError, match="fixed amax has 3 values"):
        quantize(x, with_calibrator("int8_channel", fixed_amax(torch.ones(3))))
    assert max_calibrator(x, -1).shape == (4,)


def test_collect_inputs_and_static_activation_amax():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    batches = [torch.randn(5, 8), torch.randn(7, 8)]
    seen = collect_inputs(model, batches)
    assert torch.equal(seen["0"], torch.cat(batches))
    h = torch.relu(model[0](torch.cat(batches)))
    torch.testing.assert_close(seen["2"], h)
    amax = calibrate_activations(model, batches, percentile_calibrator(100))
    assert amax == {"0": torch.cat(batches).abs().max().item(), "2": h.abs().max().item()}
    assert collect_inputs(model, batches, max_rows=6)["0"].shape == (6, 8)


def test_mse_calibrator_keeps_the_nvfp4_tensor_scale():
    x = heavy_tailed(4, 256)
    r = dataclasses.replace(quantize(x, "nvfp4").recipe, calibrator=mse_calibrator("nvfp4"))
    assert torch.equal(quantize(x, r).tensor_scale, quantize(x, "nvfp4").tensor_scale)
