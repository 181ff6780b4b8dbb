"""GPU check of low-precision training (chapter 9): FP8Linear's FP8-kernel path against its
emulation, GPU against CPU (same quantized numbers, so the same losses), then one training step
timed per recipe against torch's BF16 autocast in the same run: the tiny LM, a d=2048 LM, and a
Llama-3-8B-wide stack of linear blocks (d=4096, FFN 14336, 2 x 4096 tokens).

    PYTHONPATH=. python3 benchmarks/bench_training.py [--out DIR] [--skip-check | --stack-only]
    PYTHONPATH=. python3 benchmarks/bench_training.py --dry-run   # CPU, seconds: the stack step
                                                                  # at toy sizes, nothing timed
"""
import os
import sys
import time

import torch

from quantlib import device_report
from quantlib.models import TinyLMConfig
from quantlib.nn.training import FP8Linear
from quantlib.nn.training_bench import time_layer_stack
from quantlib.nn.training_recipes import get_training_recipe
from quantlib.nn.training_runs import run_recipes, time_training_step
from quantlib.table import Table

T0 = time.time()


def rel(a, b) -> float:
    return ((a.float().cpu() - b.float().cpu()).abs().max() / b.float().abs().max().cpu()).item()


def three_gemms(layer, x, dy, steps=1):
    for _ in range(steps):      # delayed scaling: a second step has an amax history
        xx = x.clone().requires_grad_(True)
        layer.weight.grad = None
        y = layer(xx)
        y.backward(dy)
    return y.detach(), xx.grad, layer.weight.grad.clone()


def kernel_vs_emulation(dev="cuda") -> Table:
    t = Table(["recipe", "compared", "y", "dx", "dW"], digits=8,
              title="max |diff| / max |reference| of the three GEMM outputs")
    g = torch.Generator().manual_seed(0)
    x, dy = torch.randn(512, 1024, generator=g) * 3, torch.randn(512, 2048, generator=g) * 1e-3
    base = torch.nn.Linear(1024, 2048)
    for name in ("fp8_current", "fp8_delayed", "fp8_rowwise", "fp8_block", "mxfp8", "nvfp4"):
        recipe = get_training_recipe(name, stochastic_grad=False) if name == "nvfp4" else name
        steps = 2 if name == "fp8_delayed" else 1
        cpu = three_gemms(FP8Linear.from_linear(base, recipe), x, dy, steps)
        outs = {}
        for use in (True, False):
            layer = FP8Linear.from_linear(base.to(dev), recipe)
            layer.use_kernel = use
            outs[use] = three_gemms(layer, x.to(dev), dy.to(dev), steps)
            base.cpu()
        t.append([name, "GPU emulated vs CPU", *(rel(a, b) for a, b in zip(outs[False], cpu))])
        if name.startswith("fp8"):
            t.append([name, "FP8 kernel vs emulated",
                      *(rel(a, b) for a, b in zip(outs[True], outs[False]))])
    return t


def losses_gpu_vs_cpu(steps=40) -> Table:
    t = Table(["recipe", "steps", "max |loss GPU - loss CPU|", "final loss GPU", "final loss CPU"],
              title="Training the tiny LM on the GPU (FP8 kernel) and the CPU (emulation)", digits=5)
    names = ["fp8_current", "fp8_block", "mxfp8"]
    gpu = run_recipes(names, steps=steps, device="cuda")
    cpu = run_recipes(names, steps=steps, device="cpu")
    for n in names:
        t.append([n, steps, max(abs(a - b) for a, b in zip(gpu[n].losses, cpu[n].losses)),
                  gpu[n].losses[-1], cpu[n].losses[-1]])
    return t


STACK_RECIPES = ("fp8_delayed", "fp8_current", "fp8_rowwise", "fp8_block", "mxfp8")


def dry_run() -> Table:
    """The layer-stack step end to end at toy sizes on the CPU (emulated GEMMs): a quick check
    that the benchmark runs, not a measurement."""
    return time_layer_stack(STACK_RECIPES, "cpu", d=256, ffn=512, seq=128, batch=1, n_layers=1,
                            repeats=1, kv=128)


def main():
    out = sys.argv[sys.argv.index("--out") + 1] if "--out" in sys.argv else None
    if "--dry-run" in sys.argv:
        print(dry_run(), flush=True)
        return
    tables = [device_report()]
    print(tables[-1], flush=True)
    steps = [("losses", losses_gpu_vs_cpu)]
    if "--stack-only" in sys.argv:   # just the d=4096 stack (a few minutes on an H100/H200)
        steps = []
    if "--skip-check" not in sys.argv and "--stack-only" not in sys.argv:
        steps.insert(0, ("kernel vs emulation", kernel_vs_emulation))
    recipes = ("fp32", "bf16", "fp8_delayed", "fp8_current", "fp8_rowwise", "fp8_block", "mxfp8",
               "nvfp4")
    if "--stack-only" not in sys.argv:
        steps.append(("tiny", lambda: time_training_step(recipes, "cuda", TinyLMConfig(), 8,
                                                         20)))
        big = TinyLMConfig(d_model=2048, n_layers=2, n_heads=16, d_ff=8192, context=512)
        steps.append(("big", lambda: time_training_step(recipes[:6], "cuda", big, 8, 10)))
    steps.append(("stack d=4096", lambda: time_layer_stack(STACK_RECIPES, "cuda")))
    for what, fn in steps:
        try:
            tables.append(fn())
            print(tables[-1], flush=True)
        except Exception as e:  # noqa: BLE001 - report and go on: one failure must not hide the rest
            import traceback
            traceback.print_exc()
            print(f"{what}: FAILED {type(e).__name__}: {e}", flush=True)
        print(f"[{time.time() - T0:.0f} s]", flush=True)
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "bench_training.txt"), "w") as f:
            f.write("\n\n".join(str(t) for t in tables) + "\n")


if __name__ == "__main__":
    main()
