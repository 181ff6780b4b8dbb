"""NVIDIA ModelOpt unified checkpoints (`hf_quant_config.json`; vLLM `modelopt` and
`modelopt_fp4`, TensorRT-LLM, SGLang).

Checked against vLLM `model_executor/layers/quantization/modelopt.py` (ModelOptFp8Config,
ModelOptNvFp4Config: `group_size`, `kv_cache_quant_algo` and `exclude_modules` are required for
NVFP4; tensor layout in ModelOptNvFp4LinearMethod's docstring) and compressed-tensors 0.20.1
`entrypoints/convert/converters/modelopt_nvfp4.py` (the conversion to compressed-tensors).

Per quantized layer:
- NVFP4 / W4A16_NVFP4: weight uint8 [N, K/2] (element 2i in the low nibble), weight_scale
  float8_e4m3fn [N, K/16], weight_scale_2 float32 scalar = the tensor scale amax/(6*448), a
  MULTIPLIER (compressed-tensors stores its reciprocal); input_scale float32 scalar, the input's
  tensor scale (W4A4 only).
- FP8: weight float8_e4m3fn, weight_scale float32 scalar (amax/448), input_scale float32 scalar
  (static activations: ModelOpt FP8 is per-tensor and static).
KV cache (`kv_cache.py`): kv_cache_quant_algo "FP8"; <attn>.k_proj.k_scale, v_proj.v_scale
float32 scalars.
"""
from __future__ import annotations

import torch

from quantlib.export import _core
from quantlib.export.kv_cache import read_kv
from quantlib.qtensor import QuantizedTensor
from quantlib.recipes import RECIPES
from quantlib.scaling import fp32_scale, nvfp4_scale


def layer_algo(layer) -> str:
    """ModelOpt's quant_algo of one layer."""
    w, a = layer.config.weight, layer.config.activation
    if w.name == "nvfp4" and (a is None or a.name == "nvfp4"):
        if layer.in_features % 16:
            raise ValueError(f"NVFP4 needs in_features divisible by 16, got {layer.in_features}")
        return "NVFP4" if a is not None else "W4A16_NVFP4"
    if w.element == "e4m3" and w.granularity == "tensor" and w.scale_format == "fp32" \
            and a is not None and a.element == "e4m3" and a.granularity == "tensor" \
            and layer.act_amax is not None:
        return "FP8"
    raise ValueError(f"config {layer.config.name!r} has no ModelOpt unified checkpoint here: "
                     f"export NVFP4 (W4A4 or weight-only) or FP8 with per-tensor weight scales "
                     f"and static per-tensor input scales (calibrated)")


def layer_tensors(layer, algo: str, input_amax=None) -> dict:
    qt = layer.qweight
    if algo in ("NVFP4", "W4A16_NVFP4"):
        out = {"weight": qt.codes.contiguous(),
               "weight_scale": qt.scales.view(torch.float8_e4m3fn),
               "weight_scale_2": qt.tensor_scale.float().reshape(())}
        if algo == "NVFP4":
            if input_amax is None:
                raise ValueError("NVFP4 W4A4 stores a calibrated input scale: pass "
                                 "calibration=batches to save_quantized")
            _, s_in, _, _ = nvfp4_scale(torch.ones(1), torch.tensor(float(input_amax)), 6.0)
            out["input_scale"] = s_in.float().reshape(())
        return out
    return {"weight": qt.codes.view(torch.float8_e4m3fn),
            "weight_scale": qt.scales.float().reshape(()),
            "input_scale": fp32_scale(layer.act_amax.float().reshape(()), 448.0)[0]}


def export(model, input_amax: dict, kv_cache: bool = False) -> tuple[dict, dict, dict]:
    """(config.json's quantization_config, {name: tensor}, hf_quant_config.json); with
    kv_cache, `kv_cache_quant_algo: "FP8"` (static per-tensor k_scale / v_scale)."""
    from quantlib import __version__
    layers = _core.quant_layers(model)
    _core.check_fused(layers, input_amax, _core.linear_names(model))
    algos, tensors = {}, {}
    for name, q in layers.items():
        try:
            algos[name] = layer_algo(q)
            for k, t in layer_tensors(q, algos[name], input_amax.get(name)).items():
                tensors[f"{name}.{k}"] = t
        except ValueError as e:
            raise ValueError(f"layer {name!r}: {e}") from None
    if len(set(algos.values())) > 1:
        raise ValueError(f"ModelOpt's hf_quant_config.json holds one quant_algo; these layers "
                         f"differ: {sorted(set(algos.values()))}. Use format='compressed-tensors' "
                         f"(mixed-precision) or one config for every layer")
    algo = next(iter(algos.values()))
    quant = {"quant_algo": algo, "kv_cache_quant_algo": "FP8" if kv_cache else None,
             "group_size": 16 if "NVFP4" in algo else None,
             "exclude_modules": _core.unquantized_linears(model)}
    if quant["group_size"] is None:
        del quant["group_size"]
    producer = {"name": "quantlib", "version": __version__}
    hfq = {"producer": producer, "quantization": quant}
    # config.json's flat form: vLLM reads the skipped layers there from "ignore" (ModelOpt's
    # own convert_hf_config.py writes it), hf_quant_config.json's nested form from
    # "exclude_modules"; a flat KV cache is read from kv_cache_quant_algo or kv_cache_scheme
    flat = {"quant_method": "modelopt", **quant, "ignore": quant["exclude_modules"]}
    if kv_cache:
        from quantlib.export.compressed_tensors import KV_CACHE_SCHEME
        flat["kv_cache_scheme"] = dict(KV_CACHE_SCHEME)
    return {**flat, "producer": producer}, tensors, hfq


def read(hf_quant_config: dict, tensors: dict) -> dict:
    """{module: QuantizedTensor} and input scales of a ModelOpt NVFP4 / FP8 folder."""
    algo = hf_quant_config["quantization"]["quant_algo"]
    weights, inputs = {}, {}
    for m in _core.modules_with(tensors, "weight_scale"):
        w, s = tensors[f"{m}.weight"], tensors[f"{m}.weight_scale"]
        if "NVFP4" in algo and w.dtype == torch.uint8:
            shape = torch.Size((w.shape[0], w.shape[1] * 2))
            weights[m] = QuantizedTensor(w.contiguous(), s.view(torch.uint8).contiguous(),
                                         RECIPES["nvfp4"], shape, torch.bfloat16,
                                         tensor_scale=tensors[f"{m}.weight_scale_2"].float()
                                         .reshape(()))
        elif algo == "FP8" and w.dtype == torch.float8_e4m3fn:
            weights[m] = QuantizedTensor(w.view(torch.uint8), s.float().reshape(()),
                                         RECIPES["fp8_e4m3_tensor"], w.shape, torch.bfloat16)
        else:
            raise ValueError(f"{m}: a {w.dtype} weight under quant_algo {algo!r} is not a "
                             f"layout quantlib reads (NVFP4, W4A16_NVFP4, FP8)")
        if f"{m}.input_scale" in tensors:
            inputs[m] = tensors[f"{m}.input_scale"].float().reshape(())
    return {"weights": weights, "input_scales": inputs, "kv_scales": read_kv(tensors)}
