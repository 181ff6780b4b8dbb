"""Post-training quantization of a whole model: swap its nn.Linear layers for QuantLinear.

`quantize_model(model, config, skip=...)` works on any torch model (the digits MLP, MiniLM, a
Hugging Face LLM on a GPU): weights are rounded to nearest (RTN) with a chosen calibrator, or by
GPTQ; activation scales are dynamic, or static from a calibration set. `memory_report` shows
where the bytes went, scales included; `compare_ptq` makes the results tables of chapter 7.
"""
from __future__ import annotations

import copy
import dataclasses
import fnmatch
import warnings
from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn

from quantlib.nn.calibrate import (
    calibrate_activations,
    calibrator_by_name,
    collect_inputs,
    linear_layers,
    max_calibrator,
    with_calibrator,
)
from quantlib.nn.fuse import fuse_plan
from quantlib.nn.hadamard import random_hadamard_matrix
from quantlib.nn.linear import QuantConfig, QuantLinear, get_config, supports_static
from quantlib.nn.transforms import (
    SMOOTHING,
    smoothing_factors,
    transformed_input,
    transformed_weight,
)
from quantlib.qtensor import quantize
from quantlib.recipes import padded_last_dim
from quantlib.scaling import pad_to_blocks
from quantlib.table import Table


def select_layers(model: nn.Module, skip=None) -> list[str]:
    """Names of the nn.Linear layers to quantize. `skip`: None, a name or glob pattern
    ("pooler.*", "*lm_head"), a list of them, or a predicate (name, module) -> True to skip.
    A pattern that matches no linear layer is an error (a typo would otherwise quantize the
    layer it meant to keep). The output projection of nn.MultiheadAttention is never swapped:
    that module reads its weight directly, so it stays in full precision; the linear layers of
    nn.TransformerEncoderLayer / DecoderLayer (which do the same) are refused with the reason."""
    layers = {n: m for n, m in linear_layers(model).items()
              if not isinstance(m, nn.modules.linear.NonDynamicallyQuantizableLinear)}
    if not layers:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layers: quantize_model swaps "
                         f"nn.Linear modules (convolutions, custom layers are left alone)")
    if skip is None:
        keep = list(layers)
    elif callable(skip):
        keep = [n for n, m in layers.items() if not skip(n, m)]
    else:
        pats = [skip] if isinstance(skip, str) else skip
        if not isinstance(pats, (list, tuple, set)) or not all(isinstance(p, str) for p in pats):
            raise TypeError(f"skip must be a name or glob pattern, a list of them, or a "
                            f"predicate (name, module) -> bool; got {skip!r}")
        unmatched = [p for p in pats if not any(fnmatch.fnmatchcase(n, p) for n in layers)]
        if unmatched:
            raise ValueError(f"skip patterns {unmatched} match no linear layer; the layers are "
                             f"{list(layers)[:8]}{' ...' if len(layers) > 8 else ''}")
        keep = [n for n in layers if not any(fnmatch.fnmatchcase(n, p) for p in pats)]
    if not keep:
        raise ValueError(f"skip={skip!r} skips all {len(layers)} linear layers: nothing to quantize")
    fused = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)
    direct = [n for n in keep if isinstance(model.get_submodule(n.rpartition(".")[0]), fused)]
    if direct:
        raise ValueError(f"{direct} belong to torch.nn.Transformer*Layer modules, whose forward "
                         f"reads their weights directly (PyTorch's fused path), so a swapped "
                         f"layer would break them: skip them, or build the blocks from modules "
                         f"that call their nn.Linear layers")
    return keep


def _calibrator(c, recipe):
    return calibrator_by_name(c, recipe) if isinstance(c, str) else c


def calibration_batches(calibration) -> list | None:
    """Calibration data as a list of batches: a tensor or a dict of keyword arguments is one
    batch; a list, tuple or generator is consumed once. No batches at all is an error (static
    scales would silently fall back to dynamic ones)."""
    if calibration is None:
        return None
    if isinstance(calibration, torch.Tensor) or hasattr(calibration, "keys"):
        return [calibration]
    batches = list(calibration)
    if not batches:
        raise ValueError("calibration has no batches: pass a list of input batches (tensors, "
                         "tuples or dicts of keyword arguments), or None")
    return batches


def undivided_layers(model: nn.Module, names, config) -> list[str]:
    """The layers among `names` whose shape the config's blocks do not divide (weight: in and,
    for 2-D blocks, out features; activations: in features)."""
    cfg, layers, out = get_config(config), linear_layers(model), []
    for n in names:
        lin = layers[n]
        try:
            pad_to_blocks(torch.empty(lin.out_features, lin.in_features, device="meta"),
                          cfg.weight)
            ok = cfg.activation is None or cfg.activation.pad or \
                padded_last_dim(cfg.activation, (lin.in_features,)) == lin.in_features
        except ValueError:
            ok = False
        if not ok:
            out.append(n)
    return out


