"""KV-cache quantization: keys and values stored as QuantizedTensors, appended token by token.

Layout (batch, kv_heads, tokens, head_dim), as `transformers` caches hold them. A `KVRecipe`
says who shares a scale and where the scale comes from:

| granularity | quantlib recipe                  | scale shape           | scale comes from          |
|-------------|----------------------------------|-----------------------|---------------------------|
| tensor      | FP8/INT8 "tensor"                | ()                    | calibration (static, vLLM's k_scale/v_scale) or the first update (dynamic, frozen, as transformers' fp8 cache) |
| head        | "channel", axis 1                | (1, kv_heads, 1, 1)   | same as tensor, one per head |
| token       | "row"                            | (batch, heads, tokens, 1) | each token's head vector (dynamic) |
| nvfp4       | "nvfp4", blocks of 16 on head_dim| E4M3 (b, h, t, d/16) + FP32 tensor scale | blocks: dynamic; tensor scale: calibration or first update |

A scale fixed before a token arrives (static or frozen) saturates what exceeds it (E4M3 and
INT8 saturate); per-token and block scales never clip. Keys may be rotated first (`rotate`):
K' = K H with H an orthonormal random Hadamard matrix over head_dim, so Q K^T = (Q H)(K')^T;
dequantizing returns K' H^T, the keys with the rotated error.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from quantlib.codecs import encode
from quantlib.memory.inference import StorageFormat, kv_cache_memory, storage_format
from quantlib.nn.calibrate import fixed_amax
from quantlib.nn.hadamard import random_hadamard_matrix
from quantlib.qtensor import QuantizedTensor, pack_codes, quantize
from quantlib.recipes import Recipe, get_recipe
from quantlib.scaling import nvfp4_scale
from quantlib.table import Table

GRANULARITIES = ("tensor", "head", "token", "nvfp4")


@dataclass(frozen=True)
class KVRecipe:
    """How keys or values are stored: element, scale granularity, static or dynamic scale,
    Hadamard rotation along head_dim (keys)."""

    name: str
    element: str = "e4m3"          # "e4m3", "int8" or "e2m1" (nvfp4)
    granularity: str = "token"     # one of GRANULARITIES
    static: bool = False           # tensor/head/nvfp4 scale from calibration, not the 1st update
    rotate: bool = False           # random Hadamard rotation along head_dim before quantizing

    def __post_init__(self):
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"KV granularity {self.granularity!r}: use one of {GRANULARITIES}")
        if (self.granularity == "nvfp4") != (self.element == "e2m1"):
            raise ValueError("NVFP4 KV uses E2M1 elements with granularity 'nvfp4'; other "
                             f"granularities take e4m3 or int8, got {self.element!r}")
        if self.element not in ("e4m3", "int8", "e2m1"):
            raise ValueError(f"KV element {self.element!r}: use 'e4m3', 'int8' or 'e2m1'")
        if self.static and self.granularity == "token":
            raise ValueError("per-token scales are computed from each token (dynamic); "
                             "static scales apply to 'tensor', 'head' or 'nvfp4'")

    def recipe(self, amax: torch.Tensor | None = None) -> Recipe:
        """The quantlib Recipe that quantizes a (b, h, t, d) block, with a fixed amax if given."""
        g = self.granularity
        if g == "nvfp4":
            return get_recipe("nvfp4")
        gran, axis = {"tensor": ("tensor", 0), "head": ("channel", 1), "token": ("row", 0)}[g]
        return Recipe(f"kv_{self.name}", self.element, gran, axis=axis,
                      calibrator=None if amax is None else fixed_amax(amax))

    @property
    def bits(self) -> int:
        return 4 if self.element == "e2m1" else 8

    def storage_format(self, head_dim: int) -> StorageFormat:
        """This recipe as `quantlib.memory` counts it: per-token FP32 scales are one scale per
        head vector (a group of head_dim); per-tensor and per-head scales are a few bytes per
        layer and not counted there."""
        if self.granularity == "nvfp4":
            return storage_format("NVFP4")
        if self.granularity == "token":
            return StorageFormat(self.name, self.element, "fp32", head_dim)
        return StorageFormat(self.name, self.element)


KV_RECIPES: dict[str, KVRecipe] = {r.name: r for r in [
    KVRecipe("fp8_tensor_static", "e4m3", "tensor", static=True),
    KVRecipe("fp8_tensor", "e4m3", "tensor"),
    KVRecipe("fp8_head_static", "e4m3", "head", static=True),
    KVRecipe("fp8_head", "e4m3", "head"),
    KVRecipe("fp8_token", "e4m3", "token"),
    KVRecipe("int8_token", "int8", "token"),
    KVRecipe("nvfp4", "e2m1", "nvfp4"),
    KVRecipe("nvfp4_static", "e2m1", "nvfp4", static=True),
]}


def get_kv_recipe(recipe, rotate: bool | None = None) -> KVRecipe:
    """A KVRecipe by name (see KV_RECIPES) or passed through; `rotate` overrides its rotation."""
    if isinstance(recipe, str) and recipe.strip().lower() in KV_RECIPES:
        recipe = KV_RECIPES[recipe.strip().lower()]
    if not isinstance(recipe, KVRecipe):
        raise ValueError(f"unknown KV recipe {recipe!r}: use a KVRecipe or one of "
                         f"{', '.join(KV_RECIPES)}")
    return recipe if rotate is None else dataclasses.replace(recipe, rotate=rotate)


def _check_kv(x: torch.Tensor, what: str):
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"{what} must be a floating-point torch.Tensor (batch, heads, tokens, "
                        f"head_dim), got {getattr(x, 'dtype', type(x).__name__)}")
    if x.dim() != 4:
        raise ValueError(f"{what} must be 4-D (batch, kv_heads, tokens, head_dim), got shape "
                         f"{tuple(x.shape)}")


def amax_of(x: torch.Tensor, kv: KVRecipe) -> torch.Tensor:
    """The amax a static or frozen scale is made from: one value (tensor, nvfp4's tensor
    scale) or one per head (head)."""
    a = x.detach().float().abs()
    return a.amax(dim=(0, 2, 3)) if kv.granularity == "head" else a.amax()


def _nvfp4_fixed(x: torch.Tensor, amax_t: torch.Tensor) -> QuantizedTensor:
    """NVFP4 with the tensor scale made from a given amax (blocks of 16 keep their own E4M3
    scale): the arithmetic of `quantlib.recipes`, step 3 (e4m3) and 4."""
    xf = x.detach().float()
    if xf.shape[-1] % 16:
        raise ValueError(f"NVFP4 KV needs head_dim divisible by 16, got {xf.shape[-1]}")
    xb = xf.reshape(*xf.shape[:-1], -1, 16)
    amax_b = xb.abs().amax(-1, keepdim=True)
    code_b, s_t, _, r = nvfp4_scale(amax_b, amax_t.float().to(x.device), 6.0)
    bad = ~torch.isfinite(amax_b)
    q = encode(torch.where(bad, 0.0, xb * r), "e2m1", rounding="rne", overflow="saturate")
    return QuantizedTensor(codes=pack_codes(q.reshape(xf.shape), 4), scales=code_b[..., 0],
                           recipe=get_recipe("nvfp4"), shape=x.shape, dtype=x.dtype,
                           tensor_scale=s_t.reshape(()))


def quantize_kv(x: torch.Tensor, recipe, amax: torch.Tensor | None = None) -> QuantizedTensor:
    """Quantize a (batch, heads, tokens, head_dim) key or value block. `amax` fixes the
    per-tensor / per-head / NVFP4 tensor scale (static or frozen); None computes it from x.
    Rotation is the caller's (`KVStore`): x here is what gets stored."""
    kv = get_kv_recipe(recipe)
    _check_kv(x, "x")
    if kv.granularity == "nvfp4":
        return quantize(x, "nvfp4") if amax is None else _nvfp4_fixed(x, amax)
    if kv.granularity == "token" or amax is None:
        return quantize(x, kv.recipe())
    return quantize(x, kv.recipe(amax))


