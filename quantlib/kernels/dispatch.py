"""The one place that picks a kernel path: Triton or the plain-torch reference twin.

`quantlib.device.kernel_path` names what a device can run; here that becomes a decision per
call. The Triton kernels serve every path but "reference": native FP8 tensor cores (sm_89+),
FP8/FP4 decoded to BF16 in registers (sm_80), or the CPU interpreter (TRITON_INTERPRET=1, set
before triton is imported). Everything else runs the reference twins, so the same call works
on any tensor.
"""
from __future__ import annotations

import numpy as np
import torch

from quantlib.device import interpreter_enabled, kernel_path, triton_available

PATHS = ("auto", "triton", "reference")


def use_triton(t: torch.Tensor, path: str = "auto") -> bool:
    """True when the call on tensor `t` should run the Triton kernel.

    path "auto" follows `kernel_path(t.device)`; "reference" forces the twin; "triton" forces
    the kernel and raises when this device cannot run it (a CPU tensor without
    TRITON_INTERPRET=1, a GPU older than sm_80, no triton installed)."""
    if path not in PATHS:
        raise ValueError(f"path {path!r}: use one of {PATHS}")
    if path == "reference":
        return False
    where = kernel_path(t.device)
    if path == "auto":
        return where != "reference"
    if where == "reference":
        if not triton_available():
            why = "triton is not installed (pip install 'quantlib-book[triton]', Linux only)"
        elif t.device.type == "cpu" and not interpreter_enabled():
            why = ("the tensor is on the CPU: move it to a CUDA GPU, or set TRITON_INTERPRET=1 "
                   "before quantlib.kernels is imported to run the kernels on the CPU")
        else:
            why = f"device {t.device} has no Triton path (Triton needs sm_80 or newer)"
        raise RuntimeError(f"path='triton' cannot run here: {why}; use path='auto' to fall "
                           f"back to the reference")
    return True


def quiet():
    """The interpreter evaluates kernels with numpy, which warns on IEEE events the kernels rely
    on (1/0 -> inf, then clamped); keep those off stderr."""
    return np.errstate(all="ignore")
