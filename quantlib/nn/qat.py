"""Quantization-aware training: train through the rounding the deployed model will do.

`fake_quantize(x, recipe)` returns quantize(x, recipe).dequantize(): the forward pass sees exactly
the values the quantized model computes with. Rounding has zero gradient almost everywhere, so the
backward pass uses the straight-through estimator (STE): the gradient passes through unchanged
where x lies inside the representable range and is zeroed where x was clipped (saturated).
LSQ (Esser et al., 2020) also learns each scale: here its amax (clip), s = amax / qmax, so that
`convert` can hand the learned amax to the recipe's own arithmetic and reproduce the fake-
quantized outputs bit for bit.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from quantlib.codecs import round_to_format
from quantlib.nn.calibrate import calibrate_activations, element_scales, fixed_amax
from quantlib.nn.exact import ExactUnderCasts
from quantlib.nn.linear import QuantLinear, get_config, static_recipe, supports_static
from quantlib.qtensor import quantize
from quantlib.recipes import Recipe, get_recipe
from quantlib.scaling import qmax_of
from quantlib.table import Table


class _FakeQuantizeSTE(torch.autograd.Function):
    """Forward: quantize + dequantize. Backward: STE, zero where the element saturated."""

    @staticmethod
    def forward(ctx, x, recipe):
        q = quantize(x, recipe)
        es = element_scales(x, recipe)
        y = x.detach().float() * es["r"]
        fmt = recipe.format
        if recipe.asymmetric:
            y = y + es["z"]
        elif recipe.mx_int8:
            y = y * 64.0                          # MX INT8 codes count 2^-6 steps
        # the gradient passes where x rounds onto a code (INT4 -8..7, E2M1 -6..6), give or take
        # half the top step; beyond that the element saturated and the gradient is zero
        tol = 0.5 if fmt.is_int else 0.5 * 2.0 ** (math.floor(math.log2(fmt.max)) - fmt.mbits)
        inside = (y >= fmt.min - tol) & (y <= fmt.max + tol)
        ctx.save_for_backward(inside)
        return q.dequantize(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return grad * inside.to(grad.dtype), None


def fake_quantize(x: torch.Tensor, recipe) -> torch.Tensor:
    """quantize(x, recipe).dequantize() with a straight-through gradient (any recipe)."""
    return _FakeQuantizeSTE.apply(x, get_recipe(recipe))


class _GradScale(torch.autograd.Function):
    """Identity forward; gradient times g (LSQ's scale-gradient normalisation)."""

    @staticmethod
    def forward(ctx, x, g):
        ctx.g = g
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.g, None


class LSQQuantizer(ExactUnderCasts):
    """Fake quantization with a learned amax per scale group (LSQ; per tensor or per channel).

    s = amax / qmax; forward round(clamp(x / s)) * s exactly as `quantize` computes it for a
    recipe whose calibrator returns this amax; backward: STE for x, LSQ's gradient for amax
    (round(v) - v inside the range, +-qmax outside), scaled by 1 / sqrt(n_per_scale * qmax).
    The amax stays FP32 under `.half()`/`.bfloat16()`/`.to(dtype)` (the recipe's scale arithmetic).
    """

    _EXACT = ("amax",)

    def __init__(self, recipe, amax: torch.Tensor):
        super().__init__()
        recipe = get_recipe(recipe)
        if recipe.scale_format != "fp32" or recipe.asymmetric or \
                recipe.granularity not in ("tensor", "channel", "row") or recipe.mx_int8:
            raise ValueError(f"LSQ learns symmetric FP32 scales per tensor, channel or row; "
                             f"{recipe.name!r} is {recipe.granularity} with {recipe.scale_format} "
                             f"scales: use plain fake quantization (lsq=False) for it")
        self.recipe = recipe
        self.qmax = float(qmax_of(recipe))
        self.qmin = float(recipe.format.min)      # INT4 reaches -8 when a static amax clips
        self.amax = nn.Parameter(torch.as_tensor(amax, dtype=torch.float32).clone())

    def scale_shape(self, x: torch.Tensor) -> tuple[int, ...]:
        r = self.recipe
        if r.granularity == "tensor":
            return ()
        if r.granularity == "row":
            return (*x.shape[:-1], 1)
        a = r.axis % x.dim()
        return tuple(n if d == a else 1 for d, n in enumerate(x.shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = self.scale_shape(x)
        n_per_scale = max(1, x.numel() // max(1, math.prod(shape)))
        amax = _GradScale.apply(self.amax, 1.0 / (n_per_scale * self.qmax) ** 0.5)
        s = amax.abs().clamp(min=1e-12).reshape(shape) / self.qmax
        v = x.float() * (1.0 / s)
        v = v.clamp(self.qmin, self.qmax)     # saturation, as encode does after rounding
        q = v + (round_to_format(v.detach(), self.recipe.format) - v.detach())
        return (q * s).to(x.dtype)

    def frozen_recipe(self) -> Recipe:
        """The recipe with this learned amax as a fixed calibrator (what `convert` stores)."""
        return dataclasses.replace(self.recipe,
                                   calibrator=fixed_amax(self.amax.detach().abs().clamp(min=1e-12)))


class QATLinear(ExactUnderCasts, nn.Linear):
    """nn.Linear that fake-quantizes its weight (and input) as `config` will in deployment.

    A dtype cast changes the weight, bias and compute dtype; the static `act_amax` (and the LSQ
    amaxes) stay FP32, so the fake-quant grid and `convert`'s scales are the recipe's."""

    _EXACT = ("act_amax",)

    def __init__(self, linear: nn.Linear, config, act_amax=None, lsq: bool = False):
        super().__init__(linear.in_features, linear.out_features, linear.bias is not None,
                         device=linear.weight.device, dtype=linear.weight.dtype)
        self.config = get_config(config)
        with torch.no_grad():
            self.weight.copy_(linear.weight)
            if linear.bias is not None:
                self.bias.copy_(linear.bias)
        a = self.config.activation
        if act_amax is not None and a is None:
            raise ValueError(f"config {self.config.name!r} quantizes no activations")
        if act_amax is not None:
            static_recipe(a, torch.as_tensor(act_amax))      # validates: per-tensor, FP32 scale
        if lsq and supports_static(a) and act_amax is None:
            raise ValueError("LSQ on activations learns a static amax: prepare_qat needs "
                             "calibration batches to start it from")
        self.weight_lsq = LSQQuantizer(self.config.weight, self._weight_amax()) if lsq else None
        self.act_lsq = LSQQuantizer(a, act_amax) if lsq and supports_static(a) else None
        self.register_buffer("act_amax", None if act_amax is None or lsq else
                             torch.as_tensor(act_amax, dtype=torch.float32).clone())

    def _weight_amax(self) -> torch.Tensor:
        r, w = self.config.weight, self.weight.detach().float()
        if r.granularity == "tensor":
            return w.abs().amax()
        dims = tuple(d for d in range(w.dim()) if d != r.axis % w.dim()) \
            if r.granularity == "channel" else (-1,)
        return w.abs().amax(dims, keepdim=True).reshape(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.config.activation
        if self.act_lsq is not None:
            x = self.act_lsq(x)
        elif a is not None:
            recipe = a if self.act_amax is None else static_recipe(a, self.act_amax)
            x = fake_quantize(x.reshape(-1, x.shape[-1]), recipe).reshape(x.shape)
        w = self.weight_lsq(self.weight) if self.weight_lsq is not None else \
            fake_quantize(self.weight, self.config.weight)
        return F.linear(x, w, self.bias)

    def to_quant_linear(self) -> QuantLinear:
        """The real quantized layer: same rounding, so the same outputs as this forward."""
        w_recipe = self.weight_lsq.frozen_recipe() if self.weight_lsq is not None \
            else self.config.weight
        act_amax = self.act_lsq.amax.detach().abs().clamp(min=1e-12) if self.act_lsq is not None \
            else self.act_amax
        lin = nn.Linear(self.in_features, self.out_features, self.bias is not None)
        lin.weight, lin.bias = self.weight, self.bias
        return QuantLinear.from_linear(lin, self.config, quantize(self.weight, w_recipe),
                                       act_amax=act_amax)


def _swap(model: nn.Module, names, make) -> None:
    """Replace each named module by make(name, module); a module registered under several
    names (shared, tied) becomes one new module under all of them."""
    made = {}
    for name in names:
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        old = getattr(owner, child)
        made[id(old)] = (old, make(name, old))       # old kept alive: its id stays unique
        setattr(owner, child, made[id(old)][1])
    for name, m in list(model.named_modules(remove_duplicate=False)):
        if id(m) in made and made[id(m)][0] is m:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, made[id(m)][1])


def prepare_qat(model: nn.Module, config, skip=None, calibration=None, act_calibrator=None,
                lsq: bool = False, inplace: bool = False) -> nn.Module:
    """Replace the nn.Linear layers by QATLinear (fake quantization + STE) for fine-tuning.

    `calibration` (batches) gives per-tensor activation recipes a static amax (and LSQ its
    starting point); `skip` as in `quantize_model`. Returns the model (a copy unless inplace)."""
    from quantlib.nn.ptq import calibration_batches, select_layers
    cfg = get_config(config)
    model = model if inplace else copy.deepcopy(model)
    names = select_layers(model, skip)
    calibration = calibration_batches(calibration)
    amax = {}
    if supports_static(cfg.activation) and calibration is not None:
        amax = calibrate_activations(model, calibration, act_calibrator, names)
    _swap(model, names, lambda n, m: QATLinear(m, cfg, amax.get(n), lsq))
    return model


def convert(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Turn every QATLinear into the real QuantLinear (codes + scales) it was training for."""
    model = model if inplace else copy.deepcopy(model)
    names = [n for n, m in model.named_modules() if isinstance(m, QATLinear)]
    if not names:
        raise ValueError("convert found no QATLinear layers: call prepare_qat(model, config) "
                         "and train the model first")
    _swap(model, names, lambda n, m: m.to_quant_linear())
    return model


def qat_vs_ptq(model: nn.Module, config, train: Callable, evaluate: Callable[[nn.Module], float],
               calibration=None, act_calibrators=("max",), skip=None):
    """PTQ (one row per activation calibrator) against QAT and QAT + LSQ from the same model.

    train(model, on_epoch) fine-tunes in place, calling on_epoch(epoch, model) after each epoch;
    evaluate(model) -> a quality number (higher is better). Returns the table (with the share
    of PTQ's loss that QAT recovers, measured from the first PTQ row), the per-epoch curves
    {label: [quality]} and the models {label: (fake-quantized model, converted model)}.
    """
    from quantlib.nn.ptq import quantize_model
    fp32 = evaluate(model)
    t = Table(["method", "quality", "loss vs FP32", "recovered"], digits=4,
              title=f"{get_config(config).name}: PTQ vs QAT")
    t.append(["FP32", fp32, 0.0, None])
    ptq = None
    for c in act_calibrators:
        q = evaluate(quantize_model(model, config, skip=skip, calibration=calibration,
                                    act_calibrator=c))
        ptq = q if ptq is None else ptq
        t.append([f"PTQ ({c})", q, fp32 - q, None])
    curves, models = {}, {}
    for lsq in (False, True):
        label = "QAT + LSQ" if lsq else "QAT (STE)"
        qat = prepare_qat(model, config, skip=skip, calibration=calibration, lsq=lsq)
        curve = curves[label] = []
        train(qat, lambda epoch, m, curve=curve: curve.append(evaluate(m)))
        real = convert(qat)
        models[label] = (qat, real)
        q = evaluate(real)
        t.append([label, q, fp32 - q, (q - ptq) / (fp32 - ptq) if fp32 != ptq else None])
    return t, curves, models


__all__ = ["LSQQuantizer", "QATLinear", "convert", "fake_quantize", "prepare_qat", "qat_vs_ptq"]
