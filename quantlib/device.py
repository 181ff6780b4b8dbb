"""What this machine can run: the device, its compute capability and the kernel path quantlib takes.

The paths, by NVIDIA compute capability (see the book's "How to run this book"):
- "native-fp4": sm_100+ (B200): FP8 tensor cores; MX weights also through Triton's tl.dot_scaled
  (block-scaled tensor cores), NVFP4 weights decoded in the kernel.
- "native-fp8": sm_89/sm_90 (L4, RTX 40, H100): FP8 tensor cores; FP4 weights decoded in the kernel.
- "emulated": sm_80/sm_86 (A100, RTX 30): Triton kernels decode FP8/FP4 codes to BF16 in registers.
- "interpreter": no usable GPU, TRITON_INTERPRET=1 set: the Triton kernels run on the CPU (slowly).
- "reference": everything else (CPU, T4 and older, no Triton): the plain-torch reference twins.
"""
from __future__ import annotations

import importlib.util
import os
import platform
from dataclasses import dataclass

import torch

from quantlib.table import Table

_PATH_TEXT = {
    "native-fp4": "Triton kernels; FP8 tensor cores, FP4 weights decoded or via tl.dot_scaled",
    "native-fp8": "Triton kernels; FP8 tensor cores, FP4 weights decoded in registers",
    "emulated": "Triton kernels; FP8/FP4 codes decoded to BF16 in registers",
    "interpreter": "Triton kernels on the CPU interpreter (TRITON_INTERPRET=1)",
    "reference": "plain-torch reference (no Triton GPU path here)",
}


def triton_available() -> bool:
    """True when the optional `triton` package can be imported (Linux only)."""
    return importlib.util.find_spec("triton") is not None


def interpreter_enabled() -> bool:
    """True when TRITON_INTERPRET=1 asks Triton to run kernels on the CPU."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def path_for_capability(major: int, minor: int) -> str:
    """The kernel path for an NVIDIA GPU of compute capability `major.minor` with Triton."""
    cc = 10 * major + minor
    if cc >= 100:
        return "native-fp4"
    if cc >= 89:
        return "native-fp8"
    if cc >= 80:
        return "emulated"
    return "reference"  # Triton does not support sm_75 (T4) and older


# GPUs a reader's notebook may have: (name, major, minor)
KNOWN_GPUS = [
    ("T4 (Colab free tier)", 7, 5),
    ("A100", 8, 0),
    ("RTX 30xx / A10", 8, 6),
    ("L4 / RTX 40xx", 8, 9),
    ("H100 / H200", 9, 0),
    ("B200 / GB200", 10, 0),
]


def support_matrix() -> Table:
    """Which kernel path quantlib takes on each common GPU, derived from `path_for_capability`."""
    t = Table(["GPU", "compute capability", "kernel path", "what runs"],
              title="quantlib's kernel path by GPU")
    for name, major, minor in KNOWN_GPUS:
        path = path_for_capability(major, minor)
        t.append([name, f"sm_{major}{minor}", path, _PATH_TEXT[path]])
    return t


def kernel_path(device: torch.device | str | None = None) -> str:
    """The kernel path quantlib takes for tensors on `device` (default: the current CUDA device
    when there is one, else the CPU). One of the keys documented in this module."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and torch.version.cuda is not None and triton_available():
        return path_for_capability(*torch.cuda.get_device_capability(device))
    if device.type == "cpu" and triton_available() and interpreter_enabled():
        return "interpreter"
    return "reference"


@dataclass(frozen=True)
class DeviceInfo:
    device: str
    name: str
    compute_capability: str | None
    kernel_path: str
    triton: str | None
    torch: str


def device_info(device: torch.device | str | None = None) -> DeviceInfo:
    """The facts behind `device_report`, as a record."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    triton_version = None
    if triton_available():
        import triton
        triton_version = triton.__version__
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        name, cc = torch.cuda.get_device_name(device), f"sm_{major}{minor}"
    else:
        name, cc = platform.processor() or platform.machine() or "cpu", None
    return DeviceInfo(str(device.type), name, cc, kernel_path(device), triton_version,
                      torch.__version__.split("+")[0])


def device_report(device: torch.device | str | None = None) -> Table:
    """A table of what this machine supports and which kernel path quantlib will take."""
    info = device_info(device)
    t = Table(["property", "value"], title="This machine")
    t.append(["device", info.device])
    t.append(["name", info.name])
    t.append(["compute capability", info.compute_capability or "-"])
    t.append(["torch", info.torch])
    t.append(["triton", info.triton or "not installed"])
    t.append(["kernel path", f"{info.kernel_path}: {_PATH_TEXT[info.kernel_path]}"])
    return t
