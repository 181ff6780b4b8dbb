"""Bad input to the model-level API gets a clear error, never a silently wrong model: configs
checked on load, calibration that yields nothing, integer inputs, invalid static scales, layers
that cannot be swapped, option typos, and the memory calculator's inputs."""
import pytest
import torch
from torch import nn

from quantlib.memory import ModelConfig, bits_per_element, inference_memory
from quantlib.memory.training import optimizer_state_bytes
from quantlib.nn import FP8Linear, QuantLinear, compare_ptq, prepare_qat, quantize_model
from quantlib.qtensor import quantize


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16))


def test_checkpoint_of_another_config_is_refused():
    lin = nn.Linear(64, 32)
    saved = QuantLinear.from_linear(lin, "fp8").state_dict()        # same shapes as int8
    with pytest.raises(ValueError, match="same config"):
        QuantLinear.from_linear(lin, "int8").load_state_dict(saved)
    QuantLinear.from_linear(nn.Linear(64, 32), "fp8").load_state_dict(saved)   # same config


def test_calibration_batches():
    m, x = mlp(), torch.randn(128, 64)
    with pytest.raises(ValueError, match="no batches"):
        quantize_model(m, "w8a8_int8_static", calibration=[])
    with pytest.raises(ValueError, match="no batches"):
        prepare_qat(m, "w4a4_int4", calibration=iter([]))
    one = quantize_model(m, "w8a8_int8_static", calibration=x)       # a tensor: one batch
    listed = quantize_model(m, "w8a8_int8_static", calibration=[x])
    assert torch.equal(one[0].act_amax, listed[0].act_amax)
    seen = []
    compare_ptq(m, ["w8a8_int8_static", "w4a4_int4"],
                lambda q: seen.append(getattr(q[0], "act_amax", None) is not None) or {"ok": 1},
                calibration=(b for b in [x]))                      # a generator, used twice
    assert seen == [False, True, True]                             # fp32 row, then two static


def test_layer_inputs_and_static_scales():
    q = QuantLinear.from_linear(nn.Linear(64, 32), "int8")
    with pytest.raises(TypeError, match="floating-point"):
        q(torch.randint(0, 5, (2, 64)))
    with pytest.raises(ValueError, match="takes"):
        q(torch.tensor(1.0))
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="positive and finite"):
            QuantLinear.from_linear(nn.Linear(64, 32), "w8a8_int8_static", act_amax=bad)
    with pytest.raises(ValueError, match="qweight"):
        QuantLinear.from_linear(nn.Linear(64, 32), "int8",
                                qweight=quantize(torch.randn(32, 64), "nvfp4"))
    f = FP8Linear(64, 32, recipe="fp8_current")
    with pytest.raises(TypeError, match="floating-point"):
        f(torch.randint(0, 5, (2, 64)))
    assert f(torch.randn(0, 64)).shape == (0, 32)


def test_torch_transformer_layers_are_refused_clearly():
    """nn.MultiheadAttention's out_proj is never swapped (the module reads its weight); the
    linear layers of nn.TransformerEncoderLayer are refused with the reason, not broken."""
    layer = nn.TransformerEncoderLayer(64, 4, 128, batch_first=True, dropout=0.0).eval()
    with pytest.raises(ValueError, match="reads their weights directly"):
        quantize_model(layer, "int8")
    block = nn.Sequential(nn.Linear(64, 64), nn.MultiheadAttention(64, 4, batch_first=True))
    q = quantize_model(block, "int8")
    assert isinstance(q[0], QuantLinear) and not isinstance(q[1].out_proj, QuantLinear)


def test_option_errors_name_the_option():
    m, x = mlp(), torch.randn(64, 64)
    for bad in (True, 2.0, -4, 48):
        with pytest.raises(ValueError, match="rotate"):
            quantize_model(m, "int8", rotate=bad)
    with pytest.raises(ValueError, match="smooth_alpha"):
        quantize_model(m, "w8a8_int8", calibration=[x], smooth="smoothquant", smooth_alpha=2.0)
    with pytest.raises(TypeError, match="skip"):
        quantize_model(m, "int8", skip=2)
    with pytest.raises(ValueError, match="match no linear layer"):
        quantize_model(m, "int8", skip=["2", "lm_head"])
    with pytest.raises(ValueError, match="variant"):
        compare_ptq(m, [("label", "int8")], lambda q: {"a": 1.0})
    with pytest.raises(TypeError, match="dict"):
        compare_ptq(m, ["int8"], lambda q: 1.0)


def test_memory_calculator_inputs():
    with pytest.raises(TypeError, match="from_hf_config"):
        inference_memory({"hidden_size": 64})
    with pytest.raises(TypeError, match="tie_word_embeddings"):
        ModelConfig(64, 128, 2, 4, 100, tie_word_embeddings="false")
    with pytest.raises(ValueError, match="n_params"):
        optimizer_state_bytes(-5)
    assert bits_per_element("int4_g128_asym") == 4 + (32 + 8) / 128    # zero points counted
    assert bits_per_element("int4_g128_asym") == quantize(
        torch.randn(128, 1024), "int4_g128_asym").bits_per_element
