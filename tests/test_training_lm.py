"""The tiny LM, its offline corpus, and short training runs under low-precision recipes."""
import math

import torch

from quantlib.models.tinylm import CORPUS, TinyLM, TinyLMConfig, get_batch, load_corpus, rotary
from quantlib.nn.training_runs import (
    gradient_underflow,
    loss_table,
    make_model,
    output_gradients,
    run_recipes,
)


def test_corpus_is_shipped_ascii_and_split():
    raw = CORPUS.read_bytes()
    assert 100_000 < len(raw) < 300_000 and max(raw) < 128
    train, val = load_corpus()
    assert len(train) + len(val) == len(raw) and len(val) == len(raw) // 10
    assert bytes(val[:50].tolist()) == raw[len(train):len(train) + 50]


def test_batches_are_seeded_windows_with_next_byte_targets():
    train, _ = load_corpus()
    x, y = get_batch(train, 4, 64, torch.Generator().manual_seed(3))
    x2, _ = get_batch(train, 4, 64, torch.Generator().manual_seed(3))
    assert x.shape == y.shape == (4, 64) and torch.equal(x, x2)
    assert torch.equal(x[:, 1:], y[:, :-1])


def test_model_shapes_initial_loss_and_rotary():
    torch.manual_seed(0)
    model = TinyLM()
    x, y = get_batch(load_corpus()[0], 2, 64, torch.Generator().manual_seed(0))
    assert model(x).shape == (2, 64, 256)
    assert abs(model(x, y).item() - math.log(256)) < 0.05       # uniform at init
    q = torch.randn(1, 2, 64, 32)
    assert torch.allclose(rotary(q).norm(dim=-1), q.norm(dim=-1), atol=1e-5)
    assert torch.equal(rotary(q)[..., 0, :], q[..., 0, :])        # position 0 is not rotated
    d, f, layers = 128, 256, 2
    linear = layers * (4 * d * d + 3 * d * f) + 256 * d
    assert sum(p.numel() for p in model.parameters()) == linear + 256 * d + (2 * layers + 1) * d


def test_short_runs_learn_and_fp8_tracks_fp32():
    cfg = TinyLMConfig(n_layers=1, context=32)
    res = run_recipes(["fp32", "fp8_current"], steps=12, batch=4, cfg=cfg)
    for r in res.values():
        assert r.losses[-1] < r.losses[0] - 0.8
    assert abs(res["fp8_current"].losses[-1] - res["fp32"].losses[-1]) < 0.1
    t = loss_table(res, last=4, baseline="fp32")
    assert t.column("recipe") == ["fp32", "fp8_current"] and t.column("val - fp32")[0] == 0.0


def test_make_model_converts_all_but_head_and_loads_state_dict():
    cfg = TinyLMConfig(n_layers=1)
    base = make_model("fp32", cfg, seed=1)
    conv = make_model("mxfp8", cfg, seed=2, state_dict=base.state_dict())
    kinds = {n: type(m).__name__ for n, m in conv.named_modules() if "Linear" in type(m).__name__}
    assert kinds.pop("head") == "Linear" and set(kinds.values()) == {"FP8Linear"} and len(kinds) == 5
    assert all(torch.equal(a, b) for a, b in zip(base.state_dict().values(),
                                                 conv.state_dict().values()))


def test_gradient_underflow_table():
    cfg = TinyLMConfig(n_layers=1)
    sd = make_model("fp32", cfg).state_dict()
    variants = (("E4M3, no scaling", {"recipe": "fp8_current", "scaling": "none",
                                           "fp8_format": "E4M3"}),
                ("E5M2, per-tensor scale", {"recipe": "fp8_current"}),
                ("E4M3, per-tensor scale", {"recipe": "fp8_current", "fp8_format": "E4M3"}),
                ("E4M3, 1x128 blocks", {"recipe": "fp8_block", "fp8_format": "E4M3"}))
    t = gradient_underflow(sd, cfg, batch=4, variants=variants)
    flushed = t.column("flushed to zero")
    assert flushed[0] > 0.7 and flushed[1] < 0.01
    # one token's gradient 10^5 x larger: E4M3 per-tensor loses the rest, blocks and E5M2 don't
    out = gradient_underflow(sd, cfg, batch=4, variants=variants, outlier=1e5)
    flushed = out.column("flushed to zero")
    assert flushed[2] > 0.5 and flushed[1] < 0.05 and flushed[3] < 0.05
    assert "x100000" in out.title
    assert len(output_gradients(sd, cfg, batch=4)) == 5       # every linear but the head
