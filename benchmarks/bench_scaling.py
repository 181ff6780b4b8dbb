"""CPU speed of NVFP4 and MXFP4 quantization (4096x4096 float32) against torchao's published math.

The baseline is the straightforward torch formulation torchao publishes (nvfp4_quantize and
to_mx with FLOOR scales): divisions, torch ops, the bit-trick float -> E2M1 conversion
(_f32_to_floatx_unpacked) and pack_uint4, transcribed here. Run:
    python benchmarks/bench_scaling.py [--size 4096] [--repeat 5]
Prints a Table: median seconds, ratio = baseline time / quantlib time (>= 1.0 is the bar), and the
number of code bytes and scales on which the two differ.
"""
from __future__ import annotations

import argparse

import torch

import quantlib
from quantlib.table import Table
from quantlib.timing import time_ms

F4_MAX, E4M3_MAX, E4M3_EPS = 6.0, 448.0, torch.finfo(torch.float8_e4m3fn).tiny


# ---- the baseline: torchao's math, written plainly ---------------------------------------------
def f32_to_e2m1_unpacked(x: torch.Tensor) -> torch.Tensor:
    """float32 -> E2M1 codes (one per uint8) by torchao's magic-adder bit trick, RNE, saturating."""
    ebits, mbits, exp_bias = 2, 1, 1
    max_normal, min_normal = 6.0, 1.0
    denorm_exp = (127 - exp_bias) + (23 - mbits) + 1
    denorm_mask_int = denorm_exp << 23
    denorm_mask_float = torch.tensor(denorm_mask_int, dtype=torch.int32).view(torch.float32)
    xi = x.view(torch.int32)
    sign = xi & 0x80000000
    x = (xi ^ sign).view(torch.float32)
    saturate = x >= max_normal
    denormal = torch.logical_and(~saturate, x < min_normal)
    normal = ~(saturate | denormal)
    den = ((x + denorm_mask_float).view(torch.int32) - denorm_mask_int).to(torch.uint8)
    nx = x.view(torch.int32)
    mant_odd = (nx >> (23 - mbits)) & 1
    nx = nx + (((exp_bias - 127) << 23) + (1 << (23 - mbits - 1)) - 1) + mant_odd
    nx = (nx >> (23 - mbits)).to(torch.uint8)
    out = torch.full_like(x, 0x7, dtype=torch.uint8)
    out = torch.where(denormal, den, out)
    out = torch.where(normal, nx, out)
    sign_lp = ((sign >> (31 - ebits - mbits)) & 0x8).to(torch.uint8)
    return out | sign_lp


def pack_uint4(u: torch.Tensor) -> torch.Tensor:
    flat = u.contiguous().view(-1)
    return (flat[1::2] << 4 | flat[::2]).view(*u.shape[:-1], -1)


def torchao_nvfp4_quantize(x: torch.Tensor, per_tensor_scale: torch.Tensor):
    """torchao nvfp4_quantize with a per-tensor scale: (E4M3 block scales, packed E2M1)."""
    xb = x.reshape(x.shape[0], -1, 16)
    block_scale = torch.amax(torch.abs(xb), dim=-1) / F4_MAX
    scaled = block_scale.to(torch.float32) / per_tensor_scale
    scaled_fp8 = torch.clamp(scaled, min=E4M3_EPS, max=E4M3_MAX).to(torch.float8_e4m3fn)
    total = per_tensor_scale * scaled_fp8.to(torch.float32)
    data = torch.clamp(xb / total.unsqueeze(-1), -F4_MAX, F4_MAX).view(x.shape)
    return scaled_fp8, pack_uint4(f32_to_e2m1_unpacked(data))


def torchao_to_mx_fp4(x: torch.Tensor):
    """torchao to_mx(elem=E2M1, block 32, FLOOR): (E8M0 bytes, packed E2M1)."""
    xb = x.reshape(*x.shape[:-1], -1, 32)
    max_abs = torch.amax(torch.abs(xb), -1).unsqueeze(-1)
    pow2 = ((max_abs.view(torch.int32) >> 23) & 0xFF) - 127
    unbiased = torch.clamp(pow2 - 2, min=-127, max=128)
    biased = (unbiased + 127).to(torch.uint8)
    biased = torch.where(torch.isnan(max_abs), 255, biased)
    scale = (biased.to(torch.int32) << 23).view(torch.float32)
    scale = torch.clamp(scale, min=torch.finfo(torch.float32).tiny)
    data = torch.clamp(xb / scale, -F4_MAX, F4_MAX).reshape(x.shape)
    return biased.squeeze(-1), pack_uint4(f32_to_e2m1_unpacked(data))


# ---- timing --------------------------------------------------------------------------------------
def median_time(fn, repeat: int) -> float:
    """Median seconds of `repeat` calls after one warm-up."""
    return time_ms(lambda _: fn(), repeat, clock="wall")[0] / 1e3


def run(size: int = 4096, repeat: int = 5) -> Table:
    x = torch.randn(size, size, generator=torch.Generator().manual_seed(0))
    pts = (x.abs().amax() / (E4M3_MAX * F4_MAX)).to(torch.float32)
    t = Table(["recipe", "implementation", "seconds", "Melem/s", "ratio vs torchao",
               "codes differing", "scales differing"],
              title=f"CPU quantization of a {size}x{size} float32 tensor "
                    f"({torch.get_num_threads()} threads, median of {repeat})", digits=3)
    cases = [("nvfp4", lambda: torchao_nvfp4_quantize(x, pts),
              lambda q: (q.scales.view(torch.float8_e4m3fn), q.codes)),
             ("mxfp4", lambda: torchao_to_mx_fp4(x), lambda q: (q.scales, q.codes))]
    for name, baseline, ours_out in cases:
        tb = median_time(baseline, repeat)
        tq = median_time(lambda name=name: quantlib.quantize(x, name), repeat)
        bs, bc = baseline()
        qs, qc = ours_out(quantlib.quantize(x, name))
        codes_diff = int((bc != qc).sum())
        scales_diff = int((bs.view(torch.uint8) != qs.view(torch.uint8)).sum())
        t.append([name, "torchao math (baseline)", tb, x.numel() / tb / 1e6, 1.0, None, None])
        t.append([name, "quantlib.quantize", tq, x.numel() / tq / 1e6, tb / tq, codes_diff,
                  scales_diff])
    return t


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--repeat", type=int, default=5)
    a = p.parse_args()
    print(run(a.size, a.repeat))
