"""FP8 attention emulation: each step against float64 and against quantlib's recipes."""
import torch

from quantlib import quantize
from quantlib.attention.emulate import attention_step_errors, attention_steps, block_fp8, fp8_p
from quantlib.metrics import qsnr


def _qkv(tq=16, tk=96, d=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, 2, tq, d, generator=g), torch.randn(1, 2, tk, d, generator=g),
            torch.randn(1, 2, tk, d, generator=g))


def test_block_fp8_is_one_rowwise_scale_per_block():
    x = _qkv()[1]
    y = block_fp8(x, 32)
    for b in range(3):
        blk = x[0, 1, 32 * b:32 * (b + 1)].reshape(1, -1)
        want = quantize(blk, "fp8_e4m3_rowwise").dequantize().reshape(32, -1)
        assert torch.equal(y[0, 1, 32 * b:32 * (b + 1)], want)
    assert block_fp8(x[:, :, :40], 32).shape == (1, 2, 40, 32)     # padded block


def test_fp8_p_scaled_keeps_small_probabilities():
    p = torch.tensor([1.0, 0.5, 2.0 ** -11, 1e-4])
    assert fp8_p(p, scaled=False)[2:].tolist() == [0.0, 0.0]       # below E4M3's 2^-9 / 2
    assert (fp8_p(p, scaled=True)[2:] > 0).all()
    assert fp8_p(p, scaled=True)[:2].tolist() == [1.0, 0.5]


def test_fp32_steps_match_float64_and_softmax_sums():
    q, k, v = _qkv()
    ref = attention_steps(q, k, v, softmax="fp64")
    r = attention_steps(q, k, v)
    assert qsnr(ref["O"].float(), r["O"]) > 110
    sdpa = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double())
    assert torch.allclose(ref["O"], sdpa, atol=1e-12)
    c = attention_steps(q, k, v, softmax="fp64", causal=True)
    sc = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double(),
                                                          is_causal=False,
                                                          attn_mask=torch.ones(16, 96).bool()
                                                          .tril(80))
    assert torch.allclose(c["O"], sc, atol=1e-12)


def test_step_table_orders_the_errors():
    q, k, v = _qkv()
    rows = {r[0]: r for r in attention_step_errors(q, k, v, block=32).rows}
    assert rows["softmax in FP32"][2] == "> 100"          # float64 rounding level
    assert 40 < rows["softmax in BF16"][2] < 70
    assert 15 < rows["QK^T: FP8 Q, K (block scales)"][2] < 40
    assert rows["all: FP8 Q, K, P x448, V"][3] < rows["PV: FP8 V (block scales)"][3]
