"""Export quantized models to the checkpoint formats servers load, and read such checkpoints.

`save_quantized(model, path, format=...)` writes a Hugging Face folder (config.json with
`quantization_config`, sharded safetensors + index, tokenizer files) in:
- "compressed-tensors" (vLLM `quant_method: "compressed-tensors"`): `compressed_tensors.py`;
- "modelopt" (NVIDIA ModelOpt's unified checkpoint, `hf_quant_config.json`; vLLM `modelopt` /
  `modelopt_fp4`, TensorRT-LLM): `modelopt.py`;
- "fp8-block" (DeepSeek-V3 style, `quant_method: "fp8"`, `weight_scale_inv`): `fp8_block.py`.
`load_checkpoint(path)` reads any of them back as {module name: QuantizedTensor} plus the
activation (input) and KV scales, for checkpoints made by anyone.

Scales follow quantlib's convention when read back: every scale is a dequantization
multiplier (x = code * scale); compressed-tensors' NVFP4 global scales are divisors and are
inverted on the way in and out.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from quantlib.export import _core
from quantlib.export._core import as_served, load_served
from quantlib.export import compressed_tensors as _ct
from quantlib.export import fp8_block as _fp8b
from quantlib.export import kv_cache as _kv
from quantlib.export import modelopt as _mo
from quantlib.qtensor import QuantizedTensor

FORMATS = ("compressed-tensors", "modelopt", "fp8-block")


def input_amax(model, calibration) -> dict:
    """Static input amax (max |x|) of every NVFP4 W4A4 layer of the quantized model over
    calibration batches: the input global scale the checkpoint stores. Fused partitions get the
    group's max."""
    from quantlib.nn.calibrate import run_batches
    from quantlib.nn.fuse import fused_groups
    from quantlib.nn.ptq import calibration_batches
    layers = _core.quant_layers(model)
    names = [n for n, q in layers.items()
             if q.config.activation is not None and q.config.activation.scale_format == "e4m3"]
    if not names or calibration is None:
        return {}
    amax = dict.fromkeys(names, 0.0)

    def hook(name):
        def fn(module, args):
            amax[name] = max(amax[name], float(args[0].detach().abs().amax()))
        return fn

    handles = [layers[n].register_forward_pre_hook(hook(n)) for n in names]
    try:
        with torch.no_grad():
            run_batches(model, calibration_batches(calibration))
    finally:
        for h in handles:
            h.remove()
    for g in fused_groups(names):
        amax.update(dict.fromkeys(g, max(amax[n] for n in g)))
    return amax


def save_quantized(model, path, format: str = "compressed-tensors", tokenizer=None,
                   max_shard_size="5GB", dtype: torch.dtype = torch.bfloat16,
                   calibration=None, kv_cache=None) -> Path:
    """Write a model quantized by `quantlib.nn.quantize_model` as a Hugging Face folder that
    vLLM / TensorRT-LLM load. Unquantized tensors (embeddings, norms, biases, skipped layers)
    are stored in `dtype`. `calibration`: batches for the input global scale of NVFP4 W4A4.
    `kv_cache`: static FP8 KV-cache scales, written as one k_scale and one v_scale per layer
    (amax / 448, float32) with the format's config entry (compressed-tensors and ModelOpt):
    the pair (key_amax, value_amax) that `quantlib.attention.calibrate_kv` returns, or a
    `QuantizedKVCache("fp8_tensor_static", key_amax=..., value_amax=...)`. Other KV recipes
    (per token, per head, INT8, NVFP4, rotated keys) are a ValueError. Returns the folder."""
    if format not in FORMATS:
        raise ValueError(f"format={format!r}: use one of {FORMATS}")
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch dtype, got {dtype!r}")
    cfg = _core.hf_config(model, dtype)
    layers = _core.quant_layers(model)
    kv = None
    if kv_cache is not None:
        if format not in _kv.NAMES:
            raise ValueError(f"format={format!r} has no KV-cache scales; kv_cache= is written "
                             f"for {tuple(_kv.NAMES)}")
        kv = _kv.kv_scales(model, kv_cache)
    amax = input_amax(model, calibration)
    extra = {}
    if format == "compressed-tensors":
        qc, qtensors = _ct.export(model, amax, kv is not None)
    elif format == "modelopt":
        qc, qtensors, hfq = _mo.export(model, amax, kv is not None)
        extra["hf_quant_config.json"] = hfq
    else:
        qc, qtensors = _fp8b.export(model)
    cfg["quantization_config"] = qc
    tensors = _core.dense_tensors(model, layers, dtype)
    tensors.update(qtensors)
    if kv is not None:
        tensors.update(_kv.kv_tensors(kv, format))
    return _core.write_folder(path, tensors, cfg, max_shard_size, tokenizer, extra)


@dataclass
class Checkpoint:
    """What `load_checkpoint` returns: quantized weights by module name, input (activation)
    scales and KV-cache scales as dequantization multipliers, the format and config.json.
    kv_scales are keyed "<attention module>.k_scale" / ".v_scale" whatever the format's own
    spelling (`k_proj.k_scale`, `k_proj.output_scale`)."""

    weights: dict[str, QuantizedTensor]
    input_scales: dict[str, torch.Tensor] = field(default_factory=dict)
    kv_scales: dict[str, torch.Tensor] = field(default_factory=dict)
    format: str = ""
    config: dict = field(default_factory=dict, repr=False)

    def __getitem__(self, name: str) -> QuantizedTensor:
        return self.weights[name]

    def __len__(self) -> int:
        return len(self.weights)

    def __iter__(self):
        return iter(self.weights)

    def __contains__(self, name) -> bool:
        return name in self.weights

    def items(self):
        return self.weights.items()


def checkpoint_format(path) -> str:
    """"compressed-tensors", "modelopt" or "fp8-block" from a folder's config files."""
    path = Path(path)
    if (path / "hf_quant_config.json").exists():
        return "modelopt"
    cfg = json.loads((path / "config.json").read_text()) if (path / "config.json").exists() \
        else {}
    method = cfg.get("quantization_config", {}).get("quant_method")
    if method == "compressed-tensors":
        return "compressed-tensors"
    if method == "modelopt":
        return "modelopt"
    if method == "fp8" and cfg["quantization_config"].get("weight_block_size"):
        return "fp8-block"
    raise ValueError(f"{path}: quantization_config.quant_method={method!r} is not a format "
                     f"quantlib reads ({FORMATS})")


def load_checkpoint(path) -> Checkpoint:
    """Read a quantized Hugging Face folder (ours or anyone's) as QuantizedTensors."""
    fmt = checkpoint_format(path)
    config, tensors = _core.read_folder(path)
    if fmt == "compressed-tensors":
        out = _ct.read(config, tensors)
    elif fmt == "modelopt":
        hfq = Path(path) / "hf_quant_config.json"
        out = _mo.read(json.loads(hfq.read_text()) if hfq.exists() else
                       {"quantization": config["quantization_config"]}, tensors)
    else:
        out = _fp8b.read(config, tensors)
    return Checkpoint(out["weights"], out["input_scales"], out["kv_scales"], fmt, config)


__all__ = ["save_quantized", "load_checkpoint", "Checkpoint", "checkpoint_format", "FORMATS",
           "input_amax", "as_served", "load_served"]
