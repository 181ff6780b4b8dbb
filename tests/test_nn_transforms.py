"""Equivalent transforms before quantization (Hadamard rotation, SmoothQuant, AWQ): the factors'
formulas, the layer's transformed product T(x) Q(W')^T, quantize_model's plumbing (static scales
and GPTQ see T(x)), and that each method lowers the output error it is meant to lower on a layer
with outlier input channels."""
import pytest
import torch
from torch import nn

from quantlib.nn import (
    QuantLinear,
    awq_factors,
    collect_inputs,
    quantize_model,
    smoothquant_factors,
)
from quantlib.nn.hadamard import hadamard_transform, random_hadamard_matrix
from quantlib.nn.linear import kernel_gemm
from quantlib.nn.ptq import size_by_component
from quantlib.qtensor import quantize


def outlier_layer(seed=0, n_in=256, n_out=128, tokens=512):
    """A linear layer whose inputs have a few channels 30x larger than the rest, every token:
    the activation pattern of trained transformers."""
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(n_in, n_out)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n_out, n_in, generator=g) / n_in ** 0.5)
        lin.bias.zero_()
    x = torch.randn(tokens, n_in, generator=g)
    x[:, [3, 77, 200]] *= 30.0
    return lin, x


def rel_err(y, ref):
    return float((y - ref).norm() / ref.norm())   # callers pass tensors without grad


def test_smoothquant_factors_formula():
    lin, x = outlier_layer()
    x[:, 5] = 0.0                                              # a dead channel keeps s = 1
    s = smoothquant_factors(x, lin.weight, alpha=0.75)
    a, w = x.abs().amax(0), lin.weight.detach().abs().amax(0)
    expect = a.pow(0.75) / w.pow(0.25)
    assert s[5] == 1.0
    keep = torch.arange(256) != 5
    torch.testing.assert_close(s[keep], expect[keep], rtol=0, atol=0)
    # alpha = 1 makes every smoothed channel's amax 1: all of x's range moves into W
    s1 = smoothquant_factors(x, lin.weight, alpha=1.0)
    torch.testing.assert_close((x / s1).abs().amax(0)[keep], torch.ones(255))
    with pytest.raises(ValueError, match="alpha"):
        smoothquant_factors(x, lin.weight, alpha=1.5)
    with pytest.raises(ValueError, match="in_features"):
        smoothquant_factors(x[:, :10], lin.weight)


def test_awq_search_never_worse_than_rtn_on_calibration():
    lin, x = outlier_layer(1)
    w = lin.weight.detach()
    s, alpha = awq_factors(x, w, "int4_g128", grid=10)
    assert s.shape == (256,) and bool((s > 0).all())
    torch.testing.assert_close(s.max() * s.min(), torch.tensor(1.0))
    ref = x @ w.T
    rtn = x @ quantize(w, "int4_g128").dequantize().T
    awq = (x / s) @ quantize(w * s, "int4_g128").dequantize().T
    assert 0.0 < alpha <= 1.0                                  # outliers: some alpha helps
    assert rel_err(awq, ref) < 0.8 * rel_err(rtn, ref)


@pytest.mark.parametrize("config", ["fp8", "nvfp4", "w8a8_int8", "nvfp4_w4a4"])
@torch.no_grad()
def test_smoothed_layer_computes_the_rescaled_product(config):
    """QuantLinear with factors s computes Q_a(x / s) Q_w(W * s)^T + b: in its forward, and (to
    BF16 accuracy) through kernel_gemm, the route a GPU takes."""
    lin, x = outlier_layer(2)
    s = smoothquant_factors(x, lin.weight, 0.5)
    q = QuantLinear.from_linear(lin, config, smooth=s)
    assert q.smooth is not None and "smoothed" in repr(q)
    w_s = quantize(lin.weight.detach() * s, q.config.weight).dequantize()
    xs = x / s
    if q.config.activation is not None:
        xs = quantize(xs, q.config.activation).dequantize()
    torch.testing.assert_close(q(x), xs @ w_s.T + lin.bias, rtol=1e-5, atol=1e-5)
    y = kernel_gemm(q, x, path="reference")        # the GEMM route: BF16 activations
    if y is not None:
        assert rel_err(y, q.reference_forward(x)) < 2.0 ** -7
    with pytest.raises(ValueError, match="positive finite"):
        QuantLinear.from_linear(lin, config, smooth=-s)


@torch.no_grad()
def test_smoothquant_rescues_static_int8_activations():
    """Per-tensor static INT8 activations: one outlier channel stretches the grid for all; with
    strong migration (alpha 0.8) the layer's output error drops several-fold."""
    lin, x = outlier_layer(3)
    model = nn.Sequential(lin)
    ref = model(x)
    plain = quantize_model(model, "w8a8_int8_static", calibration=[x])
    smooth = quantize_model(model, "w8a8_int8_static", calibration=[x], smooth="smoothquant",
                            smooth_alpha=0.8)
    assert rel_err(smooth(x), ref) < 0.5 * rel_err(plain(x), ref)
    # the static amax is that of x / s, the tensor the activation quantizer sees
    s = smooth[0].smooth
    torch.testing.assert_close(smooth[0].act_amax, (x / s).abs().max())


