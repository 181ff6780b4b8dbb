"""QuantLinear and quantize_model: stored weights, outputs, skip rules, state_dict, memory, errors."""
import io
import warnings

import pytest
import torch
from torch import nn

import quantlib.nn.linear as qlinear
from quantlib.nn import CONFIGS, QuantLinear, memory_report, quantize_model, size_by_component
from quantlib.nn.linear import get_config, kernel_gemm
from quantlib.qtensor import quantize

ALL = list(CONFIGS)


def mlp(k=256, n=128, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(k, n), nn.ReLU(), nn.Linear(n, 128), nn.ReLU(),
                         nn.Linear(128, 10))


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_int8_channel_weight_matches_hand_rounding():
    lin = nn.Linear(256, 32)
    q = QuantLinear.from_linear(lin, "int8")
    w = lin.weight.detach()
    s = w.abs().amax(1, keepdim=True) / 127          # scale = amax / 127 per output channel
    want = torch.round(w * (1.0 / s)).clamp(-127, 127) * s
    assert torch.equal(q.qweight.dequantize(), want)
    assert q.weight_codes.dtype == torch.uint8 and q.weight_codes.shape == (32, 256)


def test_fp8_rowwise_weight_matches_torch_float8():
    lin = nn.Linear(128, 16)
    q = QuantLinear.from_linear(lin, "fp8")
    w = lin.weight.detach()
    s = w.abs().amax(1, keepdim=True) / 448
    want = (w * (1.0 / s)).to(torch.float8_e4m3fn).float() * s   # torch's RNE cast: the oracle
    assert torch.equal(q.qweight.dequantize(), want)


@pytest.mark.parametrize("name", ALL)
def test_every_config_stores_a_quantized_tensor_and_stays_close(name):
    model = mlp()
    x = torch.randn(8, 256)
    q = quantize_model(model, name, calibration=[torch.randn(64, 256)])
    lin = q[0]
    assert isinstance(lin, QuantLinear)
    ref = quantize(model[0].weight.detach(), get_config(name).weight)
    assert torch.equal(lin.weight_codes, ref.codes)       # real codes, from quantlib.quantize
    bits = get_config(name).weight.format.bits
    assert rel_err(lin(x), model[0](x)) < (0.05 if bits == 8 else 0.25)


def test_weight_only_output_is_dequantized_weight_matmul():
    lin = nn.Linear(256, 32)
    q = QuantLinear.from_linear(lin, "nvfp4")
    x = torch.randn(4, 3, 256)
    want = x @ quantize(lin.weight.detach(), "nvfp4").dequantize().T + lin.bias
    torch.testing.assert_close(q(x), want, rtol=1e-6, atol=1e-6)


def test_w8a8_quantizes_each_token_on_the_fly():
    lin = nn.Linear(128, 16)
    q = QuantLinear.from_linear(lin, "w8a8_fp8")
    x = torch.randn(5, 128) * torch.logspace(-2, 2, 5)[:, None]   # tokens of very different size
    xq = torch.stack([quantize(r[None], "fp8_e4m3_tensor").dequantize()[0] for r in x])
    want = nn.functional.linear(xq, q.qweight.dequantize(), lin.bias)
    torch.testing.assert_close(q(x), want, rtol=0, atol=0)


def test_static_activation_amax_is_the_calibration_max():
    model = mlp()
    cal = torch.randn(64, 256) * 3
    q = quantize_model(model, "w4a4_int4", calibration=[cal])
    assert q[0].act_amax.item() == cal.abs().max().item()
    assert q[2].act_amax.item() == model[1](model[0](cal)).abs().max().item()
    dyn = quantize_model(model, "w4a4_int4")        # no calibration: dynamic per-tensor scales
    assert dyn[0].act_amax is None


def test_skip_by_name_glob_and_predicate():
    model = mlp()
    assert isinstance(quantize_model(model, "int8", skip="4")[4], nn.Linear)
    q = quantize_model(model, "int8", skip=["0", "[4]"])
    assert [type(q[i]) for i in (0, 2, 4)] == [nn.Linear, QuantLinear, nn.Linear]
    q = quantize_model(model, "int8", skip=lambda name, m: m.out_features == 10)
    assert isinstance(q[0], QuantLinear) and isinstance(q[4], nn.Linear)
    assert isinstance(model[0], nn.Linear)                    # the original is untouched


