"""What every checkpoint format shares: the quantized layers of a model, the fused-partition
check, the Hugging Face folder (config.json, sharded safetensors + index, tokenizer), and
reading the tensors back."""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import nn

from quantlib.nn.fuse import fused_groups
from quantlib.nn.linear import QuantLinear

_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20,
          "GIB": 2**30}


def parse_size(size) -> int:
    """Bytes from an int or a string such as "5GB", "500MB", "2GiB" (Hugging Face's units)."""
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]I?B|B)\s*", str(size).upper())
    if not m:
        raise ValueError(f"max_shard_size={size!r}: use a positive number of bytes or a string "
                         f"such as '5GB', '500MB'")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def quant_layers(model: nn.Module) -> dict[str, QuantLinear]:
    """The model's QuantLinear layers by name; an error when there are none or when a layer
    carries an input transform no checkpoint format can express."""
    layers = {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    if not layers:
        raise ValueError(f"{type(model).__name__} has no QuantLinear layers: quantize it first "
                         f"with quantlib.nn.quantize_model(model, config)")
    for n, m in layers.items():
        if m.smooth is not None or m.rotation is not None:
            raise ValueError(f"layer {n!r} divides its input by smoothing factors or rotates it "
                             f"(smooth=/rotate=): a server applies no per-layer input transform, "
                             f"so this model cannot be exported; quantize without them")
    return layers


def unquantized_linears(model: nn.Module) -> list[str]:
    """nn.Linear layers left in full precision (the checkpoint's ignore/exclude list)."""
    return [n for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and not isinstance(m, QuantLinear)]


def check_fused(layers: dict[str, QuantLinear], input_scale=None, linear_names=None) -> None:
    """Servers run q/k/v and gate/up as one GEMM with one global (tensor) scale and one input
    scale: refuse partitions that differ (config, tensor scale, static input amax), and, given
    every linear layer's name, groups only partly quantized."""
    all_linear = list(layers)
    for group in fused_groups(all_linear):
        qs = [layers[n] for n in group]
        what = None
        if len({str(q.get_extra_state()) for q in qs}) > 1:
            what = "quantization configs"
        elif qs[0].weight_tensor_scale is not None and len(
                {float(q.weight_tensor_scale) for q in qs}) > 1:
            what = "NVFP4 global (tensor) scales"
        elif qs[0].config.weight.granularity == "tensor" and len(
                {float(q.weight_scales.reshape(-1)[0]) for q in qs}) > 1:
            what = "per-tensor weight scales"
        elif qs[0].act_amax is not None and len({float(q.act_amax) for q in qs}) > 1:
            what = "static input scales"
        elif input_scale is not None and len({input_scale.get(n) for n in group}) > 1:
            what = "calibrated input scales"
        if what:
            raise ValueError(f"the fused layers {group} have different {what}; a server runs "
                             f"them as one GEMM with one scale. Quantize with "
                             f"quantize_model(..., fuse='auto') so they share it")
    if linear_names is not None:
        present = set(layers)
        for group in fused_groups(linear_names):
            if 0 < len(present & set(group)) < len(group):
                raise ValueError(f"of the fused layers {group} only "
                                 f"{sorted(present & set(group))} are quantized: a server fuses "
                                 f"them into one layer, so quantize all or none of them (skip=)")


def linear_names(model: nn.Module) -> list[str]:
    """Every linear layer of the model, quantized or not."""
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, QuantLinear))]


def dense_tensors(model: nn.Module, layers: dict[str, QuantLinear], dtype) -> dict:
    """Every tensor of the model that is not a quantized weight, floating ones cast to dtype
    (biases of quantized layers included; tied weights once)."""
    skip = {f"{n}.{b}" for n, q in layers.items() for b, _ in q.named_buffers(recurse=False)}
    skip |= {f"{n}._extra_state" for n in layers}
    out, seen = {}, {}
    tied = getattr(getattr(model, "config", None), "tie_word_embeddings", False)
    for k, t in model.state_dict(keep_vars=False).items():
        if k in skip or t is None or not isinstance(t, torch.Tensor):
            continue
        key = (t.data_ptr(), tuple(t.shape)) if t.numel() else None
        if key in seen and tied:
            continue
        seen[key] = k
        t = t.detach()
        out[k] = (t.to(dtype) if t.is_floating_point() else t).contiguous().clone()
    return out


