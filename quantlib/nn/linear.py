"""QuantLinear: an nn.Linear whose weight is stored as a real QuantizedTensor (codes + scales).

A `QuantConfig` pairs a weight recipe with an optional activation recipe: weight-only (W8A16,
W4A16: the weight is decoded for the GEMM) or weight + activation (W8A8 FP8 with a per-token
scale computed on the fly, NVFP4 W4A4). An activation recipe with one scale for the tensor can
use a static amax measured on calibration data (`act_amax`). On a GPU with a kernel path the
GEMM runs in quantlib's Triton kernels; elsewhere the weight is dequantized and multiplied.
"""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from quantlib.device import kernel_path
from quantlib.nn.exact import ExactUnderCasts
from quantlib.nn.transforms import transformed_input, transformed_weight
from quantlib.qtensor import QuantizedTensor, quantize
from quantlib.recipes import Recipe, get_recipe
from quantlib.table import Table


@dataclass(frozen=True)
class QuantConfig:
    """What a QuantLinear quantizes: the weight (always) and the input activation (optional)."""

    name: str
    weight: Recipe
    activation: Recipe | None = None
    description: str = ""

    def __post_init__(self):
        if not isinstance(self.name, str):
            raise TypeError(f"QuantConfig.name must be a str, got {self.name!r}")
        if self.weight is None:
            raise TypeError("QuantConfig.weight is a Recipe or a recipe name, got None")
        object.__setattr__(self, "weight", get_recipe(self.weight))      # names accepted
        if self.activation is not None:
            object.__setattr__(self, "activation", get_recipe(self.activation))

    @property
    def bits(self) -> str:
        w = self.weight.format.bits
        return f"W{w}A{self.activation.format.bits}" if self.activation else f"W{w}A16"


def _cfg(name, w, a=None, desc=""):
    return QuantConfig(name, get_recipe(w), get_recipe(a) if a else None, desc)


INT4_TENSOR = Recipe("int4_tensor", "int4", "tensor",
                     description="INT4 symmetric, one scale amax/7 for the tensor")
FP4_TENSOR = Recipe("fp4_tensor", "e2m1", "tensor",
                    description="FP4 E2M1, one FP32 scale amax/6 for the tensor")

CONFIGS: dict[str, QuantConfig] = {c.name: c for c in [
    _cfg("fp8", "fp8_e4m3_rowwise", None, "FP8 E4M3 weights, one scale per output channel"),
    _cfg("int8", "int8_channel", None, "INT8 weights, one scale per output channel"),
    _cfg("mxfp8", "mxfp8_e4m3", None, "MXFP8 E4M3 weights, E8M0 scale per 32"),
    _cfg("nvfp4", "nvfp4", None, "NVFP4 weights (E4M3 scale per 16 + FP32 tensor scale)"),
    _cfg("mxfp4", "mxfp4", None, "MXFP4 weights, E8M0 scale per 32"),
    _cfg("int4_channel", "int4_channel", None, "INT4 weights, one scale per output channel"),
    _cfg("int4_g128", "int4_g128", None, "INT4 symmetric weights, scale per group of 128"),
    _cfg("int4_g128_asym", "int4_g128_asym", None, "INT4 asymmetric weights (zero point), g128"),
    _cfg("int4_g128_fp16", "int4_g128_fp16", None,
         "INT4 symmetric weights, FP16 scale per group of 128 (GPTQ checkpoints)"),
    _cfg("int4_g128_asym_fp16", "int4_g128_asym_fp16", None,
         "INT4 asymmetric weights, FP16 scale + zero point, g128 (AWQ checkpoints)"),
    _cfg("w8a8_fp8", "fp8_e4m3_rowwise", "fp8_e4m3_rowwise",
         "FP8 E4M3 weights per channel, activations per token (dynamic)"),
    _cfg("w8a8_int8", "int8_channel", "int8_rowwise",
         "INT8 weights per channel, activations per token (dynamic)"),
    _cfg("w8a8_int8_static", "int8_channel", "int8_tensor",
         "INT8 weights per channel, INT8 activations per tensor (static with calibration)"),
    _cfg("nvfp4_w4a4", "nvfp4", "nvfp4", "NVFP4 weights and activations"),
    _cfg("w4a4_int4", "int4_channel", INT4_TENSOR,
         "INT4 weights per channel, INT4 activations per tensor (static with calibration)"),
    _cfg("w4a4_fp4", dataclasses.replace(FP4_TENSOR, name="fp4_channel", granularity="channel"),
         FP4_TENSOR,
         "FP4 E2M1 weights per channel, FP4 activations per tensor"),
]}


