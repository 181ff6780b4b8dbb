"""The book's opening figure: the three strategies side by side (PTQ, QAT, QT), where
quantization enters the training loop in each, and each one's GPU memory for one real model,
computed by `quantlib.memory.training_memory`."""
from __future__ import annotations

# stage boxes of one row: (label, precision or what quantization does there, quantized?)
STRATEGY_LOOPS = {
    "ptq": ("PTQ: post-training quantization", [
        ("forward", "BF16 GEMMs", False), ("backward", "BF16 GEMMs", False),
        ("optimizer step", "FP32 master\nweights + Adam", False),
        ("after training", "calibrate, then\nquantize once", True)]),
    "qat": ("QAT: quantization-aware training", [
        ("forward", "fake-quantize\nW and x", True),
        ("backward", "BF16, straight-\nthrough estimator", False),
        ("optimizer step", "FP32 master\nweights + Adam", False),
        ("after training", "convert: store\nthe codes", True)]),
    "qt": ("QT: low-precision training", [
        ("forward", "FP8 GEMMs:\nx, W quantized", True),
        ("backward", "FP8 GEMMs:\ndy, x, W quantized", True),
        ("optimizer step", "FP32 master\nweights + Adam", False),
        ("after training", "BF16 or FP8\nweights", False)]),
}
_COMPONENT_COLORS = ("#4c72b0", "#8da0cb", "#dd8452", "#55a868", "#c44e52", "#8172b3",
                     "#937860", "#da8bc3")


def strategy_memory(model: str = "Llama-2-7B", **kw) -> dict:
    """{strategy: TrainingMemory} for PTQ, QAT and QT (keyword arguments: `training_memory`)."""
    from quantlib.memory import training_memory
    return {s: training_memory(model, s, **kw) for s in STRATEGY_LOOPS}


def strategies_figure(model: str = "Llama-2-7B", batch_size: int = 1, seq_len: int = 4096,
                      fmt: str = "FP8"):
    """Left: for PTQ, QAT and QT, one training loop (forward, backward, optimizer step, then
    deployment) with the stages where quantization enters in red. Right: GB per GPU of one
    training step of `model` for each, by component."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    from quantlib.memory import TrainingMemory
    mems = strategy_memory(model, batch_size=batch_size, seq_len=seq_len, fmt=fmt)
    fig = plt.figure(figsize=(11, 5.4))
    grid = fig.add_gridspec(3, 2, width_ratios=(1.55, 1), wspace=0.12, hspace=0.55)
    for row, (name, (title, stages)) in enumerate(STRATEGY_LOOPS.items()):
        ax = fig.add_subplot(grid[row, 0])
        ax.set_xlim(0, 4)
        ax.set_ylim(-0.45, 1)
        ax.axis("off")
        ax.set_title(title, loc="left", fontsize=10, fontweight="bold")
        for i, (label, what, quantized) in enumerate(stages):
            x0 = i + 0.05 + (0.1 if i == 3 else 0)
            ax.add_patch(FancyBboxPatch((x0, 0.08), 0.8, 0.78, boxstyle="round,pad=0.02",
                                        fc="#f4cccc" if quantized else "#eeeeee",
                                        ec="#c0392b" if quantized else "#888888",
                                        lw=1.5 if quantized else 0.8))
            ax.text(x0 + 0.4, 0.68, label, ha="center", va="center", fontsize=8.5,
                    fontweight="bold")
            ax.text(x0 + 0.4, 0.36, what, ha="center", va="center", fontsize=7.5)
            if i in (0, 1, 2):
                ax.add_patch(FancyArrowPatch((x0 + 0.82, 0.47), (x0 + 1.03 + (0.1 if i == 2
                                                                            else 0), 0.47),
                                             arrowstyle="-|>", mutation_scale=9, color="#555"))
        ax.add_patch(FancyArrowPatch((2.45, 0.08), (0.45, 0.08), connectionstyle="arc3,rad=-0.25",
                                     arrowstyle="-|>", mutation_scale=9, color="#555",
                                     ls="--"))
        ax.text(1.45, -0.38, "next step", ha="center", va="center", fontsize=7, color="#555")
    ax = fig.add_subplot(grid[:, 1])
    names = list(STRATEGY_LOOPS)
    left = [0.0] * len(names)
    for comp, color in zip(TrainingMemory.COMPONENTS, _COMPONENT_COLORS):
        vals = [getattr(mems[s], comp) / 1e9 for s in names]
        if not any(vals):
            continue
        ax.barh(range(len(names)), vals, left=left, color=color, label=comp.replace("_", " "))
        left = [a + v for a, v in zip(left, vals)]
    for i, total in enumerate(left):
        ax.text(total, i, f" {total:.0f} GB", va="center", fontsize=8.5)
    ax.set_yticks(range(len(names)), [n.upper() for n in names], fontsize=9)
    ax.invert_yaxis()
    ax.set_xlim(0, max(left) * 1.25)
    ax.set_title(f"GB per GPU (10^9 bytes), one training step of\n{model}, batch {batch_size} "
                 f"x {seq_len}, Adam, {fmt} for QT", fontsize=10)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.06), ncol=2,
              frameon=False)
    return fig
