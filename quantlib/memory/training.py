"""Training memory by component, for each strategy (PTQ, QAT, QT), on N GPUs.

Strategies (P parameters, P_lin of them in the decoder's linear layers):
- "fp32": FP32 weights (4P), gradients (4P), Adam states (8P); FP32 activations.
- "bf16": everything in BF16, Adam states too (2P + 2P + 4P); no master copy.
- "ptq": train in BF16 mixed precision, quantize after training (PTQ adds nothing here): BF16
  weights and gradients, FP32 master weights and Adam states: 2 + 2 + (4 + 4 + 4) = 16 bytes per
  parameter (the ZeRO paper's 2 + 2 + K, K = 12), BF16 activations.
- "qat": "ptq" plus fake quantization (as torch's fake-quantize ops and `quantlib.nn.qat` do it):
  each linear weight's fake-quantized BF16 copy and a 1-byte clipping mask for the
  straight-through estimator are saved for backward (3 bytes per linear weight); each linear
  keeps the fake-quantized copy of its input, plus a 1-byte mask per element. The scales are
  recomputed each step and not kept (0).
- "qt": quantized (FP8) training, TransformerEngine-style: "ptq" plus two `fmt` copies of each
  linear weight, one quantized by rows for the forward GEMM and one by columns (transposed) for
  the input-gradient GEMM (`weight_transpose=False`: one copy, for a recipe that quantizes the
  weight once), linear inputs saved for backward in `fmt` instead of BF16, one copy per input
  that fused layers share (q/k/v, gate/up; `fused_inputs=False`: one per linear), plus their
  scales (kept for the backward GEMMs).

`moment_bytes` is the storage of Adam's two moments (4: FP32; 2: BF16, as DeepSeek-V3 trained,
which also cached its linear inputs in FP8: Liu et al. 2024, section 3.3).
MoE models: weights, gradients and optimizer states count every expert (`param_count`);
activations count the experts each token is routed to (`quantlib.memory.activations`).

Sharding across N GPUs (Rajbhandari et al. 2020, ZeRO): "dp" replicates everything; "zero1"
shards the optimizer states (master weights included: they live in the optimizer); "zero2" also
the gradients; "zero3" and "fsdp" (FULL_SHARD, e.g. FSDP2 `fully_shard`) also the weights, and
all-gather one layer's weights at a time (`gather_buffer`). Activations are per GPU for its own
micro-batch and are not sharded; nor are the quantized weight copies, which are made from the
gathered weights and kept for backward.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from quantlib.memory.activations import activation_memory, saved_tensors
from quantlib.memory.config import (
    ModelConfig,
    _as_config,
    _swiglu,
    attention_params,
    linear_weight_count,
    param_count,
)
from quantlib.memory.inference import storage_format
from quantlib.memory.units import to_unit
from quantlib.table import Table

STRATEGIES = ("fp32", "bf16", "ptq", "qat", "qt")
OPTIMIZERS = ("adam", "adam8bit", "sgd")
SHARDING = ("dp", "zero1", "zero2", "zero3", "fsdp")
# bitsandbytes-style 8-bit Adam (Dettmers et al. 2022): 1 byte per state element plus one FP32
# absmax per block of 2048, for each of the two states.
ADAM8BIT_BLOCK = 2048

# (weight bytes, master bytes, gradient bytes, activation bytes) per strategy
_PRECISION = {"fp32": (4, 0, 4, 4), "bf16": (2, 0, 2, 2), "ptq": (2, 4, 2, 2),
              "qat": (2, 4, 2, 2), "qt": (2, 4, 2, 2)}


@dataclass(frozen=True)
class TrainingMemory:
    """Bytes per GPU during training, by component (ints). `total` is their sum."""
    strategy: str
    optimizer: str
    sharding: str
    n_gpus: int
    weights: int
    master_weights: int
    gradients: int
    optimizer_states: int
    weight_copies: int        # QAT fake-quantized / QT low-precision copies of linear weights
    activations: int
    quantization_scales: int
    gather_buffer: int        # ZeRO-3/FSDP: one layer's all-gathered weights

    COMPONENTS = ("weights", "master_weights", "gradients", "optimizer_states", "weight_copies",
                  "activations", "quantization_scales", "gather_buffer")

    @property
    def total(self) -> int:
        return sum(getattr(self, c) for c in self.COMPONENTS)

    def as_dict(self) -> dict[str, int]:
        return {c: getattr(self, c) for c in self.COMPONENTS}


def _largest_layer(c: ModelConfig) -> int:
    """Parameters of the largest decoder layer (attention, MLP or MoE, two norms)."""
    h = c.hidden_size
    mlp = _swiglu(h, c.intermediate_size, c.mlp_bias) if (not c.is_moe or c.dense_layers) else 0
    if c.is_moe:
        moe = c.num_experts * (_swiglu(h, c.moe_intermediate_size) + h + c.router_bias)
        if c.shared_expert_intermediate_size:
            moe += _swiglu(h, c.shared_expert_intermediate_size) + h * c.shared_expert_gate
        mlp = max(mlp, moe)
    return attention_params(c) + mlp + 2 * h


def _check_choice(kind, value, valid):
    if value not in valid:
        raise ValueError(f"unknown {kind} {value!r}; valid: {', '.join(valid)}")


def optimizer_state_bytes(n_params: int, optimizer: str = "adam", state_bytes: int = 4) -> int:
    """Adam keeps two states per parameter (m, v) in `state_bytes` each; 8-bit Adam 1 byte each
    plus an FP32 absmax per block of 2048; plain SGD none."""
    _check_choice("optimizer", optimizer, OPTIMIZERS)
    if not isinstance(n_params, int) or n_params < 0 or state_bytes <= 0:
        raise ValueError(f"n_params must be a count >= 0 and state_bytes > 0, got {n_params!r} "
                         f"and {state_bytes!r}")
    if optimizer == "adam":
        return 2 * n_params * state_bytes
    if optimizer == "adam8bit":
        return 2 * (n_params + 4 * math.ceil(n_params / ADAM8BIT_BLOCK))
    return 0


def bytes_per_parameter(strategy: str = "ptq", optimizer: str = "adam",
                        moment_bytes: int | None = None) -> float:
    """Weights + master weights + gradients + optimizer states per parameter, before activations
    ("ptq" with Adam: 2 + 4 + 2 + 8 = 16, the ZeRO paper's count; with BF16 moments, 12)."""
    _check_choice("strategy", strategy, STRATEGIES)
    w, m, g, _ = _PRECISION[strategy]
    n = 1_000_000 * ADAM8BIT_BLOCK
    state = _moment_bytes(strategy, moment_bytes)
    return w + m + g + optimizer_state_bytes(n, optimizer, state) / n


def _moment_bytes(strategy, moment_bytes):
    if moment_bytes is None:
        return 2 if strategy == "bf16" else 4
    if moment_bytes not in (2, 4):
        raise ValueError(f"moment_bytes must be 4 (FP32 Adam moments) or 2 (BF16), "
                         f"got {moment_bytes!r}")
    return moment_bytes


def training_memory(config: ModelConfig | str, strategy: str = "ptq", batch_size: int = 1,
                    seq_len: int = 2048, optimizer: str = "adam", recompute: bool = False,
                    fmt: str = "FP8", n_gpus: int = 1, sharding: str = "dp",
                    norm: str = "fused", weight_transpose: bool = True,
                    fused_inputs: bool = True, moment_bytes: int | None = None
                    ) -> TrainingMemory:
    """Bytes per GPU for one training step of `config` (batch_size = micro-batch per GPU).

    `fmt` is the format of QT's weight copies and saved inputs ("FP8", "MXFP8", "NVFP4", ...);
    their block scales are the quantization_scales. (QAT's fake-quantized copies are BF16 whatever
    the format, and its scales are not kept.) `norm`: "fused" or "unfused" RMSNorm (see
    `quantlib.memory.activations`). QT: `weight_transpose` keeps a second, column-wise copy of
    each weight; `fused_inputs` shares one quantized input among fused layers.
    `moment_bytes`: 4 (FP32 Adam moments; pure "bf16" defaults to 2) or 2 (BF16).
    """
    c = _as_config(config)
    _check_choice("strategy", strategy, STRATEGIES)
    _check_choice("sharding", sharding, SHARDING)
    if isinstance(n_gpus, bool) or not isinstance(n_gpus, int) or n_gpus <= 0:
        raise ValueError(f"n_gpus must be a positive int, got {n_gpus!r}")
    q = storage_format(fmt)
    for flag in ("weight_transpose", "fused_inputs"):
        if not isinstance(locals()[flag], bool):
            raise TypeError(f"{flag} must be True or False, got {locals()[flag]!r}")
    state_bytes = _moment_bytes(strategy, moment_bytes)
    activations_kw = {}
    if strategy == "qat":
        activations_kw = {"fake_quant": True}
    elif strategy == "qt":
        activations_kw = {"linear_input_bytes": q.element_bits / 8,
                          "fused_inputs": fused_inputs}
    w, m, g, a = _PRECISION[strategy]
    activations = activation_memory(c, batch_size, seq_len, activation_bytes=a,
                                    recompute=recompute, norm=norm, **activations_kw)
    P, P_lin = param_count(c), linear_weight_count(c)
    copies = scales = 0
    if strategy == "qat" and not recompute:
        # Saved for backward like activations; with recomputation they are re-made per layer.
        copies = (w + 1) * P_lin
    elif strategy == "qt" and not recompute:
        n_copies = 2 if weight_transpose else 1
        copies = n_copies * q.element_bytes(P_lin)
        linear_inputs = sum(
            t.elements * (c.num_hidden_layers if t.layers is None else t.layers)
            for t in saved_tensors(c, batch_size, seq_len, activation_bytes=a, norm=norm,
                                   **activations_kw)
            if "low-precision input" in t.name)
        scales = n_copies * q.scale_bytes(P_lin) + q.scale_bytes(linear_inputs)

    def div(x):
        return math.ceil(x / n_gpus)

    level = SHARDING.index(sharding)  # dp 0, zero1 1, zero2 2, zero3/fsdp 3 and 4
    layer_params = _largest_layer(c)
    return TrainingMemory(
        strategy, optimizer, sharding, n_gpus,
        weights=div(w * P) if level >= 3 else w * P,
        master_weights=div(m * P) if level >= 1 else m * P,
        gradients=div(g * P) if level >= 2 else g * P,
        optimizer_states=(div if level >= 1 else int)(
            optimizer_state_bytes(P, optimizer, state_bytes)),
        weight_copies=copies, activations=activations, quantization_scales=scales,
        gather_buffer=w * layer_params if level >= 3 and n_gpus > 1 else 0)


def strategy_table(config: ModelConfig | str, strategies=("ptq", "qat", "qt"), **kw) -> Table:
    """GB (10^9 bytes) per component for each strategy (keyword arguments: `training_memory`);
    components that are zero for every strategy are left out."""
    c = _as_config(config)
    mems = [training_memory(c, s, **kw) for s in strategies]
    comps = [f for f in TrainingMemory.COMPONENTS if any(getattr(m, f) for m in mems)]
    t = Table(["strategy", *[f.replace("_", " ") for f in comps], "total"],
              title=f"{c.name}: training memory per GPU, GB", digits=2)
    for s, m in zip(strategies, mems):
        t.append([s, *[to_unit(getattr(m, f)) for f in comps], to_unit(m.total)])
    return t


def qt_break_even_tokens(config: ModelConfig | str, fmt: str = "FP8", **kw) -> int:
    """Tokens per micro-batch (batch_size x seq_len) from which "qt" holds no more memory than
    "ptq": its low-precision weight copies cost a fixed amount, its low-precision saved inputs
    save a fixed amount per token (keyword arguments: `training_memory`, without batch_size and
    seq_len)."""
    c = _as_config(config)

    def extra(tokens):
        qt = training_memory(c, "qt", 1, tokens, fmt=fmt, **kw)
        return qt.total - training_memory(c, "ptq", 1, tokens, fmt=fmt, **kw).total

    t1, t2 = 1 << 12, 1 << 13
    slope = (extra(t2) - extra(t1)) / (t2 - t1)
    if slope >= 0:
        raise ValueError(f"{c.name} in {fmt}: quantized training saves no activation memory "
                         f"per token here, so it never breaks even")
    tokens = max(1, math.ceil(t1 - extra(t1) / slope))
    while extra(tokens) > 0:  # scales round up per block: step past the last rounding
        tokens += 1
    return tokens


def sharding_table(config: ModelConfig | str, strategy: str = "ptq",
                   n_gpus=(1, 2, 4, 8, 16, 64), schemes=SHARDING, **kw) -> Table:
    """Total GB per GPU for each sharding scheme (rows) and GPU count (columns)."""
    c = _as_config(config)
    t = Table(["scheme", *[f"N={n}" for n in n_gpus]],
              title=f"{c.name} ({strategy}): GB per GPU", digits=2)
    for s in schemes:
        t.append([s, *[to_unit(training_memory(c, strategy, n_gpus=n, sharding=s, **kw).total)
                       for n in n_gpus]])
    return t