def get_config(config) -> QuantConfig:
    """A QuantConfig, a name from CONFIGS, or any recipe (name or Recipe) as weight-only."""
    if isinstance(config, QuantConfig):
        return config
    if isinstance(config, str) and config.strip().lower() in CONFIGS:
        return CONFIGS[config.strip().lower()]
    try:
        r = get_recipe(config)
    except (ValueError, TypeError) as e:
        raise type(e)(f"unknown quantization config {config!r}: use a QuantConfig, one of "
                      f"{', '.join(CONFIGS)}, or a recipe name (weight-only)") from None
    return QuantConfig(r.name, r, None, r.description)


def supports_static(recipe: Recipe | None) -> bool:
    """Whether an activation recipe can take a static (calibrated) amax: one symmetric scale
    for the whole tensor. Per-token and block scales are computed from each input."""
    recipe = None if recipe is None else get_recipe(recipe)
    return recipe is not None and recipe.granularity == "tensor" and not recipe.asymmetric \
        and recipe.scale_format in ("fp32", "pow2")


def static_recipe(recipe: Recipe, amax: torch.Tensor) -> Recipe:
    """The activation recipe with a fixed (calibrated) amax: a static scale."""
    from quantlib.nn.calibrate import fixed_amax
    recipe = get_recipe(recipe)
    if not supports_static(recipe):
        raise ValueError(f"static activation scales need a symmetric per-tensor recipe with an "
                         f"FP32 scale; {recipe.name!r} computes its scales from each input")
    return dataclasses.replace(recipe, calibrator=fixed_amax(amax))


_WARNED: set = set()


def _warn_once(key, msg):
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(msg, stacklevel=3)


