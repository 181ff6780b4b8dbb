"""Error metrics: QSNR, MSE, max abs/rel error and the QSNR grid used by the chapter."""
import math

import pytest
import torch

from quantlib.metrics import max_abs_error, max_rel_error, mse, qsnr, qsnr_table
from quantlib.qtensor import quantize


def test_known_values():
    x = torch.ones(100)
    xq = torch.full((100,), 0.9)
    assert qsnr(x, xq) == pytest.approx(20.0)
    assert mse(x, xq) == pytest.approx(0.01)
    assert max_abs_error(x, xq) == pytest.approx(0.1)
    assert qsnr(x, x) == math.inf


def test_relative_error_skips_zeros():
    x = torch.tensor([0.0, 2.0, -4.0])
    xq = torch.tensor([1.0, 2.5, -4.0])
    assert max_rel_error(x, xq) == pytest.approx(0.25)
    assert max_abs_error(x, xq) == pytest.approx(1.0)
    assert max_rel_error(torch.zeros(3), torch.ones(3)) == 0.0


def test_accepts_quantized_tensor_and_checks_shapes():
    x = torch.randn(8, 64, generator=torch.Generator().manual_seed(0))
    q = quantize(x, "mxfp8_e4m3")
    assert qsnr(x, q) == qsnr(x, q.dequantize())
    with pytest.raises(ValueError, match="shapes differ"):
        qsnr(x, x[:4])


def test_qsnr_table_grid():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(16, 128, generator=g), torch.randn(16, 64, generator=g)
    t = qsnr_table({"gauss": a, "two": [a, b]}, ["mxfp4", "fp8_e4m3_tensor"])
    assert t.columns == ["recipe", "bits/element", "gauss", "two"]
    assert t.column("recipe") == ["mxfp4", "fp8_e4m3_tensor"]
    assert t.rows[0][2] == qsnr(a, quantize(a, "mxfp4"))
    both = torch.cat([a.flatten(), b.flatten()])
    deq = torch.cat([quantize(a, "mxfp4").dequantize().flatten(),
                     quantize(b, "mxfp4").dequantize().flatten()])
    assert t.rows[0][3] == qsnr(both, deq)
    assert t.rows[0][1] == pytest.approx(4.25)


def test_clipped_fraction_floor_clips_rceil_does_not():
    import dataclasses

    from quantlib.metrics import clipped_fraction, error_table
    from quantlib.recipes import get_recipe
    x = torch.full((1, 32), 0.1)
    x[0, 0] = 7.5                               # amax 7.5: FLOOR scale 2^0, 7.5 > 6 + 1 clips
    fl = get_recipe("mxfp4")
    rc = dataclasses.replace(fl, scale_rule="rceil", name="mxfp4_rceil")
    assert clipped_fraction(x, quantize(x, fl)) == 1 / 32
    assert clipped_fraction(x, quantize(x, rc)) == 0.0
    x[0, 0] = 6.9                               # rounds to 6 (within 6 + 2/2): not clipped
    assert clipped_fraction(x, quantize(x, fl)) == 0.0
    assert clipped_fraction(x, quantize(x, "int8_rowwise")) == 0.0
    t = error_table(x, [fl, rc])
    assert t.column("recipe") == ["mxfp4", "mxfp4_rceil"]
    assert t.rows[0][2] == qsnr(x, quantize(x, fl))


def test_element_scales_are_each_elements_dequantization_scale():
    x = torch.randn(32, 64, generator=torch.Generator().manual_seed(2))
    q = quantize(x, "nvfp4")
    s = q.element_scales()
    assert s[5, 17] == q.scale_values()[5, 1] * q.tensor_scale
    m = quantize(x, "mxint8")
    assert m.element_scales()[3, 40] == 2.0 ** (m.scales[3, 1].item() - 127) / 64
    b = quantize(x, "fp8_e4m3_tensor")
    assert torch.all(b.element_scales() == b.scales.item())


def test_outlier_table_per_tensor_suffers_blocks_do_not():
    from quantlib.metrics import outlier_table
    x = torch.randn(8, 256, generator=torch.Generator().manual_seed(3))
    t = outlier_table(x, ["int8_tensor", "mxfp8_e4m3"], outlier=100.0)
    loss = dict(zip(t.column("recipe"), t.column("loss dB")))
    assert loss["int8_tensor"] > 20             # amax 100 vs ~3: about 30 dB lost
    assert abs(loss["mxfp8_e4m3"]) < 0.5        # only the outlier's own block changes scale
    spiked = x.clone()
    spiked[0, 0] = 100.0
    want = qsnr(x.reshape(-1)[1:], quantize(spiked, "int8_tensor").dequantize().reshape(-1)[1:])
    assert t.rows[0][2] == want