class KVStore:
    """One side (keys or values) of one layer: a growing QuantizedTensor.

    `append(x)` quantizes the new tokens and concatenates codes (and per-token scales) along
    the token axis; `dequantize()` returns every stored token (rotated back for keys)."""

    def __init__(self, recipe, amax: torch.Tensor | float | None = None, seed: int = 0):
        self.recipe = get_kv_recipe(recipe)
        if self.recipe.static and amax is None:
            raise ValueError(f"KV recipe {self.recipe.name!r} has static scales: pass the "
                             f"calibrated amax (quantlib.attention.calibrate_kv)")
        self.amax = None if amax is None else torch.as_tensor(amax, dtype=torch.float32)
        self.seed = seed
        self.rotation: torch.Tensor | None = None
        self.qt: QuantizedTensor | None = None

    def _rotate(self, x: torch.Tensor) -> torch.Tensor:
        if not self.recipe.rotate:
            return x
        if self.rotation is None:
            self.rotation = random_hadamard_matrix(x.shape[-1], self.seed).to(x.device)
        return (x.float() @ self.rotation).to(x.dtype)

    def append(self, x: torch.Tensor) -> QuantizedTensor:
        _check_kv(x, "key/value states")
        x = self._rotate(x)
        if self.amax is None and self.recipe.granularity != "token":
            self.amax = amax_of(x, self.recipe)     # dynamic: frozen at the first update
        new = quantize_kv(x, self.recipe, None if self.recipe.granularity == "token"
                          else self.amax.to(x.device))
        if self.qt is None:
            self.qt = new
            return new
        old = self.qt
        per_token = self.recipe.granularity in ("token", "nvfp4")
        self.qt = dataclasses.replace(
            old, codes=torch.cat([old.codes, new.codes], dim=2),
            scales=torch.cat([old.scales, new.scales], dim=2) if per_token else old.scales,
            shape=torch.Size((*old.shape[:2], old.shape[2] + x.shape[2], old.shape[3])))
        return self.qt

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        x = self.qt.dequantize(torch.float32)
        if self.recipe.rotate:
            x = x @ self.rotation.T
        return x.to(dtype)

    def index_batch(self, idx: torch.Tensor) -> None:
        """Keep / reorder batch rows (beam search): codes and per-token scales follow."""
        if self.qt is None:
            return
        per_token = self.recipe.granularity in ("token", "nvfp4")
        codes = self.qt.codes.index_select(0, idx.to(self.qt.device))
        scales = self.qt.scales.index_select(0, idx.to(self.qt.device)) if per_token \
            else self.qt.scales
        self.qt = dataclasses.replace(self.qt, codes=codes, scales=scales,
                                      shape=torch.Size((len(idx), *self.qt.shape[1:])))

    @property
    def nbytes(self) -> int:
        """Codes and scales stored (the QuantizedTensor's bytes; a frozen or static scale
        is counted once)."""
        return 0 if self.qt is None else self.qt.nbytes


