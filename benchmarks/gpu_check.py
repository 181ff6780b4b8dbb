"""GPU check and benchmarks of quantlib.kernels: every kernel against its reference at realistic
sizes, then timed against the best baseline in the same run.

    PYTHONPATH=. python3 benchmarks/gpu_check.py --out benchmarks/results

Checks: quantize/dequantize bit for bit against quantlib.quantize run on the CPU (torch on CUDA
divides by a Python number through its reciprocal, which is not the recipe's fl(a/b)); the GEMMs
against a float64 matmul of the dequantized operands (the FP32-accumulation error bound), BF16
outputs within 1 ulp of their own FP32 result rounded once. Timings: the calls captured in a
CUDA graph and replayed between CUDA events (no Python or launch overhead, for our kernels and
the baselines alike), median of 20 replays after a warm-up; inputs smaller than 3x L2 are
cycled through copies. --dry-run runs everything on the CPU interpreter at tiny sizes.
Bars: quantize >= 85% of a device copy's GB/s (>= 32M elements); FP8 GEMM >= 0.9x
torch._scaled_mm; W4A16 >= 0.7x cuBLAS BF16 at M >= 2048. Decode (issue 13, weights in the
decode kernels' layout, each timed beside cuBLAS BF16 and torch's tinygemm INT4 g128 on the same
W): 4-bit >= 2.5x BF16 at M=1, >= 2.0x at M=16; FP8 >= 1.8x and >= 1.5x; all >= 1.2x at M=64;
INT4 g128 >= 1.3x tinygemm at M=1. `--only 'decode|tinygemm|capture'` runs just those.
Writes gpu_check.json (device, versions, date, every check and benchmark) into --out.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import re
import sys
import time
import traceback

import torch

# stop starting new benchmarks after this many seconds (the run must fit 6 minutes)
BUDGET_S = float(os.environ.get("GPU_CHECK_BUDGET_S", "330"))
OUT_PATH = None         # gpu_check.json, rewritten after every check and benchmark
ONLY = None             # --only REGEX
META = {}
T0 = time.time()
DEV = "cuda"            # "cpu" with --dry-run (TRITON_INTERPRET=1, tiny sizes)
SZ = 1                  # size divisor: 16 with --dry-run
CHECKS, BENCHES = [], []
HW_BAD = []             # recipes whose hardware-conversion encode disagreed with the reference


# ---- helpers -------------------------------------------------------------------------------
def d(n: int) -> int:
    """A size, divided by SZ in a dry run (kept a multiple of 128)."""
    return n if SZ == 1 else max(128, n // SZ // 128 * 128)


def log(msg):
    print(f"[{time.time() - T0:6.1f}s] {msg}", flush=True)


def selected(name):
    """--only: run just the checks and benchmarks whose names match (a rerun after a fix)."""
    return ONLY is None or re.search(ONLY, name) is not None


def run_check(name, fn):
    """Run one check; record pass/fail and the detail; never let one failure stop the rest."""
    if not selected(name):
        return
    try:
        ok, detail = fn()
    except Exception as e:  # noqa: BLE001 (report every failure, keep going)
        ok, detail = False, f"{type(e).__name__}: {e}"
        traceback.print_exc()
    CHECKS.append({"check": name, "pass": bool(ok), "detail": detail})
    dump()
    log(f"check {name}: {'PASS' if ok else 'FAIL'} {detail}")


def copies_for(nbytes: int) -> int:
    """How many input copies to cycle through so the working set is 3x a 50 MB L2."""
    return max(1, min(8, -(-150 * 2**20 // max(nbytes, 1))))


def bench_ms(fn, reps=20, warmup=2, rotate=None, graph=True):
    """Median time of one fn(i) call in ms (quantlib.timing.time_ms), i = 0..rotate-1 cycling
    over input copies (so a working set smaller than L2 is not served from L2); rotate=None
    calls fn(). Groups of max(rotate, 4) calls are captured in a CUDA graph and replayed
    between CUDA events after `warmup` groups: Python and launch overheads are excluded, as
    they are for the cuBLAS baselines, which get the same treatment. Back-to-back eager calls
    (overheads partly hidden) with graph=False or when a graph cannot be captured."""
    from quantlib.timing import time_ms
    f = (lambda i: fn(i % rotate)) if rotate else (lambda i: fn())
    if DEV == "cpu":                      # --dry-run: exercise the code, one untimed-ish run
        return time_ms(f, 1, warmup=0, clock="wall")[0]
    calls = max(rotate or 1, 4)
    return time_ms(f, reps, calls=calls, warmup=warmup * calls, graph=graph,
                   log=lambda m: log(f"  ({m})"))[0]


def dump():
    """Write what is known so far, so a run cut short still leaves its results."""
    if OUT_PATH:
        with open(OUT_PATH, "w") as f:
            json.dump({**META, "seconds": time.time() - T0, "checks": CHECKS,
                       "benchmarks": BENCHES}, f, indent=1, default=str)


def run_bench(name, fn):
    if not selected(name):
        return
    if time.time() - T0 > BUDGET_S:
        BENCHES.append({"bench": name, "skipped": "time budget"})
        log(f"bench {name}: skipped (time budget)")
        return
    try:
        row = fn()
        row = {"bench": name, **row}
    except Exception as e:  # noqa: BLE001
        row = {"bench": name, "error": f"{type(e).__name__}: {e}"}
        traceback.print_exc()
    BENCHES.append(row)
    dump()
    log(f"bench {name}: {row}")


def same(a, b):
    """Bitwise equality, NaN == NaN (NaN payloads may differ between casts)."""
    if a is None or b is None:
        return a is None and b is None
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point():
        return bool(((a == b) | (torch.isnan(a) & torch.isnan(b))).all())
    return torch.equal(a, b)


def test_tensor(R, K, dtype, seed=0):
    """Normal data over many magnitudes, plus rows that exercise zero blocks, subnormals,
    huge values, exact ties of the element grid, NaN and Inf."""
    g = torch.Generator(device=DEV).manual_seed(seed)
    x = torch.randn(R, K, device=DEV, generator=g)
    x *= torch.exp2(torch.randint(-8, 9, (R, 1), device=DEV, generator=g).float())
    x[0] = 0.0
    x[1] *= 1e-39                      # fp32 subnormals
    x[2] *= 1e37                       # near the fp32 top
    x[3] = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0], device=DEV).repeat(
        K // 8 + 1)[:K]                # E2M1 ties once scaled by 1
    x[4, 7] = float("nan")
    x[5, 300 % K] = float("inf")
    return x.to(dtype)


# ---- checks --------------------------------------------------------------------------------
QUANT_RECIPES = ["fp8_e4m3_tensor", "fp8_e4m3_rowwise", "fp8_e4m3_1x128", "fp8_e5m2_1x128",
                 "fp8_e4m3_128x128", "nvfp4", "mxfp8_e4m3", "mxfp4", "mxfp6_e3m2"]


def check_quantize(K, recipe, dtype, rows=None, cols=None):
    rows, cols = rows or d(1024), cols or d(4096)
    from quantlib.recipes import get_recipe
    r = get_recipe(recipe)
    fq = K.nvfp4_quantize if r.scale_format == "e4m3" else (
        K.mx_quantize if r.scale_format == "e8m0" else K.fp8_quantize)

    def fn():
        details = []
        ok = True
        for nan in (False, True):
            x = test_tensor(rows, cols, dtype)
            if not nan:
                x = torch.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0)
            a = fq(x, r, path="triton")
            # The oracle is the reference on the CPU: torch on CUDA divides by a Python scalar
            # as a multiply by its reciprocal (ATen's div_true_kernel_cuda), which is not the
            # fl(amax / qmax) that quantlib.recipes specifies; torch on the CPU divides.
            b = fq(x.cpu(), r, path="reference").to(x.device)
            bc = fq(x, r, path="reference")
            cuda_ref = torch.equal(bc.codes, b.codes) and same(bc.scales, b.scales)
            c_ok = torch.equal(a.codes, b.codes)
            s_ok = same(a.scales, b.scales)
            t_ok = same(a.tensor_scale, b.tensor_scale)
            bd = b.to("cpu")
            d_ok = same(K.fp8_dequantize(a, torch.float32, path="triton"),
                        bd.dequantize(torch.float32).to(x.device))
            h_ok = same(K.fp8_dequantize(a, torch.bfloat16, path="triton"),
                        bd.dequantize(torch.bfloat16).to(x.device))
            # the integer encoder (the sm_80 path) on this GPU too
            from quantlib.kernels import _quantize as kq
            q2, _, _ = kq.quantize(x, r, hw=False)
            if r.format.bits == 6:     # the raw kernel writes one 6-bit code per byte
                from quantlib.qtensor import pack_codes
                q2 = pack_codes(q2, 6)
            i_ok = torch.equal(q2.reshape(b.codes.shape), b.codes)
            if i_ok and not c_ok:
                HW_BAD.append(str(r.name))     # the hardware FP8 cvt path disagrees
            ok &= c_ok and s_ok and t_ok and d_ok and h_ok and i_ok
            nbad = int((a.codes != b.codes).sum())
            details.append(f"{'nan/inf' if nan else 'finite'}: codes {c_ok} ({nbad} differ) "
                           f"scales {s_ok} ts {t_ok} deq {d_ok} bf16 {h_ok} int-path {i_ok} "
                           f"(CUDA reference agrees with CPU reference: {cuda_ref})")
        return ok, "; ".join(details)
    return fn


def gemm_tolerance(a64, b64, ref, K):
    """|C - ref| <= K * 2^-23 * (|A| |B|^T) + tiny: the worst-case bound of FP32 accumulation."""
    bound = (a64.abs() @ b64.abs().T) * (K * 2.0 ** -23) + 1e-30
    return bound


def bf16_ulps(yb, y):
    """How many BF16 ulps the kernel's BF16 output is from RNE(its own FP32 output): 0 when the
    epilogue rounds the same FP32 sums once, to nearest even."""
    r = y.to(torch.bfloat16)
    d = (yb.view(torch.int16).to(torch.int32) - r.view(torch.int16).to(torch.int32)).abs()
    return int(d.max()) if d.numel() else 0


def bench_output_error(y, a64, b64):
    """The benchmarked call's own BF16 output against float64: max |y - ref| over the bound of
    FP32 accumulation (e) followed by one rounding to BF16 (half an ulp, <= 2^-8 |y32| with
    |y32| <= |ref| + e); <= 1 means the timed configuration computed the right product at the
    timed size."""
    ref = a64 @ b64.T
    e = gemm_tolerance(a64, b64, ref, a64.shape[1])
    bound = e * (1 + 2.0 ** -8) + 2.0 ** -8 * ref.abs()
    return float(((y.double() - ref).abs() / bound).max())


def gemm_verdict(y, yb, a64, b64, bias, Kd):
    """(pass, detail) of a GEMM check: the FP32 output y within the FP32-accumulation bound of
    float64 a64 @ b64^T + bias, and the BF16 output yb within 1 ulp of y rounded once."""
    ref = a64 @ b64.T + bias.double()
    bound = gemm_tolerance(a64, b64, ref, Kd) + 2.0 ** -23 * bias.double().abs()
    ratio = float(((y.double() - ref).abs() / bound).max())
    ulps = bf16_ulps(yb, y)
    return ratio <= 1.0 and ulps <= 1, (f"max err / fp32 bound = {ratio:.3g}, bf16 output "
                                        f"{ulps} ulp from RNE(fp32 output)")


def check_fp8_mm(K, rec_a, rec_b, M, N, Kd, native=None):
    def fn():
        from quantlib.kernels import _gemm
        g = torch.Generator(device=DEV).manual_seed(1)
        a = K.fp8_quantize(torch.randn(M, Kd, device=DEV, generator=g), rec_a)
        b = K.fp8_quantize(torch.randn(N, Kd, device=DEV, generator=g), rec_b)
        bias = torch.randn(N, device=DEV, generator=g)
        a64, b64 = a.dequantize().double(), b.dequantize().double()
        sa, ra, bwa = K._mm_scales(a, "a")
        sb, rb, bwb = K._mm_scales(b, "b")

        def run(out):
            return _gemm.fp8_mm(a.codes, b.codes, sa.contiguous(), sb.contiguous(),
                                a.recipe.element, b.recipe.element, ra, rb, bwa or bwb,
                                bias=bias, out_dtype=out, native=native)
        return gemm_verdict(run(torch.float32), run(torch.bfloat16), a64, b64, bias, Kd)
    return fn


def check_w4a16(K, recipe, M, N, Kd, fast=None, config=None):
    def fn():
        from quantlib.kernels import _wq_gemm
        g = torch.Generator(device=DEV).manual_seed(2)
        wq = (K.nvfp4_quantize if recipe == "nvfp4" else K.mx_quantize)(
            torch.randn(N, Kd, device=DEV, generator=g), recipe)
        x = torch.randn(M, Kd, device=DEV, generator=g).to(torch.bfloat16)
        bias = torch.randn(N, device=DEV, generator=g)
        kind = "nvfp4" if recipe == "nvfp4" else recipe

        def run(out):      # fast=None: the default decoder; True/False force the PTX/fp32 one
            return _wq_gemm.wq_mm(x, wq.codes, wq.scales, wq.tensor_scale, kind, bias=bias,
                                  out_dtype=out, fast=fast, config=config)
        return gemm_verdict(run(torch.float32), run(torch.bfloat16), x.double(),
                            wq.dequantize().double(), bias, Kd)
    return fn


def check_fp8_weight(K, recipe, M, N, Kd):
    """W8A16: fp8_weight_matmul (FP8 weight, FP32 scale per row or tensor, BF16 x) against
    float64, FP32 output within the accumulation bound, BF16 output its own FP32 rounded once."""
    def fn():
        g = torch.Generator(device=DEV).manual_seed(6)
        w = K.fp8_quantize(torch.randn(N, Kd, device=DEV, generator=g), recipe)
        x = torch.randn(M, Kd, device=DEV, generator=g).to(torch.bfloat16)
        bias = torch.randn(N, device=DEV, generator=g)
        y = K.fp8_weight_matmul(x, w, bias, torch.float32, path="triton")
        yb = K.fp8_weight_matmul(x, w, bias, torch.bfloat16, path="triton")
        return gemm_verdict(y, yb, x.double(), w.dequantize().double(), bias, Kd)
    return fn


def check_scaled_mm_agrees(K):
    """Our per-tensor FP8 GEMM and torch._scaled_mm (cuBLAS) on the same codes and scales, both
    against float64: ours must meet the FP32-accumulation bound. cuBLAS's FP8 GEMM on Hopper
    does not always (its tensor-core accumulator is narrower than FP32): reported, not judged."""
    def fn():
        g = torch.Generator(device=DEV).manual_seed(3)
        a = K.fp8_quantize(torch.randn(d(512), d(1024), device=DEV, generator=g), "fp8_e4m3_tensor")
        b = K.fp8_quantize(torch.randn(d(768), d(1024), device=DEV, generator=g), "fp8_e4m3_tensor")
        ours = K.fp8_scaled_mm(a, b, out_dtype=torch.float32, path="triton")
        theirs = torch._scaled_mm(a.codes.view(torch.float8_e4m3fn),
                                  b.codes.view(torch.float8_e4m3fn).t(), a.scales.reshape(()),
                                  b.scales.reshape(()), out_dtype=torch.float32)
        a64, b64 = a.dequantize().double(), b.dequantize().double()
        ref = a64 @ b64.T
        bound = gemm_tolerance(a64, b64, None, a64.shape[1])
        r_ours = float(((ours.double() - ref).abs() / bound).max())
        r_cublas = float(((theirs.double() - ref).abs() / bound).max())
        return r_ours <= 1.0, (f"max err / fp32 bound: ours {r_ours:.3g}, "
                               f"torch._scaled_mm {r_cublas:.3g}")
    return fn


def check_auto_uses_torch_mm(K, rec, out_dtype):
    """fp8_scaled_mm(path="auto") on sm_89+ hands per-tensor and per-row products to
    torch._scaled_mm: the same bits as path="torch" and torch did not refuse the case (its error
    against float64 is reported, as in check_scaled_mm_agrees)."""
    def fn():
        from quantlib.kernels import _torch_mm
        g = torch.Generator(device=DEV).manual_seed(5)
        a = K.fp8_quantize(torch.randn(d(512), d(1024), device=DEV, generator=g), rec)
        b = K.fp8_quantize(torch.randn(d(768), d(1024), device=DEV, generator=g), rec)
        bias = torch.randn(d(768), device=DEV, generator=g) if rec.endswith("tensor") else None
        auto = K.fp8_scaled_mm(a, b, bias=bias, out_dtype=out_dtype)
        forced = K.fp8_scaled_mm(a, b, bias=bias, out_dtype=out_dtype, path="torch")
        same_bits = torch.equal(auto, forced) and not _torch_mm._REFUSED
        a64, b64 = a.dequantize().double(), b.dequantize().double()
        ref = a64 @ b64.T + (0 if bias is None else bias.double())
        bound = gemm_tolerance(a64, b64, bias, a64.shape[1])
        r = float(((auto.double() - ref).abs() / bound).max())
        return same_bits, (f"auto == torch._scaled_mm: {same_bits} (refused: {_torch_mm._REFUSED}); "
                    f"max err / fp32 bound = {r:.3g}")
    return fn


# ---- benchmarks ----------------------------------------------------------------------------
def bench_copy(x):
    y = torch.empty_like(x)
    ms = bench_ms(lambda: y.copy_(x))
    return 2 * x.numel() * x.element_size() / ms / 1e6


def bandwidth_row(x, nbytes, ms, copy_gbs, **more):
    """A memory-bound kernel's row: GB/s (nbytes moved in ms) against a device copy's, bar
    85%."""
    gbs = nbytes / ms / 1e6
    return {"shape": list(x.shape), "ms": ms, "GB/s": gbs, "copy GB/s": copy_gbs,
            "ratio": gbs / copy_gbs, "bar": 0.85, "pass": gbs / copy_gbs >= 0.85, **more}


def bench_quantize(K, x, recipe, copy_gbs):
    def fn():
        from quantlib.recipes import get_recipe
        r = get_recipe(recipe)
        fq = K.nvfp4_quantize if r.scale_format == "e4m3" else (
            K.mx_quantize if r.scale_format == "e8m0" else K.fp8_quantize)
        qt = fq(x, r, path="triton")
        nbytes = x.numel() * x.element_size() + qt.nbytes
        ms = bench_ms(lambda: fq(x, r, path="triton"))
        ref_ms = bench_ms(lambda: fq(x, r, path="reference"), reps=5, warmup=1, graph=False)
        return bandwidth_row(
            x, nbytes, ms, copy_gbs, dtype=str(x.dtype), bytes=nbytes,
            note="bytes = input read once + codes + scales; per-tensor and NVFP4 read the "
                 "input twice (amax pass)" if r.granularity == "tensor" or recipe == "nvfp4"
            else "", **{"torch eager reference ms": ref_ms})
    return fn


def bench_dequantize(K, x, recipe, copy_gbs):
    def fn():
        from quantlib.kernels import reference
        qt = reference.quantize_ref(x, recipe) if DEV == "cpu" else (
            K.nvfp4_quantize(x) if recipe == "nvfp4" else K.mx_quantize(x, recipe)
            if recipe.startswith("mx") else K.fp8_quantize(x, recipe))
        ms = bench_ms(lambda: K.fp8_dequantize(qt, torch.bfloat16, path="triton"))
        return bandwidth_row(x, qt.nbytes + x.numel() * 2, ms, copy_gbs)
    return fn


def bench_fp8_mm(K, mode, M, N, Kd):
    recs = {"tensor": ("fp8_e4m3_tensor", "fp8_e4m3_tensor"),
            "row": ("fp8_e4m3_rowwise", "fp8_e4m3_rowwise"),
            "block": ("fp8_e4m3_1x128", "fp8_e4m3_128x128")}[mode]

    def fn():
        g = torch.Generator(device=DEV).manual_seed(4)
        a = K.fp8_quantize(torch.randn(M, Kd, device=DEV, generator=g), recs[0])
        b = K.fp8_quantize(torch.randn(N, Kd, device=DEV, generator=g), recs[1])
        flop = 2.0 * M * N * Kd
        ours = bench_ms(lambda: K.fp8_scaled_mm(a, b, path="triton"), reps=20)
        from quantlib.kernels import _tuning
        config = str(_tuning.LAST_CONFIG)   # the autotuner's pick for this shape
        err = bench_output_error(K.fp8_scaled_mm(a, b, path="triton"), a.dequantize().double(),
                                 b.dequantize().double())
        af, bf = a.codes.view(torch.float8_e4m3fn), b.codes.view(torch.float8_e4m3fn).t()
        if mode == "row":
            sa, sb = a.scales.reshape(M, 1), b.scales.reshape(1, N)
        else:   # per-tensor: also the stand-in for block scales if torch has none
            sa = torch.ones((), device=DEV) if mode == "block" else a.scales.reshape(())
            sb = torch.ones((), device=DEV) if mode == "block" else b.scales.reshape(())
        base = {}
        for fast in (False, True):
            try:
                base[f"torch._scaled_mm fast_accum={fast}"] = bench_ms(
                    lambda fast=fast: torch._scaled_mm(af, bf, sa, sb, out_dtype=torch.bfloat16,
                                                       use_fast_accum=fast), reps=20)
            except Exception as e:  # noqa: BLE001
                base[f"torch._scaled_mm fast_accum={fast}"] = f"{type(e).__name__}: {e}"[:120]
        xb = torch.randn(M, Kd, device=DEV, dtype=torch.bfloat16)
        wb = torch.randn(N, Kd, device=DEV, dtype=torch.bfloat16)
        base["torch.matmul bf16"] = bench_ms(lambda: xb @ wb.T, reps=20)
        fp8_times = [v for k, v in base.items() if k.startswith("torch._") and
                     isinstance(v, float)]
        best = min(fp8_times) if fp8_times else base["torch.matmul bf16"]
        tf = lambda ms: flop / ms / 1e9
        return {"M": M, "N": N, "K": Kd, "scales": mode, "config": config,
                "output error / bound": err, "ms": ours,
                "TFLOP/s": tf(ours),
                "baselines TFLOP/s": {k: (tf(v) if isinstance(v, float) else v)
                                      for k, v in base.items()},
                "best baseline TFLOP/s": tf(best), "ratio": best / ours, "bar": 0.9,
                "pass": best / ours >= 0.9 and err <= 1.0,
                "note": "block scales vs per-tensor torch._scaled_mm (extra scaling work)"
                if mode == "block" else ""}
    return fn


def bench_w4a16(K, recipe, M, N, Kd, fast=None):
    bar = 2.5 if M == 1 else 2.0 if M <= 16 else 0.7 if M >= 2048 else None
    bar = None if recipe.startswith("fp8") else bar    # the bars are for 4-bit weights

    def fn():
        g = torch.Generator(device=DEV).manual_seed(5)
        w = torch.randn(N, Kd, device=DEV, generator=g)
        if recipe.startswith("fp8"):          # W8A16: FP8 weight, FP32 scale per row
            wq, mm = K.fp8_quantize(w, recipe), K.fp8_weight_matmul
        else:
            wq = (K.nvfp4_quantize if recipe == "nvfp4" else K.mx_quantize)(w, recipe)
            mm = K.nvfp4_matmul if recipe == "nvfp4" else K.mx_matmul
        wb = w.to(torch.bfloat16)
        x = torch.randn(M, Kd, device=DEV, generator=g).to(torch.bfloat16)
        rot = copies_for(wq.nbytes)
        wqs = [wq] + [dataclasses.replace(wq, codes=wq.codes.clone(), scales=wq.scales.clone())
                      for _ in range(rot - 1)]
        from quantlib.kernels import _wq_gemm
        kind = "nvfp4" if recipe == "nvfp4" else recipe
        if fast is None:
            ours = bench_ms(lambda i: mm(x, wqs[i], path="triton"), rotate=rot)
        else:
            ours = bench_ms(lambda i: _wq_gemm.wq_mm(x, wqs[i].codes, wqs[i].scales,
                                                     wq.tensor_scale, kind, fast=fast),
                            rotate=rot)
        rotb = copies_for(wb.numel() * 2)
        wbs = [wb] + [wb.clone() for _ in range(rotb - 1)]
        from quantlib.kernels import _tuning
        config = str(_tuning.LAST_CONFIG)   # the autotuner's pick for this shape
        y = (mm(x, wq, path="triton") if fast is None else _wq_gemm.wq_mm(
            x, wq.codes, wq.scales, wq.tensor_scale, kind, fast=fast))
        err = bench_output_error(y, x.double(), wq.dequantize().double())
        del y
        base = bench_ms(lambda i: torch.matmul(x, wbs[i].T), rotate=rotb)
        flop = 2.0 * M * N * Kd
        wbytes = wq.nbytes
        return {"recipe": recipe, "M": M, "N": N, "K": Kd, "config": config,
                "output error / bound": err, "ms": ours,
                "cuBLAS bf16 ms": base,
                "TFLOP/s": flop / ours / 1e9, "cuBLAS TFLOP/s": flop / base / 1e9,
                "weight GB/s": wbytes / ours / 1e6, "speedup": base / ours, "bar": bar,
                "pass": (err <= 1.0) if bar is None else (base / ours >= bar and err <= 1.0)}
    return fn


# ---- decode kernels (M <= 16, transposed layout) and the tinygemm INT4 baseline -----------
DECODE_RECIPES = ["nvfp4", "mxfp4", "mxfp8_e4m3", "fp8_e4m3_rowwise", "fp8_e4m3_tensor",
                  "fp8_e5m2_rowwise", "int8_channel", "int4_channel", "int4_g32", "int4_g64",
                  "int4_g128", "int4_g128_asym"]


def _tinygemm():
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import _baselines
    return _baselines


def random_code_weight(recipe, N, Kd, seed):
    """A QuantizedTensor of uniform random code bytes (every finite code) and random finite
    scales (and zero points) of the recipe's formats, on DEV."""
    from quantlib.qtensor import QuantizedTensor, quantize
    from quantlib.recipes import get_recipe
    r = get_recipe(recipe)
    g = torch.Generator().manual_seed(seed)
    qt = quantize(torch.randn(N, Kd, generator=g), r)
    codes = torch.randint(0, 256, qt.codes.shape, generator=g, dtype=torch.uint8)
    if r.element == "e4m3" and r.format.bits == 8:
        codes[codes & 0x7F == 0x7F] = 0x3C           # NaN codes: 0 x NaN poisons a column
    if r.element == "e5m2":
        codes[codes & 0x7C == 0x7C] = 0x3C           # Inf/NaN codes likewise
    if r.scale_format == "e4m3":
        s = torch.randint(0x08, 0x7E, qt.scales.shape, generator=g, dtype=torch.uint8)
    elif r.scale_format == "e8m0":
        s = torch.randint(100, 150, qt.scales.shape, generator=g, dtype=torch.uint8)
    else:
        s = torch.randn(qt.scales.shape, generator=g).abs() + 0.01
    zp = None if qt.zero_point is None else torch.randint(
        0, 16, qt.zero_point.shape, generator=g, dtype=torch.uint8)
    return QuantizedTensor(codes=codes, scales=s, recipe=r, shape=qt.shape,
                           tensor_scale=qt.tensor_scale, zero_point=zp).to(DEV)


