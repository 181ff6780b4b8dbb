"""The one place that executes the book's notebooks, both to write their stored outputs and to
check them, in one pinned numeric environment so the outputs are the same bits on every x86-64
CPU (Intel or AMD, AVX2 or AVX-512, any number of cores).

    .venv/bin/python scripts/run_notebook.py book/NN_name.ipynb ...      # execute, store outputs
    .venv/bin/python scripts/run_notebook.py --check book [PYTEST ARGS]  # strict nbval
    .venv/bin/python scripts/run_notebook.py --check --as avx2 book/08_qat.ipynb
        # the same check as on another CPU: a machine without AVX-512 and with four cores

Why each pin (see README, "Reproducibility"): a float sum depends on its order, and every numeric
library below picks its order by the CPU it finds.
"""
import os
import subprocess
import sys
import tempfile
import time

# The environment of every kernel that executes a notebook.
NUMERIC_ENV = {
    # torch's own CPU kernels: the build's baseline code, not the widest vector unit found
    "ATEN_CPU_CAPABILITY": "default",
    # MKL (torch's FP32 GEMMs): conditional numerical reproducibility, the same bits on Intel and AMD
    "MKL_CBWR": "COMPATIBLE",
    # one thread: a parallel reduction splits its sum by the number of cores
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    # numpy's BLAS (OpenBLAS) and numpy's float32 exp/log/sin: one kernel set on every CPU
    "OPENBLAS_CORETYPE": "Nehalem",
    "NPY_DISABLE_CPU_FEATURES": "X86_V3,X86_V4,AVX512_ICL,AVX512_SPR",
    "PYTHONHASHSEED": "0",
}
# Run in the kernel before the first cell: oneDNN (torch's BF16 matmuls and some activations on
# the CPU) dispatches on the CPU's instruction set and has no reproducible mode, so it is off.
KERNEL_STARTUP = """\
import torch
torch.backends.mkldnn.enabled = False
torch.set_num_threads(1)
"""
# What another machine looks like to the libraries (the pins above must make it irrelevant).
OTHER_CPUS = {
    "avx2": {  # a four-core CPU without AVX-512
        "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
        "ONEDNN_MAX_CPU_ISA": "AVX2", "OPENBLAS_CORETYPE": "Haswell",
        "NPY_DISABLE_CPU_FEATURES": "X86_V4,AVX512_ICL,AVX512_SPR", "OMP_NUM_THREADS": "4",
        "MKL_NUM_THREADS": "4", "OPENBLAS_NUM_THREADS": "4",
    },
}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pin_environment(other_cpu: str | None = None) -> None:
    """Set this process's environment (inherited by every kernel it starts) to the pinned one."""
    if other_cpu is not None:
        os.environ.update(OTHER_CPUS[other_cpu])
    os.environ.update(NUMERIC_ENV)
    ipython_dir = tempfile.mkdtemp(prefix="quantlib-ipython-")
    startup = os.path.join(ipython_dir, "profile_default", "startup")
    os.makedirs(startup)
    with open(os.path.join(startup, "00-numeric-env.py"), "w") as f:
        f.write(KERNEL_STARTUP)
    with open(os.path.join(ipython_dir, "profile_default", "ipython_config.py"), "w") as f:
        f.write("c.HistoryManager.enabled = False\n")
    os.environ["IPYTHONDIR"] = ipython_dir
    # Triton kernels run on the CPU interpreter only where a cell asks for it.
    os.environ.pop("TRITON_INTERPRET", None)


def execute(path: str, timeout: int = 1200) -> None:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    t0 = time.time()
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": os.path.dirname(os.path.abspath(path))}}).execute()
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
    nbformat.write(nb, path)
    print(f"{path}: executed in {time.time() - t0:.0f} s, {os.path.getsize(path) / 1e3:.0f} kB")


def check(args: list[str]) -> int:
    """Strict nbval over the given notebooks/folders, each notebook in a fresh pinned kernel."""
    os.environ.pop("MPLBACKEND", None)
    cmd = [sys.executable, "-m", "pytest", "--nbval", "--nbval-current-env",
           "--nbval-sanitize-with", os.path.join(ROOT, "tests", "sanitize.cfg"),
           "--nbval-kernel-startup-timeout", "120", *args]
    return subprocess.call(cmd, cwd=ROOT)


def main(argv: list[str]) -> int:
    other = None
    if "--as" in argv:
        i = argv.index("--as")
        other = argv[i + 1]
        if other not in OTHER_CPUS:
            sys.exit(f"--as takes one of {sorted(OTHER_CPUS)}, not {other!r}")
        del argv[i:i + 2]
    pin_environment(other)
    if argv and argv[0] == "--check":
        return check(argv[1:])
    for p in argv:
        execute(p)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
