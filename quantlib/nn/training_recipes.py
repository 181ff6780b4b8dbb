"""Low-precision training recipes: which format and which scales each GEMM operand gets.

A linear layer's step runs three GEMMs on three tensors, each "role" quantized on its own:
x (activation), w (weight), dy (gradient of the output). HYBRID = E4M3 for x and w, E5M2 for dy
(TransformerEngine's Format.HYBRID). Scales follow `granularity` along the contraction dimension
of each GEMM, and for per-tensor scales `scaling` says where the amax comes from: "current"
(this tensor now), "delayed" (an amax history of past steps) or "none" (scale 1: the failure mode).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from quantlib.recipes import Recipe
from quantlib.table import Table

ROLES = ("x", "w", "dy")
KINDS = ("none", "cast", "fp8", "nvfp4")
FP8_FORMATS = ("HYBRID", "E4M3")
SCALINGS = ("current", "delayed", "none")
GRANULARITIES = ("tensor", "row", "block", "mx")
AMAX_ALGOS = ("max", "most_recent")


@dataclass(frozen=True)
class TrainingRecipe:
    """How every GEMM operand of a training step is quantized (see the module docstring)."""

    name: str
    kind: str = "fp8"                 # "none" (FP32), "cast" (elementwise, e.g. BF16), "fp8", "nvfp4"
    cast_format: str = "bf16"         # element format of kind "cast"
    fp8_format: str = "HYBRID"        # "HYBRID" (E5M2 gradients) or "E4M3" (everything E4M3)
    granularity: str = "tensor"       # fp8: "tensor", "row", "block" (1x128 / 128x128), "mx" (32)
    scaling: str = "current"          # per-tensor scales: "current", "delayed" or "none"
    amax_history_len: int = 1024      # delayed scaling (TransformerEngine's defaults)
    amax_compute_algo: str = "max"
    margin: int = 0                   # delayed scale = amax * 2^margin / max
    stochastic_grad: bool = False     # stochastic rounding on dy (NVFP4)
    hadamard_wgrad: bool = False      # random Hadamard transform on the wgrad operands (NVFP4)
    hadamard_size: int = 16
    description: str = dataclasses.field(default="", compare=False)

    def __post_init__(self):
        for field, valid in (("kind", KINDS), ("fp8_format", FP8_FORMATS), ("scaling", SCALINGS),
                             ("granularity", GRANULARITIES), ("amax_compute_algo", AMAX_ALGOS)):
            if getattr(self, field) not in valid:
                raise ValueError(f"{field}={getattr(self, field)!r}: use one of {valid}")
        if self.scaling != "current" and (self.kind != "fp8" or self.granularity != "tensor"):
            raise ValueError(f"scaling={self.scaling!r} needs per-tensor FP8 (kind='fp8', "
                             "granularity='tensor'): block and row scales are always current")
        if self.amax_history_len < 1:
            raise ValueError(f"amax_history_len must be >= 1, got {self.amax_history_len}")

    def element(self, role: str) -> str:
        """The element format of `role` ("x", "w" or "dy")."""
        if role not in ROLES:
            raise ValueError(f"role {role!r}: use one of {ROLES}")
        if self.kind == "cast":
            return self.cast_format
        if self.kind == "nvfp4":
            return "e2m1"
        return "e5m2" if role == "dy" and self.fp8_format == "HYBRID" else "e4m3"

    @property
    def block(self) -> int:
        """Elements along the contraction dimension that share a scale (1: no constraint)."""
        if self.kind == "nvfp4":
            return 16
        return {"block": 128, "mx": 32}.get(self.granularity, 1) if self.kind == "fp8" else 1

    def operand_recipe(self, role: str) -> Recipe | None:
        """The `quantlib.recipes.Recipe` that quantizes `role`, laid out (rows, contraction);
        None for kinds "none"/"cast" and for per-tensor scales that are not "current"."""
        el = self.element(role)
        if self.kind == "nvfp4":        # TE NVFP4BlockScaling: 16x16 weight blocks, 1x16 others
            if role == "w":
                return Recipe("nvfp4_16x16", "e2m1", "block2d", (16, 16), scale_format="e4m3")
            return Recipe("nvfp4", "e2m1", "group", 16, scale_format="e4m3")
        if self.kind != "fp8" or (self.granularity == "tensor" and self.scaling != "current"):
            return None
        if self.granularity == "block":  # DeepSeek-V3 / TE Float8BlockScaling: pow2 scales
            if role == "w":
                return Recipe(f"fp8_{el}_128x128", el, "block2d", (128, 128), scale_format="pow2")
            return Recipe(f"fp8_{el}_1x128", el, "group", 128, scale_format="pow2")
        if self.granularity == "mx":     # MXFP8 with cuBLAS/TE's RCEIL scale rule
            return Recipe(f"mxfp8_{el}", el, "group", 32, scale_format="e8m0", scale_rule="rceil")
        return Recipe(f"fp8_{el}_{self.granularity}", el, self.granularity)


_HYBRID = "E4M3 x, w; E5M2 dy"
TRAINING_RECIPES: dict[str, TrainingRecipe] = {r.name: r for r in [
    TrainingRecipe("fp32", "none", description="no quantization: the reference"),
    TrainingRecipe("bf16", "cast", description="GEMM operands rounded to BF16 (RNE)"),
    TrainingRecipe("fp8_delayed", scaling="delayed",
                   description=f"{_HYBRID}; per-tensor scale from an amax history (TE default)"),
    TrainingRecipe("fp8_current", description=f"{_HYBRID}; per-tensor scale from this amax"),
    TrainingRecipe("fp8_rowwise", granularity="row",
                   description=f"{_HYBRID}; one scale per row of each operand (torchao rowwise)"),
    TrainingRecipe("fp8_block", granularity="block",
                   description=f"{_HYBRID}; 1x128 x/dy, 128x128 w, pow2 scales (DeepSeek-V3)"),
    TrainingRecipe("mxfp8", granularity="mx",
                   description=f"{_HYBRID}; MX blocks of 32, E8M0 scales (RCEIL)"),
    TrainingRecipe("nvfp4", "nvfp4", stochastic_grad=True, hadamard_wgrad=True,
                   description="E2M1, E4M3 scale per 16 (w: 16x16), SR on dy, RHT on wgrad"),
]}


def get_training_recipe(recipe: TrainingRecipe | str, **overrides) -> TrainingRecipe:
    """A training recipe by name (or passed through), with `overrides` of its fields."""
    if isinstance(recipe, str):
        if recipe not in TRAINING_RECIPES:
            raise ValueError(f"unknown training recipe {recipe!r}: use one of "
                             f"{', '.join(TRAINING_RECIPES)}")
        recipe = TRAINING_RECIPES[recipe]
    if not isinstance(recipe, TrainingRecipe):
        raise TypeError(f"expected a TrainingRecipe or a name, got {type(recipe).__name__}")
    return dataclasses.replace(recipe, **overrides) if overrides else recipe


def training_recipes() -> Table:
    """The named training recipes: formats of x / w / dy, scale granularity, extras."""
    t = Table(["recipe", "x", "w", "dy", "scales", "extras"], title="Training recipes")
    for r in TRAINING_RECIPES.values():
        fmts = [r.element(role).upper() if r.kind != "none" else "FP32" for role in ROLES]
        if r.kind in ("none", "cast"):
            scales = "-"
        elif r.kind == "nvfp4":
            scales = "E4M3 per 1x16 (w 16x16) + FP32 tensor"
        else:
            scales = {"tensor": f"FP32 per tensor ({r.scaling})", "row": "FP32 per row",
                      "block": "pow2 per 1x128 (w 128x128)", "mx": "E8M0 per 1x32"}[r.granularity]
        extras = ", ".join(e for e, on in (("SR on dy", r.stochastic_grad),
                                           ("RHT 16 on wgrad", r.hadamard_wgrad),
                                           (f"history {r.amax_history_len}, {r.amax_compute_algo}",
                                            r.scaling == "delayed"))
                           if on) or "-"
        t.append([r.name, *fmts, scales, extras])
    return t


class AmaxHistory:
    """Delayed scaling state of one tensor role: the last `length` amaxes, newest first.

    `scale()` is the dequantization scale for the NEXT cast, from steps already seen:
    amax = max(history) ("max") or history[0] ("most_recent"); scale = amax * 2^margin / qmax;
    an empty (all-zero) history gives scale 1, as TransformerEngine starts.
    """

    def __init__(self, qmax: float, length: int = 1024, algo: str = "max", margin: int = 0,
                 history: torch.Tensor | None = None):
        if algo not in AMAX_ALGOS:
            raise ValueError(f"amax_compute_algo {algo!r}: use one of {AMAX_ALGOS}")
        self.qmax, self.algo, self.margin = float(qmax), algo, margin
        self.history = torch.zeros(length) if history is None else history

    def scale(self) -> torch.Tensor:
        amax = self.history.max() if self.algo == "max" else self.history[0]
        s = amax * 2.0 ** self.margin / self.qmax
        return torch.where(amax > 0, s, torch.ones_like(s)).float()

    def update(self, amax: torch.Tensor) -> None:
        """Record this step's amax (in place: the history may be a module buffer)."""
        self.history.copy_(torch.roll(self.history, 1))
        self.history[0] = amax.detach().to(self.history)