def _padded(recipe):
    return None if recipe is None else dataclasses.replace(recipe, pad=True)


def layer_configs(model: nn.Module, configs: Mapping, skip=None) -> dict[str, tuple]:
    """Per-layer configs resolved: layer name -> (config, options) for every layer to quantize.

    Keys are layer names or glob patterns; an exact name wins over patterns, then the first
    matching pattern in order. Values: a config, None (keep the layer in full precision) or
    (config, {quantize_model options}). A key that matches no layer is an error; layers no key
    matches stay in full precision."""
    names = select_layers(model, skip)
    unmatched = [k for k in configs if not isinstance(k, str) or
                 not any(fnmatch.fnmatchcase(n, k) for n in names)]
    if unmatched:
        raise ValueError(f"per-layer config keys {unmatched} match no layer to quantize; the "
                         f"layers are {names[:8]}{' ...' if len(names) > 8 else ''}")
    out = {}
    for n in names:
        key = n if n in configs else next((k for k in configs if fnmatch.fnmatchcase(n, k)), None)
        v = None if key is None else configs[key]
        if v is None:
            continue
        cfg, opts = v if isinstance(v, tuple) else (v, {})
        if not isinstance(opts, dict):
            raise TypeError(f"layer {n!r}: a per-layer value is a config, None or (config, "
                            f"{{options}}), got {v!r}")
        out[n] = (get_config(cfg), opts)
    return out