def test_bad_input_has_clear_errors():
    with pytest.raises(ValueError, match="no nn.Linear"):
        quantize_model(nn.Sequential(nn.ReLU(), nn.Conv1d(1, 1, 3)), "int8")
    with pytest.raises(ValueError, match="skips all"):
        quantize_model(mlp(), "int8", skip="*")
    with pytest.raises(ValueError, match=r"divide none of the layers.*\['0'\].*pad=True"):
        quantize_model(nn.Sequential(nn.Linear(100, 128)), "int4_g128")
    with pytest.raises(ValueError, match="unknown quantization config"):
        quantize_model(mlp(), "int3_magic")
    with pytest.raises(ValueError, match="needs calibration"):
        quantize_model(mlp(), "int4_g128", method="gptq")
    with pytest.raises(ValueError, match="static activation scales need"):
        QuantLinear.from_linear(nn.Linear(32, 8), "nvfp4_w4a4", act_amax=1.0)


@pytest.mark.parametrize("name", ["int4_g128_asym", "nvfp4", "w4a4_int4", "mxfp4"])
def test_state_dict_round_trip(name):
    model = mlp()
    cal = [torch.randn(32, 256)]
    q = quantize_model(model, name, calibration=cal)
    buf = io.BytesIO()
    torch.save(q.state_dict(), buf)
    buf.seek(0)
    fresh = quantize_model(mlp(seed=1), name, calibration=cal)   # same layout, other values
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    x = torch.randn(4, 256)
    assert torch.equal(fresh(x), q(x))


def test_memory_report_counts_codes_and_scales():
    lin = nn.Sequential(nn.Linear(256, 64, bias=False))
    q = quantize_model(lin, "int4_g128")
    size = size_by_component(q)
    assert size["linear weights"] == 64 * 256 // 2          # two 4-bit codes per byte
    assert size["scales"] == 64 * 2 * 4                     # one fp32 scale per 128 elements
    t = memory_report(lin, q)
    assert t.column("before (bytes)")[-1] == 64 * 256 * 4
    assert t.column("after (bytes)")[-1] == 64 * 128 + 512


def test_fallback_warns_once_on_a_gpu_path_and_never_on_the_cpu(monkeypatch):
    q = quantize_model(mlp(), "w8a8_int8")
    x = torch.randn(2, 256)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                      # the CPU reference is silent
        q(x)
    monkeypatch.setattr(qlinear, "kernel_path", lambda device=None: "native-fp8")
    qlinear._WARNED.clear()
    with pytest.warns(UserWarning, match="no native-fp8 GEMM kernel for 'w8a8_int8'"):
        y = q(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                      # once only
        assert torch.equal(q(x), y)


@pytest.mark.parametrize("name", ["w8a8_fp8", "nvfp4", "mxfp4", "mxfp8", "nvfp4_w4a4", "fp8",
                                  "int8", "int4_channel", "int4_g128", "int4_g128_asym"])
def test_kernel_gemm_agrees_with_the_reference(name):
    # on a GPU the Triton GEMMs; on a CPU under TRITON_INTERPRET=1 (tests/conftest.py) the same
    # kernels in Triton's interpreter; without it the kernels' reference twins
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    q = quantize_model(mlp(), name).to(dev)
    x = torch.randn(16, 256, device=dev)
    y = kernel_gemm(q[0], x)
    assert y is not None
    torch.testing.assert_close(y, q[0].reference_forward(x), rtol=0.02, atol=0.02)


def test_an_empty_quant_linear_loads_a_saved_layer():
    lin = nn.Linear(64, 32)
    q = QuantLinear.from_linear(lin, "w4a4_int4", act_amax=2.5)
    empty = QuantLinear(64, 32, "w4a4_int4", static_activation=True)
    empty.load_state_dict(q.state_dict())
    x = torch.randn(3, 64)
    assert torch.equal(empty(x), q(x)) and empty.act_amax.item() == 2.5
