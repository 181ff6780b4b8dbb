"""FP8Linear's kernel path (fused cast + transpose, cached weight copies, FP8 GEMMs) against
the emulation, on the Triton interpreter (use_kernel="force") or a GPU."""
import copy

import pytest
import torch
from torch import nn

pytest.importorskip("triton")

import quantlib.kernels as K
from quantlib.nn.training import FP8Linear

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def pair(recipe, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(128, 256).to(DEV)
    emu = FP8Linear.from_linear(copy.deepcopy(lin), recipe)
    emu.use_kernel = False
    ker = FP8Linear.from_linear(copy.deepcopy(lin), recipe)
    ker.use_kernel = "force"
    return emu, ker


def step(layer, x, dy):
    x = x.clone().requires_grad_(True)
    y = layer(x)
    y.backward(dy)
    return y.detach(), x.grad, layer.weight.grad, layer.bias.grad


@pytest.mark.parametrize("recipe", ["fp8_current", "fp8_rowwise", "fp8_block", "fp8_delayed"])
def test_kernel_path_matches_emulation(recipe):
    emu, ker = pair(recipe)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 64, 128, generator=g).to(DEV)       # 128 tokens: whole 128-blocks
    dy = torch.randn(2, 64, 256, generator=g).to(DEV)
    for _ in range(2):                                     # delayed: the history moves
        for a, b in zip(step(emu, x, dy), step(ker, x, dy), strict=True):
            assert a.shape == b.shape
            # same quantized operands, FP32 sums in another order
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-4 * float(a.abs().max())), recipe
        emu.zero_grad()
        ker.zero_grad()


def test_weight_copies_cached_across_micro_steps(monkeypatch):
    _, ker = pair("fp8_block")
    calls = []
    real = K.fp8_quantize_transpose

    def counting(t, recipe, *args, **kw):
        calls.append(recipe.name)
        return real(t, recipe, *args, **kw)

    monkeypatch.setattr(K, "fp8_quantize_transpose", counting)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(128, 128, generator=g).to(DEV)
    dy = torch.randn(128, 256, generator=g).to(DEV)
    step(ker, x, dy)
    step(ker, x, dy)                    # a second micro-step: the weight's pair is reused
    assert calls.count("fp8_e4m3_128x128") == 1
    assert calls.count("fp8_e4m3_1x128") == 2 and calls.count("fp8_e5m2_1x128") == 2
    opt = torch.optim.SGD(ker.parameters(), lr=0.1)
    opt.step()                          # the weight changes: cast again
    step(ker, x, dy)
    assert calls.count("fp8_e4m3_128x128") == 2
    ker.drop_weight_cache()
    step(ker, x, dy)
    assert calls.count("fp8_e4m3_128x128") == 3


def test_odd_token_count_forward_only():
    """Tokens that fill no whole 128-block: inference works, wgrad refuses clearly."""
    _, ker = pair("fp8_block")
    x = torch.randn(3, 128).to(DEV)
    with torch.no_grad():
        assert ker(x).shape == (3, 256)
    with pytest.raises(ValueError, match="not a multiple of 128"):
        ker(x.requires_grad_(True)).sum().backward()


@pytest.mark.parametrize("recipe", ["fp8_current", "fp8_block"])
def test_bf16_activations_kernel_epilogue(recipe):
    """BF16 activations: the kernel adds the bias and rounds to BF16 in its epilogue; the
    emulation adds in FP32 and casts: one rounding of the same FP32 sum either way."""
    emu, ker = pair(recipe, seed=3)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(128, 128, generator=g).to(DEV, torch.bfloat16)
    dy = torch.randn(128, 256, generator=g).to(DEV, torch.bfloat16)
    for a, b in zip(step(emu, x, dy), step(ker, x, dy), strict=True):
        assert a.dtype == b.dtype
        # FP32 sums in another order may straddle a BF16 rounding boundary: 1 BF16 ulp
        assert torch.allclose(a.float(), b.float(), rtol=2.0 ** -7, atol=1e-3), recipe


def test_delayed_scaling_one_read_matches_history():
    """Delayed scaling on the kernel path: the same amax histories as the emulation after a few
    steps (each step records its own amax, reduced in the cast), the same outputs."""
    emu, ker = pair("fp8_delayed", seed=7)
    g = torch.Generator().manual_seed(8)
    for i in range(3):
        x = (torch.randn(128, 128, generator=g) * (i + 1)).to(DEV)
        dy = torch.randn(128, 256, generator=g).to(DEV)
        for a, b in zip(step(emu, x, dy), step(ker, x, dy), strict=True):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-4 * float(a.abs().max()))
        emu.zero_grad()
        ker.zero_grad()
    for role in ("x", "w", "dy"):
        he, hk = getattr(emu, f"amax_history_{role}"), getattr(ker, f"amax_history_{role}")
        assert torch.equal(he, hk), role
        assert int((hk > 0).sum()) == 3
