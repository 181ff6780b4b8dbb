"""The experiments of chapter 9: train the tiny LM under each recipe, and provoke the failure
modes on purpose (gradients that underflow, a delayed scale that lags a spike)."""
from __future__ import annotations

import torch

from quantlib.metrics import qsnr
from quantlib.models.tinylm import TinyLM, TinyLMConfig, TrainResult, get_batch, load_corpus, train
from quantlib.nn.training import (
    FP8Linear,
    cast_operand,
    cast_stats,
    convert_to_low_precision_training,
    summarize_stats,
)
from quantlib.nn.training_recipes import TrainingRecipe, get_training_recipe
from quantlib.table import Table
from quantlib.timing import time_ms

SKIP = ("head",)        # the LM head stays FP32, as in TransformerEngine and torchao setups
TINY = TinyLMConfig()   # the chapter's model: 2 layers, d=128, context 64


def make_model(recipe: TrainingRecipe | str = "fp32", cfg: TinyLMConfig = TINY,
               seed: int = 0, state_dict: dict | None = None, skip=SKIP) -> TinyLM:
    """A TinyLM (initialised from `seed`, or loaded from `state_dict`) whose linear layers, but
    `skip`, run `recipe`."""
    torch.manual_seed(seed)
    model = TinyLM(cfg)
    if state_dict is not None:
        model.load_state_dict(state_dict)
    if get_training_recipe(recipe).kind != "none":
        convert_to_low_precision_training(model, recipe, skip=skip, seed=seed)
    return model


def run_recipes(recipes, steps: int = 120, batch: int = 8, seed: int = 0,
                cfg: TinyLMConfig = TINY, lr: float = 3e-3,
                device: str = "cpu") -> dict[str, TrainResult]:
    """Train the same initial model on the same batches once per recipe; {label: TrainResult}.
    `recipes` holds names, TrainingRecipes, or (label, recipe) pairs."""
    data = load_corpus()
    out = {}
    for item in recipes:
        label, recipe = item if isinstance(item, tuple) else (None, item)
        recipe = get_training_recipe(recipe)
        model = make_model(recipe, cfg, seed).to(device)
        out[label or recipe.name] = train(model, steps, batch, lr, seed, data, device=device)
    return out


def loss_table(results: dict[str, TrainResult], last: int = 20, baseline: str = "bf16") -> Table:
    """Final losses: training loss averaged over the `last` steps, validation loss, and the gap
    to `baseline`'s validation loss. Losses in nats per byte, rounded to 3 decimals."""
    t = Table(["recipe", f"train loss (last {last})", "val loss", f"val - {baseline}"],
              title="Final losses", digits=3)
    base = results[baseline].val_loss if baseline in results else None
    for name, r in results.items():
        tail = r.losses[-last:]
        t.append([name, round(sum(tail) / len(tail), 3), round(r.val_loss, 3),
                  None if base is None else round(r.val_loss - base, 3)])
    return t


def output_gradients(state_dict: dict, cfg: TinyLMConfig = TINY, batch: int = 8,
                     seed: int = 0, skip=SKIP) -> list[torch.Tensor]:
    """The output gradient dy (tokens, out_features) of every linear layer but `skip`, from one
    FP32 forward and backward pass of the model in `state_dict` on a seeded batch."""
    model = make_model("fp32", cfg, seed, state_dict)
    grads = []

    def hook(module, grad_in, grad_out):
        grads.append(grad_out[0].detach().reshape(-1, grad_out[0].shape[-1]))
    hooks = [m.register_full_backward_hook(hook) for n, m in model.named_modules()
             if isinstance(m, torch.nn.Linear) and n not in skip]
    x, y = get_batch(load_corpus()[0], batch, cfg.context, torch.Generator().manual_seed(seed))
    model(x, y).backward()
    for h in hooks:
        h.remove()
    return grads


GRADIENT_VARIANTS = (
    ("E5M2, no scaling", {"recipe": "fp8_current", "scaling": "none"}),
    ("E4M3, no scaling", {"recipe": "fp8_current", "scaling": "none", "fp8_format": "E4M3"}),
    ("E5M2, per-tensor scale", {"recipe": "fp8_current"}),
    ("E4M3, per-tensor scale", {"recipe": "fp8_current", "fp8_format": "E4M3"}),
    ("E4M3, 1x128 blocks", {"recipe": "fp8_block", "fp8_format": "E4M3"}),
    ("E2M1 (NVFP4), 1x16 blocks", {"recipe": "nvfp4"}),
)


def gradient_underflow(state_dict: dict, cfg: TinyLMConfig = TINY, batch: int = 8,
                       seed: int = 0, variants=GRADIENT_VARIANTS,
                       outlier: float | None = None) -> Table:
    """The same output gradients dy (one FP32 backward pass, every linear layer) cast as the dgrad
    operand of each variant: share of the nonzero values flushed to zero, and QSNR. `outlier`
    multiplies one token's gradient in every layer (a token with a huge loss)."""
    grads = output_gradients(state_dict, cfg, batch, seed)
    if outlier is not None:
        grads = [torch.cat([g[:1] * outlier, g[1:]]) for g in grads]
    mags = torch.cat([g.abs().flatten() for g in grads])
    title = (f"Output gradients dy cast for dgrad: median |dy| {mags.median().item():.2g}, "
             f"max {mags.max().item():.2g}" + (f" (one token x{outlier:g})" if outlier else ""))
    t = Table(["gradient cast", "flushed to zero", "QSNR (dB)"], title=title, digits=3)
    for label, kw in variants:
        kw = dict(kw)
        recipe = get_training_recipe(kw.pop("recipe"), **kw)
        gen = torch.Generator().manual_seed(seed)
        stats = []
        for g in grads:
            scale = torch.ones(()) if recipe.scaling == "none" else None
            q, used = cast_operand(g, recipe, "dy", scale, gen)
            stats.append(cast_stats(g, q, "dy", "dgrad", used, recipe.element("dy")))
        pooled = summarize_stats(stats)
        t.append([label, round(pooled["flushed"], 3), round(pooled["qsnr"], 1)])
    return t


