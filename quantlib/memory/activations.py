"""Activation memory: every tensor a Llama-style decoder saves for its backward pass.

The method is Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer
Models", section 4.1): walk the forward pass and count each tensor autograd keeps. Their GPT block
(LayerNorm, GELU MLP of 4h, dropout, attention scores materialized) gives sbh(34 + 5as/h) bytes
per layer in 16 bits. The Llama block here differs, so the count is redone for it: RMSNorm,
SwiGLU, no dropout, grouped-query attention through `scaled_dot_product_attention` (a fused
flash/cuDNN-style kernel: it keeps q, k, v, the output and a logsumexp, never the s x s scores;
its output, laid out as (batch, seq, heads, head_dim), is the o projection's input without a
copy). With T = batch * seq_len tokens, in bytes per layer with BF16 activations:

    norm="fused" (a fused RMSNorm kernel, e.g. torch's on CUDA: keeps its input and rstd)
        T * (8h + 4 * q_dim + 4 * kv_dim + 8f + 4a + 8)
    norm="unfused" (RMSNorm in FP32 ops, as Hugging Face's LlamaRMSNorm and torch's CPU
    `F.rms_norm`: keeps an FP32 input and an FP32 x * rstd)
        T * (20h + 4 * q_dim + 4 * kv_dim + 8f + 4a + 8)

(h hidden, q_dim = a * head_dim, kv_dim = kv_heads * head_dim, f the MLP width, a the heads;
for Llama-2-7B, fused: 37.5 sbh against the GPT block's 34 sbh + 5as^2b.)
Outside the layers: token ids and targets (int64), the final norm, the LM head's input and the
log-softmax of the logits (T * vocab). With full recomputation (one checkpoint per layer) a layer
keeps only its input, T * h; the backward pass then re-creates one layer's tensors at a time.
`quantlib.memory.tracker` measures the same tensors on a real training step.
"""
from __future__ import annotations

from dataclasses import dataclass

from quantlib.memory.config import ModelConfig, _as_config
from quantlib.table import Table


@dataclass(frozen=True)
class SavedTensor:
    """One tensor kept for backward: where ("layer", once per layer, or "head"), its element
    count and its bytes per element; `layers` says in how many layers a "layer" tensor occurs
    (None: all of them; MoE models have dense and MoE layers)."""
    name: str
    where: str
    elements: int
    bytes_per_element: float
    layers: int | None = None

    @property
    def nbytes(self) -> int:
        return round(self.elements * self.bytes_per_element)


