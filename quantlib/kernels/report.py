"""Tables and roofline points for the kernels chapter: kernel vs reference on this machine, and
the committed GPU run of benchmarks/gpu_check.py (its JSON in benchmarks/results/)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from quantlib.table import Table

# Dense peaks of an H100 SXM (NVIDIA datasheet): TFLOP/s and HBM3 TB/s.
H100_PEAKS = {"bf16": 989.0, "fp8": 1979.0, "hbm_tbs": 3.35}


def bit_exact_table(x: torch.Tensor, recipes, path: str = "triton") -> Table:
    """Quantize x with each recipe through the kernels and through quantlib.quantize: how many
    codes and scales differ, and whether dequantization agrees bit for bit."""
    import quantlib.kernels as K
    from quantlib.recipes import get_recipe
    t = Table(["recipe", "codes", "codes differing", "scales differing", "dequantize equal"],
              title=f"Kernel ({path}) vs reference, x of shape {tuple(x.shape)}")
    for name in recipes:
        r = get_recipe(name)
        f = {"e4m3": K.nvfp4_quantize, "e8m0": K.mx_quantize}.get(r.scale_format,
                                                                  K.fp8_quantize)
        a, b = f(x, r, path=path), f(x, r, path="reference")
        sa, sb = a.scales.float(), b.scales.float()
        same_s = (sa == sb) | (sa.isnan() & sb.isnan())
        da, db = K.fp8_dequantize(a, path=path), b.dequantize()
        t.append([r.name, a.codes.numel(), int((a.codes != b.codes).sum()),
                  int((~same_s).sum()), bool(((da == db) | (da.isnan() & db.isnan())).all())])
    return t


def load_gpu_results(path=None) -> dict | None:
    """The newest benchmarks/results/gpu_check*.json of this checkout (or `path`); None when
    there is none (e.g. quantlib installed from a wheel)."""
    if path is None:
        folder = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
        files = sorted(folder.glob("gpu_check*.json"))
        if not files:
            return None
        path = files[-1]
    with open(path) as f:
        return json.load(f)


def check_table(results: dict) -> Table:
    """Pass/fail of every check of a GPU run."""
    t = Table(["check", "pass", "detail"], title=f"Checks on {results['device']}")
    for c in results["checks"]:
        t.append([c["check"], c["pass"], c["detail"][:90]])
    return t


def benchmark_table(results: dict, skipped: bool = False) -> Table:
    """Every benchmark of a GPU run: kernel, measured shape, our number, the baseline's, the
    ratio and the bar (benchmarks the run skipped are left out unless `skipped`; GB/s vs a copy for quantize kernels, TFLOP/s vs torch._scaled_mm for FP8
    GEMMs, time vs cuBLAS BF16 for W4A16)."""
    t = Table(["benchmark", "measured shape", "ours", "baseline", "ratio", "bar", "pass"],
              title=f"Benchmarks on {results['device']}, {results['date'][:10]}", digits=2)
    for b in results["benchmarks"]:
        name = b["bench"]
        if "skipped" in b and not skipped:
            continue
        if "skipped" in b or "error" in b:
            t.append([name, "-", "-", "-", None, None, b.get("skipped", "error")])
        elif "speedup" in b:
            t.append([name, f"{b['M']}x{b['N']}x{b['K']}", f"{b['ms'] * 1e3:.1f} us",
                      f"{b['cuBLAS bf16 ms'] * 1e3:.1f} us", b["speedup"], b["bar"], b["pass"]])
        elif "TFLOP/s" in b:
            t.append([name, f"{b['M']}x{b['N']}x{b['K']}", f"{b['TFLOP/s']:.0f} TFLOP/s",
                      f"{b['best baseline TFLOP/s']:.0f} TFLOP/s", b["ratio"], b["bar"],
                      b["pass"]])
        elif "ratio" in b:
            t.append([name, "x".join(map(str, b["shape"])), f"{b['GB/s']:.0f} GB/s",
                      f"{b['copy GB/s']:.0f} GB/s", b["ratio"], b["bar"], b["pass"]])
        else:
            t.append([name, "-", f"{b.get('GB/s', 0):.0f} GB/s", "-", None, None, None])
    return t


def roofline_points(results: dict) -> list[dict]:
    """(arithmetic intensity in FLOP/byte, TFLOP/s) of each GEMM benchmark and its baseline:
    FP8 GEMM bytes = M*K + N*K + 2*M*N; weight-only bytes = 2*M*K + the stored weight (its
    recipe's bits per element: 4.5 for NVFP4, 4.25 for MXFP4, about 8 for FP8) + 2*M*N, cuBLAS
    BF16 with 2 bytes per weight."""
    from quantlib.recipes import get_recipe
    pts = []
    for b in results["benchmarks"]:
        if "M" not in b or "ms" not in b:
            continue
        m, n, k = b["M"], b["N"], b["K"]
        flop = 2.0 * m * n * k
        if "speedup" in b:
            bits = get_recipe(b.get("recipe", "nvfp4")).bits_per_element((n, k))
            ours_bytes = 2 * m * k + n * k * bits / 8 + 2 * m * n
            base_bytes = 2 * m * k + 2 * n * k + 2 * m * n
            kernel = "W8A16 (ours)" if bits > 6 else "W4A16 (ours)"
            pts.append({"kernel": kernel, "ai": flop / ours_bytes,
                        "tflops": flop / b["ms"] / 1e9})
            pts.append({"kernel": "cuBLAS BF16", "ai": flop / base_bytes,
                        "tflops": flop / b["cuBLAS bf16 ms"] / 1e9})
        else:
            byts = m * k + n * k + 2 * m * n
            pts.append({"kernel": f"FP8 GEMM {b['scales']} (ours)", "ai": flop / byts,
                        "tflops": b["TFLOP/s"]})
            pts.append({"kernel": "torch._scaled_mm", "ai": flop / byts,
                        "tflops": b["best baseline TFLOP/s"]})
    return pts


def kernel_source(kernel) -> str:
    """The source of a @triton.jit function (compiled or interpreted), decorator included."""
    import inspect
    fn = kernel
    while hasattr(fn, "fn"):
        fn = fn.fn
    return inspect.getsource(fn)
