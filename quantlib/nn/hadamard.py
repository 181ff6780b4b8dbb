"""The random Hadamard transform (RHT) that NVFP4 training applies to the weight-gradient GEMM.

H is a Sylvester Hadamard matrix scaled by 1/sqrt(n), so H @ H.T = I; multiplying its rows by
random signs keeps it orthogonal. Applied along the contraction dimension of BOTH wgrad operands,
it cancels exactly: (A H)(B H)^T = A H H^T B^T = A B^T. What it changes is the quantization: it
spreads an outlier over n elements, so a 16-element block's amax no longer comes from one value.
"""
from __future__ import annotations

import torch


def hadamard_matrix(n: int = 16, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The n x n Sylvester Hadamard matrix divided by sqrt(n) (orthonormal); n a power of two."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"Hadamard size must be a power of two, got {n}")
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return (h / n ** 0.5).to(dtype)


def random_hadamard_matrix(n: int = 16, seed: int = 0,
                           dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """diag(random signs) @ H: still orthonormal; the signs come from a generator seeded `seed`."""
    gen = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, (n,), generator=gen, dtype=torch.float64) * 2 - 1
    return (signs[:, None] * hadamard_matrix(n, torch.float64)).to(dtype)


def hadamard_transform(x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """x with each run of n = h.shape[0] consecutive elements of its last dimension replaced by
    (run @ h): a block-diagonal transform along the last dimension."""
    n, k = h.shape[0], x.shape[-1]
    if k % n:
        raise ValueError(f"the last dimension ({k}) must be a multiple of the Hadamard size {n}")
    return (x.reshape(-1, n) @ h.to(device=x.device, dtype=x.dtype)).reshape(x.shape)