def check_decode_exact(K, recipe, dot):
    """The decoded weights bit for bit on this GPU: 16 one-hot rows of x pick 16 columns of W
    (random codes: every value, E2M1's 0.5 and FP8 subnormals included) and the kernel's output
    must equal the reference dequantization exactly (an FTZ or a wrong bit trick shows here)."""
    def fn():
        from quantlib.kernels import _decode
        Kd = 256
        w = random_code_weight(recipe, 64, Kd, seed=3)
        dw = K.decode_layout(w)
        ref = w.dequantize(torch.float32)
        group = dw.group or 16
        cfg = (dot, 16, 64, min(32, group), 1, 4, 2)
        bad = 0
        for k0 in range(0, Kd, 16):
            x = torch.zeros(16, Kd, device=DEV)
            x[torch.arange(16), k0 + torch.arange(16)] = 1.0
            y = _decode.decode_mm(x.to(torch.bfloat16), dw, out_dtype=torch.float32, config=cfg)
            want = ref[:, k0:k0 + 16].T
            bad += int((~((y == want) | (y.isnan() & want.isnan()))).sum())
        return bad == 0, f"{bad} of {64 * Kd} decoded weights differ from the reference"
    return fn


def check_decode(K, recipe, M, N, Kd, config=None):
    """weight_matmul through the decode kernel (a config from the heuristic, or forced) against
    float64 on the dequantized weight; BF16 output within 1 ulp of its FP32 output."""
    def fn():
        from quantlib.kernels import _decode
        from quantlib.qtensor import quantize
        g = torch.Generator(device=DEV).manual_seed(6)
        w = quantize(torch.randn(N, Kd, device=DEV, generator=g), recipe)
        dw = K.decode_layout(w)
        x = torch.randn(M, Kd, device=DEV, generator=g).to(torch.bfloat16)
        bias = torch.randn(N, device=DEV, generator=g)

        def run(out):
            return _decode.decode_mm(x, dw, bias=bias, out_dtype=out, config=config)
        return gemm_verdict(run(torch.float32), run(torch.bfloat16), x.double(),
                            w.dequantize().double(), bias, Kd)
    return fn