def _quantize_per_layer(model, configs, skip, inplace, options) -> nn.Module:
    """quantize_model with per-layer configs: one quantize_model call per distinct (config,
    options), each on the original model (calibration statistics from FP32 inputs), its layers
    moved into the result."""
    groups: dict = {}
    for n, (cfg, opts) in layer_configs(model, configs, skip).items():
        groups.setdefault((cfg, repr(sorted(opts.items()))), (cfg, opts, set()))[2].add(n)
    result, source = (model, copy.deepcopy(model)) if inplace else (copy.deepcopy(model), model)
    for cfg, opts, names in groups.values():
        q = quantize_model(source, cfg, skip=lambda n, m, keep=names: n not in keep,
                           **{**options, **opts})
        for n in names:
            _replace(result, n, q.get_submodule(n))
    return result


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def quantize_model(model: nn.Module, config, skip=None, calibration: Iterable | None = None,
                   weight_calibrator: str | Callable | None = None,
                   act_calibrator: str | Callable | None = None, method: str = "rtn",
                   inplace: bool = False, gptq_options: dict | None = None,
                   rotate: int = 0, smooth: str | None = None,
                   smooth_alpha: float = 0.5, pad: bool = False,
                   fuse: str | None = None) -> nn.Module:
    """Quantize every nn.Linear of `model` (a copy unless inplace) with `config`.

    Per-layer configs (a mixed-precision plan): `config` may be a mapping from layer names or
    glob patterns to a config, None (full precision) or (config, {options of this call}), e.g.
    {"*.attention.*": "fp8", "*": ("int4_g128", {"smooth": "awq"})}; see `layer_configs`.

    config: a QuantConfig, a name of `CONFIGS` ("w8a8_fp8", "nvfp4_w4a4", ...) or a recipe name
    ("nvfp4", "int4_g128", ...: weight-only). weight_calibrator / act_calibrator: "max",
    "percentile_99.9", "mse" or a callable (see `quantlib.nn.calibrate`). With `calibration`
    batches, per-tensor activation recipes get static scales; method="gptq" needs them too
    (gptq_options: block_size, damp, act_order, and sequential=False to take every layer's
    inputs from one pass of the FP32 model instead of one pass per layer).
    Equivalent transforms before rounding (`quantlib.nn.transforms`): rotate=n, a random
    Hadamard rotation of every n input channels (n a power of two dividing in_features; one
    seeded matrix for all layers); smooth="smoothquant" (factors from max |x| and max |W|,
    migration strength smooth_alpha) or "awq" (factors from mean |x|, strength searched per
    layer), from every layer's inputs in one pass of the FP32 model over `calibration`. Static
    activation scales and GPTQ see the transformed inputs.
    A layer whose width the blocks do not divide (a 1000-wide layer under "int4_g128") is
    zero-padded to whole blocks with pad=True; by default it stays in full precision, and one
    warning lists those layers. A linear module registered under several names (shared, tied)
    becomes one QuantLinear under all of them.
    fuse="auto": q/k/v and gate/up share one tensor scale (NVFP4 global, per-tensor FP8) and
    one static input scale, as servers that fuse them require (`quantlib.nn.fuse`).
    """
    if isinstance(config, Mapping):            # per-layer configs (a mixed-precision plan)
        return _quantize_per_layer(model, config, skip, inplace, dict(
            calibration=calibration_batches(calibration), weight_calibrator=weight_calibrator,
            act_calibrator=act_calibrator, method=method, gptq_options=gptq_options,
            rotate=rotate, smooth=smooth, smooth_alpha=smooth_alpha, pad=pad, fuse=fuse))
    cfg = get_config(config)
    if method not in ("rtn", "gptq"):
        raise ValueError(f"method {method!r}: use 'rtn' (round to nearest) or 'gptq'")
    if isinstance(rotate, bool) or not isinstance(rotate, int) or rotate < 0 or (
            rotate & (rotate - 1)):
        raise ValueError(f"rotate={rotate!r}: use 0 (no rotation) or a power of two, the size "
                         f"of the Hadamard blocks (16, 64, 128, ...)")
    if not (isinstance(smooth_alpha, (int, float)) and 0.0 <= smooth_alpha <= 1.0):
        raise ValueError(f"smooth_alpha={smooth_alpha!r}: SmoothQuant's migration strength is "
                         f"a number in [0, 1]")
    if method == "gptq" and calibration is None:
        raise ValueError("GPTQ needs calibration batches (a few hundred tokens of typical input)")
    if smooth not in (None, *SMOOTHING):
        raise ValueError(f"smooth={smooth!r}: use None, 'smoothquant' or 'awq'")
    if smooth is not None and calibration is None:
        raise ValueError(f"smooth={smooth!r} needs calibration batches: its factors come from "
                         f"the activations each layer sees")
    H = random_hadamard_matrix(rotate) if rotate else None
    calibration = calibration_batches(calibration)
    if not isinstance(pad, bool):
        raise TypeError(f"pad={pad!r}: use True (zero-pad layers to whole blocks) or False")
    if pad:
        cfg = QuantConfig(cfg.name, _padded(cfg.weight), _padded(cfg.activation),
                          cfg.description)
    model = model if inplace else copy.deepcopy(model)
    names = select_layers(model, skip)
    undivided = undivided_layers(model, names, cfg)
    if undivided and len(undivided) == len(names):
        raise ValueError(f"the blocks of {cfg.name!r} divide none of the layers' widths "
                         f"({undivided[:8]}): pass pad=True to zero-pad them to whole blocks, "
                         f"or use a config with smaller blocks")
    if undivided:
        warnings.warn(f"quantize_model: {len(undivided)} layers left in full precision, their "
                      f"widths are not multiples of the {cfg.name!r} blocks: {undivided}; pass "
                      f"pad=True to zero-pad them to whole blocks", stacklevel=2)
        names = [n for n in names if n not in undivided]
    layers = linear_layers(model)
    w_recipe = with_calibrator(cfg.weight, _calibrator(weight_calibrator, cfg.weight))
    cfg_w = QuantConfig(cfg.name, w_recipe, cfg.activation, cfg.description)

    static = supports_static(cfg.activation) and calibration is not None
    act_cal = _calibrator(act_calibrator, cfg.activation) or max_calibrator
    transformed = rotate or smooth is not None
    act_amax = calibrate_activations(model, calibration, act_cal, names) \
        if static and not transformed else {}
    recipe_of, act_amax = fuse_plan(fuse, names, layers, w_recipe, act_amax, H, smooth)
    gptq_options = dict(gptq_options or {})
    # Layer inputs: from one pass of the FP32 model when the transforms or GPTQ's
    # sequential=False ask for them; sequential GPTQ (each layer sees the already quantized
    # layers before it) collects its own, one forward pass per layer.
    sequential = gptq_options.pop("sequential", True) and smooth is None
    inputs = collect_inputs(model, calibration, names) if smooth is not None or (
        static and transformed) or (method == "gptq" and not sequential) else {}
    swapped = {}
    for name in names:
        lin = layers[name]
        H = None if H is None else H.to(lin.weight.device)
        try:
            x = inputs.pop(name, None)
            if x is not None and H is not None:
                x = transformed_input(x, H)
            s = None if smooth is None else smoothing_factors(
                smooth, x, transformed_weight(lin.weight, H), w_recipe, smooth_alpha)
            w = transformed_weight(lin.weight, H, s)
            x = None if x is None else transformed_input(x, smooth=s)
            if static and transformed:
                act_amax[name] = float(act_cal(x.reshape(1, -1), -1).reshape(()))
            if method == "gptq":
                from quantlib.nn.gptq import gptq_quantize, hessian
                if x is None:
                    x = transformed_input(collect_inputs(model, calibration, [name])[name], H, s)
                qweight, _ = gptq_quantize(w, hessian(x).to(w.device), recipe_of[name],
                                           **gptq_options)
            else:
                qweight = quantize(w, recipe_of[name])
        except ValueError as e:
            raise ValueError(f"layer {name!r} ({lin.out_features}x{lin.in_features}): {e}; or "
                             f"leave the layer in full precision with skip=[{name!r}]") from None
        _replace(model, name, QuantLinear.from_linear(lin, cfg_w, qweight, act_amax.get(name),
                                                      smooth=s, rotation=H))
        swapped[id(lin)] = model.get_submodule(name)
    for name, m in list(model.named_modules(remove_duplicate=False)):   # the other aliases
        if id(m) in swapped:
            _replace(model, name, swapped[id(m)])
    return model


