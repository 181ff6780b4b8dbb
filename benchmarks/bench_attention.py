"""Decode attention over an FP8 or NVFP4 KV cache (quantlib.kernels.decode_attention) vs BF16 SDPA.

One query token per sequence, grouped-query heads (Llama-3-8B's 32 query / 8 KV heads, head_dim
128), 4K-32K cached tokens. Baseline: torch.nn.functional.scaled_dot_product_attention over a
BF16 cache (enable_gqa), the best torch path on the GPU it runs on. Each row first checks the
kernel against float64 attention over the dequantized cache, then times both. Run (GPU):
    PYTHONPATH=. python benchmarks/bench_attention.py [--batch 8] [--out DIR]
`--dry-run` runs the same code on the CPU interpreter at tiny sizes (no timing claims).
Bar (issue 17): >= 1.6x BF16 at 32K tokens on an H100/H200.
"""
from __future__ import annotations

import argparse
import json
import os
import sys


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, nargs="+", default=[4096, 8192, 16384, 32768])
    ap.add_argument("--recipes", nargs="+", default=["fp8_token", "fp8_tensor", "nvfp4"])
    ap.add_argument("--block-n", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--dry-run", action="store_true", help="CPU interpreter, tiny sizes")
    ap.add_argument("--out", default=None, help="write bench_attention.json here")
    a = ap.parse_args(argv)
    if a.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"
    import torch

    from quantlib.attention import quantize_kv
    from quantlib.kernels import decode_attention
    from quantlib.table import Table
    from quantlib.timing import time_ms

    dev = "cpu" if a.dry_run else "cuda"
    if not a.dry_run and not torch.cuda.is_available():
        sys.exit("bench_attention.py needs a CUDA GPU; use --dry-run on the CPU")
    hq, hkv, d = (4, 2, 16) if a.dry_run else (32, 8, 128)
    seqs = [24, 40] if a.dry_run else a.seq
    batch = 1 if a.dry_run else a.batch
    repeat = 1 if a.dry_run else a.repeat

    def timed(fn):
        """Mean wall-clock seconds of `repeat` back-to-back calls after one warm-up."""
        return time_ms(lambda _: fn(), repeat, clock="wall", stat="mean")[0] / 1e3

    t = Table(["tokens", "recipe", "block_n", "splits", "max rel err", "BF16 SDPA us",
               "kernel us", "speed-up"], title=f"Decode attention, batch {batch}, "
              f"{hq}/{hkv} heads x {d} ({torch.cuda.get_device_name() if dev == 'cuda' else 'CPU interpreter'})",
              digits=3)
    rows = []
    g = torch.Generator(device=dev).manual_seed(0)
    for T in seqs:
        q = torch.randn(batch, hq, d, device=dev, generator=g)
        k = torch.randn(batch, hkv, T, d, device=dev, generator=g)
        v = torch.randn(batch, hkv, T, d, device=dev, generator=g)
        kb, vb, qb = k.bfloat16(), v.bfloat16(), q.bfloat16()[:, :, None]
        sdpa = lambda: torch.nn.functional.scaled_dot_product_attention(qb, kb, vb,
                                                                       enable_gqa=True)
        t_bf16 = timed(sdpa)
        for rec in a.recipes:
            kq, vq = quantize_kv(k, rec), quantize_kv(v, rec)
            kd = kq.dequantize().double().repeat_interleave(hq // hkv, 1)
            vd = vq.dequantize().double().repeat_interleave(hq // hkv, 1)
            p = torch.softmax(torch.einsum("bhd,bhtd->bht", q.double(), kd) * d ** -0.5, -1)
            exact = torch.einsum("bht,bhtd->bhd", p, vd)
            for bn in ([4, 8] if a.dry_run else a.block_n):
                splits = max(1, min(64, -(-T // 512)))
                fn = lambda: decode_attention(q, kq, vq, num_splits=splits, block_n=bn,
                                              path="triton")
                err = ((fn().double() - exact).abs().max() / exact.abs().max()).item()
                t_kern = timed(fn)
                row = [T, rec, bn, splits, err, 1e6 * t_bf16, 1e6 * t_kern, t_bf16 / t_kern]
                t.append(row)
                rows.append(dict(zip(t.columns, row)))
    print(t)
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "bench_attention.json"), "w") as f:
            json.dump({"rows": rows, "dry_run": a.dry_run}, f, indent=1)


if __name__ == "__main__":
    main()
