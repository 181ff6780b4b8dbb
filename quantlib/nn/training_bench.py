"""A transformer-shaped stack of linear layers for timing one low-precision training step against
torch's BF16 autocast in the same run (benchmarks/bench_training.py).

Each block has a Llama-style layer's GEMMs: fused QKV (d -> d + 2 kv), the output projection
(d -> d), fused gate/up (d -> 2 ffn) and down (ffn -> d), with SiLU gating and residuals. The
attention itself is left out: it runs in BF16 in both runs alike, so it only dilutes the
ratio; the table says so. Master weights and AdamW stay FP32 in every run.
"""
from __future__ import annotations

import torch
from torch import nn

from quantlib.table import Table
from quantlib.timing import time_ms


class LinearBlock(nn.Module):
    """The four GEMMs of a transformer layer (attention scores omitted), residual around each
    half."""

    def __init__(self, d: int, ffn: int, kv: int):
        super().__init__()
        self.d = d
        self.qkv = nn.Linear(d, d + 2 * kv, bias=False)
        self.o = nn.Linear(d, d, bias=False)
        self.gate_up = nn.Linear(d, 2 * ffn, bias=False)
        self.down = nn.Linear(ffn, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x + self.o(self.qkv(x)[..., : self.d])
        g, u = self.gate_up(h).chunk(2, dim=-1)
        return h + self.down(nn.functional.silu(g) * u)


def layer_stack(d: int = 4096, ffn: int = 14336, n_layers: int = 4, kv: int = 1024,
                seed: int = 0) -> nn.Sequential:
    """n_layers LinearBlocks (Llama-3-8B widths by default), FP32 parameters, seeded."""
    torch.manual_seed(seed)
    return nn.Sequential(*[LinearBlock(d, ffn, kv) for _ in range(n_layers)])


def time_layer_stack(recipes=("fp8_current", "fp8_rowwise", "fp8_block"), device: str = "cuda",
                     d: int = 4096, ffn: int = 14336, seq: int = 4096, batch: int = 2,
                     n_layers: int = 4, repeats: int = 10, kv: int = 1024) -> Table:
    """Median ms of one step (forward, backward, AdamW) of `layer_stack` per recipe, BF16
    activations in and out, against the same stack under torch's BF16 autocast, in one run.
    FP8 recipes run the FP8 GEMM kernels where the device has them ("FP8 kernel"), the
    emulation elsewhere ("emulated": quantize, dequantize, FP32 matmul, slow by design)."""
    from quantlib.nn.training import FP8Linear, convert_to_low_precision_training
    cuda = device == "cuda" or str(device).startswith("cuda")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch * seq, d, generator=g).to(device, torch.bfloat16)
    dy = (torch.randn(batch * seq, d, generator=g) * 1e-3).to(device, torch.bfloat16)
    t = Table(["recipe", "GEMMs", "ms / step", "speed-up vs bf16 autocast"], digits=2,
              title=f"One training step of {n_layers} linear blocks (attention omitted), "
                    f"d={d}, ffn={ffn}, {batch} x {seq} tokens")

    def timed(model, autocast: bool) -> float:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step():
            with torch.autocast(x.device.type, torch.bfloat16, enabled=autocast):
                y = model(x)
            y.backward(dy)
            opt.step()
            opt.zero_grad(set_to_none=True)
        # 2 warm-up steps (compiles, tuning, amax histories), then the median of `repeats`
        ms = time_ms(lambda _: step(), repeats, clock="wall", warmup=2)[0]
        del opt
        return ms

    base = timed(layer_stack(d, ffn, n_layers, kv).to(device), autocast=True)
    t.append(["torch bf16 autocast", "torch (cuBLAS)" if cuda else "torch", base, 1.0])
    for name in recipes:
        model = convert_to_low_precision_training(layer_stack(d, ffn, n_layers, kv).to(device),
                                                  name)
        layers = [m for m in model.modules() if isinstance(m, FP8Linear)]
        kernel = bool(layers) and layers[0]._fp8_kernel_ok(x)
        ms = timed(model, autocast=False)
        t.append([name, "FP8 kernel" if kernel else "emulated", ms, base / ms])
        del model, layers
        if cuda:
            torch.cuda.empty_cache()
    return t
