"""DeepSeek-V3-style block FP8 checkpoints (vLLM `quant_method: "fp8"` with
`weight_block_size`).

Checked against vLLM `model_executor/layers/quantization/fp8.py` (Fp8Config.from_config reads
`activation_scheme` and `weight_block_size`; the block method registers `weight_scale_inv`) and
DeepSeek-V3's `inference/fp8_cast_bf16.py` (weight_dequant: W = weight * weight_scale_inv per
128x128 block).

Per quantized layer: weight float8_e4m3fn [N, K]; weight_scale_inv float32
[ceil(N/128), ceil(K/128)], which despite its name is the dequantization MULTIPLIER (amax/448).
Activations are quantized by the server per token and 128 channels (dynamic).
"""
from __future__ import annotations

import torch

from quantlib.export import _core
from quantlib.export.kv_cache import read_kv
from quantlib.qtensor import QuantizedTensor
from quantlib.recipes import Recipe

CONFIG = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
          "weight_block_size": [128, 128]}


def export(model) -> tuple[dict, dict]:
    layers = _core.quant_layers(model)
    _core.check_fused(layers, None, _core.linear_names(model))
    tensors = {}
    for name, q in layers.items():
        w, a = q.config.weight, q.config.activation
        if not (w.element == "e4m3" and w.granularity == "block2d" and w.block == (128, 128)
                and w.scale_format == "fp32"):
            raise ValueError(f"layer {name!r}: format='fp8-block' stores FP8 E4M3 weights with "
                             f"one scale per 128x128 block; this layer's weight is "
                             f"{w.name!r}: quantize with fp8_e4m3_128x128 (pad=True for shapes "
                             f"that are not multiples of 128)")
        if a is not None and not (a.element == "e4m3" and a.granularity == "group"
                                  and a.block == 128):
            raise ValueError(f"layer {name!r}: the server quantizes activations per 1x128 "
                             f"(dynamic); this layer's activation recipe is {a.name!r}")
        qt = q.qweight
        tensors[f"{name}.weight"] = qt.codes.view(torch.float8_e4m3fn)
        tensors[f"{name}.weight_scale_inv"] = qt.scales.float().contiguous()
    return {**CONFIG, "ignored_layers": _core.unquantized_linears(model)}, tensors


def read(config: dict, tensors: dict) -> dict:
    bs = tuple(config["quantization_config"].get("weight_block_size") or (128, 128))
    weights = {}
    for m in _core.modules_with(tensors, "weight_scale_inv"):
        w = tensors[f"{m}.weight"]
        r = Recipe(f"fp8_e4m3_{bs[0]}x{bs[1]}", "e4m3", "block2d", bs, pad=True)
        weights[m] = QuantizedTensor(w.view(torch.uint8), tensors[f"{m}.weight_scale_inv"]
                                     .float().contiguous(), r, w.shape, torch.bfloat16)
    return {"weights": weights, "input_scales": {}, "kv_scales": read_kv(tensors)}
