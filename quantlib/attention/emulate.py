"""FP8 attention emulated exactly on the CPU, one step at a time.

The three steps of attention and what FlashAttention-3's FP8 path does to each:

1. S = Q K^T / sqrt(d): Q and K in FP8 E4M3 with one FP32 scale per block of `block` tokens
   of one head ("block quantization", FlashAttention-3, Shah et al. 2024, section 3.3).
2. P = exp(S - rowmax(S)): in FP32 (the softmax is never taken in FP8; BF16 shown for
   contrast). The row sum l is accumulated from the FP32 P.
3. O = P V / l: P cast to FP8 E4M3 (directly, or times 448 so its row max 1 lands on E4M3's
   max), V in FP8 with per-block scales.

Exact means: FP8 x FP8 products are exact in FP32, so each matmul is computed from the decoded
values in float64 and rounded once to FP32. What is measured is the rounding of the operands,
not the tensor cores' accumulator (chapter 5 measures that).
"""
from __future__ import annotations

import math

import torch

from quantlib.codecs import round_to_format
from quantlib.metrics import qsnr
from quantlib.qtensor import quantize
from quantlib.recipes import Recipe
from quantlib.table import Table

_ROW = Recipe("fp8_e4m3_block", "e4m3", "row")


def block_fp8(x: torch.Tensor, block: int = 64) -> torch.Tensor:
    """x (..., tokens, d) rounded to FP8 E4M3 with one FP32 scale per `block` tokens x d (the
    dequantized values, float32): each block is one row of quantlib's per-row recipe."""
    *lead, t, d = x.shape
    pad = -t % block
    xp = torch.nn.functional.pad(x.float(), (0, 0, 0, pad))
    rows = xp.reshape(*lead, (t + pad) // block, block * d)
    return quantize(rows, _ROW).dequantize().reshape(*lead, t + pad, d)[..., :t, :]


def fp8_p(p: torch.Tensor, scaled: bool = True) -> torch.Tensor:
    """P in [0, 1] rounded to FP8 E4M3: times 448 first (scaled: the row max 1 maps to E4M3's
    max, values down to 448 * 2^-9 stay apart), or cast directly (below 2^-10 becomes 0)."""
    if scaled:     # 448 is a power of two times 7: x448 then /448 is exact around the cast
        return round_to_format(p.float() * 448.0, "e4m3") / 448.0
    return round_to_format(p.float(), "e4m3")


def _mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b from float32 values, summed in float64, rounded once to float32."""
    return (a.double() @ b.double()).float()


def attention_steps(q, k, v, qk: str = "fp32", softmax: str = "fp32", p: str = "fp32",
                    pv: str = "fp32", block: int = 64, causal: bool = False) -> dict:
    """One attention pass with each step in the precision named: qk "fp32" | "fp8" (Q and K),
    softmax "fp32" | "bf16" | "fp64", p "fp32" | "fp8" | "fp8_scaled", pv "fp32" | "fp8" (V).
    q (b, h, tq, d), k and v (b, h, tk, d) with as many heads. Returns S, P (unnormalized),
    l and O (float32; "fp64" steps keep float64)."""
    d = q.shape[-1]
    if qk == "fp8":
        q, k = block_fp8(q, block), block_fp8(k, block)
    s = _mm(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(d)) if softmax != "fp64" else \
        q.double() @ k.double().transpose(-1, -2) / math.sqrt(d)
    if causal:
        tq, tk = s.shape[-2:]
        mask = torch.ones(tq, tk, dtype=torch.bool).tril(tk - tq)
        s = s.masked_fill(~mask, float("-inf"))
    m = s.amax(-1, keepdim=True)
    # exp taken in float64 and rounded once to the step's format: a correctly rounded exp,
    # the same on every CPU (float32 exp kernels differ in the last bit between CPUs)
    if softmax == "bf16":
        pr = torch.exp((s - m).bfloat16().double()).bfloat16().float()
    elif softmax == "fp64":
        pr = torch.exp(s - m)
    else:
        pr = torch.exp((s - m).double()).float()
    l = pr.sum(-1, keepdim=True)
    if p == "fp8":
        pq = fp8_p(pr, scaled=False)
    elif p == "fp8_scaled":
        pq = fp8_p(pr, scaled=True)
    else:
        pq = pr
    vv = block_fp8(v, block) if pv == "fp8" else v
    o = (pq.double() @ vv.double() / l.double()) if softmax == "fp64" else _mm(pq, vv) / l
    return {"S": s, "P": pr, "l": l, "O": o}


STEPS = [
    ("QK^T: FP8 Q, K (block scales)", dict(qk="fp8"), "S"),
    ("softmax in FP32", dict(), "P"),
    ("softmax in BF16", dict(softmax="bf16"), "P"),
    ("P to FP8, unscaled", dict(p="fp8"), "O"),
    ("P to FP8, x448", dict(p="fp8_scaled"), "O"),
    ("PV: FP8 V (block scales)", dict(pv="fp8"), "O"),
    ("all: FP8 Q, K, P x448, V", dict(qk="fp8", p="fp8_scaled", pv="fp8"), "O"),
]


def _db(x: float):
    """QSNR for a table: beyond 100 dB the float32 rounding of the reference itself shows, so
    only the bound is printed."""
    return "> 100" if x > 100 else x


def attention_step_errors(q, k, v, block: int = 64, causal: bool = False,
                          steps=STEPS) -> Table:
    """QSNR (dB) of each attention step taken alone in low precision, against float64: of the
    step's own output (S, P or O) and of the attention output O."""
    ref = attention_steps(q, k, v, softmax="fp64", causal=causal)
    t = Table(["step in low precision", "its output", "QSNR of it (dB)", "QSNR of O (dB)"],
              title=f"Attention step by step vs float64 ({q.shape[-2]} queries, "
                    f"{k.shape[-2]} keys, head_dim {q.shape[-1]})", digits=1)
    for name, kw, out in steps:
        r = attention_steps(q, k, v, block=block, causal=causal, **kw)
        mine = r[out]
        fin = torch.isfinite(ref[out])
        t.append([name, out, _db(qsnr(ref[out][fin].float(), mine[fin].float())),
                  _db(qsnr(ref["O"].float(), r["O"].float()))])
    return t
