"""Fused layers: q/k/v and gate/up run as one GEMM in a server, so they share one scale.

vLLM and TensorRT-LLM load `q_proj`, `k_proj`, `v_proj` (and `gate_proj`, `up_proj`) into one
fused weight with one NVFP4 global scale and one FP8 input scale. Quantized separately, each
partition has its own tensor amax; the server then keeps the largest and the other partitions
are dequantized with a scale they were not rounded with. `fused_groups` finds the partitions;
`shared_tensor_amax` is the calibrator that gives every partition the group's tensor amax.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import torch

# sibling layer names that servers fuse into one GEMM (Llama/Mistral/Qwen, and BERT-style)
FUSED_NAMES = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"),
               ("query", "key", "value"))


def fused_groups(names: Iterable[str]) -> list[list[str]]:
    """Groups of layer names a server fuses (siblings q/k/v, gate/up under one parent), each
    with at least two members present in `names`."""
    names = list(names)
    present = set(names)
    groups = []
    for n in names:
        parent, _, child = n.rpartition(".")
        for fused in FUSED_NAMES:
            if child == fused[0]:
                g = [f"{parent}.{c}" if parent else c for c in fused]
                g = [m for m in g if m in present]
                if len(g) > 1:
                    groups.append(g)
    return groups


def shared_tensor_amax(amax_t: float | torch.Tensor, calibrator: Callable | None = None):
    """A calibrator that answers the whole-tensor call (one row: per-tensor FP8 scales, NVFP4's
    tensor scale) with the fused group's amax and every block call with `calibrator` (max |x|
    when None)."""
    from quantlib.nn.calibrate import max_calibrator
    inner = calibrator or max_calibrator
    a = torch.as_tensor(float(amax_t), dtype=torch.float32).reshape(1)

    def calibrate(rows: torch.Tensor, dim: int = -1) -> torch.Tensor:
        n = rows.shape[0] if dim in (-1, rows.dim() - 1) else rows.shape[-1]
        if n == 1:
            return a.to(rows.device)
        return inner(rows, dim)

    return calibrate


def group_weight_amax(weights: list[torch.Tensor], calibrator: Callable | None = None) -> float:
    """The tensor amax the partitions share: the largest of their own tensor amaxes."""
    from quantlib.nn.calibrate import max_calibrator
    cal = calibrator or max_calibrator
    return max(float(cal(w.detach().float().reshape(1, -1), -1).reshape(())) for w in weights)


def fuse_plan(fuse, names, layers, w_recipe, act_amax: dict, rotation=None, smooth=None):
    """quantize_model's fuse option: the weight recipe of each layer and the static activation
    amaxes, with every fused group (q/k/v, gate/up) sharing one tensor amax (NVFP4 global
    scale, per-tensor FP8 scale) and one input amax. fuse=None changes nothing."""
    from quantlib.nn.transforms import transformed_weight
    if fuse not in (None, "auto"):
        raise ValueError(f"fuse={fuse!r}: use None or 'auto' (q/k/v and gate/up share scales)")
    recipes = dict.fromkeys(names, w_recipe)
    groups = fused_groups(names) if fuse == "auto" else []
    if groups and smooth is not None:
        raise ValueError(f"fuse='auto' with smooth={smooth!r}: smoothing gives each fused "
                         f"partition its own input factors, which one fused GEMM cannot apply; "
                         f"use fuse=None (and export the layers unfused) or no smoothing")
    tensor_level = w_recipe.granularity == "tensor" or w_recipe.scale_format == "e4m3"
    act_amax = dict(act_amax)
    for g in groups:
        if tensor_level:
            ws = [transformed_weight(layers[n].weight, rotation) for n in g]
            cal = shared_tensor_amax(group_weight_amax(ws, w_recipe.calibrator),
                                     w_recipe.calibrator)
            recipes.update(dict.fromkeys(g, dataclasses.replace(w_recipe, calibrator=cal)))
        amaxes = [act_amax[n] for n in g if n in act_amax]
        if amaxes:
            act_amax.update(dict.fromkeys(g, max(amaxes)))
    return recipes, act_amax
