"""A tiny Llama-style decoder-only language model and its offline, byte-level data pipeline.

Small enough to train from scratch on a CPU in seconds (2 layers, d=128, context 64), big enough
to show how low-precision GEMMs change a loss curve. Llama's layout: RMSNorm before each block,
rotary position embeddings, SwiGLU MLP, no biases, an untied `head`. Every GEMM is an
`nn.Linear`, so `convert_to_low_precision_training` can swap them all.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

CORPUS = Path(__file__).with_name("data") / "stdlib_docstrings.txt"


@dataclass(frozen=True)
class TinyLMConfig:
    """Shape of the model. Linear sizes are multiples of 128 so every block recipe applies."""
    vocab_size: int = 256          # bytes
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int = 256                # SwiGLU hidden size
    context: int = 64


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotary(x: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding on (batch, heads, T, head_dim): rotate pairs by position angles."""
    t, d = x.shape[-2], x.shape[-1]
    inv_freq = 1.0 / (10000 ** (torch.arange(0, d, 2, dtype=torch.float32, device=x.device) / d))
    ang = torch.arange(t, dtype=torch.float32, device=x.device)[:, None] * inv_freq[None, :]
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


class Attention(nn.Module):
    def __init__(self, cfg: TinyLMConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(rotary(q), rotary(k), v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    def __init__(self, cfg: TinyLMConfig):
        super().__init__()
        self.gate = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.up = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.down = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, cfg: TinyLMConfig):
        super().__init__()
        self.attn_norm, self.attn = RMSNorm(cfg.d_model), Attention(cfg)
        self.mlp_norm, self.mlp = RMSNorm(cfg.d_model), MLP(cfg)

    def forward(self, x):
        x = x + self.attn(self.attn_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class TinyLM(nn.Module):
    """Decoder-only LM: embed bytes, n pre-norm blocks, final RMSNorm, linear `head` to logits."""

    def __init__(self, cfg: TinyLMConfig = TinyLMConfig()):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        for name, p in self.named_parameters():
            if p.dim() == 2:        # GPT-2 init: N(0, 0.02), residual outputs scaled by depth
                std = 0.02 / math.sqrt(2 * cfg.n_layers) if name.endswith(("proj.weight",
                                                                           "down.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """Logits (batch, T, vocab); with `targets`, the mean next-byte cross-entropy instead."""
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.norm(x))
        if targets is None:
            return logits
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def load_corpus(path: Path | str = CORPUS, val_fraction: float = 0.1):
    """The corpus as byte tensors (train, val): the last `val_fraction` of the file is validation."""
    data = torch.frombuffer(bytearray(Path(path).read_bytes()), dtype=torch.uint8).long()
    n_val = int(len(data) * val_fraction)
    return data[:-n_val], data[-n_val:]


def get_batch(data: torch.Tensor, batch: int, context: int, generator: torch.Generator):
    """`batch` random windows of `context` bytes and their next-byte targets, from `generator`."""
    start = torch.randint(0, len(data) - context - 1, (batch,), generator=generator)
    offsets = start[:, None] + torch.arange(context + 1)
    windows = data[offsets]
    return windows[:, :-1], windows[:, 1:]


@dataclass
class TrainResult:
    """Per-step training losses, the final validation loss and the trained model of one run."""
    losses: list[float]
    val_loss: float
    model: nn.Module | None = None


def train(model: nn.Module, steps: int = 200, batch: int = 16, lr: float = 3e-3, seed: int = 0,
          data: tuple[torch.Tensor, torch.Tensor] | None = None, val_batches: int = 16,
          device: torch.device | str = "cpu") -> TrainResult:
    """Train `model` from its current weights with AdamW (FP32 master weights and moments), a
    linear warm-up then cosine decay; batches drawn from a generator seeded with `seed`. The
    validation loss uses the same `val_batches` fixed batches whatever the seed."""
    train_data, val_data = data if data is not None else load_corpus()
    ctx = model.cfg.context
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warmup, 0.5 * (
        1 + math.cos(math.pi * min(s, steps) / steps))))
    losses = []
    model.train()
    for _ in range(steps):
        x, y = (t.to(device) for t in get_batch(train_data, batch, ctx, gen))
        loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    return TrainResult(losses, evaluate(model, val_data, batch, val_batches, 0, device), model)


@torch.no_grad()
def evaluate(model: nn.Module, data: torch.Tensor, batch: int = 16, n_batches: int = 4,
             seed: int = 0, device: torch.device | str = "cpu") -> float:
    """Mean loss over `n_batches` fixed (seeded) batches of `data`, in eval mode."""
    gen = torch.Generator().manual_seed(seed + 1)
    model.eval()
    total = sum(model(*(t.to(device) for t in get_batch(data, batch, model.cfg.context, gen))).item()
                for _ in range(n_batches))
    model.train()
    return total / n_batches
