"""decode_attention: the Triton kernel (interpreter) against its plain-torch twin, bit for bit,
and both against float64 attention over the dequantized cache."""
import math

import pytest
import torch

from quantlib.attention import quantize_kv
from quantlib.kernels import decode_attention, reference
from quantlib.kernels.dispatch import use_triton


def _case(B, Hq, Hkv, T, D, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, D, generator=g)
    k = torch.randn(B, Hkv, T, D, generator=g)
    k[..., 1] *= 8.0                   # an outlier channel, as real keys have
    v = torch.randn(B, Hkv, T, D, generator=g)
    return q, k, v


def _float64(q, kq, vq, scale):
    g = q.shape[1] // kq.shape[1]
    k = kq.dequantize().double().repeat_interleave(g, 1)
    v = vq.dequantize().double().repeat_interleave(g, 1)
    p = torch.softmax(torch.einsum("bhd,bhtd->bht", q.double(), k) * scale, -1)
    return torch.einsum("bht,bhtd->bhd", p, v)


needs_triton = pytest.mark.skipif(
    not (torch.cuda.is_available() or __import__("os").environ.get("TRITON_INTERPRET") == "1"),
    reason="needs a GPU or the Triton interpreter")


@needs_triton
@pytest.mark.parametrize("recipe", ["fp8_token", "fp8_tensor", "fp8_head", "nvfp4"])
@pytest.mark.parametrize("shape, splits, block", [
    ((2, 4, 2, 37, 16), 3, 8),        # GQA 2:1, T not a multiple of the block
    ((1, 6, 2, 20, 32), 4, 4),        # group of 3 (padded to 4), more splits than needed
    ((1, 2, 2, 9, 16), 8, 8),         # empty splits
])
def test_kernel_equals_twin_bit_for_bit(recipe, shape, splits, block):
    q, k, v = _case(*shape)
    kq, vq = quantize_kv(k, recipe), quantize_kv(v, recipe)
    got = decode_attention(q, kq, vq, num_splits=splits, block_n=block, path="triton")
    ref = decode_attention(q, kq, vq, num_splits=splits, block_n=block, path="reference")
    assert torch.equal(got, ref)
    exact = _float64(q, kq, vq, shape[-1] ** -0.5)
    assert (got.double() - exact).abs().max().item() < 1e-5 * exact.abs().max().item() + 1e-6


def test_twin_is_attention_for_any_split():
    q, k, v = _case(2, 8, 2, 300, 64, seed=3)
    kq, vq = quantize_kv(k, "fp8_token"), quantize_kv(v, "fp8_token")
    exact = _float64(q, kq, vq, 0.1)
    for splits in (1, 5, 32):
        got = decode_attention(q, kq, vq, softmax_scale=0.1, num_splits=splits, block_n=16,
                               path="reference")
        assert (got.double() - exact).abs().max().item() < 1e-5


def test_exp2_polynomial_is_float32_accurate():
    x = torch.linspace(-130.0, 0.0, 200001)
    got = reference.exp2_poly_ref(x)
    want = torch.exp2(x.double())
    ok = x >= -126
    rel = ((got.double() - want).abs() / want)[ok]
    assert rel.max().item() < 3e-7
    assert torch.equal(got[~ok], torch.zeros_like(got[~ok]))


def test_tree_sum_order():
    x = torch.tensor([1e8, 1.0, -1e8, 1.0])
    # (1e8 + 1) + (-1e8 + 1) in float32: both pairs round to +-1e8, the sum is 0
    assert reference.tree_sum_ref(x).item() == 0.0
    assert math.isclose(reference.tree_sum_ref(torch.arange(8.0)).item(), 28.0)


def test_bad_input_is_refused():
    q, k, v = _case(1, 2, 2, 8, 16)
    kq, vq = quantize_kv(k, "fp8_token"), quantize_kv(v, "fp8_token")
    with pytest.raises(ValueError, match="FP8 E4M3"):
        decode_attention(q, quantize_kv(k, "int8_token"), vq)
    with pytest.raises(ValueError, match="both be NVFP4"):
        decode_attention(q, quantize_kv(k, "nvfp4"), vq)
    with pytest.raises(ValueError, match="disagree"):
        decode_attention(q[..., :8], kq, vq)
    with pytest.raises(ValueError, match="multiple"):
        decode_attention(torch.randn(1, 3, 16), kq, vq)
    with pytest.raises(TypeError, match="QuantizedTensor"):
        decode_attention(q, k, vq)
    with pytest.raises(TypeError, match="q must be"):
        decode_attention(q.long(), kq, vq)


def test_auto_path_on_a_cpu_tensor():
    q, k, v = _case(1, 2, 1, 8, 16)
    kq, vq = quantize_kv(k, "fp8_token"), quantize_kv(v, "fp8_token")
    out = decode_attention(q, kq, vq)
    assert out.shape == (1, 2, 16)
    assert use_triton(kq.codes, "auto") in (True, False)
