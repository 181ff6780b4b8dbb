"""Calibration: choosing each scale's amax (clipping range), and collecting activations to do it.

A calibrator is the hook `quantlib.scaling` documents: `calibrator(rows, dim) -> amax`, one amax
per row of a (n_scales, elements_per_scale) float32 tensor. Plug one into a recipe with
`dataclasses.replace(recipe, calibrator=...)` (or `with_calibrator`). Clipping a few outliers
(amax below max |x|) buys a finer grid for everything else: percentile clips a fixed fraction,
MSE search picks, per scale, the clip that minimises the quantization error. Asymmetric (zero
point) recipes take the group's min and max and ignore calibrators.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import torch
from torch import nn

from quantlib.recipes import get_recipe
from quantlib.scaling import max_calibrator  # the default: amax = max |x|, nothing clips


class PercentileCalibrator:
    """amax = the p-th percentile of |x| in each row (a module-level class, so that models whose
    recipes hold one pickle with torch.save). A row with NaN or Inf gets max |x| (NaN or Inf):
    a bad group, as with the default calibrator, never a finite amax that hides it."""

    def __init__(self, p: float = 99.9):
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 100:
            raise ValueError(f"percentile must be a number in (0, 100], got {p!r}")
        self.p = float(p)
        self.__name__ = f"percentile_{p:g}"

    def __call__(self, rows: torch.Tensor, dim: int = -1) -> torch.Tensor:
        a = rows.abs().sort(dim).values
        n = a.shape[dim]
        if n == 0:
            return a.sum(dim)
        # linear interpolation between order statistics, as numpy.percentile does
        pos = (n - 1) * self.p / 100.0
        lo, frac = int(pos), pos - int(pos)
        hi = min(lo + 1, n - 1)
        out = a.select(dim, lo) * (1 - frac) + a.select(dim, hi) * frac
        finite = torch.isfinite(rows).all(dim)
        return torch.where(finite, out, rows.abs().amax(dim))

    def __repr__(self) -> str:
        return f"percentile_calibrator({self.p:g})"


def percentile_calibrator(p: float = 99.9) -> Callable:
    """amax = the p-th percentile of |x| in each row (p = 100 is max)."""
    return PercentileCalibrator(p)


class MSECalibrator:
    """amax = alpha * max |x| per row, alpha from a grid minimising the row's squared error
    (see `mse_calibrator`); a module-level class so that it pickles."""

    def __init__(self, recipe, grid: Iterable[float] | None = None):
        self.recipe = get_recipe(recipe)
        self.alphas = torch.tensor(list(grid) if grid is not None else
                                   [1.0 - 0.025 * i for i in range(21)], dtype=torch.float32)
        if self.alphas.numel() == 0 or not bool(((self.alphas > 0) & (self.alphas <= 1)).all()):
            raise ValueError("MSE grid values must lie in (0, 1]")
        self.__name__ = f"mse_{self.recipe.name}"

    def __call__(self, rows: torch.Tensor, dim: int = -1) -> torch.Tensor:
        from quantlib.qtensor import quantize

        recipe = self.recipe
        rows = rows.movedim(dim, -1).float()
        amax = rows.abs().amax(-1)
        if recipe.scale_format == "e4m3" and rows.shape[0] == 1 and rows.shape[1] > recipe.block:
            return amax                          # the tensor-scale call of a two-level recipe
        if rows.numel() == 0:
            return amax
        # one row = one group; fp32/pow2 scales can treat each row as a "row" group
        if recipe.scale_format in ("fp32", "pow2"):
            row_recipe = dataclasses.replace(recipe, granularity="row", block=None, pad=False)
        else:
            row_recipe = dataclasses.replace(recipe, granularity="group", block=rows.shape[1],
                                             pad=False)
        best_err = torch.full_like(amax, float("inf"))
        best = amax.clone()
        for a in self.alphas:
            cand = amax * a
            r = dataclasses.replace(row_recipe, calibrator=fixed_amax(cand, amax.max()))
            err = (quantize(rows, r).dequantize() - rows).square().sum(-1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best = torch.where(better, cand, best)
        return best

    def __repr__(self) -> str:
        return f"mse_calibrator({self.recipe.name!r})"


def mse_calibrator(recipe, grid: Iterable[float] | None = None) -> Callable:
    """amax = alpha * max |x| per row, alpha from `grid` minimising the row's squared error.

    Each candidate is scored by quantizing the rows with the recipe's own arithmetic (one row is
    one scale group), so scale rounding (E8M0, E4M3) is part of the search. For two-level
    recipes (NVFP4) only the block scales are searched; the tensor scale keeps max |x|.
    """
    return MSECalibrator(recipe, grid)


class FixedAmax:
    """A calibrator that returns a given amax (static scales); see `fixed_amax`. A module-level
    class so that recipes holding one (GPTQ, LSQ, static activations) pickle."""

    def __init__(self, amax, tensor_amax=None):
        self.amax = torch.as_tensor(amax, dtype=torch.float32).detach().reshape(-1)
        self.tensor_amax = None if tensor_amax is None else torch.as_tensor(
            tensor_amax, dtype=torch.float32).detach().reshape(1)

    def __call__(self, rows: torch.Tensor, dim: int = -1) -> torch.Tensor:
        n = rows.shape[0] if dim in (-1, rows.dim() - 1) else rows.shape[-1]
        if self.tensor_amax is not None and n == 1 and self.amax.numel() != 1:
            return self.tensor_amax.to(rows.device)
        a = self.amax.to(rows.device)
        if a.numel() == 1:
            return a.expand(n)
        if a.numel() != n:
            raise ValueError(f"fixed amax has {a.numel()} values but the recipe needs {n} "
                             f"scales here: calibrate with the same recipe and shape")
        return a

    def __repr__(self) -> str:
        return f"fixed_amax({self.amax.numel()} values)"


def fixed_amax(amax, tensor_amax=None) -> Callable:
    """A calibrator that returns a given amax (static scales): a number, or one per scale group.

    Two-level recipes (NVFP4) ask once more, for the tensor amax, with the whole tensor as one
    row: `tensor_amax` answers that call."""
    return FixedAmax(amax, tensor_amax)


def with_calibrator(recipe, calibrator: Callable | None):
    """The recipe with its amax chosen by `calibrator` (None: max |x|)."""
    return dataclasses.replace(get_recipe(recipe), calibrator=calibrator)


def calibrator_by_name(name: str, recipe=None) -> Callable | None:
    """"max", "percentile_99.9" (any p), or "mse" (needs the recipe it will serve)."""
    if name == "max":
        return None
    if name.startswith("percentile_"):
        return percentile_calibrator(float(name.removeprefix("percentile_")))
    if name == "mse":
        if recipe is None:
            raise ValueError("the MSE calibrator searches with a recipe's arithmetic: pass it")
        return mse_calibrator(recipe)
    raise ValueError(f"unknown calibrator {name!r}: use 'max', 'percentile_<p>' or 'mse'")


# ---- collecting activations ---------------------------------------------------------------------
def linear_layers(model: nn.Module) -> dict[str, nn.Linear]:
    """Every nn.Linear of a model by qualified name, in module order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}


