"""A Llama-style decoder in plain torch, built from a `ModelConfig`: the model whose training
step `quantlib.memory.tracker` measures against the calculator.

Hugging Face's layout and parameter names (embed_tokens, layers.i.self_attn.q_proj, ...,
mlp.gate_proj, input_layernorm, norm, lm_head): RMSNorm before each block, rotary position
embeddings, grouped-query attention via `scaled_dot_product_attention(enable_gqa=True)`, SwiGLU
MLP, an LM head tied to the embedding when the config says so.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from quantlib.memory.config import ModelConfig, _as_config, param_count


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size))

    def forward(self, x):
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Attention(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = (c.num_attention_heads,
                                                    c.num_key_value_heads, c.head_dim)
        self.q_proj = nn.Linear(c.hidden_size, c.q_dim, bias=c.attention_bias)
        self.k_proj = nn.Linear(c.hidden_size, c.kv_dim, bias=c.attention_bias)
        self.v_proj = nn.Linear(c.hidden_size, c.kv_dim, bias=c.attention_bias)
        self.o_proj = nn.Linear(c.q_dim, c.hidden_size, bias=c.o_proj_bias)

    def forward(self, x, cos, sin):
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return self.o_proj(o.transpose(1, 2).reshape(b, s, -1))


class MLP(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=c.mlp_bias)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=c.mlp_bias)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=c.mlp_bias)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(c.hidden_size)
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RMSNorm(c.hidden_size)
        self.mlp = MLP(c)

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaDecoder(nn.Module):
    """Llama-style decoder; `forward(ids, targets)` returns the mean cross-entropy loss, or the
    logits when `targets` is None. `recompute=True` checkpoints each decoder layer."""

    def __init__(self, config: ModelConfig | str, max_seq_len: int = 2048,
                 rope_theta: float = 10000.0):
        super().__init__()
        c = self.config = _as_config(config)
        if c.is_moe or c.is_mla or c.qk_norm:
            raise ValueError(f"{c.name}: the measured model is a dense Llama-style decoder; "
                             f"MoE, MLA and q/k norms are counted by the calculator "
                             f"(param_count, training_memory) but not built here")
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(c) for _ in range(c.num_hidden_layers))
        self.norm = RMSNorm(c.hidden_size)
        self.lm_head = None if c.tie_word_embeddings else nn.Linear(c.hidden_size, c.vocab_size,
                                                                    bias=False)
        self.recompute = False
        inv_freq = rope_theta ** (-torch.arange(0, c.head_dim, 2, dtype=torch.float32)
                                  / c.head_dim)
        angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), inv_freq)
        angles = torch.cat((angles, angles), dim=-1)
        # Buffers, not activations: shared by every layer and never counted as saved tensors.
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, ids, targets=None):
        s = ids.shape[1]
        if s > self.cos.shape[0]:
            raise ValueError(f"sequence length {s} exceeds max_seq_len {self.cos.shape[0]}")
        cos, sin = self.cos[:s], self.sin[:s]
        x = self.embed_tokens(ids)
        for layer in self.layers:
            if self.recompute and torch.is_grad_enabled():
                # Reentrant checkpoint: saves only the layer input (through save_for_backward,
                # so saved_tensors_hooks see it) and reruns the layer in the backward pass.
                x = checkpoint(layer, x, cos, sin, use_reentrant=True)
            else:
                x = layer(x, cos, sin)
        x = self.norm(x)
        w = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        logits = F.linear(x, w)
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1))


def build_model(config: ModelConfig | str, max_seq_len: int = 2048, dtype=torch.float32,
                device=None, seed: int = 0) -> LlamaDecoder:
    """A seeded `LlamaDecoder` in `dtype`; checks that it has `param_count(config)` parameters."""
    torch.manual_seed(seed)
    model = LlamaDecoder(config, max_seq_len).to(device=device, dtype=dtype)
    n = sum(p.numel() for p in model.parameters())  # parameters() yields a tied weight once
    if n != param_count(model.config):
        raise RuntimeError(f"module has {n} parameters, the calculator counts "
                           f"{param_count(model.config)}: the two disagree on the architecture")
    return model
