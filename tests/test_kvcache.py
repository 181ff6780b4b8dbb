"""KV-cache quantization: recipes against quantlib.quantize, the growing store, the
transformers cache class on a Llama built from a config, calibration, bytes per token."""
import warnings

import pytest
import torch

from quantlib import quantize
from quantlib.attention import KV_RECIPES, KVRecipe, KVStore, get_kv_recipe, quantize_kv
from quantlib.attention.kvcache import kv_bytes_table
from quantlib.memory import ModelConfig, kv_cache_memory
from quantlib.metrics import qsnr
from quantlib.recipes import Recipe

transformers = pytest.importorskip("transformers")


def _kv(shape=(2, 3, 10, 32), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g)


def _same(a, b):
    assert torch.equal(a.codes, b.codes)
    assert torch.equal(a.scales, b.scales)
    if a.tensor_scale is not None or b.tensor_scale is not None:
        assert torch.equal(a.tensor_scale.reshape(()), b.tensor_scale.reshape(()))


@pytest.mark.parametrize("name, recipe", [("fp8_token", "fp8_e4m3_rowwise"),
                                          ("int8_token", "int8_rowwise"),
                                          ("nvfp4", "nvfp4")])
def test_dynamic_recipes_are_quantlib_recipes(name, recipe):
    x = _kv()
    _same(quantize_kv(x, name), quantize(x, recipe))


def test_static_scales_with_the_data_amax_equal_dynamic_ones():
    x = _kv()
    _same(quantize_kv(x, "fp8_tensor_static", x.abs().amax()), quantize(x, "fp8_e4m3_tensor"))
    _same(quantize_kv(x, "nvfp4_static", x.abs().amax()), quantize(x, "nvfp4"))
    head = Recipe("h", "e4m3", "channel", axis=1)
    _same(quantize_kv(x, "fp8_head_static", x.abs().amax(dim=(0, 2, 3))), quantize(x, head))


def test_static_scale_saturates_beyond_the_calibrated_amax():
    x = _kv()
    y = quantize_kv(x, "fp8_tensor_static", torch.tensor(1.0)).dequantize()
    assert y.abs().max().item() == pytest.approx(1.0, rel=1e-6)
    # E4M3's two largest values are 416 and 448: from 432/448 up (ties to even), codes hit max
    assert torch.equal(y.abs() == 1.0, x.abs() * 448 >= 432)


def test_store_appends_token_by_token_like_one_block():
    x = _kv()
    for name in ("fp8_token", "int8_token", "nvfp4"):
        st = KVStore(name)
        for t in range(x.shape[2]):
            st.append(x[:, :, t:t + 1])
        amax = x[:, :, :1].abs().amax() if name == "nvfp4" else None  # frozen at token 0
        whole = quantize_kv(x, name, amax)
        assert torch.equal(st.qt.codes, whole.codes) and torch.equal(st.qt.scales, whole.scales)
        assert torch.equal(st.dequantize(), whole.dequantize())


def test_dynamic_tensor_scale_is_frozen_at_the_first_update():
    x = _kv()
    st = KVStore("fp8_tensor")
    st.append(x[:, :, :4])
    st.append(3 * x[:, :, 4:])          # larger values: saturate at the frozen scale
    first = x[:, :, :4].abs().amax()
    assert st.dequantize().abs().max().item() == pytest.approx(first.item(), rel=1e-6)
    assert torch.equal(st.amax, first)


def test_rotation_round_trips_and_helps_an_outlier_channel():
    x = _kv((1, 2, 64, 64))
    x[..., 5] *= 30.0                   # one outlier channel, as keys have
    # INT8 per token: the outlier sets every token's scale; rotated, it is spread over 64
    plain, rot = KVStore("int8_token"), KVStore(get_kv_recipe("int8_token", rotate=True))
    plain.append(x)
    rot.append(x)
    assert qsnr(x, rot.dequantize()) > qsnr(x, plain.dequantize()) + 3
    exact = KVStore(KVRecipe("fp8r", "e4m3", "token", rotate=True))
    exact.append(x)
    assert torch.allclose(exact.dequantize(), x, rtol=0.1, atol=0.1 * x.abs().max().item())


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="unknown KV recipe"):
        get_kv_recipe("fp7")
    with pytest.raises(ValueError, match="static"):
        KVStore("fp8_tensor_static")
    with pytest.raises(ValueError, match="4-D"):
        quantize_kv(torch.randn(3, 4), "fp8_token")
    with pytest.raises(TypeError, match="floating"):
        quantize_kv(torch.ones(1, 1, 1, 16, dtype=torch.int32), "fp8_token")
    with pytest.raises(ValueError, match="per-token"):
        KVRecipe("x", "e4m3", "token", static=True)
    with pytest.raises(ValueError, match="NVFP4"):
        KVRecipe("x", "e2m1", "token")


