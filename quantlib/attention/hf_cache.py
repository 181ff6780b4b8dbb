"""A `transformers` cache that stores keys and values with quantlib's KV recipes.

It follows the library's own quantized cache (`transformers.cache_utils.QuantizedCache` and
`Fp8QuantizedLayer`): one `BaseQuantizedLayer` per decoder layer, `update` returns the keys and
values attention reads. Unlike the library's FP8 layer, which hands the first (prefill) states
back unquantized, every token the model attends to here went through the cache's format, as in
a serving engine that writes the cache before attention reads it.
"""
from __future__ import annotations

import torch
from transformers.cache_utils import BaseQuantizedLayer, Cache, DynamicCache

from quantlib.attention.kvcache import KVStore, amax_of, get_kv_recipe


class QuantizedKVLayer(BaseQuantizedLayer):
    """One decoder layer's keys and values as `KVStore`s (growing QuantizedTensors)."""

    def __init__(self, key_recipe, value_recipe, key_amax=None, value_amax=None, seed=0):
        super().__init__()
        self._spec = (key_recipe, value_recipe, key_amax, value_amax, seed)
        self.k = KVStore(key_recipe, key_amax, seed)
        self.v = KVStore(value_recipe, value_amax, seed + 1)

    def _quantize(self, tensor):     # the abstract hooks of BaseQuantizedLayer
        raise NotImplementedError("QuantizedKVLayer quantizes through KVStore.append")

    def _dequantize(self, q_tensor):
        raise NotImplementedError("QuantizedKVLayer dequantizes through KVStore.dequantize")

    def update(self, key_states, value_states, *args, **kwargs):
        self.cumulative_length += key_states.shape[-2]
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self._quantized_keys = self.k.append(key_states)
        self._quantized_values = self.v.append(value_states)
        return self.k.dequantize(key_states.dtype), self.v.dequantize(value_states.dtype)

    def reset(self) -> None:
        super().reset()
        kr, vr, ka, va, seed = self._spec
        self.k, self.v = KVStore(kr, ka, seed), KVStore(vr, va, seed + 1)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.k.index_batch(beam_idx)
        self.v.index_batch(beam_idx)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.reorder_cache(indices)

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes


class QuantizedKVCache(Cache):
    """`transformers` Cache with quantized keys and values:
    `model.generate(ids, past_key_values=QuantizedKVCache("fp8_token"))`.

    key_recipe / value_recipe: KV recipe names or `KVRecipe`s (value_recipe defaults to the
    key recipe without rotation); rotate_keys: Hadamard-rotate the keys; key_amax / value_amax:
    one calibrated amax per layer (a number or a per-head tensor each), from `calibrate_kv`,
    required for static recipes; num_layers or config: how many layers to make up front
    (otherwise layers are added as the model first reaches them)."""

    def __init__(self, key_recipe="fp8_token", value_recipe=None, *, rotate_keys=None,
                 key_amax=None, value_amax=None, config=None, num_layers=None, seed=0):
        kr = get_kv_recipe(key_recipe, rotate_keys)
        vr = get_kv_recipe(value_recipe if value_recipe is not None else key_recipe,
                           False if value_recipe is None else None)
        self.key_recipe, self.value_recipe = kr, vr
        self._amax = (key_amax, value_amax)
        self.seed = seed
        if config is not None:
            num_layers = config.get_text_config(decoder=True).num_hidden_layers
        if num_layers is None:
            super().__init__(layer_class_to_replicate=self._next_layer)
        else:
            super().__init__(layers=[self._make_layer(i) for i in range(num_layers)])

    @property
    def key_amax(self):
        """The calibrated key amax of every layer (None for dynamic recipes)."""
        return self._amax[0]

    @property
    def value_amax(self):
        """The calibrated value amax of every layer (None for dynamic recipes)."""
        return self._amax[1]

    def _make_layer(self, i: int) -> QuantizedKVLayer:
        ka, va = (None if a is None else a[i] for a in self._amax)
        return QuantizedKVLayer(self.key_recipe, self.value_recipe, ka, va, seed=self.seed + 2 * i)

    def _next_layer(self) -> QuantizedKVLayer:
        return self._make_layer(len(self.layers))

    @property
    def nbytes(self) -> int:
        """Bytes stored: codes and scales of every layer's keys and values."""
        return sum(layer.nbytes for layer in self.layers)

    def bytes_per_token(self) -> float:
        """nbytes / (batch * cached tokens)."""
        first = self.layers[0].k.qt
        return self.nbytes / (first.shape[0] * self.get_seq_length())


class _AmaxRecorder(DynamicCache):
    """A plain cache that also records, per layer, the per-head amax of keys (optionally
    Hadamard-rotated) and values."""

    def __init__(self, rotation=None):
        super().__init__()
        self.rotation = rotation
        self.k_amax, self.v_amax = {}, {}

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        k = key_states if self.rotation is None else key_states.float() @ self.rotation.to(
            key_states.device)
        head = get_kv_recipe("fp8_head")
        for d, x in ((self.k_amax, k), (self.v_amax, value_states)):
            a = amax_of(x, head)
            d[layer_idx] = a if layer_idx not in d else torch.maximum(d[layer_idx], a)
        return super().update(key_states, value_states, layer_idx, *args, **kwargs)


@torch.no_grad()
def calibrate_kv(model, batches, per_head: bool = False, rotate_keys: bool = False,
                 seed: int = 0):
    """Static KV scales as vLLM loads them: run `model` on calibration `batches` (input_ids
    tensors) and return (key_amax, value_amax), one entry per layer (a 0-d amax, or one per
    KV head with per_head). k_scale = key_amax / 448 for FP8 E4M3. With rotate_keys the key
    amaxes are those of the rotated keys (the same Hadamard matrices as QuantizedKVCache(...,
    rotate_keys=True, seed=seed) uses)."""
    cfg = model.config.get_text_config(decoder=True)
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    ks, vs = {}, {}
    for ids in batches:
        rec = _PerLayerRecorder(hd if rotate_keys else None, seed)
        model(input_ids=ids, cache=rec, use_cache=True)
        for i in rec.k_amax:
            ks[i] = rec.k_amax[i] if i not in ks else torch.maximum(ks[i], rec.k_amax[i])
            vs[i] = rec.v_amax[i] if i not in vs else torch.maximum(vs[i], rec.v_amax[i])
    n = len(ks)
    red = (lambda a: a) if per_head else (lambda a: a.amax())
    return [red(ks[i]) for i in range(n)], [red(vs[i]) for i in range(n)]


class _PerLayerRecorder(_AmaxRecorder):
    """The recorder with each layer's own rotation (seeded as QuantizedKVCache seeds it)."""

    def __init__(self, head_dim, seed):
        super().__init__()
        self.head_dim, self.seed = head_dim, seed

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        if self.head_dim is not None:
            from quantlib.nn.hadamard import random_hadamard_matrix
            self.rotation = random_hadamard_matrix(self.head_dim, self.seed + 2 * layer_idx)
        return super().update(key_states, value_states, layer_idx, *args, **kwargs)
