"""The book's opening figure: the three strategies side by side (PTQ, QAT, QT), where
quantization enters the training loop in each, and each one's GPU memory for one real model,
computed by `quantlib.memory.training_memory`."""
from __future__ import annotations

# stage boxes of one row: (label, precision or what quantization does there, quantized?)
STRATEGY_LOOPS = {
    "ptq": ("PTQ: post-training quantization", [
        ("forward", "BF16 GEMMs", False), ("backward", "BF16 GEMMs", False),
        ("optimizer", "FP32 master\nweights,\nAdam", False),
        ("after training", "calibrate,\nquantize\nonce", True)]),
    "qat": ("QAT: quantization-aware training", [
        ("forward", "fake-\nquantize\nW and x", True),
        ("backward", "BF16,\nstraight-\nthrough", False),
        ("optimizer", "FP32 master\nweights,\nAdam", False),
        ("after training", "convert:\nstore the\ncodes", True)]),
    "qt": ("QT: low-precision training", [
        ("forward", "FP8 GEMMs,\nx and W\nquantized", True),
        ("backward", "FP8 GEMMs,\ndy, x, W\nquantized", True),
        ("optimizer", "FP32 master\nweights,\nAdam", False),
        ("after training", "BF16 or\nFP8\nweights", False)]),
}
_COMPONENT_COLORS = ("#4c72b0", "#8da0cb", "#dd8452", "#55a868", "#c44e52", "#8172b3",
                     "#937860", "#da8bc3")


def strategy_memory(model: str = "Llama-2-7B", **kw) -> dict:
    """{strategy: TrainingMemory} for PTQ, QAT and QT (keyword arguments: `training_memory`)."""
    from quantlib.memory import training_memory
    return {s: training_memory(model, s, **kw) for s in STRATEGY_LOOPS}


def strategies_figure(model: str = "Llama-2-7B", batch_size: int = 1, seq_len: int = 4096,
                      fmt: str = "FP8"):
    """Top: for PTQ, QAT and QT, one training loop (forward, backward, optimizer step, then
    deployment) with the stages where quantization enters in red. Bottom: GB per GPU of one
    training step of `model` for each, by component. Stacked in one column, 6.4 inches wide, so
    that on a phone the figure keeps the book's font sizes."""
    from quantlib.viz import book_figure
    return book_figure(_strategies_figure)(model, batch_size, seq_len, fmt)


def _strategies_figure(model, batch_size, seq_len, fmt):
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    from quantlib.memory import TrainingMemory
    mems = strategy_memory(model, batch_size=batch_size, seq_len=seq_len, fmt=fmt)
    fig = plt.figure(figsize=(5.2, 9.2))
    loops = fig.add_gridspec(3, 1, hspace=0.3, left=0.01, right=0.99, top=0.97, bottom=0.45)
    for row, (name, (title, stages)) in enumerate(STRATEGY_LOOPS.items()):
        ax = fig.add_subplot(loops[row, 0])
        ax.set_xlim(0, 4.2)
        ax.set_ylim(-0.5, 1)
        ax.axis("off")
        ax.set_title(title, loc="left", fontsize=11.5, fontweight="bold")
        for i, (label, what, quantized) in enumerate(stages):
            x0, width = i + 0.05 + (0.1 if i == 3 else 0), 0.98 if i == 3 else 0.82
            ax.add_patch(FancyBboxPatch((x0, 0.0), width, 0.95, boxstyle="round,pad=0.02",
                                        fc="#f4cccc" if quantized else "#eeeeee",
                                        ec="#c0392b" if quantized else "#888888",
                                        lw=1.8 if quantized else 0.8))
            ax.text(x0 + width / 2, 0.82, label, ha="center", va="center", fontsize=10.5,
                    fontweight="bold")
            ax.text(x0 + width / 2, 0.37, what, ha="center", va="center", fontsize=10,
                    linespacing=1.15)
            if i in (0, 1, 2):
                ax.add_patch(FancyArrowPatch((x0 + 0.84, 0.48), (x0 + 0.99 + (0.1 if i == 2
                                                                            else 0), 0.48),
                                             arrowstyle="-|>", mutation_scale=10, color="#555"))
        ax.add_patch(FancyArrowPatch((2.46, 0.0), (0.46, 0.0), connectionstyle="arc3,rad=-0.2",
                                     arrowstyle="-|>", mutation_scale=10, color="#555",
                                     ls="--"))
        ax.text(1.46, -0.4, "next step", ha="center", va="center", fontsize=10, color="#555",
                bbox={"fc": "white", "ec": "none", "pad": 1})
    ax = fig.add_axes((0.17, 0.17, 0.78, 0.21))
    names = list(STRATEGY_LOOPS)
    left = [0.0] * len(names)
    for comp, color in zip(TrainingMemory.COMPONENTS, _COMPONENT_COLORS):
        vals = [getattr(mems[s], comp) / 1e9 for s in names]
        if not any(vals):
            continue
        ax.barh(range(len(names)), vals, left=left, color=color, label=comp.replace("_", " "))
        left = [a + v for a, v in zip(left, vals)]
    for i, total in enumerate(left):
        ax.text(total, i, f" {total:.0f} GB", va="center", fontsize=11)
    ax.set_yticks(range(len(names)), [n.upper() for n in names])
    ax.invert_yaxis()
    ax.set_xlim(0, max(left) * 1.2)
    ax.set_xlabel("GB per GPU (10^9 bytes)")
    ax.set_title(f"One training step of {model},\nbatch {batch_size} x {seq_len}, Adam, "
                 f"{fmt} for QT", fontsize=11.5)
    ax.legend(fontsize=10, loc="upper center", bbox_to_anchor=(0.4, -0.3), ncol=2,
              frameon=False)
    return fig
