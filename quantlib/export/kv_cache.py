"""Static FP8 KV-cache scales in a checkpoint: what a server reads to store keys and values in
FP8 E4M3 with one calibrated scale per layer for K and one for V.

Checked against the loaders (sources read; see chapter 13):
- vLLM `model_executor/layers/quantization/kv_cache.py` (`BaseKVCacheMethod`): one k_scale and
  one v_scale per attention layer, per tensor only ("Only support per-tensor scaling factor for
  fp8 KV cache"); a missing (negative) scale becomes 1.0. The scale is the dequantization
  multiplier: K ~= fp8(K / k_scale) * k_scale, so k_scale = amax(K) / 448.
- compressed-tensors: `quantization_config.kv_cache_scheme`, QuantizationArgs of FP8 E4M3,
  strategy "tensor", symmetric, static (vLLM `CompressedTensorsKVCacheMethod` refuses anything
  else); tensors `<attn>.k_scale`, `<attn>.v_scale`, shape [1] (compressed-tensors 0.20.1
  `initialize_qparams`, strategy tensor). vLLM also maps the older `<attn>.k_proj.output_scale`.
- ModelOpt: `kv_cache_quant_algo: "FP8"` (vLLM `KV_CACHE_QUANT_ALGOS = ["FP8"]`); tensors
  `<attn>.k_proj.k_scale`, `<attn>.v_proj.v_scale`, float32 scalars (ModelOpt
  `export/quant_utils.py` `postprocess_state_dict`, which also raises FP8 scales to at least
  1.0; quantlib writes the calibrated amax / 448 itself). vLLM's `maybe_remap_kv_scale_name`
  maps both spellings to `<attn>.attn.k_scale`.

quantlib writes the scale its own static FP8 cache uses: `fp32_scale(amax, 448)`.
"""
from __future__ import annotations

import torch
from torch import nn

from quantlib.scaling import fp32_scale

E4M3_MAX = 448.0
# format -> (key scale name, value scale name) under the attention module
NAMES = {"compressed-tensors": ("k_scale", "v_scale"),
         "modelopt": ("k_proj.k_scale", "v_proj.v_scale")}
SUPPORTED = ("fp8_tensor_static: FP8 E4M3, one static (calibrated) scale per layer for K and "
             "one for V")


def attention_modules(model: nn.Module) -> list[str]:
    """Names of the model's attention modules (those with k_proj and v_proj), in layer order
    (their `layer_idx` where they have one)."""
    mods = [(n, m) for n, m in model.named_modules()
            if hasattr(m, "k_proj") and hasattr(m, "v_proj")]
    if not mods:
        raise ValueError(f"{type(model).__name__} has no attention modules with k_proj and "
                         f"v_proj: the KV-cache scales have nowhere to go")
    if all(isinstance(getattr(m, "layer_idx", None), int) for _, m in mods):
        mods.sort(key=lambda nm: nm[1].layer_idx)
    return [n for n, _ in mods]


def _check_recipe(r, side: str) -> None:
    """A KVRecipe a server can take from a checkpoint: FP8 E4M3, per tensor, static."""
    why = None
    if r.element != "e4m3":
        el = {"int8": "INT8", "e2m1": "NVFP4 (E2M1)"}.get(r.element, r.element)
        why = (f"its elements are {el}: the checkpoint KV formats the servers "
               f"read (compressed-tensors kv_cache_scheme, ModelOpt kv_cache_quant_algo) hold "
               f"FP8 E4M3 scales only")
    elif r.granularity == "token":
        why = ("its scales are computed from each token at run time; a checkpoint holds static "
               "scales")
    elif r.granularity == "head":
        why = ("it has one scale per KV head; vLLM's checkpoint loaders take one scale per "
               "layer (calibrate_kv(..., per_head=False))")
    elif not r.static:
        why = ("its scale is taken from the first update at run time; calibrate it "
               "(calibrate_kv) and use 'fp8_tensor_static'")
    elif r.rotate:
        why = "it rotates the keys (Hadamard); a server applies no rotation to the cache"
    if why:
        raise ValueError(f"{side} recipe {r.name!r} cannot be written to a checkpoint: {why}. "
                         f"Supported: {SUPPORTED}")


