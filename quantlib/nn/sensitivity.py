"""Which layers hurt: per-layer sensitivity of a model to quantization, and a mixed-precision plan.

`sensitivity_report(model, configs, calibration)` quantizes every nn.Linear with every config and
measures, per (layer, config): the weight's QSNR, the model-output error when only that layer is
quantized ("error alone", the harm) and when every layer but it is ("error all but"), the
layer's input (max |x|, outlier channels, the share of it the activation scale clips), the block
scales that flushed to zero or saturated, and the bytes. `mixed_precision_plan(report,
budget_bytes=... | max_error=...)` picks one config per layer from those measurements, exactly
(a multiple-choice knapsack), and checks its prediction by quantizing the model with the plan.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from quantlib.metrics import clipped_fraction, qsnr
from quantlib.nn.calibrate import collect_inputs, linear_layers
from quantlib.nn.fuse import fused_groups
from quantlib.nn.linear import QuantLinear, get_config
from quantlib.nn.ptq import calibration_batches, quantize_model, select_layers
from quantlib.qtensor import quantize
from quantlib.table import Table

BF16 = "bf16"          # the full-precision choice: the layer's weight rounded to BF16, 2 B/weight
COLUMNS = ["layer", "depth", "config", "bytes", "weight QSNR dB", "output QSNR dB", "error alone",
           "error all but",
           "act amax", "outlier channels", "act clipped %", "scale underflow", "scale overflow"]


# ---- model outputs and the error metric ---------------------------------------------------------
def model_output(out) -> torch.Tensor:
    """The tensor a model's output is judged by: itself, `.logits`, `.last_hidden_state`, or the
    first element of a tuple; flattened to (rows, features), float32."""
    for key in ("logits", "last_hidden_state"):
        if hasattr(out, key) and getattr(out, key) is not None:
            out = getattr(out, key)
            break
    if isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"cannot find the output tensor in a {type(out).__name__}: pass "
                        f"output=a function model output -> tensor")
    return out.detach().float().reshape(-1, out.shape[-1])


def relative_mse(reference: torch.Tensor, output: torch.Tensor) -> float:
    """||y - y_ref||^2 / ||y_ref||^2 (1 / 10^(QSNR/10) of the model output)."""
    ref = reference.double()
    return float((output.double() - ref).square().sum() / ref.square().sum().clamp_min(1e-300))


def kl_divergence(reference: torch.Tensor, output: torch.Tensor) -> float:
    """Mean over rows of KL(softmax(reference) || softmax(output)), in nats: for logits."""
    p, q = F.log_softmax(reference.double(), -1), F.log_softmax(output.double(), -1)
    return float((p.exp() * (p - q)).sum(-1).mean())


METRICS = {"rel_mse": relative_mse, "kl": kl_divergence}


@torch.no_grad()
def _run(model: nn.Module, batches: list, output: Callable) -> torch.Tensor:
    was = model.training
    model.eval()
    outs = []
    for b in batches:
        out = model(**b) if hasattr(b, "keys") else model(*b) if isinstance(b, (tuple, list)) \
            else model(b)
        outs.append(output(out))
    model.train(was)
    return torch.cat(outs)


# ---- variants: a config, BF16, or (label, config, {quantize_model options}) ---------------------
def _variants(configs) -> dict[str, tuple]:
    single = isinstance(configs, tuple) and len(configs) == 3 and isinstance(configs[2], dict)
    if single or isinstance(configs, str) or not isinstance(configs, Iterable):
        configs = [configs]
    out = {}
    for v in configs:
        if isinstance(v, tuple):
            if len(v) != 3 or not isinstance(v[0], str) or not isinstance(v[2], dict):
                raise ValueError(f"a variant is a config, {BF16!r}, or (label, config, "
                                 f"{{quantize_model options}}), got {v!r}")
            label, cfg, opts = v
        elif isinstance(v, str) and v.strip().lower() == BF16:
            label, cfg, opts = BF16, BF16, {}
        else:
            cfg, opts = get_config(v), {}
            label = cfg.name
        if label in out:
            raise ValueError(f"two variants are labelled {label!r}: give them distinct labels")
        out[label] = (cfg if cfg == BF16 else get_config(cfg), opts)
    if not out:
        raise ValueError("no configs: pass at least one config to compare")
    return out


def _bf16_linear(lin: nn.Linear) -> nn.Linear:
    q = copy.deepcopy(lin)
    with torch.no_grad():
        q.weight.copy_(q.weight.to(torch.bfloat16).to(q.weight.dtype))
    return q


class _Dequantized(nn.Module):
    """A QuantLinear's reference forward with its weight dequantized once: the same arithmetic
    (input transform, activation rounding, F.linear on the decoded weight), one decode instead of
    one per call, for the hundreds of forward passes of a report."""

    def __init__(self, layer: QuantLinear):
        super().__init__()
        self.layer, self.weight = layer, layer.qweight.dequantize()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.layer
        x = q.input_transform(x)
        a = q.activation_recipe()
        if a is not None:
            x = quantize(x.reshape(-1, x.shape[-1]), a).dequantize(x.dtype).reshape(x.shape)
        return F.linear(x, self.weight.to(x.dtype), None if q.bias is None else q.bias.to(x.dtype))


def layer_bytes(layer: nn.Module) -> int:
    """Stored bytes of a layer's weight: codes, scales, tensor scale, zero point, static
    activation amax and smoothing factors (BF16 for an nn.Linear); not the bias, which every
    choice keeps, nor a rotation matrix, which all layers share."""
    if isinstance(layer, QuantLinear):
        parts = (layer.weight_codes, layer.weight_scales, layer.weight_tensor_scale,
                 layer.weight_zero_point, layer.act_amax, layer.smooth)
        return sum(t.numel() * t.element_size() for t in parts if t is not None)
    return 2 * layer.weight.numel()


def effective_weight(layer: QuantLinear) -> torch.Tensor:
    """The W_eff with x W_eff^T = T(x) Q(W')^T: the quantized weight as the layer applies it,
    rotation and smoothing factors undone, comparable with the original weight."""
    eye = torch.eye(layer.in_features, device=layer.weight_codes.device)
    return (layer.input_transform(eye) @ layer.qweight.dequantize().T).T


def block_scale_stats(x: torch.Tensor, q) -> tuple[int | None, int | None]:
    """(underflow, overflow) block counts of a recipe with E4M3 (NVFP4) or E8M0 (MX) block
    scales; (None, None) for other scales. Underflow: a block with a nonzero value whose scale is
    at the scale format's bottom (E4M3 0: the whole block decodes to 0; E8M0 2^-127, clamped).
    Overflow: a block whose scale is at the top (E4M3 448, E8M0 2^127) and that clips values:
    the scale saturated (the block holding the tensor's amax sits at 448 by design, and does
    not clip)."""
    r = q.recipe
    if r.scale_format not in ("e4m3", "e8m0") or r.granularity != "group":
        return None, None
    x = x.detach().float().reshape(-1, x.shape[-1])
    b = r.block
    pad = -x.shape[-1] % b
    codes = q.scales.reshape(x.shape[0], -1).to(torch.int32)
    bottom, top = (codes & 0x7F) == 0, None
    if r.scale_format == "e4m3":
        top = (codes & 0x7F) == 0x7E
    else:
        top = codes == 254
    f = r.format
    lim = f.max + (0.5 if f.is_int else 2.0 ** (math.frexp(f.max)[1] - 1 - f.mbits) / 2)
    clip = x.abs() > lim * q.element_scales().reshape(x.shape)
    blocks = F.pad(x.abs(), (0, pad)).reshape(x.shape[0], -1, b)
    nonzero = blocks.amax(-1) > 0
    clips = F.pad(clip, (0, pad)).reshape(x.shape[0], -1, b).any(-1)
    return int((bottom & nonzero).sum()), int((top & clips).sum())


def _input_stats(x: torch.Tensor, outlier_ratio: float) -> tuple[float, int]:
    if x.numel() == 0:
        return math.nan, 0
    ch = x.abs().amax(0)
    return float(ch.max()), int((ch > outlier_ratio * ch.median()).sum())


def _act_clipped(layer: nn.Module, x: torch.Tensor) -> float | None:
    if not isinstance(layer, QuantLinear) or layer.config.activation is None or x.numel() == 0:
        return None
    xt = layer.input_transform(x)
    return 100 * clipped_fraction(xt, quantize(xt, layer.activation_recipe()))


class SensitivityReport(Table):
    """A Table (one row per layer and config, the most harmful first) that also remembers how it
    was measured, so that a plan can be checked on the same model, data and metric:
    `model`, `batches`, `layers` (names in depth order), `variants` (label -> (config, options)),
    `uniform_error` (label -> error with every layer quantized), `error_fn(model) -> error`."""


def sensitivity_report(model: nn.Module, configs, calibration, metric="rel_mse", skip=None,
                       output: Callable = model_output, all_but: bool = True,
                       outlier_ratio: float = 8.0, max_rows: int = 4096) -> SensitivityReport:
    """Per-layer sensitivity of `model` to each of `configs`, a Table sorted by harm.

    configs: configs (names or QuantConfigs), "bf16" (weights rounded to BF16, kept unquantized)
    or (label, config, {quantize_model options}) tuples, e.g. ("int4_g128+awq", "int4_g128",
    {"smooth": "awq"}). calibration: batches (as for quantize_model); they feed static
    activation scales and smoothing, and the errors are measured on them. metric: "rel_mse"
    (relative squared error of the output), "kl" (for logits) or f(reference, output) -> float,
    on `output(model(batch))` (default: logits, last_hidden_state or the output tensor).

    Per (layer, config): bytes (`layer_bytes`); weight QSNR (dB) of the effective quantized
    weight, and QSNR of the layer's own output x W^T on its calibration inputs; error alone (only
    this layer quantized: the harm) and error all but (every other layer quantized; compare
    with `uniform_error`); the layer's input max |x| and its outlier
    channels (channel max |x| above `outlier_ratio` times the median channel's); the % of the
    input clipped by the activation scale (configs that quantize activations); block scales that
    underflowed or overflowed (`block_scale_stats`, E4M3/E8M0 block scales).
    """
    metric_fn = METRICS.get(metric) if isinstance(metric, str) else metric
    if not callable(metric_fn):
        raise ValueError(f"metric={metric!r}: use 'rel_mse', 'kl' or a function "
                         f"(reference output, output) -> float")
    batches = calibration_batches(calibration)
    if batches is None:
        raise ValueError("sensitivity_report needs calibration batches: the errors are measured "
                         "on them")
    variants = _variants(configs)
    names = select_layers(model, skip)
    fp = linear_layers(model)
    reference = _run(model, batches, output)

    def error_fn(m: nn.Module) -> float:
        return float(metric_fn(reference, _run(m, batches, output)))

    inputs = collect_inputs(model, batches, names, max_rows=max_rows)
    work = copy.deepcopy(model)
    rows, uniform = [], {}
    for label, (cfg, opts) in variants.items():
        if cfg == BF16:
            qlayers = {n: _bf16_linear(fp[n]) for n in names}
        else:
            qall = quantize_model(model, cfg, skip=lambda n, m: n not in names,
                                  calibration=batches, **opts)
            qlayers = {n: qall.get_submodule(n) for n in names}
        fast = {n: _Dequantized(q) if isinstance(q, QuantLinear) else q
                for n, q in qlayers.items()}
        full = copy.deepcopy(model)
        for n in names:
            _swap(full, n, fast[n])
        uniform[label] = error_fn(full)
        for depth, n in enumerate(names):
            q, w = qlayers[n], fp[n].weight.detach()
            _swap(work, n, fast[n])
            alone = error_fn(work)
            _swap(work, n, fp[n])
            but = None
            if all_but:
                _swap(full, n, fp[n])
                but = error_fn(full)
                _swap(full, n, fast[n])
            cols = _layer_columns(q, fast[n], w, inputs[n], outlier_ratio)
            rows.append([n, depth, label, *cols[:3], alone, but, *cols[3:]])
    rows.sort(key=lambda r: -r[6] if r[6] == r[6] else math.inf)
    report = SensitivityReport(COLUMNS, rows, title="Layer sensitivity, most harmful first",
                               digits=4)
    report.model, report.batches, report.layers = model, batches, names
    report.variants, report.uniform_error, report.error_fn = variants, uniform, error_fn
    report.metric = metric if isinstance(metric, str) else getattr(metric, "__name__", "metric")
    return report


@torch.no_grad()
def _layer_columns(q: nn.Module, fast: nn.Module, w: torch.Tensor, x: torch.Tensor,
                   outlier_ratio: float) -> list:
    """bytes, weight QSNR, output QSNR, act amax, outlier channels, act clipped %, scale
    underflow, scale overflow of one quantized layer q (fast: q with its weight decoded once)."""
    if isinstance(q, QuantLinear):
        w_snr = qsnr(w, effective_weight(q))
        under, over = block_scale_stats(_transformed(q, w), q.qweight)
    else:
        w_snr, under, over = qsnr(w, q.weight), None, None
    bias = 0 if q.bias is None else q.bias.detach().float()
    out_snr = qsnr(F.linear(x, w.float()), fast(x) - bias) if x.numel() else None
    amax, outliers = _input_stats(x, outlier_ratio)
    return [layer_bytes(q), w_snr, out_snr, amax, outliers, _act_clipped(q, x), under, over]


def _transformed(q: QuantLinear, w: torch.Tensor) -> torch.Tensor:
    from quantlib.nn.transforms import transformed_weight
    return transformed_weight(w, q.rotation, q.smooth)


def _swap(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def top_layers(report: SensitivityReport, config: str, n: int = 6, worst: bool = True,
               columns=("layer", "error alone", "weight QSNR dB", "output QSNR dB", "act amax",
                        "outlier channels")) -> Table:
    """The n most (worst=True) or least harmful layers under one config, selected columns."""
    if config not in report.variants:
        raise ValueError(f"{config!r} is not in the report: {list(report.variants)}")
    mine = [r for r in report.to_dicts() if r["config"] == config]
    mine = mine[:n] if worst else mine[-n:]
    return Table(list(columns), [[r[c] for c in columns] for r in mine], digits=report.digits,
                 title=f"{config}: the {n} {'most' if worst else 'least'} harmful layers")


def harm_by_kind(report: SensitivityReport, config: str) -> Table:
    """Layers grouped by kind (the name with its block indices, every numeric part but the last,
    as *: "encoder.layer.*.attention.self.query"), most harmful kind first: mean error alone,
    weight and output QSNR, largest input max |x| and outlier channels summed over the kind's
    layers."""
    if config not in report.variants:
        raise ValueError(f"{config!r} is not in the report: {list(report.variants)}")
    groups: dict[str, list] = {}
    for r in report.to_dicts():
        if r["config"] == config:
            *path, last = r["layer"].split(".")
            kind = ".".join(["*" if p.isdigit() else p for p in path] + [last])
            groups.setdefault(kind, []).append(r)
    t = Table(["kind", "layers", "mean error alone", "mean weight QSNR dB",
               "mean output QSNR dB", "max act amax", "outlier channels"],
              title=f"{config}: harm by kind of layer", digits=report.digits)
    for kind, rs in sorted(groups.items(), key=lambda kv: -np.mean([r["error alone"]
                                                                      for r in kv[1]])):
        t.append([kind, len(rs), float(np.mean([r["error alone"] for r in rs])),
                  float(np.mean([r["weight QSNR dB"] for r in rs])),
                  float(np.mean([r["output QSNR dB"] for r in rs])),
                  max(r["act amax"] for r in rs), sum(r["outlier channels"] for r in rs)])
    return t


def harm_matrix(report: SensitivityReport, column: str = "error alone") -> dict[str, list]:
    """label -> the report's `column` per layer in depth order (what the harm figure plots)."""
    out = {label: [math.nan] * len(report.layers) for label in report.variants}
    for r in report.to_dicts():
        out[r["config"]][r["depth"]] = r[column]
    return out


# ---- the plan: a multiple-choice knapsack -------------------------------------------------------
def multiple_choice_knapsack(costs, errors, budget: float | None = None,
                             max_error: float | None = None,
                             max_cells: int = 1 << 20) -> tuple[list[int], float, float]:
    """One option per group (layer) minimising the total error with total cost <= budget, or the
    total cost with total error <= max_error. costs[i][j], errors[i][j]: option j of group i.
    Returns (choice per group, total cost, total error); ValueError when nothing is feasible.

    Dynamic programming over the total cost: best[c] = the least error of the groups so far at
    total cost exactly c, in units of u. With integer costs u is their gcd, and the answer is
    exact (the tests check it against brute force); when budget / gcd would exceed `max_cells`
    cells, u = ceil(budget / max_cells) and each cost is rounded *up* to whole units, so the plan
    always fits the real budget and is optimal for the rounded costs (it can lose at most one
    unit per group, n_groups * u bytes of the budget, < 0.01% of it for 36 layers and 2^20 cells).
    For max_error the table spans the largest total cost, and the answer is the cheapest total
    whose least error is within max_error. O(groups x options x cells) time.
    """
    if (budget is None) == (max_error is None):
        raise ValueError("give exactly one of budget (minimise error) or max_error (minimise "
                         "bytes)")
    if len(costs) != len(errors) or not costs or any(
            len(c) != len(e) or not c for c, e in zip(costs, errors)):
        raise ValueError("costs and errors need the same non-empty shape: one list of options "
                         "per group")
    costs = [np.asarray(c, dtype=np.float64) for c in costs]
    errors = [np.asarray(e, dtype=np.float64) for e in errors]
    if any((c < 0).any() or not np.isfinite(c).all() for c in costs) or any(
            np.isnan(e).any() for e in errors):
        raise ValueError("costs must be finite and >= 0, errors not NaN")
    span = budget if budget is not None else sum(float(c.max()) for c in costs)
    ints = all((c == np.round(c)).all() for c in costs)
    unit = float(np.gcd.reduce(np.concatenate(costs).astype(np.int64))) if ints else 0.0
    if unit == 0 or span / unit > max_cells:
        unit = max(math.ceil(span / max_cells), 1) if ints else span / max_cells
    units = [np.ceil(c / unit - 1e-9).astype(np.int64) for c in costs]
    n = int(math.floor(span / unit + 1e-9)) + 1
    if n <= 0:
        raise ValueError(f"budget {budget} is below zero")
    best = np.full(n, np.inf)
    best[0] = 0.0
    picks = []
    for cu, e in zip(units, errors):
        new, arg = np.full(n, np.inf), np.full(n, -1, dtype=np.int32)
        for j, (k, err) in enumerate(zip(cu, e)):
            if k >= n:
                continue
            cand = np.full(n, np.inf)
            cand[k:] = best[: n - k] + err
            better = cand < new
            new[better], arg[better] = cand[better], j
        best = new
        picks.append(arg)
    if budget is not None:
        end = int(np.argmin(best))
        if not np.isfinite(best[end]):
            raise ValueError(f"no choice fits budget {budget}: the cheapest plan costs "
                             f"{sum(float(c.min()) for c in costs):.0f}")
    else:
        ok = np.nonzero(best <= max_error)[0]
        if not len(ok):
            raise ValueError(f"no choice reaches max_error={max_error}: the least total error "
                             f"is {float(np.min(best)):.4g}")
        end = int(ok[0])
    choice = []
    for i in range(len(units) - 1, -1, -1):
        j = int(picks[i][end])
        choice.append(j)
        end -= int(units[i][j])
    choice.reverse()
    return (choice, float(sum(c[j] for c, j in zip(costs, choice))),
            float(sum(e[j] for e, j in zip(errors, choice))))


@dataclass
class MixedPrecisionPlan(Mapping):
    """One config per layer; a mapping layer -> config, None (BF16) or (config, options), so
    `quantize_model(model, plan)` applies it. `predicted_error` is the sum of the layers' errors
    alone; `measured_error` the error of the model quantized with the plan (BF16 layers rounded),
    on the report's batches and metric."""
    choices: dict[str, str]                      # layer -> variant label
    bytes: int
    predicted_error: float
    measured_error: float | None = None
    budget_bytes: float | None = None
    max_error: float | None = None
    _configs: dict = field(default_factory=dict, repr=False)

    def __getitem__(self, name):
        return self._configs[name]

    def __iter__(self):
        return iter(self._configs)

    def __len__(self):
        return len(self._configs)

    def counts(self) -> dict[str, int]:
        """How many layers take each variant."""
        out: dict[str, int] = {}
        for v in self.choices.values():
            out[v] = out.get(v, 0) + 1
        return out


def mixed_precision_plan(report: SensitivityReport, budget_bytes: float | None = None,
                         max_error: float | None = None, configs: Iterable[str] | None = None,
                         check: bool = True, fused: bool = True) -> MixedPrecisionPlan:
    """The per-layer choice among the report's variants (or the labels in `configs`) with the
    least predicted error within `budget_bytes` (weight bytes of the reported layers, scales
    included, BF16 at 2 bytes per weight), or the fewest bytes with predicted error <= max_error.

    The prediction adds the per-layer errors alone: for small, independent perturbations of the
    output the squared errors (and KL, to second order) add, which the check measures (the
    report's uniform_error is the same test for one config everywhere). The optimisation over
    these measured costs is exact: `multiple_choice_knapsack`. fused=True gives the layers a
    server runs as one GEMM (q/k/v, gate/up: `quantlib.nn.fuse.fused_groups`) one choice, so the
    plan can be exported (quantize with the plan and fuse="auto"); each group is one knapsack
    item whose bytes and error are its layers' sums. check=True quantizes a copy of the model
    with the plan and measures its error.
    """
    labels = list(report.variants) if configs is None else list(configs)
    unknown = [c for c in labels if c not in report.variants]
    if unknown or not labels:
        raise ValueError(f"configs {unknown or labels} are not in the report; it has "
                         f"{list(report.variants)}")
    cell = {(r["layer"], r["config"]): r for r in report.to_dicts()}
    together = {m: g for g in (fused_groups(report.layers) if fused else []) for m in g}
    items = []
    for n in report.layers:
        g = together.get(n, [n])
        if g[0] == n or n not in together:
            items.append(g)
    costs = [[sum(cell[n, c]["bytes"] for n in g) for c in labels] for g in items]
    errors = [[sum(cell[n, c]["error alone"] for n in g) for c in labels] for g in items]
    choice, total, err = multiple_choice_knapsack(costs, errors, budget_bytes, max_error)
    picked = {n: labels[j] for g, j in zip(items, choice) for n in g}
    choices = {n: picked[n] for n in report.layers}
    plan = MixedPrecisionPlan(choices, int(total), err, None, budget_bytes, max_error)
    for n, label in choices.items():
        cfg, opts = report.variants[label]
        plan._configs[n] = None if cfg == BF16 else (cfg, opts) if opts else cfg
    if check:
        plan.measured_error = report.error_fn(apply_plan(report.model, plan,
                                                          calibration=report.batches))
    return plan


def apply_plan(model: nn.Module, plan: MixedPrecisionPlan, **options) -> nn.Module:
    """A copy of `model` quantized with the plan (`options` go to quantize_model: the
    calibration batches the report used), its BF16 layers' weights rounded to BF16."""
    quantized = [n for n, c in plan.items() if c is not None]
    q = quantize_model(model, {n: plan[n] for n in quantized}, **options) if quantized \
        else copy.deepcopy(model)
    for n, label in plan.choices.items():
        if plan[n] is None:
            _swap(q, n, _bf16_linear(q.get_submodule(n)))
    return q


def plan_table(report: SensitivityReport, budgets: Iterable[float] = (),
               uniform: Iterable[str] = (), evaluate: Callable | None = None,
               title: str | None = None, fused: bool = True) -> Table:
    """Uniform configs against plans at each budget (bytes): bytes, predicted and measured error
    (the report's metric), the layers per variant, and `evaluate(model)`'s metrics ({name:
    value}) when given. fused: as in `mixed_precision_plan`."""
    rows = []
    cell = {(r["layer"], r["config"]): r for r in report.to_dicts()}
    for label in uniform:
        if label not in report.variants:
            raise ValueError(f"{label!r} is not in the report: {list(report.variants)}")
        plan = MixedPrecisionPlan({n: label for n in report.layers},
                                  sum(cell[n, label]["bytes"] for n in report.layers),
                                  sum(cell[n, label]["error alone"] for n in report.layers),
                                  report.uniform_error[label])
        cfg, opts = report.variants[label]
        plan._configs = {n: None if cfg == BF16 else (cfg, opts) if opts else cfg
                         for n in report.layers}
        rows.append((f"all {label}", plan))
    for b in budgets:
        rows.append((f"plan <= {b / 1e6:.3g} MB",
                     mixed_precision_plan(report, budget_bytes=b, fused=fused)))
    table = None
    for name, plan in rows:
        extra = evaluate(apply_plan(report.model, plan, calibration=report.batches)) \
            if evaluate else {}
        if table is None:
            table = Table(["model", "bytes", f"predicted {report.metric}",
                           f"measured {report.metric}", "layers per config", *extra],
                          title=title, digits=4)
        counts = ", ".join(f"{k} {v}" for k, v in sorted(plan.counts().items()))
        table.append([name, plan.bytes, plan.predicted_error, plan.measured_error, counts,
                      *extra.values()])
    return table