@torch.no_grad()
def test_quantize_model_smoothing_options():
    lin, x = outlier_layer(4)
    model = nn.Sequential(lin, nn.ReLU(), nn.Linear(128, 64))
    with pytest.raises(ValueError, match="calibration"):
        quantize_model(model, "nvfp4", smooth="awq")
    with pytest.raises(ValueError, match="smoothquant"):
        quantize_model(model, "nvfp4", calibration=[x], smooth="rotate")
    q = quantize_model(model, "int4_g128", calibration=[x], smooth="awq")
    assert q[0].smooth is not None and q[2].smooth is not None
    # GPTQ on top of AWQ: the Hessian is that of x / s; still close to the float model
    g = quantize_model(model, "int4_g128", calibration=[x], smooth="awq", method="gptq")
    inputs = collect_inputs(model, [x])
    assert set(inputs) == {"0", "2"}
    assert rel_err(g(x), model(x)) < 0.1
    # a model quantized the same way loads the state dict (smooth factors included)
    fresh = quantize_model(model, "int4_g128", calibration=[x * 2], smooth="awq")
    fresh.load_state_dict(q.state_dict())
    assert torch.equal(fresh(x), q(x))


@torch.no_grad()
def test_rotated_then_smoothed_layer():
    """T(x) = (x H) / s and W' = (W H) * s: the layer's forward is Q_a(T(x)) Q_w(W')^T + b, and
    before rounding T(x) W'^T = x W^T."""
    lin, x = outlier_layer(5)
    H = random_hadamard_matrix(64, seed=3)
    xr, wr = hadamard_transform(x, H), hadamard_transform(lin.weight, H)
    torch.testing.assert_close(xr @ wr.T, x @ lin.weight.T, rtol=1e-4, atol=1e-4)
    s = smoothquant_factors(xr, wr, 0.5)
    q = QuantLinear.from_linear(lin, "w8a8_int8", rotation=H, smooth=s)
    assert "rotated 64" in repr(q) and "smoothed" in repr(q)
    xt = quantize(xr / s, "int8_rowwise").dequantize()
    wq = quantize(wr * s, "int8_channel").dequantize()
    torch.testing.assert_close(q(x), xt @ wq.T + lin.bias, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="orthonormal"):
        QuantLinear.from_linear(lin, "fp8", rotation=2 * H)
    with pytest.raises(ValueError, match="orthonormal"):
        QuantLinear.from_linear(lin, "fp8", rotation=random_hadamard_matrix(512))


@torch.no_grad()
def test_rotation_helps_uniform_int_grids():
    """Per-tensor static INT8 activations with outlier channels: rotating 128 channels at a time
    spreads each outlier and the output error drops several-fold."""
    lin, x = outlier_layer(6)
    model = nn.Sequential(lin)
    ref = model(x)
    plain = quantize_model(model, "w8a8_int8_static", calibration=[x])
    rot = quantize_model(model, "w8a8_int8_static", calibration=[x], rotate=128)
    assert rel_err(rot(x), ref) < 0.5 * rel_err(plain(x), ref)
    xt = hadamard_transform(x, rot[0].rotation)
    torch.testing.assert_close(rot[0].act_amax, xt.abs().max())     # static scale of T(x)


@torch.no_grad()
def test_quantize_model_rotation_options():
    lin, x = outlier_layer(7)
    model = nn.Sequential(lin, nn.ReLU(), nn.Linear(128, 64))
    with pytest.raises(ValueError, match="power of two"):
        quantize_model(model, "nvfp4", rotate=48)
    with pytest.raises(ValueError, match="layer '2'"):
        quantize_model(model, "nvfp4", rotate=256)          # 256 does not divide 128
    q = quantize_model(model, "nvfp4", rotate=64)          # weight-only: no calibration needed
    assert q[0].rotation is q[2].rotation                  # one matrix for the model
    sizes = size_by_component(q)
    nvfp4_only = size_by_component(quantize_model(model, "nvfp4"))
    assert sizes["scales"] - nvfp4_only["scales"] == 64 * 64 * 4      # counted once
    both = quantize_model(model, "int4_g128", calibration=[x], rotate=64, smooth="awq",
                          method="gptq")
    assert rel_err(both(x), model(x)) < 0.1
    fresh = quantize_model(model, "int4_g128", calibration=[x * 3], rotate=64, smooth="awq")
    fresh.load_state_dict(both.state_dict())
    assert torch.equal(fresh(x), both(x))
