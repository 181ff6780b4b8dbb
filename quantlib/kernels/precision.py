"""Which precision each part of a low-precision GEMM runs in, and what each choice costs.

A W8A8 layer stores FP8 inputs, multiplies them (the products are exact: an E4M3 significand
has 4 bits, a product at most 8, which FP32 and even BF16 hold), sums the products in a wider
accumulator and rounds the result once to BF16 or FP8. These functions measure each stage; the
accumulator is simulated exactly: one add, then one rounding to the accumulator's format.
"""
from __future__ import annotations

import torch

from quantlib.codecs import decode, round_to_format
from quantlib.metrics import qsnr
from quantlib.table import Table

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def fp8_products_table(fmt: str = "e4m3") -> Table:
    """Every product of two finite FP8 codes (all 254 x 254 pairs for E4M3): how many are exact
    in FP32, BF16 and FP16, and how many overflow (FP16's 65504 is below 448^2)."""
    codes = torch.arange(256, dtype=torch.uint8)
    v = decode(codes, fmt).double()
    v = v[torch.isfinite(v)]
    p = (v[:, None] * v[None, :]).flatten()
    t = Table(["accumulator format", "exact", "rounded", "overflow", "share exact"],
              title=f"Products of two {fmt.upper()} values ({p.numel():,} pairs)", digits=4)
    for name, dt in _DTYPES.items():
        r = p.to(dt).double()
        over = torch.isinf(r)
        exact = (r == p) & ~over
        t.append([name.upper(), int(exact.sum()), int((~exact & ~over).sum()), int(over.sum()),
                  float(exact.double().mean())])
    return t


def accumulate(products: torch.Tensor, acc: str) -> torch.Tensor:
    """Sum along the last dimension one product at a time, rounding the running sum to `acc`
    ("fp32", "bf16", "fp16") after every add, as a naive accumulator would. Float64 in/out."""
    dt = _DTYPES[acc]
    s = torch.zeros(products.shape[:-1], dtype=torch.float64)
    for k in range(products.shape[-1]):
        s = (s + products[..., k]).to(dt).double()
    return s


def accumulation_error_table(ks=(16, 64, 256, 1024, 4096), accumulators=("fp32", "bf16", "fp16"),
                             positive: bool = False, trials: int = 32, seed: int = 0) -> Table:
    """Error of dot products of E4M3 vectors by length K and accumulator: the mean over `trials`
    of |sum - exact| / sum |products| (the relative error when every product is positive).
    Data: N(0,1) for both vectors, or |N(0,1)| (post-ReLU-like) with `positive`."""
    g = torch.Generator().manual_seed(seed)
    kind = "|N(0,1)| data" if positive else "N(0,1) data"
    t = Table(["K", *[a.upper() for a in accumulators]],
              title=f"Accumulation error of E4M3 dot products, {kind}", digits=2)
    for k in ks:
        a, b = torch.randn(2, trials, k, generator=g)
        if positive:
            a, b = a.abs(), b.abs()
        p = round_to_format(a, "e4m3").double() * round_to_format(b, "e4m3").double()  # exact
        exact, size = p.sum(-1), p.abs().sum(-1)
        t.append([k, *[float(((accumulate(p, acc) - exact).abs() / size).mean())
                       for acc in accumulators]])
    return t


def _qsnr(ref: torch.Tensor, y: torch.Tensor) -> float:
    """QSNR in dB, -inf when y has overflowed."""
    return qsnr(ref, y) if bool(torch.isfinite(y).all()) else float("-inf")


