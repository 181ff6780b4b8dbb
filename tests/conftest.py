"""Shared pytest setup."""
import os

import torch

# Without a CUDA GPU, run quantlib's Triton kernels on the CPU interpreter. This must happen
# before triton is imported anywhere.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