def check_tinygemm(K, recipe, M, N, Kd):
    """The baseline multiplies the same weights: tinygemm's packing of a quantlib INT4 weight
    (BF16 scales and zeros) against x @ dequantize(w)^T, to BF16 precision."""
    def fn():
        from quantlib.qtensor import quantize
        tg = _tinygemm()
        g = torch.Generator(device=DEV).manual_seed(7)
        w = quantize(torch.randn(N, Kd, device=DEV, generator=g), recipe)
        x = torch.randn(M, Kd, device=DEV, generator=g).to(torch.bfloat16)
        packed, sz, group = tg.tinygemm_weight(w)
        y = tg.tinygemm_mm(x, packed, group, sz).double()
        ref = x.double() @ w.dequantize().double().T
        rel = float((y - ref).abs().max() / ref.abs().max())
        return rel <= 0.02, f"max |tinygemm - reference| / max |reference| = {rel:.2g}"
    return fn


def check_capture(K, config):
    """QuantLinear under a CUDA graph: a two-layer MLP quantized with `config`, one eager
    forward (warm-up: compiles, tuning, weight layouts), then captured and replayed; the replay
    must equal the eager output bit for bit (same kernels, same configs, no host sync)."""
    def fn():
        from torch import nn

        from quantlib.nn import quantize_model
        torch.manual_seed(8)
        mlp = nn.Sequential(nn.Linear(d(2048), d(4096)), nn.ReLU(), nn.Linear(d(4096), d(2048)))
        q = quantize_model(mlp.to(DEV, torch.bfloat16), config)
        outs = []
        for M in (1, 8, 64):
            x = torch.randn(M, d(2048), device=DEV, dtype=torch.bfloat16)
            with torch.no_grad():
                y0 = q(x)
                if DEV != "cuda":
                    outs.append(True)
                    continue
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g):
                    y = q(x)
                g.replay()
                torch.cuda.synchronize()
            outs.append(bool(torch.equal(y, y0)))
        if DEV != "cuda":
            return all(outs), "dry run: eager forward only (no CUDA graph on the CPU)"
        return all(outs), f"replay == eager for M = 1, 8, 64: {outs}"
    return fn