def _amax_list(values, side: str) -> list[torch.Tensor]:
    if isinstance(values, torch.Tensor):
        values = list(values.reshape(-1)) if values.dim() == 1 else [values]
    out = []
    for i, a in enumerate(values):
        a = torch.as_tensor(a, dtype=torch.float32) if not isinstance(a, torch.Tensor) else a
        if a.numel() != 1:
            raise ValueError(f"{side} amax of layer {i} has {a.numel()} values (per head?): "
                             f"servers read one scale per layer; calibrate with "
                             f"calibrate_kv(..., per_head=False)")
        out.append(a.detach().float().reshape(()))
    return out


def kv_amax(kv_cache) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(key amaxes, value amaxes), one 0-d tensor per layer, from what `save_quantized` takes
    as kv_cache=: the pair `calibrate_kv` returns (FP8 per-tensor static), or a
    `QuantizedKVCache` built with a static FP8 per-tensor recipe and its amaxes."""
    from quantlib.attention.hf_cache import QuantizedKVCache
    if isinstance(kv_cache, QuantizedKVCache):
        _check_recipe(kv_cache.key_recipe, "key")
        _check_recipe(kv_cache.value_recipe, "value")
        ka, va = kv_cache.key_amax, kv_cache.value_amax
        if ka is None or va is None:
            raise ValueError("the QuantizedKVCache has no calibrated amaxes: build it with "
                             "key_amax= and value_amax= from calibrate_kv")
    elif isinstance(kv_cache, (tuple, list)) and len(kv_cache) == 2:
        ka, va = kv_cache
    else:
        raise TypeError(f"kv_cache must be (key_amax, value_amax) as calibrate_kv returns them, "
                        f"or a QuantizedKVCache('fp8_tensor_static', key_amax=..., "
                        f"value_amax=...), got {type(kv_cache).__name__}")
    ka, va = _amax_list(ka, "key"), _amax_list(va, "value")
    if len(ka) != len(va):
        raise ValueError(f"{len(ka)} key amaxes but {len(va)} value amaxes: one of each per "
                         f"layer")
    return ka, va


def kv_scales(model: nn.Module, kv_cache) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{attention module: (k_scale, v_scale)}, float32 0-d dequantization multipliers
    amax / 448, one per layer."""
    ka, va = kv_amax(kv_cache)
    names = attention_modules(model)
    if len(ka) != len(names):
        raise ValueError(f"kv_cache has amaxes for {len(ka)} layers, the model has "
                         f"{len(names)} attention layers")
    out = {}
    for i, n in enumerate(names):
        pair = []
        for side, a in (("key", ka[i]), ("value", va[i])):
            try:
                pair.append(fp32_scale(a, E4M3_MAX)[0].reshape(()))
            except ValueError as e:
                raise ValueError(f"{side} amax of layer {i} ({n}): {e}") from None
        out[n] = tuple(pair)
    return out


def kv_tensors(scales: dict, fmt: str) -> dict[str, torch.Tensor]:
    """The checkpoint tensors of the KV scales in format `fmt`."""
    kname, vname = NAMES[fmt]
    shape = (1,) if fmt == "compressed-tensors" else ()
    out = {}
    for attn, (k, v) in scales.items():
        out[f"{attn}.{kname}"] = k.reshape(shape).contiguous()
        out[f"{attn}.{vname}"] = v.reshape(shape).contiguous()
    return out


# checkpoint suffix -> (K or V) under the attention module, every spelling vLLM maps
_READ = {".k_scale": "k", ".v_scale": "v", ".k_proj.k_scale": "k", ".v_proj.v_scale": "v",
         ".k_proj.output_scale": "k", ".v_proj.output_scale": "v"}


def read_kv(tensors: dict) -> dict[str, torch.Tensor]:
    """KV scales of any checkpoint as {"<attn>.k_scale" | "<attn>.v_scale": float32 scale}
    (0-d, or one per head where the checkpoint has several)."""
    out = {}
    for key, t in tensors.items():
        for suffix in sorted(_READ, key=len, reverse=True):
            if key.endswith(suffix):
                attn = key[:-len(suffix)]
                t = t.float()
                out[f"{attn}.{_READ[suffix]}_scale"] = t.reshape(()) if t.numel() == 1 \
                    else t.reshape(-1)
                break
    return out


__all__ = ["attention_modules", "kv_amax", "kv_scales", "kv_tensors", "read_kv", "NAMES"]
