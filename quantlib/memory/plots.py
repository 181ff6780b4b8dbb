"""Figures of the memory chapter, drawn from computed numbers: the training-memory breakdown by
strategy (the seed's missing "PTQ, QAT, QT ... GPU memory breakdown" figure) and per-GPU bytes
against the number of GPUs for each sharding scheme, drawn in the book's style
(`quantlib.viz.BOOK_STYLE`)."""
from __future__ import annotations

from quantlib.memory.config import ModelConfig, _as_config
from quantlib.memory.training import SHARDING, TrainingMemory, training_memory
from quantlib.memory.units import to_unit
from quantlib.viz import book_figure

_COLORS = {"weights": "#4c72b0", "master_weights": "#8da0cb", "gradients": "#dd8452",
           "optimizer_states": "#55a868", "weight_copies": "#c44e52",
           "activations": "#8172b3", "quantization_scales": "#937860",
           "gather_buffer": "#da8bc3"}
_SCHEME_LABELS = {"dp": "DP", "zero1": "ZeRO-1", "zero2": "ZeRO-2", "zero3": "ZeRO-3",
                  "fsdp": "FSDP (full shard)"}
_LABELS = {"ptq": "PTQ\n(BF16 mixed\nprecision)", "qat": "QAT\n(+ fake quant)",
           "qt": "QT\n(low-precision\ncopies)", "fp32": "FP32", "bf16": "pure BF16"}


@book_figure
def plot_strategies(config: ModelConfig | str, strategies=("ptq", "qat", "qt"),
                    recompute_too: bool = True, **kw):
    """Stacked bars of GB per component for each strategy (keyword arguments go to
    `training_memory`); with `recompute_too`, a second bar per strategy with recomputation."""
    import matplotlib.pyplot as plt

    c = _as_config(config)
    runs = [(s, False) for s in strategies]
    if recompute_too:
        runs = [(s, r) for s in strategies for r in (False, True)]
    mems = [training_memory(c, s, recompute=r, **kw) for s, r in runs]
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    x = [i + (i // 2 if recompute_too else 0) * 0.4 for i in range(len(runs))]
    bottom = [0.0] * len(runs)
    for comp in TrainingMemory.COMPONENTS:
        vals = [to_unit(getattr(m, comp)) for m in mems]
        if not any(vals):
            continue
        ax.bar(x, vals, 0.8, bottom=bottom, color=_COLORS[comp], label=comp.replace("_", " "))
        bottom = [b + v for b, v in zip(bottom, vals)]
    for xi, total in zip(x, bottom):
        ax.text(xi, total, f"{total:.0f}", ha="center", va="bottom", fontsize=10)
    ticks = [f"{_LABELS.get(s, s)}{' +recomp.' if r else ''}" if not recompute_too else
             ("full" if not r else "recompute") for s, r in runs]
    ax.set_xticks(x, ticks, fontsize=10)
    if recompute_too:
        for i, s in enumerate(strategies):
            ax.text((x[2 * i] + x[2 * i + 1]) / 2, -0.12, _LABELS.get(s, s).split("\n")[0],
                    transform=ax.get_xaxis_transform(), ha="center", va="top", fontsize=11,
                    fontweight="bold")
    ax.set_ylabel("GB per GPU (10^9 bytes)")
    m0 = mems[0]
    ax.set_title(f"{c.name}: training memory by component\n"
                 f"(batch {kw.get('batch_size', 1)} x {kw.get('seq_len', 2048)}, "
                 f"{m0.optimizer}, {kw.get('fmt', 'FP8')})")
    ax.legend(fontsize=10, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_ylim(0, max(bottom) * 1.12)
    fig.tight_layout()
    return fig


@book_figure
def plot_sharding(config: ModelConfig | str, strategy: str = "ptq",
                  n_gpus=(1, 2, 4, 8, 16, 32, 64, 128, 256), schemes=SHARDING, **kw):
    """Per-GPU GB against the number of GPUs for each sharding scheme (log-log)."""
    import matplotlib.pyplot as plt

    c = _as_config(config)
    fig, ax = plt.subplots(figsize=(6.5, 4.4))
    styles = {"dp": "o-", "zero1": "s-", "zero2": "^-", "zero3": "D-", "fsdp": "x--"}
    for s in schemes:
        ys = [to_unit(training_memory(c, strategy, n_gpus=n, sharding=s, **kw).total)
              for n in n_gpus]
        ax.plot(n_gpus, ys, styles.get(s, "o-"), label=_SCHEME_LABELS.get(s, s), markersize=5)
    floor = to_unit(training_memory(c, strategy, **kw).activations)
    ax.axhline(floor, color="gray", lw=0.8, ls=":")
    ax.text(n_gpus[-1], floor / 1.05, "activations (not sharded)", ha="right", va="top",
            fontsize=10, color="gray")
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(n_gpus), [str(n) for n in n_gpus])
    ax.set_yscale("log")
    ax.set_ylim(bottom=floor / 1.6)
    ax.set_xlabel("number of GPUs N")
    ax.set_ylabel("GB per GPU (10^9 bytes)")
    ax.set_title(f"{c.name} ({strategy}): memory per GPU under sharding")
    ax.legend(fontsize=10)
    fig.tight_layout()
    return fig