def bench_decode(K, recipe, M, N, Kd):
    """A weight-only GEMM at decode M through the decode kernels (weights in their layout,
    built once), against cuBLAS BF16 and torch's tinygemm INT4 g128 on the same W."""
    four = recipe in ("nvfp4", "mxfp4") or recipe.startswith("int4")
    bar = ((2.5 if four else 1.8) if M == 1 else (2.0 if four else 1.5) if M <= 16
           else 1.2 if M <= 64 else None)
    tg_bar = 1.3 if (M == 1 and recipe == "int4_g128") else None

    def fn():
        from quantlib.kernels import _tuning
        from quantlib.qtensor import quantize
        tg = _tinygemm()
        g = torch.Generator(device=DEV).manual_seed(5)
        w = torch.randn(N, Kd, device=DEV, generator=g)
        wq = quantize(w, recipe)
        x = torch.randn(M, Kd, device=DEV, generator=g).to(torch.bfloat16)
        rot = copies_for(wq.nbytes)
        dws = [K.decode_layout(wq)] + [K.decode_layout(dataclasses.replace(
            wq, codes=wq.codes.clone(), scales=wq.scales.clone())) for _ in range(rot - 1)]
        ours = bench_ms(lambda i: K.weight_matmul(x, dws[i], path="triton"), rotate=rot)
        config = str(_tuning.LAST_CONFIG)
        y = K.weight_matmul(x, dws[0], path="triton")
        err = bench_output_error(y, x.double(), wq.dequantize().double())
        del y, dws
        wb = w.to(torch.bfloat16)
        rotb = copies_for(wb.numel() * 2)
        wbs = [wb] + [wb.clone() for _ in range(rotb - 1)]
        base = bench_ms(lambda i: torch.matmul(x, wbs[i].T), rotate=rotb)
        del wbs
        packed, sz, group = tg.tinygemm_weight(quantize(w, "int4_g128"))
        rott = copies_for(packed.numel() * packed.element_size())
        tws = [packed] + [packed.clone() for _ in range(rott - 1)]
        tiny = bench_ms(lambda i: tg.tinygemm_mm(x, tws[i], group, sz), rotate=rott)
        ok = err <= 1.0 and (bar is None or base / ours >= bar) and \
            (tg_bar is None or tiny / ours >= tg_bar)
        return {"recipe": recipe, "M": M, "N": N, "K": Kd, "config": config,
                "output error / bound": err, "ms": ours, "cuBLAS bf16 ms": base,
                "tinygemm int4 ms": tiny, "vs tinygemm": tiny / ours,
                "weight GB/s": wq.nbytes / ours / 1e6, "speedup": base / ours, "bar": bar,
                "tinygemm bar": tg_bar, "pass": ok}
    return fn