def saved_tensors(config: ModelConfig | str, batch_size: int, seq_len: int,
                  activation_bytes: float = 2, linear_input_bytes: float | None = None,
                  fake_quant: bool = False, recompute: bool = False,
                  norm: str = "fused", fused_inputs: bool = True) -> list[SavedTensor]:
    """The tensors saved for backward, per layer and outside the layers.

    activation_bytes: bytes of the compute dtype (2 for BF16, 4 for FP32).
    linear_input_bytes: bytes of what a linear layer keeps of its input (default
      activation_bytes; 1 when low-precision training saves FP8 inputs).
    fake_quant: QAT. Each linear keeps the fake-quantized copy of its input (q, k and v each
      their own; in place of the input itself, except the o projection's, whose input the
      attention kernel keeps too) and the fake-quantize op a 1-byte mask for the clipped
      straight-through estimator.
    fused_inputs: with low-precision `linear_input_bytes`, linears that read the same tensor
      (q/k/v, gate/up) share one quantized copy of it, as fused layers do (TransformerEngine's
      LayerNormLinear, a fused QKV or gate/up GEMM); False: one copy per linear.
    recompute: full recomputation, one checkpoint per decoder layer.
    norm: "fused" (a fused RMSNorm kernel keeps its input and rstd: CUDA) or "unfused" (FP32
      ops keep an FP32 input and x * rstd: CPU, Hugging Face's LlamaRMSNorm).

    MoE layers (tokens gathered per expert, as Hugging Face's and grouped-GEMM
    implementations do) keep, per token, num_experts_per_tok copies of the expert inputs and
    expert-width tensors, the router's probabilities and top-k indices; MLA keeps its two
    latents and q, k, v of its own head widths. Layers of both kinds are averaged over the
    decoder's layers ("layer" entries are per layer, dense and MoE layers weighted).
    """
    if norm not in ("fused", "unfused"):
        raise ValueError(f"norm must be 'fused' or 'unfused', got {norm!r}")
    c = _as_config(config)
    for n, v in (("batch_size", batch_size), ("seq_len", seq_len)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{n} must be a positive int, got {v!r}")
    T, h, f = batch_size * seq_len, c.hidden_size, c.intermediate_size
    act = activation_bytes
    lin = act if linear_input_bytes is None else linear_input_bytes
    out: list[SavedTensor] = []
    layers = None  # the layers the tensors being added occur in (None: every layer)

    def add(name, where, elements, nbytes):
        out.append(SavedTensor(name, where, elements, nbytes, layers))

    def rms_norm(prefix, where, width=h):
        if norm == "fused":
            add(f"{prefix} RMSNorm: input", where, T * width, act)
        else:
            add(f"{prefix} RMSNorm: input (FP32)", where, T * width, 4)
            add(f"{prefix} RMSNorm: x * rstd (FP32)", where, T * width, 4)
        add(f"{prefix} RMSNorm: rstd (FP32)", where, T, 4)

    def linear_input(name, where, elements, n_linears=1, kept_anyway=False):
        # Linears that read one tensor share it, unless each makes its own quantized copy.
        quantized = fake_quant or lin != act
        copies = n_linears if fake_quant or not fused_inputs else 1
        times = f" x {copies}" if copies > 1 else ""
        if quantized:
            label = "fake-quantized input" if fake_quant else "low-precision input"
            add(f"{name}: {label}{times}", where, copies * elements,
                act if fake_quant else lin)
        elif not kept_anyway:
            add(f"{name}: input", where, elements, act)
        if fake_quant:
            add(f"{name}: STE mask (bool){times}", where, copies * elements, 1)

    def swiglu(prefix, tokens, width, input_kept):
        linear_input(f"{prefix}gate/up projections", "layer", tokens * h, 2,
                     kept_anyway=input_kept)
        add(f"{prefix}SiLU: input (gate output)", "layer", tokens * width, act)
        add(f"{prefix}SiLU output", "layer", tokens * width, act)
        add(f"{prefix}up output", "layer", tokens * width, act)
        linear_input(f"{prefix}down projection", "layer", tokens * width)

    if recompute:
        add("decoder layer input (checkpoint)", "layer", T * h, act)
    else:
        rms_norm("attention", "layer")
        if c.is_mla:
            a = c.num_attention_heads
            # q_a (or q) and kv_a read the normed input
            linear_input("q_a/kv_a projections" if c.q_lora_rank else "q/kv_a projections",
                         "layer", T * h, 2)
            if c.q_lora_rank:
                rms_norm("q latent", "layer", c.q_lora_rank)
                linear_input("q up projection (q_b)", "layer", T * c.q_lora_rank)
            add("kv_a output (RoPE key part)", "layer", T * c.qk_rope_head_dim, act)
            rms_norm("kv latent", "layer", c.kv_lora_rank)
            linear_input("kv up projection (kv_b)", "layer", T * c.kv_lora_rank)
            add("attention: q after RoPE", "layer", T * c.q_dim, act)
            add("attention: k after RoPE", "layer", T * c.q_dim, act)
            add("attention: v", "layer", T * a * c.v_head_dim, act)
            add("attention: output (= o projection input)", "layer", T * a * c.v_head_dim, act)
            o_in = T * a * c.v_head_dim
        else:
            linear_input("q/k/v projections", "layer", T * h, 3)
            if c.qk_norm:
                rms_norm("q", "layer", c.q_dim)
                rms_norm("k", "layer", c.kv_dim)
            add("attention: q after RoPE", "layer", T * c.q_dim, act)
            add("attention: k after RoPE", "layer", T * c.kv_dim, act)
            add("attention: v", "layer", T * c.kv_dim, act)
            add("attention: output (= o projection input)", "layer", T * c.q_dim, act)
            o_in = T * c.q_dim
        add("attention: logsumexp (FP32)", "layer", T * c.num_attention_heads, 4)
        linear_input("o projection", "layer", o_in, kept_anyway=True)
        rms_norm("MLP", "layer")
        if not c.is_moe:
            swiglu("", T, f, False)
        else:
            if c.dense_layers:
                layers = len(c.dense_layers)
                swiglu("dense MLP: ", T, f, False)
            layers = c.moe_layers
            k = c.num_experts_per_tok
            add("router: input", "layer", T * h, act)  # the normed x; the router stays high
            add("router: probabilities (FP32)", "layer", T * c.num_experts, 4)
            add("router: top-k indices (int64)", "layer", T * k, 8)
            # each token's copy for each of its k experts (the gathered expert inputs)
            swiglu(f"experts (x {k} per token): ", k * T, c.moe_intermediate_size, False)
            add("experts: outputs (for the routing weights' gradient)", "layer", k * T * h, act)
            if c.shared_expert_intermediate_size:
                swiglu("shared experts: ", T, c.shared_expert_intermediate_size, True)
                if c.shared_expert_gate:
                    add("shared expert gate: output and sigmoid", "layer", T * (h + 1), act)
            layers = None
    add("token ids (int64)", "head", T, 8)
    rms_norm("final", "head")
    add("LM head: input", "head", T * h, act)
    add("cross-entropy: log-softmax of the logits", "head", T * c.vocab_size, act)
    add("cross-entropy: targets (int64)", "head", T, 8)
    add("cross-entropy: total weight (a scalar)", "head", 1, act)
    return out


def _times(t: SavedTensor, c: ModelConfig) -> int:
    if t.where != "layer":
        return 1
    return c.num_hidden_layers if t.layers is None else t.layers


def activation_memory(config: ModelConfig | str, batch_size: int, seq_len: int,
                      **kw) -> int:
    """Bytes saved for backward at the end of the forward pass (see `saved_tensors` for `kw`)."""
    c = _as_config(config)
    return sum(t.nbytes * _times(t, c) for t in saved_tensors(c, batch_size, seq_len, **kw))


def layer_activation_memory(config: ModelConfig | str, batch_size: int, seq_len: int,
                            **kw) -> int:
    """Bytes one decoder layer saves without recomputation (the largest kind of layer, dense or
    MoE): what recomputation re-creates, one layer at a time, during the backward pass."""
    kw.pop("recompute", None)
    c = _as_config(config)
    saved = [t for t in saved_tensors(c, batch_size, seq_len, **kw) if t.where == "layer"]
    common = sum(t.nbytes for t in saved if t.layers is None)
    dense = sum(t.nbytes for t in saved if t.layers is not None and t.name.startswith("dense"))
    moe = sum(t.nbytes for t in saved if t.layers is not None) - dense
    return common + max(dense, moe)


def activation_table(config: ModelConfig | str, batch_size: int, seq_len: int, **kw) -> Table:
    """The saved tensors one by one: elements per token and MB (10^6 bytes), layers multiplied."""
    c = _as_config(config)
    T = batch_size * seq_len
    t = Table(["tensor", "where", "elements/token", "bytes/element", "MB (all layers)"],
              title=f"{c.name}: tensors saved for backward, batch {batch_size} x {seq_len}",
              digits=2)
    for s in saved_tensors(c, batch_size, seq_len, **kw):
        where = s.where if s.layers is None else f"{s.layers} layers"
        per_token = s.elements // T if s.elements % T == 0 else f"{s.elements} in all"
        t.append([s.name, where, per_token, s.bytes_per_element, s.nbytes * _times(s, c) / 1e6])
    t.append(["total", "", None, None, activation_memory(c, batch_size, seq_len, **kw) / 1e6])
    return t