def kv_bytes_table(config="Llama-3-8B",
                   recipes=("fp8_tensor_static", "fp8_token", "int8_token", "nvfp4")) -> Table:
    """Bytes per token of a model's whole KV cache (K and V, every layer and KV head), per KV
    recipe, from `quantlib.memory.kv_cache_memory` (chapter 10's calculator), next to BF16.
    `config`: a ModelConfig or a preset name."""
    from quantlib.memory.config import ModelConfig, get_model_config
    cfg = config if isinstance(config, ModelConfig) else get_model_config(config)
    bf16 = kv_cache_memory(cfg, 1, 1, "BF16")
    t = Table(["KV recipe", "bits/element", "bytes/token", "vs BF16"], digits=3,
              title=f"{cfg.name} KV cache per token: {cfg.num_hidden_layers} layers x "
                    f"{cfg.num_key_value_heads} KV heads x {cfg.head_dim}")
    t.append(["BF16", 16.0, bf16, 1.0])
    for name in recipes:
        f = get_kv_recipe(name).storage_format(cfg.head_dim)
        b = kv_cache_memory(cfg, 1, 1, f)
        t.append([name, f.bits_per_element, b, b / bf16])
    return t


def kv_recipes_table() -> Table:
    """Every named KV recipe: element, who shares a scale, where the scale comes from."""
    who = {"tensor": "the layer's K (or V)", "head": "one KV head", "token": "one token of "
           "one head (head_dim values)", "nvfp4": "16 values of head_dim (E4M3) + FP32 tensor"}
    t = Table(["KV recipe", "element", "one scale per", "scale from"], title="KV recipes")
    for r in KV_RECIPES.values():
        src = ("calibration (static)" if r.static else "each token" if r.granularity == "token"
               else "the first update, then frozen")
        if r.granularity == "nvfp4":
            src = "blocks: each token; tensor: " + ("calibration" if r.static else "first update")
        t.append([r.name, {"e4m3": "FP8 E4M3", "int8": "INT8", "e2m1": "FP4 E2M1"}[r.element],
                  who[r.granularity], src])
    return t