def layer_roles_table(m: int = 64, k: int = 1024, n: int = 64, seed: int = 0) -> Table:
    """The roles of each precision in one W8A8 linear layer y = x @ w^T, measured: QSNR (dB) of
    each stage against the exact (float64) result of that stage's inputs, and end to end
    against the full-precision layer."""
    from quantlib.qtensor import quantize
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g)
    w = 0.02 * torch.randn(n, k, generator=g)
    xq, wq = quantize(x, "fp8_e4m3_rowwise"), quantize(w, "fp8_e4m3_rowwise")
    xd, wd = xq.dequantize().double(), wq.dequantize().double()
    exact = xd @ wd.T
    codes_x, codes_w = decode(xq.codes, "e4m3").double(), decode(wq.codes, "e4m3").double()
    prods = codes_x[:, None, :] * codes_w[None, :, :]                  # (m, n, k), exact
    scale = xq.scales.double() * wq.scales.double().T
    acc = {a: accumulate(prods, a) * scale for a in ("fp32", "bf16", "fp16")}
    y_fp32 = acc["fp32"]
    t = Table(["stage", "use", "precision", "QSNR (dB)", "note"],
              title=f"Precision roles in a W8A8 linear layer ({m}x{k} @ {k}x{n})", digits=1)
    t.append(["input", "weights", "FP8 E4M3, row scales", qsnr(w, wq.dequantize()), "vs FP32 w"])
    t.append(["input", "activations", "FP8 E4M3, row scales", qsnr(x, xq.dequantize()),
              "vs FP32 x"])
    # the products as FP32 and BF16 multipliers return them, against the exact float64 ones
    p32 = codes_x.float()[:, None, :] * codes_w.float()[None, :, :]
    p16 = codes_x.bfloat16()[:, None, :] * codes_w.bfloat16()[None, :, :]
    exact_products = "every product exact" if bool((p32.double() == prods).all()) and bool(
        (p16.double() == prods).all()) else "some products rounded"
    t.append(["math", "multiplication", "FP8 x FP8", qsnr(prods, p32.double()),
              f"{exact_products} in FP32/BF16"])
    for a in ("fp32", "bf16", "fp16"):
        ok = bool(torch.isfinite(acc[a]).all())
        t.append(["math", "accumulation", a.upper(), _qsnr(exact, acc[a]),
                  f"sum of {k} products, rounded after each add" if ok else
                  "overflows: E4M3 products reach 448^2 > 65504"])
    t.append(["output", "activation", "BF16", qsnr(exact, y_fp32.to(torch.bfloat16).double()),
              "FP32 sum rounded once"])
    t.append(["output", "activation", "FP8 E4M3, row scales",
              qsnr(exact, quantize(y_fp32.float(), "fp8_e4m3_rowwise").dequantize().double()),
              "FP32 sum re-quantized"])
    t.append(["end to end", "layer output", "W8A8, FP32 acc, BF16 out",
              qsnr(x.double() @ w.double().T, y_fp32.to(torch.bfloat16).double()),
              "vs the FP32 layer"])
    return t


def accumulation_figure(zero_mean: Table, positive: Table):
    """Two log-log panels of `accumulation_error_table` results (zero-mean data left,
    all-positive right): relative error of the sum against K, one line per accumulator. Exact
    sums (error 0) are drawn at 1e-12, the bottom of the axis. Needs matplotlib (the book's
    extra), imported here so that the kernels do not."""
    from quantlib.viz import book_figure
    return book_figure(_accumulation_figure)(zero_mean, positive)


def _accumulation_figure(zero_mean: Table, positive: Table):
    import matplotlib.pyplot as plt
    accs = [c for c in zero_mean.columns if c != "K"]
    fig, axes = plt.subplots(1, 2, figsize=(6.4, 3.6), sharey=True)
    for ax, t, title in [(axes[0], zero_mean, "N(0,1) data"), (axes[1], positive, "|N(0,1)| data")]:
        for acc, marker in zip(accs, ("o", "s", "^", "v")):
            ax.loglog(t.column("K"), [max(e, 1e-12) for e in t.column(acc)], marker=marker,
                      label=acc)
        ax.set_xlabel("K (products per sum)")
        ax.set_title(title)
    axes[0].set_ylabel("relative error of the sum")
    axes[1].legend()
    fig.tight_layout()
    return fig