def run_decode_checks(K):
    """Issue 13's checks: every decode format bit for bit and in the FP32 bound, every tuning
    candidate once, the tinygemm baseline's numbers, QuantLinear under a CUDA graph."""
    from quantlib.kernels import _decode
    from quantlib.qtensor import quantize
    for rec in DECODE_RECIPES:
        for dot in (False, True):
            run_check(f"decode {rec} {'dot' if dot else 'gemv'} decoded weights bit-exact",
                      check_decode_exact(K, rec, dot))
        for M in (1, 3, 16) if rec in ("nvfp4", "int4_g128") else (1, 16):
            run_check(f"decode {rec} matmul M={M} N=1536 K=2048",
                      check_decode(K, rec, M, d(1536), d(2048)))
    sms = torch.cuda.get_device_properties(0).multi_processor_count if DEV == "cuda" else 132
    for rec in ("nvfp4", "int4_g128", "fp8_e4m3_rowwise"):
        dw = K.decode_layout(quantize(torch.randn(64, 256), rec))
        for M in (1, 16):
            for cfg in _decode.decode_candidates(M, d(1536), d(2048), dw, sms):
                run_check(f"decode {rec} M={M} config {cfg}",
                          check_decode(K, rec, M, d(1536), d(2048), config=cfg))
    for rec in ("int4_g128", "int4_g128_asym"):
        run_check(f"tinygemm baseline {rec} M=16 N=1536 K=2048",
                  check_tinygemm(K, rec, 16, d(1536), d(2048)))
    for cfg in ("nvfp4", "mxfp4", "mxfp8", "fp8", "int8", "int4_channel", "int4_g128",
                "int4_g128_asym", "w8a8_fp8"):
        run_check(f"capture QuantLinear {cfg} in a CUDA graph", check_capture(K, cfg))


def run_decode_benches(K):
    """Issue 13's table: M = 1 on three Llama shapes, M = 16 and 64 on 8192 x 8192."""
    for M, shapes in ((1, [(8192, 8192), (4096, 14336), (28672, 8192)]), (16, [(8192, 8192)]),
                      (64, [(8192, 8192)])):
        for N, Kd in shapes:
            for rec in ("int4_g128", "nvfp4", "mxfp4", "fp8_e4m3_rowwise", "int4_g128_asym",
                        "mxfp8_e4m3"):
                run_bench(f"decode {rec} M={M} N={N} K={Kd}",
                          bench_decode(K, rec, M, d(N), d(Kd)))


