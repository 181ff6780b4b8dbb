"""Tables and roofline points for the kernels chapter: kernel vs reference on this machine, and
the committed GPU run of benchmarks/gpu_check.py (its JSON in benchmarks/results/)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from quantlib.device import kernel_path, triton_available
from quantlib.table import Table

# Dense peaks of an H100 SXM (NVIDIA datasheet): TFLOP/s and HBM3 TB/s.
H100_PEAKS = {"bf16": 989.0, "fp8": 1979.0, "hbm_tbs": 3.35}


def kernels_interpreted() -> bool:
    """True when this process's Triton kernels run on the CPU interpreter. Triton decides once,
    when it decorates a kernel (TRITON_INTERPRET=1 set before quantlib.kernels was imported);
    setting the variable later changes nothing."""
    if not triton_available():
        return False
    from triton.runtime.interpreter import InterpretedFunction

    from quantlib.kernels import _minifloat
    return isinstance(_minifloat.encode_minifloat, InterpretedFunction)


def kernel_device(where: str = "auto") -> str:
    """Where `run_kernel` runs a Triton kernel: "cuda" (a CUDA GPU with a Triton path, for
    where="auto") or "interpreter" (the CPU interpreter: where="interpreter", or no such GPU)."""
    if where not in ("auto", "interpreter"):
        raise ValueError(f"where={where!r}: use 'auto' (the GPU when there is one) or "
                         f"'interpreter' (Triton's CPU interpreter)")
    if not triton_available():
        raise RuntimeError("triton is not installed (pip install 'quantlib-book[triton]', Linux "
                           "only): the Triton kernels cannot run here")
    if where == "auto" and torch.cuda.is_available() and kernel_path("cuda") != "reference":
        return "cuda"
    return "interpreter"


def _move(obj, device):
    """Tensors and QuantizedTensors (also inside lists, tuples and dicts) moved to `device`."""
    if isinstance(obj, (list, tuple)):
        return type(obj)(_move(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: _move(v, device) for k, v in obj.items()}
    return obj.to(device) if hasattr(obj, "to") and hasattr(obj, "device") else obj


def _run_interpreted_child(fn, args, kwargs):
    """fn(*args, **kwargs) in a child Python started with TRITON_INTERPRET=1 (and no GPU): the
    kernels there are built for the interpreter whatever this process did."""
    import quantlib
    root = str(Path(quantlib.__file__).resolve().parents[1])
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    child = ("import importlib, sys, torch\n"
             "mod, name, inp, out = sys.argv[1:5]\n"
             "fn = getattr(importlib.import_module(mod), name)\n"
             "args, kwargs = torch.load(inp, weights_only=False)\n"
             "torch.save(fn(*args, **kwargs), out)\n")
    with tempfile.TemporaryDirectory() as d:
        inp, out = os.path.join(d, "in.pt"), os.path.join(d, "out.pt")
        torch.save((args, kwargs), inp)
        r = subprocess.run([sys.executable, "-c", child, fn.__module__, fn.__qualname__, inp,
                            out], env=env, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{fn.__qualname__} failed on the interpreter:\n{r.stderr[-2000:]}")
        return torch.load(out, weights_only=False)


def run_kernel(fn, *args, where: str = "auto", **kwargs):
    """fn(*args, **kwargs) where a Triton kernel can run, whatever device the inputs are on and
    however quantlib.kernels was first imported; the result comes back on the CPU.

    On a CUDA GPU with a Triton path (where="auto") the inputs move there. Otherwise the call
    runs on Triton's CPU interpreter: in this process when its kernels were built for it, else
    in a child process started with TRITON_INTERPRET=1 (seconds to start; `fn` must be
    importable by name). Pass path="triton" in kwargs to forbid the reference twin."""
    if kernel_device(where) == "cuda":
        return _move(fn(*_move(args, "cuda"), **_move(kwargs, "cuda")), "cpu")
    args, kwargs = _move(args, "cpu"), _move(kwargs, "cpu")
    if kernels_interpreted():
        from quantlib.kernels.dispatch import quiet
        before = os.environ.get("TRITON_INTERPRET")
        os.environ["TRITON_INTERPRET"] = "1"   # dispatch reads it: these kernels are interpreted
        try:
            with quiet():
                return fn(*args, **kwargs)
        finally:
            if before is None:
                os.environ.pop("TRITON_INTERPRET")
            else:
                os.environ["TRITON_INTERPRET"] = before
    return _run_interpreted_child(fn, args, kwargs)


def kernel_quantize(x: torch.Tensor, recipes) -> list:
    """(QuantizedTensor, dequantized FP32) of x for each recipe, both by the Triton kernels
    (path="triton": no silent fall-back to the reference)."""
    import quantlib.kernels as K
    from quantlib.recipes import get_recipe
    out = []
    for name in recipes:
        r = get_recipe(name)
        f = {"e4m3": K.nvfp4_quantize, "e8m0": K.mx_quantize}.get(r.scale_format,
                                                                  K.fp8_quantize)
        q = f(x, r, path="triton")
        out.append((q, K.fp8_dequantize(q, path="triton")))
    return out


def bit_exact_table(x: torch.Tensor, recipes, where: str = "auto") -> Table:
    """Quantize x with each recipe through the Triton kernels (on the GPU when there is one,
    else on the CPU interpreter: see `run_kernel`) and through quantlib.quantize on the CPU: how
    many codes and scales differ, and whether dequantization agrees bit for bit."""
    from quantlib.qtensor import quantize
    from quantlib.recipes import get_recipe
    x = x.cpu()
    dev = kernel_device(where)
    t = Table(["recipe", "codes", "codes differing", "scales differing", "dequantize equal"],
              title=f"Triton kernel ({'GPU' if dev == 'cuda' else 'CPU interpreter'}) vs "
                    f"reference, x of shape {tuple(x.shape)}")
    recipes = [get_recipe(r) for r in recipes]
    for r, (a, da) in zip(recipes, run_kernel(kernel_quantize, x, recipes, where=where)):
        b = quantize(x, r)
        sa, sb = a.scales.float(), b.scales.float()
        same_s = (sa == sb) | (sa.isnan() & sb.isnan())
        db = b.dequantize()
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


def benchmark_table(results: dict, skipped: bool = False, bars: bool = True,
                    square_only: bool = False) -> Table:
    """Every benchmark of a GPU run: kernel, measured shape, our number, the baseline's, the
    ratio and the bar (benchmarks the run skipped are left out unless `skipped`; GB/s vs a
    copy for quantize kernels, TFLOP/s vs torch._scaled_mm for FP8
    GEMMs, time vs cuBLAS BF16 for W4A16). For readers: `bars=False` drops the bar and pass
    columns, `square_only` keeps one shape per kernel (8192 x 8192 weights)."""
    t = Table(["benchmark", "measured shape", "ours", "baseline", "ratio", "bar", "pass"],
              title=f"Benchmarks on {results['device']}, {results['date'][:10]}", digits=2)
    if square_only:       # one shape per kernel: 8192 x 8192 weights, the default decoders
        results = {**results, "benchmarks": [
            b for b in results["benchmarks"] if "decoder" not in b["bench"]
            and b.get("N", 8192) == 8192 and b.get("K", 8192) == 8192]}
    if not bars:
        t = _without(benchmark_table(results, skipped), ("bar", "pass"))
        t.title = (f"quantlib's kernels against the best torch baseline on {results['device']}, "
                   f"torch {results['torch'].split('+')[0]}, Triton {results['triton']}")
        return t
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


def _without(t: Table, drop) -> Table:
    keep = [i for i, c in enumerate(t.columns) if c not in drop]
    return Table([t.columns[i] for i in keep], [[r[i] for i in keep] for r in t.rows],
                 title=t.title, digits=t.digits)


_KINDS = [("quantize", "quantize + dequantize", "codes, scales, values: bit for bit vs the CPU "
           "reference"),
          ("fp8_scaled_mm", "FP8 GEMM (W8A8)", "error vs float64, as a share of the FP32 bound"),
          ("W8A16", "FP8/MXFP8 weights (W8A16)", "error vs float64, as a share of the FP32 bound"),
          ("W4A16", "NVFP4/MXFP4 weights (W4A16)", "error vs float64, as a share of the FP32 "
           "bound")]


def _kind(check: str) -> str:
    if check.startswith("quantize"):
        return "quantize"
    if check.startswith("fp8_scaled_mm"):
        return "fp8_scaled_mm"
    return "W4A16" if check.startswith(("nvfp4", "mxfp4")) else "W8A16"


def check_summary(results: dict) -> Table:
    """The checks of a GPU run in one screen: per kind of kernel, how many passed and the
    largest error as a share of the FP32 worst-case bound (GEMMs)."""
    import re
    t = Table(["kernels", "checks", "passed", "largest error / FP32 bound", "compared"],
              title=f"Checks on {results['device']} ({results['compute_capability']}), "
                    f"torch {results['torch'].split('+')[0]}, Triton {results['triton']}",
              digits=4)
    for key, name, what in _KINDS:
        cs = [c for c in results["checks"] if _kind(c["check"]) == key]
        errs = [float(m) for c in cs
                for m in re.findall(r"bound(?: =|: ours) ([0-9.e+-]+)", c["detail"])]
        t.append([name, len(cs), sum(c["pass"] for c in cs), max(errs) if errs else None, what])
    return t


def peer_table(path=None) -> Table | None:
    """Decode-sized weight-only GEMMs of quantlib beside its peers (benchmarks/results/
    peers_*.json): time of cuBLAS BF16 / time of the kernel, above 1 is faster than BF16."""
    if path is None:
        files = sorted((Path(__file__).resolve().parents[2] / "benchmarks" / "results")
                       .glob("peers_*.json"))
        if not files:
            return None
        path = files[-1]
    with open(path) as f:
        run = json.load(f)
    t = Table(["N x K", "M", *run["columns"]], digits=2,
              title=f"Speed-up over cuBLAS BF16 on an {run['device']}, torch {run['torch']}, "
                    f"Triton {run['triton']}")
    for r in run["rows"]:
        t.append([f"{r['N']} x {r['K']}", r["M"], *r["ratios"]])
    return t


def limits_table(results: dict, peaks: dict = None) -> Table:
    """What limits each benchmarked kernel: bytes it moves per output value, the time the
    measured copy bandwidth and the dense tensor-core peak allow (the larger is the floor), and
    how close the measured time comes to that floor."""
    peaks = peaks or H100_PEAKS
    from quantlib.recipes import get_recipe
    copy = next(b["GB/s"] for b in results["benchmarks"] if b["bench"].startswith("device copy"))
    t = Table(["benchmark", "bytes / output", "memory floor", "compute floor", "measured",
               "floor / measured", "bound by"], digits=2,
              title=f"What limits each kernel on {results['device']} (copy {copy / 1e3:.2f} TB/s,"
                    f" {peaks['bf16']:.0f} BF16 / {peaks['fp8']:.0f} FP8 dense TFLOP/s)")
    seen = set()
    for b in results["benchmarks"]:
        if "ms" not in b or "fp32 E2M1" in b["bench"]:
            continue
        if "M" in b:
            m, n, k = b["M"], b["N"], b["K"]
            if "speedup" in b:
                bits = get_recipe(b.get("recipe", "nvfp4")).bits_per_element((n, k))
                byts, peak = 2 * m * k + n * k * bits / 8 + 2 * m * n, peaks["bf16"]
            else:
                byts, peak = m * k + n * k + 2 * m * n, peaks["fp8"]
            outs, comp = m * n, 2.0 * m * n * k / (peak * 1e12) * 1e3
        else:
            # bytes the run counted (input read once + codes + scales, or codes + output)
            byts, outs, comp = b["GB/s"] * 1e6 * b["ms"], b["shape"][0] * b["shape"][1], 0.0
        key = b["bench"].split(" M=")[0].split(" 8192")[0] + (f" M={b['M']}" if "M" in b else "")
        if key in seen:
            continue
        seen.add(key)
        mem = byts / (copy * 1e9) * 1e3
        t.append([b["bench"], byts / outs, f"{mem * 1e3:.1f} us",
                  f"{comp * 1e3:.1f} us" if comp else "-",
                  f"{b['ms'] * 1e3:.1f} us", max(mem, comp) / b["ms"],
                  "memory" if mem >= comp else "compute"])
    return t


def roofline_figure(results: dict, peaks: dict = None):
    """The GEMM points of a GPU run under the GPU's BF16 and FP8 roofs (log-log), in the book's
    figure style (matplotlib, the book's extra, imported here so that the kernels do not)."""
    from quantlib.viz import book_figure
    return book_figure(_roofline_figure)(results, peaks)


def _roofline_figure(results: dict, peaks: dict = None):
    import matplotlib.pyplot as plt
    import numpy as np
    peaks = peaks or H100_PEAKS
    pts = roofline_points(results)
    ai = np.logspace(-0.5, 4, 200)
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    for peak, name in [(peaks["fp8"], "FP8"), (peaks["bf16"], "BF16")]:
        ax.loglog(ai, np.minimum(peak, ai * peaks["hbm_tbs"]), "--", lw=1.2,
                  label=f"{name} roof: {peak:.0f} TFLOP/s, {peaks['hbm_tbs']} TB/s")
    for kernel, marker in [("FP8 GEMM tensor (ours)", "o"), ("FP8 GEMM row (ours)", "s"),
                           ("FP8 GEMM block (ours)", "D"), ("torch._scaled_mm", "x"),
                           ("W4A16 (ours)", "^"), ("W8A16 (ours)", "<"), ("cuBLAS BF16", "v")]:
        p = [q for q in pts if q["kernel"] == kernel]
        ax.scatter([q["ai"] for q in p], [q["tflops"] for q in p], marker=marker, s=40,
                   label=kernel)
    ax.set_xlabel("arithmetic intensity (FLOP / byte)")
    ax.set_ylabel("TFLOP/s")
    ax.legend(fontsize=10, loc="upper center", bbox_to_anchor=(0.45, -0.16), ncol=2,
              frameon=False)
    fig.tight_layout()
    return fig


# The configuration the autotuner picked for NVFP4 at M=1, N=K=8192 on the H100 run (a tensor-core
# tile, K split 4): timing it alone compiles one kernel instead of tuning every candidate.
GEMV_CONFIG = ("dot", 16, 64, 256, 4, 1, 4, 3)


def gemv_timing(n: int = 8192, k: int = 8192, reps: int = 50, config=GEMV_CONFIG) -> Table:
    """On a CUDA GPU: one token through an n x k layer, NVFP4 weights (the W4A16 kernel in
    `config`; None tunes every candidate first, which takes longer) against cuBLAS BF16, each
    replayed from a CUDA graph."""
    import quantlib.kernels as K
    from quantlib.kernels import _wq_gemm
    from quantlib.timing import time_ms
    if not torch.cuda.is_available():
        raise RuntimeError("gemv_timing needs a CUDA GPU")
    w = torch.randn(n, k, device="cuda")
    wq, wb = K.nvfp4_quantize(w), w.bfloat16()
    x = torch.randn(1, k, device="cuda").bfloat16()
    t = Table(["kernel", "time (us)", "speed-up over BF16"], digits=2,
              title=f"1 x {n} x {k} on {torch.cuda.get_device_name()}")
    times = {}
    for name, fn in [("cuBLAS BF16", lambda: x @ wb.T),
                     ("NVFP4 W4A16", lambda: _wq_gemm.wq_mm(
                         x, wq.codes, wq.scales, wq.tensor_scale, "nvfp4",
                         out_dtype=torch.bfloat16, config=config))]:
        times[name] = time_ms(lambda _: fn(), reps, stat="mean", fallback=False)[0] * 1e3
        t.append([name, times[name], times["cuBLAS BF16"] / times[name]])
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


def _wq_outputs(x, codes, scales, ts, configs):
    """The W4A16 product of NVFP4 weights under each kernel configuration, FP32 out."""
    from quantlib.kernels import _wq_gemm
    return [_wq_gemm.wq_mm(x, codes, scales, ts, "nvfp4", out_dtype=torch.float32, config=c)
            for c in configs.values()]


def wq_error_table(configs: dict, m: int = 4, n: int = 96, k: int = 512, seed: int = 0,
                   where: str = "auto") -> Table:
    """m tokens through a k -> n layer with NVFP4 weights, by the W4A16 kernels in each
    configuration (on the GPU when there is one, else the CPU interpreter): the largest
    |y - exact| as a share of the worst-case bound of FP32 accumulation (float64 exact)."""
    import quantlib.kernels as K
    g = torch.Generator().manual_seed(seed)
    w = K.nvfp4_quantize(torch.randn(n, k, generator=g), path="reference")
    x = torch.randn(m, k, generator=g).to(torch.bfloat16)
    x64, w64 = x.double(), w.dequantize().double()
    exact = x64 @ w64.T
    bound = (x64.abs() @ w64.abs().T) * k * 2.0**-23
    t = Table(["kernel", "configuration", "max |y - exact| / FP32 bound"], digits=6,
              title=f"NVFP4 W4A16, {m} tokens through a {k} -> {n} layer "
                    f"({'GPU' if kernel_device(where) == 'cuda' else 'CPU interpreter'})")
    ys = run_kernel(_wq_outputs, x, w.codes, w.scales, w.tensor_scale, configs, where=where)
    for (name, cfg), y in zip(configs.items(), ys):
        t.append([name, str(cfg), float(((y.double() - exact).abs() / bound).max())])
    return t