def hf_config(model: nn.Module, dtype) -> dict:
    cfg = getattr(model, "config", None)
    if cfg is None or not hasattr(cfg, "to_dict"):
        raise TypeError(f"{type(model).__name__} has no Hugging Face config (model.config): "
                        f"save_quantized writes transformers models (AutoModelForCausalLM ...)")
    d = cfg.to_dict()
    d.pop("quantization_config", None)
    d["torch_dtype"] = str(dtype).removeprefix("torch.")
    d["dtype"] = d["torch_dtype"]
    return d


def write_folder(path, tensors: dict, config: dict, max_shard_size="5GB", tokenizer=None,
                 extra_json: dict | None = None) -> Path:
    """A Hugging Face folder: config.json, model.safetensors (or shards + index), tokenizer."""
    from safetensors.torch import save_file
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    limit = parse_size(max_shard_size)
    shards, cur, size = [], {}, 0
    for k in sorted(tensors):
        t = tensors[k].contiguous()
        n = t.numel() * t.element_size()
        if cur and size + n > limit:
            shards.append(cur)
            cur, size = {}, 0
        cur[k], size = t, size + n
    shards.append(cur)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    if len(shards) == 1:
        save_file(shards[0], path / "model.safetensors", metadata={"format": "pt"})
    else:
        wmap = {}
        for i, sh in enumerate(shards, 1):
            name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            save_file(sh, path / name, metadata={"format": "pt"})
            wmap.update(dict.fromkeys(sh, name))
        (path / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": wmap}, indent=2))
    (path / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    for name, obj in (extra_json or {}).items():
        (path / name).write_text(json.dumps(obj, indent=2))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))
    return path


def read_folder(path) -> tuple[dict, dict]:
    """(config.json as a dict, {name: tensor}) of a Hugging Face folder."""
    from safetensors.torch import load_file
    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} has no config.json: point at a Hugging Face model "
                                f"folder (config.json + *.safetensors)")
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{path} has no *.safetensors files")
    tensors = {}
    for f in files:
        tensors.update(load_file(str(f)))
    return json.loads((path / "config.json").read_text()), tensors


def modules_with(tensors: dict, param: str) -> list[str]:
    """Module names that own a tensor named `param` ("weight_packed", "weight_scale_inv")."""
    suffix = "." + param
    return sorted(k[:-len(suffix)] for k in tensors if k.endswith(suffix))


def as_served(model: nn.Module, dtype=torch.bfloat16) -> nn.Module:
    """A copy of a quantized model as a server holds it: parameters (embeddings, norms, biases,
    skipped layers) in `dtype`, buffers as they are (quantized weights' codes and float32 or
    E4M3/E8M0 scales, rotary frequencies). `model.to(dtype)` would round the scales too."""
    import copy
    m = copy.deepcopy(model)
    for t in m.parameters():            # buffers (scales, rotary frequencies) stay as they are
        if t.is_floating_point():
            t.data = t.data.to(dtype)
    return m


def load_served(path, dtype=torch.bfloat16) -> nn.Module:
    """The folder as `transformers.AutoModelForCausalLM.from_pretrained` loads it (through the
    compressed-tensors package for that format, weights decompressed), offline. Progress bars
    are dropped; any other output on stderr is passed on."""
    import contextlib
    import io
    import sys

    from quantlib.models.hf_llama import quiet_transformers
    transformers = quiet_transformers()
    buf = io.StringIO()
    with contextlib.redirect_stderr(buf):
        model = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
        # compressed-tensors decompresses the weights on the first forward (a pre-hook): do it
        # now, so that the bars it draws are dropped here too
        compressor = getattr(getattr(model, "hf_quantizer", None), "compressor", None)
        if getattr(model, "ct_decompress_hook", None) is not None and compressor is not None:
            compressor.decompress_model(model)
    rest = [ln for ln in buf.getvalue().splitlines()
            if ln.strip() and "it/s]" not in ln and "%|" not in ln]
    if rest:
        sys.stderr.write("\n".join(rest) + "\n")
    return model.eval()