def delayed_scaling_spike(steps: int = 16, spike_at: int = 8, factor: float = 64.0,
                          history: int = 16, d: int = 128, tokens: int = 128,
                          seed: int = 0) -> Table:
    """Feed one layer N(0,1) activations and, at step `spike_at`, activations `factor` times
    larger. Per step, how many x values each scaling clips (|x| > 448 * scale) and its QSNR."""
    algos = {"delayed, max": {"scaling": "delayed", "amax_history_len": history},
             "delayed, most_recent": {"scaling": "delayed", "amax_history_len": history,
                                          "amax_compute_algo": "most_recent"},
             "current": {}}
    torch.manual_seed(seed)
    base = torch.nn.Linear(d, d, bias=False)
    layers = {k: FP8Linear.from_linear(base, get_training_recipe("fp8_current", **kw))
              for k, kw in algos.items()}
    gen = torch.Generator().manual_seed(seed)
    cols = ["step", "x amax"] + [f"clipped: {k}" for k in algos] + [f"QSNR {k}" for k in algos]
    t = Table(cols, title=f"Activation spike x{factor:g} at step {spike_at} "
                          f"(amax history {history})", digits=1)
    for step in range(steps):
        x = torch.randn(tokens, d, generator=gen) * (factor if step == spike_at else 1.0)
        row = {"step": step, "x amax": round(x.abs().max().item(), 1)}
        for k, layer in layers.items():
            layer.record_stats, layer.stats = True, []
            layer(x)
            s = next(s for s in layer.stats if s["role"] == "x")
            row[f"clipped: {k}"] = s["clipped"]
            row[f"QSNR {k}"] = round(summarize_stats([s])["qsnr"], 1)
        t.append(row)
    return t


def _step_ms(model, x, y, repeats: int, autocast: bool = False) -> float:
    """Median wall time (ms) of forward + backward + AdamW step, after 3 warm-up steps."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step(_):
        with torch.autocast(x.device.type, torch.bfloat16, enabled=autocast):
            loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return time_ms(step, repeats, clock="wall", warmup=3)[0]


def time_training_step(recipes=("fp32", "bf16", "fp8_current"), device: str = "cuda",
                       cfg: TinyLMConfig = TINY, batch: int = 8,
                       repeats: int = 20) -> Table:
    """One training step per recipe on `device` (median ms), against torch's own BF16 autocast
    of the unconverted model. FP8 recipes that can use the FP8 GEMM kernel are timed with it and
    emulated."""
    t = Table(["recipe", "GEMMs", "ms / step", "speed-up vs bf16 autocast"],
              title=f"One training step, batch {batch} x {cfg.context}, d={cfg.d_model}", digits=2)
    x, y = (v.to(device) for v in get_batch(load_corpus()[0], batch, cfg.context,
                                            torch.Generator().manual_seed(0)))
    base = _step_ms(make_model("fp32", cfg).to(device), x, y, repeats, autocast=True)
    t.append(["torch bf16 autocast", "torch", base, 1.0])
    for name in recipes:
        model = make_model(name, cfg).to(device)
        layers = [m for m in model.modules() if isinstance(m, FP8Linear)]
        kernel = bool(layers) and layers[0]._fp8_kernel_ok(x.float())
        for use in ([True, False] if kernel else [False]):
            for m in layers:
                m.use_kernel = use
            ms = _step_ms(model, x, y, repeats)
            t.append([name, "FP8 kernel" if use else "emulated" if layers else "torch fp32",
                      ms, base / ms])
    return t


def gemm_qsnr(recipes=("bf16", "fp8_current", "fp8_rowwise", "fp8_block", "mxfp8",
                       "nvfp4"), m: int = 256, k: int = 128, n: int = 256, seed: int = 0) -> Table:
    """QSNR (dB) of the three GEMM outputs of one layer under each recipe against FP32 (one
    step: a delayed scale would still be 1), on LM-like data: x ~ N(0,1) with 4 outlier channels (x20), W ~ N(0, 0.02), dy ~ N(0, 1e-4)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g)
    x[:, :4] *= 20
    dy = torch.randn(m, n, generator=g) * 1e-4
    base = torch.nn.Linear(k, n, bias=False)
    with torch.no_grad():
        base.weight.copy_(torch.randn(n, k, generator=g) * 0.02)
    t = Table(["recipe", "y (fprop)", "dx (dgrad)", "dW (wgrad)"],
              title="QSNR of the GEMM outputs against FP32 (dB)", digits=1)
    exact = _outputs(base, x, dy)
    for name in recipes:
        got = _outputs(FP8Linear.from_linear(base, name, seed), x, dy)
        t.append([name, *(round(qsnr(a, b), 1) for a, b in zip(exact, got))])
    return t


def _outputs(layer, x, dy):
    x = x.clone().requires_grad_(True)
    layer.weight.grad = None
    y = layer(x)
    y.backward(dy)
    return y.detach(), x.grad, layer.weight.grad.clone()