class QuantLinear(ExactUnderCasts):
    """y = x W^T + b with W stored as codes + scales (buffers, so state_dict saves them)."""

    def __init__(self, in_features: int, out_features: int, config, bias: bool = True,
                 static_activation: bool = False, smooth: bool = False, rotation: int = 0,
                 device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.config = get_config(config)
        qt = quantize(torch.zeros(out_features, in_features, device=device), self.config.weight)
        self._set_weight(qt)
        self.bias = nn.Parameter(torch.zeros(out_features, device=device)) if bias else None
        if static_activation and self.config.activation is None:
            raise ValueError(f"config {self.config.name!r} quantizes no activations: "
                             f"static_activation needs an activation recipe")
        self.register_buffer("act_amax", torch.ones((), device=device)
                             if static_activation else None)
        self.register_buffer("smooth", torch.ones(in_features, device=device) if smooth else None)
        self.register_buffer("rotation", torch.eye(rotation, device=device) if rotation else None)

    # float buffers that are part of the stored numbers, not of the compute dtype: `.half()`,
    # `.bfloat16()`, `.to(dtype)` change only the bias and the dequantized weight's dtype (which
    # follows the input); these keep their dtype (FP32, or a recipe's FP16/BF16 scales), exact
    _EXACT = ("weight_scales", "weight_tensor_scale", "act_amax", "smooth", "rotation")

    def _set_weight(self, qt: QuantizedTensor) -> None:
        for name in ("codes", "scales", "tensor_scale", "zero_point"):
            self.register_buffer(f"weight_{name}", getattr(qt, name))
        self._weight_recipe, self._weight_dtype = qt.recipe, qt.dtype

    @classmethod
    def from_linear(cls, linear: nn.Linear, config, qweight: QuantizedTensor | None = None,
                    act_amax: float | torch.Tensor | None = None,
                    smooth: torch.Tensor | None = None,
                    rotation: torch.Tensor | None = None) -> QuantLinear:
        """Quantize an nn.Linear (round to nearest, or a given QuantizedTensor, e.g. from GPTQ).

        Equivalent transforms of the input channels (`quantlib.nn.transforms`): rotation, an
        orthonormal n x n matrix H applied to every run of n input channels (a random Hadamard
        matrix, QuaRot-style), then smooth, per-channel factors s (SmoothQuant, AWQ). The layer
        computes T(x) Q(W')^T with T(x) = (x H) / s and W' = (W H) * s, so that T(x) W'^T = x W^T
        before rounding; a given qweight must already be Q(W')."""
        cfg = get_config(config)
        w = linear.weight.detach()
        if rotation is not None:
            rotation = torch.as_tensor(rotation, dtype=torch.float32, device=w.device)
            n = rotation.shape[0]
            if rotation.dim() != 2 or rotation.shape != (n, n) or linear.in_features % n or \
                    not torch.allclose(rotation @ rotation.T, torch.eye(n, device=w.device),
                                       atol=1e-5):
                raise ValueError(f"rotation must be an orthonormal n x n matrix with n dividing "
                                 f"in_features={linear.in_features}, got {tuple(rotation.shape)}")
        if smooth is not None:
            smooth = torch.as_tensor(smooth, dtype=torch.float32, device=w.device)
            if smooth.shape != (linear.in_features,) or not bool((smooth > 0).all()) \
                    or not bool(torch.isfinite(smooth).all()):
                raise ValueError(f"smooth must be {linear.in_features} positive finite factors "
                                 f"(one per input channel), got shape {tuple(smooth.shape)}")
        if qweight is None and (rotation is not None or smooth is not None):
            w = transformed_weight(w, rotation, smooth)
        q = cls.__new__(cls)
        nn.Module.__init__(q)
        q.in_features, q.out_features, q.config = linear.in_features, linear.out_features, cfg
        q._set_weight(qweight if qweight is not None else quantize(w, cfg.weight))
        q.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone())
        if qweight is not None and (tuple(qweight.shape) != (linear.out_features,
                                                              linear.in_features)
                                    or qweight.recipe.name != cfg.weight.name):
            raise ValueError(f"qweight is a {qweight.recipe.name!r} weight of shape "
                             f"{tuple(qweight.shape)}; this layer needs a {cfg.weight.name!r} "
                             f"weight of shape {(linear.out_features, linear.in_features)}")
        if act_amax is not None and cfg.activation is None:
            raise ValueError(f"config {cfg.name!r} quantizes no activations: drop act_amax")
        if act_amax is not None:
            a = torch.as_tensor(act_amax, dtype=torch.float32)
            if not bool(torch.isfinite(a).all() & (a > 0).all()):
                raise ValueError(f"act_amax must be positive and finite, got {act_amax!r} (a "
                                 f"calibration batch with NaN or Inf gives a NaN amax: clean it)")
            static_recipe(cfg.activation, a)                           # validates the recipe
        q.register_buffer("act_amax", None if act_amax is None else
                          torch.as_tensor(act_amax, dtype=torch.float32, device=w.device).clone())
        q.register_buffer("smooth", None if smooth is None else smooth.clone())
        q.register_buffer("rotation", rotation)     # shared, not copied: one H for all layers
        return q

    @property
    def qweight(self) -> QuantizedTensor:
        """The weight as a QuantizedTensor (views of this module's buffers)."""
        return QuantizedTensor(codes=self.weight_codes, scales=self.weight_scales,
                               recipe=self._weight_recipe,
                               shape=torch.Size((self.out_features, self.in_features)),
                               dtype=self._weight_dtype, tensor_scale=self.weight_tensor_scale,
                               zero_point=self.weight_zero_point)

    def activation_recipe(self) -> Recipe | None:
        """The recipe applied to the input: static (calibrated amax) or dynamic."""
        a = self.config.activation
        if a is None or self.act_amax is None:
            return a
        return static_recipe(a, self.act_amax)

    def get_extra_state(self) -> dict:
        """Saved with the state dict: what the buffers mean. Codes and scales of another config
        can have the same shapes and dtypes, so loading checks the recipes by name."""
        a = self.config.activation
        return {"weight": self.config.weight.name, "activation": a.name if a else None}

    def set_extra_state(self, state) -> None:
        mine = self.get_extra_state()
        if state != mine:
            raise ValueError(f"this checkpoint holds a QuantLinear quantized as {state}, this "
                             f"layer is {mine}: quantize the model with the same config first")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_floating_point():
            raise TypeError(f"QuantLinear takes floating-point input, got {x.dtype}")
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"input of shape {tuple(x.shape)}: the layer takes (..., "
                             f"{self.in_features})")
        if x.device != self.weight_codes.device:
            raise ValueError(f"input on {x.device}, layer on {self.weight_codes.device}: move "
                             f"one of them with .to(device)")
        path = kernel_path(x.device)
        if path not in ("reference", "interpreter"):     # the interpreter is for kernel tests
            y = _kernel_forward(self, x, path)
            if y is not None:
                return y
        return self.reference_forward(x)

    def input_transform(self, x: torch.Tensor) -> torch.Tensor:
        """T(x) = (x H) / s, the input the quantized weight Q((W H) * s) expects: H the rotation,
        s the smoothing factors, each only when the layer has one."""
        return transformed_input(x, self.rotation, self.smooth)

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Dequantize the weight (and fake-quantize the input) and multiply: the exact math."""
        x = self.input_transform(x)
        a = self.activation_recipe()
        if a is not None:
            x = quantize(x.reshape(-1, x.shape[-1]), a).dequantize(x.dtype).reshape(x.shape)
        w = self.qweight.dequantize(x.dtype)
        return F.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        act = ""
        if self.config.activation is not None:
            act = f", act={self.config.activation.name}" + \
                  (" static" if self.act_amax is not None else " dynamic")
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, weight={self.config.weight.name}{act}"
                + (f", rotated {self.rotation.shape[0]}" if self.rotation is not None else "")
                + (", smoothed" if self.smooth is not None else ""))


def kernel_gemm(layer: QuantLinear, x: torch.Tensor, path: str = "auto"):
    """y through quantlib.kernels' GEMM for this layer's recipes, or None when there is none.

    W8A8 FP8: fp8_quantize(x) then fp8_scaled_mm; weight-only (W8A16, W4A16: NVFP4, MXFP4,
    MXFP8, FP8 or INT8 per row, INT4 per group or row): `weight_matmul` on BF16 activations,
    with the weight in the decode kernels' layout (built once, `decode_weight`); NVFP4 W4A4
    first rounds x to NVFP4 and back. The kernels accumulate in FP32 from BF16 inputs, so
    results match the reference to BF16 precision. No host synchronisation and no tuning
    inside a CUDA-graph capture: warm up (one eager forward) before capturing."""
    from quantlib import kernels as K
    from quantlib.kernels._decode import decode_kind
    w, a = layer.config.weight, layer.activation_recipe()
    x = layer.input_transform(x)
    shape, x2 = x.shape, x.reshape(-1, x.shape[-1]).contiguous()
    out = torch.float32 if x.dtype == torch.float32 else torch.bfloat16
    bias = None if layer.bias is None else layer.bias.float()
    if w.element in ("e4m3", "e5m2") and w.scale_format == "fp32" and a is not None \
            and a.element in ("e4m3", "e5m2") and a.calibrator is None \
            and w.granularity in ("tensor", "row") and a.granularity in ("tensor", "row"):
        y = K.fp8_scaled_mm(K.fp8_quantize(x2, a, path=path), layer.qweight, bias, out,
                            path=path)
    elif decode_kind(w) is not None and (a is None or a.name == "nvfp4") \
            and layer.in_features % (max(16, w.block) if w.granularity == "group" else 16) == 0:
        if a is not None:                       # W4A4: the activations take NVFP4's grid too
            xb = K.nvfp4_dequantize(K.nvfp4_quantize(x2, a, path=path), torch.bfloat16,
                                    path=path)
        else:
            xb = x2.to(torch.bfloat16)
        y = K.weight_matmul(xb, decode_weight(layer), bias, out, path=path)
    else:
        return None
    return y.to(x.dtype).reshape(*shape[:-1], layer.out_features)


def decode_weight(layer: QuantLinear):
    """The layer's weight in the decode kernels' layout (`quantlib.kernels.decode_layout`),
    built on first use and kept beside the canonical buffers (which the state_dict saves); built
    again when those buffers change (load_state_dict, .to(device)). Inside a CUDA-graph
    capture a missing layout is not cached (its tensors would only exist on replay): the
    canonical weight is passed and transposed on every replay, slower, so warm up first."""
    from quantlib.kernels import _tuning, decode_layout
    bufs = (layer.weight_codes, layer.weight_scales, layer.weight_tensor_scale,
            layer.weight_zero_point)
    key = tuple((t.data_ptr(), t._version, t.device) for t in bufs if t is not None)
    cached = layer.__dict__.get("_decode_cache")
    if cached is not None and cached[0] == key:
        return cached[1]
    if _tuning.capturing():
        _warn_once(("capture", layer.config.name),
                   "quantlib: a QuantLinear met a CUDA-graph capture before its first eager "
                   "forward; its weight layout is rebuilt on every replay: warm up first")
        return layer.qweight
    dw = decode_layout(layer.qweight)
    layer.__dict__["_decode_cache"] = (key, dw)
    return dw


def _kernel_forward(layer: QuantLinear, x: torch.Tensor, path: str):
    """The Triton GEMM on a GPU path, or None (and one warning) when this config has none."""
    y = kernel_gemm(layer, x)
    if y is None:
        _warn_once((layer.config.name, path),
                   f"quantlib: no {path} GEMM kernel for {layer.config.name!r} "
                   f"({layer.config.weight.name} weights); falling back to dequantize + matmul")
    return y


def configs_table() -> Table:
    """Every named QuantConfig: weight recipe, activation recipe and what it is for."""
    t = Table(["config", "bits", "weight", "activation", "description"],
              title="Quantization configs for QuantLinear / quantize_model")
    for c in CONFIGS.values():
        t.append([c.name, c.bits, c.weight.name, c.activation.name if c.activation else "-",
                  c.description])
    return t