# ---- the transformers cache ---------------------------------------------------------------
@pytest.fixture(scope="module")
def llama():
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return LlamaForCausalLM(cfg).eval()


def _ids(b=2, t=12, seed=1):
    return torch.randint(0, 96, (b, t), generator=torch.Generator().manual_seed(seed))


def _generate(model, cache, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.generate(_ids(), attention_mask=torch.ones(2, 12, dtype=torch.long),
                              past_key_values=cache, max_new_tokens=4, do_sample=False,
                              pad_token_id=0, **kw)


@pytest.mark.parametrize("name", ["fp8_token", "int8_token", "nvfp4", "fp8_tensor", "fp8_head"])
def test_generate_with_the_cache(llama, name):
    from quantlib.nn import QuantizedKVCache
    cache = QuantizedKVCache(name, config=llama.config)
    out = _generate(llama, cache)
    assert out.shape == (2, 16)
    assert cache.get_seq_length() == 15          # the last token is never fed back
    st = cache.layers[0].k
    assert st.qt.shape == (2, 2, 15, 32) and st.recipe.name == name


def test_cache_returns_what_it_stores_and_logits_stay_close(llama):
    from quantlib.nn import QuantizedKVCache
    ids = _ids()
    with torch.no_grad():
        ref = llama(ids).logits
        cache = QuantizedKVCache("fp8_token", config=llama.config)
        got = llama(ids, cache=cache).logits
    assert 20 < qsnr(ref, got) < 200     # quantized, but close
    layer = cache.layers[1]
    k, v = layer.k.dequantize(), layer.v.dequantize()
    k2, v2 = layer.k.qt.dequantize(), layer.v.qt.dequantize()
    assert torch.equal(k, k2) and torch.equal(v, v2)


def test_beam_search_reorders_the_cache(llama):
    from quantlib.nn import QuantizedKVCache
    out = _generate(llama, QuantizedKVCache("fp8_token", config=llama.config), num_beams=2)
    assert out.shape == (2, 16)


def test_calibration_matches_the_plain_cache_and_feeds_static_scales(llama):
    from transformers import DynamicCache

    from quantlib.nn import QuantizedKVCache, calibrate_kv
    ids = _ids()
    ka, va = calibrate_kv(llama, [ids])
    plain = DynamicCache()
    with torch.no_grad():
        llama(ids, cache=plain)
    for i in range(2):
        assert torch.equal(ka[i], plain.layers[i].keys.abs().amax())
        assert torch.equal(va[i], plain.layers[i].values.abs().amax())
    kh, _ = calibrate_kv(llama, [ids], per_head=True)
    assert kh[0].shape == (2,) and torch.equal(kh[0].amax(), ka[0])
    cache = QuantizedKVCache("fp8_tensor_static", key_amax=ka, value_amax=va,
                             config=llama.config)
    _generate(llama, cache)
    assert torch.equal(cache.layers[1].k.amax, ka[1])


def test_bytes_per_token_tie_to_the_memory_calculator(llama):
    from quantlib.nn import QuantizedKVCache
    mc = ModelConfig.from_hf_config(llama.config.to_dict())
    for name in ("fp8_token", "int8_token", "nvfp4", "fp8_tensor"):
        cache = QuantizedKVCache(name, config=llama.config)
        _generate(llama, cache)
        fmt = get_kv_recipe(name).storage_format(mc.head_dim)
        predicted = kv_cache_memory(mc, 2, 15, fmt)
        per_layer = 0 if name.endswith("token") else 2 * 4 * mc.num_hidden_layers
        assert cache.nbytes == predicted + per_layer, name
        assert cache.bytes_per_token() == cache.nbytes / 30


def test_bytes_table():
    t = kv_bytes_table("Llama-3-8B")            # 32 layers, 8 KV heads x 128
    rows = {r[0]: r for r in t.rows}
    assert rows["BF16"][2] == 2 * 32 * 8 * 128 * 2
    assert rows["fp8_token"][2] == 2 * 32 * 8 * (128 + 4)
    assert rows["nvfp4"][2] == 2 * 32 * 8 * (64 + 8)
    assert set(KV_RECIPES) >= {"fp8_tensor_static", "fp8_head", "int8_token", "nvfp4"}
