"""Every GPU check and benchmark in one call, the most important first, within a time budget.

A GPU is lent for minutes, not hours. This runs the steps below in order, each in its own
process writing into its own folder under --out, skips a step whose estimate does not fit in the
time left, and rewrites `session.json` (per step: the command, seconds, exit code, or why it was
skipped) after each step. Give the next call `--from STEP` to go on where this one stopped.

    PYTHONPATH=. python3 benchmarks/gpu_session.py --out $OUT --budget 540
    PYTHONPATH=. python3 benchmarks/gpu_session.py --out $OUT --budget 540 --from training
    python3 benchmarks/gpu_session.py --list          # the plan, without running anything

Copy the folders of $OUT into `benchmarks/results/` under the device's name and date.
"""
import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

PY = sys.executable
GC = "benchmarks/gpu_check.py"

# (name, estimated seconds on an H100/H200 including Triton compiles, argv, extra environment).
# Order: correctness of every kernel on this GPU, then the speed bars of the open work (quantize
# and FP8 GEMM, the decode kernels, the training step, end to end), then the reader's view.
STEPS = [
    ("checks", 300, [PY, GC, "--quick"], {}),
    ("quantize", 90, [PY, GC, "--skip-checks", "--only",
                      r"^quantize|^dequantize|fp8_quantize_transpose"], {}),
    ("fp8-gemm", 150, [PY, GC, "--skip-checks", "--only", r"^fp8_scaled_mm|^fp8_mm kind"], {}),
    ("decode", 420, [PY, GC, "--skip-checks", "--only", r"^decode"],
     {"GPU_CHECK_BUDGET_S": "400"}),
    ("training", 240, [PY, "benchmarks/bench_training.py", "--stack-only"], {}),
    ("e2e", 300, [PY, "benchmarks/bench_e2e.py", "--sizes", "llama-4l", "--no-tune"], {}),
    ("attention", 150, [PY, "benchmarks/bench_attention.py"], {}),
    ("weight-only", 200, [PY, GC, "--skip-checks", "--only",
                          r"^nvfp4_matmul|^mx_matmul"], {}),
    ("chapters", 480, [PY, "scripts/run_chapters_gpu.py"], {}),
    ("unit-tests", 300, [PY, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                         "tests/test_kernels_quantize.py", "tests/test_kernels_gemm.py",
                         "tests/test_kernels_fp8_fast.py", "tests/test_kernels_precision.py",
                         "tests/test_codecs.py", "tests/test_qtensor.py"], {}),
]
NAMES = [s[0] for s in STEPS]
WRITES_OUT = {"benchmarks/gpu_check.py", "benchmarks/bench_training.py",
              "benchmarks/bench_e2e.py", "benchmarks/bench_attention.py"}


def command(step, folder: Path):
    """The argv of a step, with --out pointing at its folder for the scripts that take one."""
    name, _, argv, _ = step
    argv = list(argv)
    if len(argv) > 1 and argv[1] in WRITES_OUT:
        argv += ["--out", str(folder)]
    return argv


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/session", help="one folder per step")
    ap.add_argument("--budget", type=float, default=540.0,
                    help="seconds this call may use (leave the device tool's limit some slack)")
    ap.add_argument("--from", dest="start", choices=NAMES, default=NAMES[0],
                    help="the first step to run")
    ap.add_argument("--only", nargs="+", choices=NAMES, help="run just these steps")
    ap.add_argument("--list", action="store_true", help="print the plan and exit")
    args = ap.parse_args(argv)
    steps = STEPS[NAMES.index(args.start):]
    if args.only:
        steps = [s for s in STEPS if s[0] in args.only]
    out = Path(args.out)
    if args.list:
        for s in steps:
            env = " ".join(f"{k}={v}" for k, v in s[3].items())
            print(f"{s[0]:12s} ~{s[1]:4d} s  {env + ' ' if env else ''}"
                  f"{' '.join(command(s, out / s[0])[1:])}")
        return 0
    import torch
    if not torch.cuda.is_available():
        print("gpu_session.py runs on a CUDA GPU (--list prints the plan anywhere)")
        return 2
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "budget_s": args.budget, "steps": []}
    env0 = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path.cwd())] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    for step in steps:
        name, est, _, extra = step
        left = args.budget - (time.time() - t0)
        rec = {"step": name, "estimate_s": est}
        if est > left:
            rec["skipped"] = f"estimate {est} s > {left:.0f} s left: rerun with --from {name}"
            meta["steps"].append(rec)
            print(f"[{time.time() - t0:6.0f}s] {name}: skipped ({rec['skipped']})", flush=True)
            continue
        folder = out / name
        folder.mkdir(exist_ok=True)
        argv = command(step, folder)
        rec["command"] = " ".join(argv[1:])
        print(f"[{time.time() - t0:6.0f}s] {name}: {rec['command']}", flush=True)
        s0 = time.time()
        with open(folder / "log.txt", "w") as log:
            try:
                p = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT,
                                   env=dict(env0, **extra), timeout=max(left, 1.0))
                rec["exit_code"] = p.returncode
            except subprocess.TimeoutExpired:
                rec["exit_code"] = "timeout"
        rec["seconds"] = round(time.time() - s0, 1)
        meta["steps"].append(rec)
        (out / "session.json").write_text(json.dumps(meta, indent=1))
        tail = (folder / "log.txt").read_text(errors="replace").splitlines()[-3:]
        print(f"[{time.time() - t0:6.0f}s] {name}: exit {rec['exit_code']} in "
              f"{rec['seconds']} s; " + " | ".join(tail), flush=True)
    (out / "session.json").write_text(json.dumps(meta, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