@torch.no_grad()
def collect_inputs(model: nn.Module, batches: Iterable, names: Iterable[str] | None = None,
                   max_rows: int = 65536) -> dict[str, torch.Tensor]:
    """The inputs each linear layer sees while `model` runs on `batches` (forward hooks).

    Returns name -> (rows, in_features) float32 on the CPU, at most `max_rows` rows per layer.
    A batch is a tensor (called as model(x)) or a dict (model(**batch)).
    """
    layers = linear_layers(model)
    names = list(layers) if names is None else list(names)
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    count = dict.fromkeys(names, 0)

    def hook(name):
        def fn(module, args):
            if count[name] < max_rows:
                x = args[0].detach().reshape(-1, args[0].shape[-1]).float().cpu()
                x = x[: max_rows - count[name]]
                seen[name].append(x)
                count[name] += len(x)
        return fn

    handles = [layers[n].register_forward_pre_hook(hook(n)) for n in names]
    try:
        run_batches(model, batches)
    finally:
        for h in handles:
            h.remove()
    out = {n: torch.cat(v) if v else torch.empty(0, layers[n].in_features)
           for n, v in seen.items()}
    for n, x in out.items():
        check_finite_inputs(x, f"the inputs of layer {n!r}")
    return out


def check_finite_inputs(x: torch.Tensor, what: str = "the calibration inputs") -> None:
    """Calibration data with NaN or Inf is refused, the same way on every path (static scales,
    SmoothQuant, AWQ, GPTQ): each would otherwise turn it into a NaN scale, all-one smoothing
    factors or NaN weights without a word."""
    if x.is_meta:
        raise ValueError(f"{what} are on the 'meta' device (no values): calibrate with real data")
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        raise ValueError(f"{what} contain {int(bad.sum())} NaN or Inf values: clean the "
                         f"calibration batches (or find the layer that overflows) first")


def run_batches(model: nn.Module, batches: Iterable) -> None:
    """Run the model on each calibration batch (tensor, tuple of tensors, or dict of kwargs)."""
    was = model.training
    model.eval()
    try:
        for b in batches:
            if isinstance(b, dict) or hasattr(b, "keys"):
                model(**b)
            elif isinstance(b, (tuple, list)):
                model(*b)
            else:
                model(b)
    finally:
        model.train(was)


def calibrate_activations(model: nn.Module, batches: Iterable, calibrator: Callable | None = None,
                          names: Iterable[str] | None = None) -> dict[str, float]:
    """Static per-tensor activation amax of each linear layer's input over a calibration set."""
    calibrator = calibrator or max_calibrator
    inputs = collect_inputs(model, batches, names)
    return {n: float(calibrator(x.reshape(1, -1), -1).reshape(())) for n, x in inputs.items()
            if x.numel()}


# ---- per-element scales -------------------------------------------------------------------------
def element_scales(x: torch.Tensor, recipe) -> dict:
    """The dequantization scale s, encoding multiplier r (and zero point z) of every element of x
    under a recipe, each of x's shape: what GPTQ's column rounding and the STE's clip mask need."""
    from quantlib.scaling import blocked, compute_scale, pad_to_blocks

    recipe = get_recipe(recipe)
    xf = x.detach().float()
    if recipe.granularity != "channel":
        xf = xf.reshape(-1, x.shape[-1]) if x.dim() else xf.reshape(1, 1)
    xp = pad_to_blocks(xf, recipe)
    xb, dims = blocked(xp, recipe)
    sc = compute_scale(xb, dims, recipe)

    def full(t):
        t = t.float().expand(xb.shape).reshape(xp.shape)
        if t.dim() == 2:
            t = t[: xf.shape[0], : xf.shape[1]]
        return t.reshape(x.shape)

    out = {"s": full(sc["s"]), "r": full(sc["r"])}
    out["z"] = full(sc["zero_point"]) if recipe.asymmetric else None
    return out