# ---- sizes --------------------------------------------------------------------------------------
def _nbytes(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.numel() * t.element_size()


def size_by_component(model: nn.Module) -> dict[str, int]:
    """Bytes of a model by component: linear weights (codes), their scales (+ tensor scales,
    zero points, static activation amax, smoothing factors, the rotation matrix, counted once
    when layers share it), biases, and everything else (embeddings, norms)."""
    out = dict.fromkeys(["linear weights", "scales", "biases", "other parameters"], 0)
    counted = set()
    for m in model.modules():
        if isinstance(m, QuantLinear):
            out["linear weights"] += _nbytes(m.weight_codes)
            extra = (m.weight_scales, m.weight_tensor_scale, m.weight_zero_point, m.act_amax,
                     m.smooth, m.rotation)
            out["scales"] += sum(_nbytes(t) for t in extra if id(t) not in counted)
            tensors = [m.weight_codes, *extra]
        elif isinstance(m, nn.Linear):
            out["linear weights"] += _nbytes(m.weight)
            tensors = [m.weight]
        else:
            continue
        out["biases"] += _nbytes(m.bias)
        counted.update(id(t) for t in tensors + [m.bias] if t is not None)
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in counted:
            counted.add(id(t))
            out["other parameters"] += _nbytes(t)
    out["total"] = sum(out.values())
    return out


def memory_report(before: nn.Module, after: nn.Module, title: str | None = None) -> Table:
    """Bytes by component before and after quantization, and the ratio (scales included)."""
    b, a = size_by_component(before), size_by_component(after)
    t = Table(["component", "before (bytes)", "after (bytes)", "after / before"],
              title=title or "Model memory by component", digits=3)
    for k in b:
        t.append([k, b[k], a[k], a[k] / b[k] if b[k] else None])
    return t


def compare_ptq(model: nn.Module, variants: Iterable, evaluate: Callable[[nn.Module], dict],
                title: str | None = None, fp32_row: bool = True, **common) -> Table:
    """The results table: one row per variant (FP32 first), with the stored size of the linear
    layers (codes + scales), bits per weight, size vs FP32 and the metrics `evaluate(model)`
    returns ({name: value}).

    A variant is a config (name or QuantConfig) or a tuple (label, config, {quantize_model
    options}), e.g. ("GPTQ", "int4_g128", {"method": "gptq"}); `common` options go to every
    quantize_model call (skip=..., calibration=...)."""
    base = size_by_component(model)
    n_weights = sum(m.weight.numel() for m in linear_layers(model).values())
    table = None
    rows = [("fp32", None, {})] if fp32_row else []
    for v in variants:
        if isinstance(v, tuple) and (len(v) != 3 or not isinstance(v[2], dict)):
            raise ValueError(f"a variant is a config or a tuple (label, config, options dict), "
                             f"got {v!r}")
        rows.append(v if isinstance(v, tuple) else (get_config(v).name, v, {}))
    if "calibration" in common:               # a generator would be used up by the first row
        common["calibration"] = calibration_batches(common["calibration"])
    for label, config, opts in rows:
        m = model if config is None else quantize_model(model, config, **{**common, **opts})
        bits = "W32A32" if config is None else get_config(config).bits
        size = size_by_component(m)
        lin = size["linear weights"] + size["scales"]
        metrics = evaluate(m)
        if not isinstance(metrics, dict):
            raise TypeError(f"evaluate(model) must return a dict {{metric name: value}}, got "
                            f"{type(metrics).__name__}")
        if table is None:
            table = Table(["variant", "bits", "linear bytes", "bits/weight", "size / FP32",
                           *metrics], title=title, digits=4)
        table.append([label, bits, lin, round(8 * lin / n_weights, 2),
                      round(size["total"] / base["total"], 3), *metrics.values()])
    return table