# ---- main ----------------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results", help="folder for gpu_check.json")
    ap.add_argument("--quick", action="store_true", help="checks only, no benchmarks")
    ap.add_argument("--skip-checks", action="store_true", help="benchmarks only")
    ap.add_argument("--dry-run", action="store_true",
                    help="no GPU: run every step on the CPU interpreter at tiny sizes")
    ap.add_argument("--only", metavar="REGEX",
                    help="run only the checks and benchmarks whose names match REGEX")
    args = ap.parse_args()
    global DEV, SZ, ONLY
    ONLY = args.only
    if args.dry_run:
        DEV, SZ = "cpu", 16
        os.environ["TRITON_INTERPRET"] = "1"
    elif not torch.cuda.is_available():
        print("gpu_check.py needs a CUDA GPU (or --dry-run: the CPU interpreter, tiny sizes)")
        return 2
    import triton

    import quantlib.kernels as K
    from quantlib.device import kernel_path
    if DEV == "cuda":
        dev, cc = torch.cuda.get_device_name(), torch.cuda.get_device_capability()
    else:
        dev, cc = "CPU (Triton interpreter, dry run)", ("-", "-")
    meta = {"device": dev, "compute_capability": f"sm_{cc[0]}{cc[1]}",
            "kernel_path": kernel_path(DEV), "torch": torch.__version__,
            "triton": triton.__version__, "python": sys.version.split()[0],
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    log(f"{meta}")
    global OUT_PATH
    META.update(meta)
    os.makedirs(args.out, exist_ok=True)
    OUT_PATH = os.path.join(args.out, "gpu_check.json")
    torch.backends.cuda.matmul.allow_tf32 = False

    if not args.skip_checks:
        from quantlib.kernels import _tuning
        _tuning.AUTOTUNE = False        # checks: one config per kernel, to keep compiles few
        run_decode_checks(K)
        run_checks(K)
        run_fp8_fast_checks(K)          # issue 15: given amax, fused transpose, GEMM kinds
        _tuning.AUTOTUNE = True
    if not args.quick:
        if args.dry_run:
            SZ = SZ * 4                 # dry run: benchmarks at 1/64 size (never on a GPU)
        x = torch.randn(d(8192), d(8192), device=DEV, dtype=torch.bfloat16)   # 64M elements
        copy_gbs = bench_copy(x)
        BENCHES.append({"bench": f"device copy bf16 {d(8192)}x{d(8192)}", "GB/s": copy_gbs})
        log(f"copy {copy_gbs:.0f} GB/s")
        run_decode_benches(K)            # issue 13 first: the decode table against the peers
        for rec in ["fp8_e4m3_1x128", "fp8_e4m3_rowwise", "fp8_e4m3_128x128", "fp8_e4m3_tensor",
                    "mxfp8_e4m3", "mxfp4", "nvfp4"]:
            run_bench(f"quantize {rec}", bench_quantize(K, x, rec, copy_gbs))
        run_bench("dequantize fp8_e4m3_1x128 -> bf16",
                  bench_dequantize(K, x, "fp8_e4m3_1x128", copy_gbs))
        run_fp8_fast_benches(K, x, copy_gbs)   # issue 15
        del x
        # most telling first, so a run cut short by the budget still has them: decode and
        # prefill W4A16 at N=K=8192, the FP8 GEMM at 8192^3, then the other shapes
        gemms = [(8192, 8192, 8192), (8192, 6144, 4096), (8192, 28672, 4096), (8192, 4096, 14336)]
        for M in (2048, 8192):          # M = 1 and 16: run_decode_benches
            run_bench(f"nvfp4_matmul M={M} N=8192 K=8192",
                      bench_w4a16(K, "nvfp4", min(M, d(M)), d(8192), d(8192)))
        for mode in ("tensor", "row", "block"):
            M, N, Kd = gemms[0]
            run_bench(f"fp8_scaled_mm {mode} {M}x{N}x{Kd}", bench_fp8_mm(K, mode, d(M), d(N), d(Kd)))
        run_bench("decode nvfp4 M=16 N=28672 K=8192",
                  bench_decode(K, "nvfp4", 16, d(28672), d(8192)))
        for M in (2048, 8192):
            run_bench(f"nvfp4_matmul M={M} N=28672 K=8192",
                      bench_w4a16(K, "nvfp4", min(M, d(M)), d(28672), d(8192)))
        run_bench("mx_matmul mxfp4 M=4096 N=8192 K=8192",
                  bench_w4a16(K, "mxfp4", min(4096, d(4096)), d(8192), d(8192)))
        for M, N, Kd in gemms[1:]:
            for mode in ("tensor", "row", "block"):
                run_bench(f"fp8_scaled_mm {mode} {M}x{N}x{Kd}",
                          bench_fp8_mm(K, mode, d(M), d(N), d(Kd)))
        for M in (1, 8192):
            run_bench(f"nvfp4_matmul M={M} N=8192 K=8192 (fp32 E2M1 decoder)",
                      bench_w4a16(K, "nvfp4", min(M, d(M)), d(8192), d(8192), fast=False))

    print_table(meta)
    dump()
    log(f"wrote {OUT_PATH}")
    return 0 if all(c["pass"] for c in CHECKS) else 1


def run_checks(K):
    from quantlib.recipes import get_recipe
    for dt in (torch.bfloat16, torch.float32):
        for rec in QUANT_RECIPES if dt == torch.bfloat16 else ["fp8_e4m3_1x128", "nvfp4"]:
            run_check(f"quantize {rec} {str(dt)[6:]} 1024x4096", check_quantize(K, rec, dt))
    run_check("quantize fp8_e4m3_1x128 pow2 bf16", check_quantize(
        K, dataclasses.replace(get_recipe("fp8_e4m3_1x128"), scale_format="pow2"),
        torch.bfloat16))
    run_check("quantize mxfp8_e4m3 rceil bf16", check_quantize(
        K, dataclasses.replace(get_recipe("mxfp8_e4m3"), scale_rule="rceil"), torch.bfloat16))
    for rec in ("nvfp4", "mxfp4"):    # FP4 pairs: two fp16 in a word; odd K: loaded and split
        run_check(f"quantize {rec} float16 1024x4096", check_quantize(K, rec, torch.float16))
        run_check(f"quantize {rec} bf16 odd K 1024x4095", check_quantize(
            K, dataclasses.replace(get_recipe(rec), pad=True), torch.bfloat16,
            cols=4095 if SZ == 1 else 255))
    run_check("quantize fp8_e4m3_rowwise long rows 64x20000", check_quantize(
        K, "fp8_e4m3_rowwise", torch.bfloat16, rows=64 if SZ == 1 else 6,
        cols=20000 if SZ == 1 else 9000))
    if HW_BAD:
        from quantlib.kernels import _quantize
        _quantize.HW_CVT = False
        log(f"hardware FP8 conversion disagreed ({HW_BAD}): benchmarks use the integer encoder")
    for ra, rb in [("fp8_e4m3_tensor", "fp8_e4m3_tensor"), ("fp8_e4m3_rowwise", "fp8_e4m3_rowwise"),
                   ("fp8_e4m3_1x128", "fp8_e4m3_128x128"), ("fp8_e5m2_rowwise", "fp8_e4m3_rowwise")]:
        run_check(f"fp8_scaled_mm {ra} x {rb} 1000x1536x2048",
                  check_fp8_mm(K, ra, rb, d(1000) - 8, d(1536), d(2048)))
    run_check("fp8_scaled_mm emulated (sm_80 path: decode to bf16) rowwise",
              check_fp8_mm(K, "fp8_e4m3_rowwise", "fp8_e4m3_rowwise", d(1000) - 8, d(1536), d(2048),
                           native=False))
    run_check("fp8_scaled_mm emulated 1x128 x 128x128",
              check_fp8_mm(K, "fp8_e4m3_1x128", "fp8_e4m3_128x128", d(512), d(1024), d(1024),
                           native=False))
    run_check("fp8_scaled_mm vs torch._scaled_mm", check_scaled_mm_agrees(K))
    if DEV == "cuda" and torch.cuda.get_device_capability() >= (8, 9):
        run_check("fp8_scaled_mm auto -> torch._scaled_mm per tensor, bias, fp32 out",
                  check_auto_uses_torch_mm(K, "fp8_e4m3_tensor", torch.float32))
        run_check("fp8_scaled_mm auto -> torch._scaled_mm per row, bf16 out",
                  check_auto_uses_torch_mm(K, "fp8_e4m3_rowwise", torch.bfloat16))
    for rec, M in [("nvfp4", 1), ("nvfp4", 16), ("nvfp4", 300), ("nvfp4", 2048), ("mxfp4", 1),
                   ("mxfp4", 2048), ("mxfp8_e4m3", 16), ("mxfp8_e4m3", 2048)]:
        run_check(f"{rec} matmul M={M} N=1536 K=2048", check_w4a16(K, rec, min(M, d(M)), d(1536), d(2048)))
    for fast in (True, False):
        for rec, M in [("nvfp4", 1), ("nvfp4", 2048), ("mxfp4", 16)]:
            run_check(f"{rec} matmul M={M} E2M1 decoder {'PTX table' if fast else 'fp32'}",
                      check_w4a16(K, rec, min(M, d(M)), d(1536), d(2048), fast=fast))
    for rec, M in [("fp8_e4m3_rowwise", 1), ("fp8_e4m3_rowwise", 2048), ("fp8_e5m2_tensor", 16)]:
        run_check(f"fp8_weight_matmul {rec} M={min(M, d(M))} N=1536 K=2048",
                  check_fp8_weight(K, rec, min(M, d(M)), d(1536), d(2048)))
    # every W4A16 candidate the autotuner may pick, once: GEMV and tensor-core kernels, split K
    # (M=16's candidates are M=1's tensor-core ones), and tl.dot_scaled for MX weights
    from quantlib.kernels import _wq_gemm
    seen = set()
    for M in (1, 3, 2048):
        for cfg in _wq_gemm.wq_configs(M, interpret=False):
            if cfg in seen:
                continue
            seen.add(cfg)
            run_check(f"nvfp4 matmul M={min(M, d(M))} config {cfg}",
                      check_w4a16(K, "nvfp4", min(M, d(M)), d(1536), d(2048), config=cfg))
    scaled = DEV == "cuda" and _wq_gemm.scaled_dot_ok("mxfp4", torch.device(DEV))
    for M in (1, 2048):
        for cfg in _wq_gemm.wq_configs(M, interpret=False, scaled=True):
            if cfg[0] == "scaled" and (scaled or DEV == "cpu"):
                run_check(f"mxfp4 matmul M={min(M, d(M))} config {cfg}",
                          check_w4a16(K, "mxfp4", min(M, d(M)), d(1536), d(2048), config=cfg))
    if not all(c["pass"] for c in CHECKS if "PTX table" in c["check"]):
        _wq_gemm.FAST_E2M1 = False
        log("PTX E2M1 decoder failed its check: benchmarks use the fp32 decoder")


def print_table(meta):
    print(f"\n{meta['device']} ({meta['compute_capability']}), torch {meta['torch']}, "
          f"triton {meta['triton']}, {meta['date']}")
    print(f"{'check / benchmark':58s} {'result':>12s} {'baseline':>12s} {'ratio':>7s} {'bar':>5s}  ok")
    for c in CHECKS:
        print(f"{c['check'][:58]:58s} {'':>12s} {'':>12s} {'':>7s} {'':>5s}  "
              f"{'PASS' if c['pass'] else 'FAIL'}")
    for b in BENCHES:
        name = b["bench"][:58]
        if "error" in b or "skipped" in b:
            print(f"{name:58s} {b.get('error', b.get('skipped'))[:60]}")
        elif "TFLOP/s" in b and "speedup" not in b:
            print(f"{name:58s} {b['TFLOP/s']:9.0f} TF {b['best baseline TFLOP/s']:9.0f} TF "
                  f"{b['ratio']:6.2f}x {b['bar']:5.2f}  {'PASS' if b['pass'] else 'FAIL'}  "
                  f"{b.get('config', '')}")
        elif "speedup" in b:
            bar = f"{b['bar']:5.2f}" if b["bar"] else "    -"
            ok = "-" if b["pass"] is None else ("PASS" if b["pass"] else "FAIL")
            tiny = (f"  tinygemm {b['tinygemm int4 ms'] * 1e3:.1f} us ({b['vs tinygemm']:.2f}x)"
                    if "tinygemm int4 ms" in b else "")
            print(f"{name:58s} {b['ms'] * 1e3:9.1f} us {b['cuBLAS bf16 ms'] * 1e3:9.1f} us "
                  f"{b['speedup']:6.2f}x {bar}  {ok}  {b.get('config', '')}{tiny}")
        elif "ratio" in b:
            print(f"{name:58s} {b['GB/s']:8.0f} GB/s {b['copy GB/s']:7.0f} GB/s "
                  f"{b['ratio']:6.2f}x {b['bar']:5.2f}  {'PASS' if b['pass'] else 'FAIL'}")
        else:
            print(f"{name:58s} {b.get('GB/s', 0):8.0f} GB/s")


# ---- issue 15 (one-pass quantize, fused transpose, persistent/TMA FP8 GEMM) --------------------
# Run just these:  --only 'given amax|transpose|fp8_mm kind|dequantize'
def check_given_amax(K, recipe, dtype):
    """fp8_quantize/nvfp4_quantize with amax= (the true amax and half of it: saturation) bit for
    bit against the reference twin run on the CPU."""
    from quantlib.kernels import reference

    def fn():
        fq = K.nvfp4_quantize if recipe == "nvfp4" else K.fp8_quantize
        x = torch.nan_to_num(test_tensor(d(1024), d(4096), dtype), nan=0.0, posinf=1.0,
                             neginf=-1.0)
        true = x.float().abs().amax()
        details, ok = [], True
        for what, amax in (("true", true), ("half", true / 2)):
            a = fq(x, recipe, path="triton", amax=amax)
            b = reference.quantize_ref(x.cpu(), recipe, amax=amax.cpu())
            good = (torch.equal(a.codes.cpu(), b.codes) and same(a.scales.cpu(), b.scales)
                    and same(None if a.tensor_scale is None else a.tensor_scale.cpu(),
                             b.tensor_scale))
            ok &= good
            details.append(f"amax {what}: {good}")
        return ok, "; ".join(details)
    return fn


def check_quantize_transpose(K, recipe, dtype):
    """fp8_quantize_transpose (one read, two FP8 copies) against the reference twin on the CPU
    (x and x.T.contiguous() quantized separately), NaN/Inf planted."""
    from quantlib.kernels import reference
    from quantlib.recipes import get_recipe
    r = dataclasses.replace(get_recipe(recipe), pad=True)

    def fn():
        x = test_tensor(d(1024) + 8, d(4096) + 8 * (r.granularity == "tensor"), dtype)
        q, qt = K.fp8_quantize_transpose(x, r, path="triton")
        rq, rqt = reference.quantize_transpose_ref(x.cpu(), r)
        oks = [torch.equal(a.codes.cpu(), b.codes) and same(a.scales.cpu(), b.scales)
               for a, b in ((q, rq), (qt, rqt))]
        return all(oks), f"row copy {oks[0]}, column copy {oks[1]}"
    return fn


def check_fp8_mm_kind(K, kind, rec_a, rec_b, M, N, Kd):
    """One FP8 GEMM config kind (tiled, persistent, tma) against the FP32-accumulation bound."""
    def fn():
        from quantlib.kernels import _gemm
        if (kind.startswith("tma") and DEV == "cuda"
                and torch.cuda.get_device_capability() < (9, 0)):
            return True, "skipped: TMA needs sm_90+"
        g = torch.Generator(device=DEV).manual_seed(1)
        a = K.fp8_quantize(torch.randn(M, Kd, device=DEV, generator=g), rec_a)
        b = K.fp8_quantize(torch.randn(N, Kd, device=DEV, generator=g), rec_b)
        bias = torch.randn(N, device=DEV, generator=g)
        sa, ra, bwa = K._mm_scales(a, "a")
        sb, rb, bwb = K._mm_scales(b, "b")
        cfg = (32, 32, 128, 4, 4, 1, kind) if DEV == "cpu" else (
            128, 128 if kind == "tma_lag" else 256, 128, 8, 8, 3, kind)

        def run(out):
            return _gemm.fp8_mm(a.codes, b.codes, sa.contiguous(), sb.contiguous(),
                                a.recipe.element, b.recipe.element, ra, rb, bwa or bwb,
                                bias=bias, out_dtype=out, config=cfg)
        return gemm_verdict(run(torch.float32), run(torch.bfloat16), a.dequantize().double(),
                            b.dequantize().double(), bias, Kd)
    return fn


def run_fp8_fast_checks(K):
    for rec, dt in (("fp8_e4m3_tensor", torch.bfloat16), ("fp8_e5m2_tensor", torch.float32),
                    ("nvfp4", torch.bfloat16)):
        run_check(f"quantize {rec} given amax {str(dt)[6:]}", check_given_amax(K, rec, dt))
    for rec in ("fp8_e4m3_tensor", "fp8_e4m3_1x128", "fp8_e5m2_1x128", "fp8_e4m3_128x128",
                "fp8_e4m3_rowwise"):
        run_check(f"fp8_quantize_transpose {rec} bf16", check_quantize_transpose(
            K, rec, torch.bfloat16))
    for kind in ("tiled", "persistent", "tma", "tma_lag"):
        for ra, rb in (("fp8_e4m3_tensor", "fp8_e4m3_tensor"),
                       ("fp8_e4m3_1x128", "fp8_e4m3_128x128")):
            if kind == "tma_lag" and ra.endswith("tensor"):
                continue                # the lag only changes block-scaled GEMMs
            run_check(f"fp8_mm kind={kind} {ra} x {rb} 1000x1536x2048",
                      check_fp8_mm_kind(K, kind, ra, rb, d(1000) - 8, d(1536), d(2048)))


def bench_quantize_given_amax(K, x, recipe, copy_gbs):
    def fn():
        fq = K.nvfp4_quantize if recipe == "nvfp4" else K.fp8_quantize
        amax = x.float().abs().amax()
        qt = fq(x, recipe, path="triton", amax=amax)
        nbytes = x.numel() * x.element_size() + qt.nbytes
        ms = bench_ms(lambda: fq(x, recipe, path="triton", amax=amax))
        return bandwidth_row(x, nbytes, ms, copy_gbs, bytes=nbytes,
                             note="amax given: one read of the input")
    return fn


def bench_quantize_transpose(K, x, recipe, copy_gbs):
    def fn():
        kw = {"amax": x.float().abs().amax()} if recipe.endswith("tensor") else {}
        q, qt = K.fp8_quantize_transpose(x, recipe, path="triton", **kw)
        nbytes = x.numel() * x.element_size() + q.nbytes + qt.nbytes
        ms = bench_ms(lambda: K.fp8_quantize_transpose(x, recipe, path="triton", **kw))
        two = bench_ms(lambda: (K.fp8_quantize(x, recipe, path="triton", **kw),
                                K.fp8_quantize(x.t().contiguous(), recipe, path="triton", **kw)))
        return bandwidth_row(x, nbytes, ms, copy_gbs, bytes=nbytes, **{
            "unfused ms (quantize x, transpose, quantize x^T)": two})
    return fn


def bench_fp8_mm_kind(K, kind, mode, M, N, Kd):
    """One config kind forced (the autotuner's pick is in the fp8_scaled_mm rows): TFLOP/s."""
    recs = {"tensor": ("fp8_e4m3_tensor", "fp8_e4m3_tensor"),
            "block": ("fp8_e4m3_1x128", "fp8_e4m3_128x128")}[mode]

    def fn():
        from quantlib.kernels import _gemm
        g = torch.Generator(device=DEV).manual_seed(4)
        a = K.fp8_quantize(torch.randn(M, Kd, device=DEV, generator=g), recs[0])
        b = K.fp8_quantize(torch.randn(N, Kd, device=DEV, generator=g), recs[1])
        sa, ra, bwa = K._mm_scales(a, "a")
        sb, rb, bwb = K._mm_scales(b, "b")
        sa, sb = sa.contiguous(), sb.contiguous()
        out = {}
        cfgs = ([(128, 128, 128, 8, 8, 3, kind), (128, 128, 128, 8, 8, 4, kind)]
                if kind == "tma_lag" else
                [(128, 256, 128, 8, 8, 3, kind), (128, 128, 128, 8, 4, 4, kind)])
        for cfg in cfgs:
            try:
                out[str(cfg)] = 2.0 * M * N * Kd / bench_ms(lambda cfg=cfg: _gemm.fp8_mm(
                    a.codes, b.codes, sa, sb, "e4m3", "e4m3", ra, rb, bwa or bwb,
                    config=cfg)) / 1e9
            except Exception as e:  # noqa: BLE001
                out[str(cfg)] = f"{type(e).__name__}: {e}"[:120]
        ours = max((v for v in out.values() if isinstance(v, float)), default=0.0)
        af, bf = a.codes.view(torch.float8_e4m3fn), b.codes.view(torch.float8_e4m3fn).t()
        one = torch.ones((), device=DEV)
        try:            # per-tensor torch._scaled_mm: the bar's baseline for both scale modes
            ms = bench_ms(lambda: torch._scaled_mm(af, bf, one, one, out_dtype=torch.bfloat16))
        except Exception:  # noqa: BLE001 (no FP8 matmul here, e.g. the CPU dry run)
            xb = torch.randn(M, Kd, device=DEV, dtype=torch.bfloat16)
            ms = bench_ms(lambda: xb @ xb.T)
        base = 2.0 * M * N * Kd / ms / 1e9
        bar = 0.9 if mode == "tensor" else 0.8
        return {"M": M, "N": N, "K": Kd, "scales": mode, "TFLOP/s by config": out,
                "TFLOP/s": ours, "best baseline TFLOP/s": base, "ratio": ours / base,
                "bar": bar, "pass": ours / base >= bar,
                "config": max(out, key=lambda k: out[k] if isinstance(out[k], float) else 0)}
    return fn


def run_fp8_fast_benches(K, x, copy_gbs):
    for rec in ("fp8_e4m3_tensor", "nvfp4"):
        run_bench(f"quantize {rec} given amax", bench_quantize_given_amax(K, x, rec, copy_gbs))
    for rec in ("fp8_e4m3_1x128", "fp8_e4m3_128x128", "fp8_e4m3_tensor"):
        run_bench(f"fp8_quantize_transpose {rec}", bench_quantize_transpose(K, x, rec, copy_gbs))
    for rec in ("nvfp4", "mxfp4", "mxfp8_e4m3", "fp8_e4m3_tensor"):
        run_bench(f"dequantize {rec} -> bf16", bench_dequantize(K, x, rec, copy_gbs))
    for kind in ("tiled", "persistent", "tma", "tma_lag"):
        for mode in ("block",) if kind == "tma_lag" else ("tensor", "block"):
            run_bench(f"fp8_mm kind={kind} {mode} 8192^3",
                      bench_fp8_mm_kind(K, kind, mode, d(8192), d(8192), d(8192)))


if __name__ == "__main__":
    sys.exit(main())
