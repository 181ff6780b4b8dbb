"""Attention and the KV cache in low precision: quantized KV caches (with a `transformers`
cache class), exact emulation of FP8 attention's matmuls, and the error of each step.

- kvcache.py: `KVRecipe`, `KV_RECIPES`, `quantize_kv`, `KVStore`, `kv_bytes_table`
- hf_cache.py: `QuantizedKVCache` (a `transformers` Cache), `calibrate_kv` (needs transformers,
  imported on first use)
- emulate.py: FP8 attention step by step (QK^T, softmax, PV) and its error table
"""
from quantlib.attention.kvcache import (
    KV_RECIPES,
    KVRecipe,
    KVStore,
    get_kv_recipe,
    kv_bytes_table,
    quantize_kv,
)

__all__ = ["KV_RECIPES", "KVRecipe", "KVStore", "QuantizedKVCache", "calibrate_kv",
           "get_kv_recipe", "kv_bytes_table", "quantize_kv"]


def __getattr__(name):
    if name in ("QuantizedKVCache", "QuantizedKVLayer", "calibrate_kv"):
        from quantlib.attention import hf_cache
        return getattr(hf_cache, name)
    raise AttributeError(f"module 'quantlib.attention' has no attribute {name!r}")
