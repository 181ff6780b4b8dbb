"""The quantize kernels' E2M1 encoder (`encode_e2m1_fast` in quantlib/kernels/_quantize.py) as a
numpy twin, against seven round-to-nearest-even threshold compares, on every one of the 2^32
float32 bit patterns (about 2.5 minutes on one core). The unit tests run the Triton function
itself against ml_dtypes on a dense sweep; this closes the rest of the input space once.

    .venv/bin/python scripts/check_e2m1_encoder.py
"""
import sys
import time

import numpy as np


def by_compares(y):
    a = np.abs(y)
    c = ((a > 0.25).astype(np.int32) + (a >= 0.75) + (a > 1.25) + (a >= 1.75) + (a > 2.5)
         + (a >= 3.5) + (a > 5.0))
    return c | ((y.view(np.int32) >> 28) & 8)


def by_bits(y):
    """encode_e2m1_fast, operation for operation."""
    b = y.view(np.int32)
    a = b & 0x7FFFFFFF
    a = np.where(a > 0x7F800000, 0, a)
    a = np.minimum(a, 0x40C00000)
    n = ((a + 0x1FFFFF + ((a >> 22) & 1)) >> 22) - 252
    s = (a.view(np.float32) + np.float32(4194304.0)).view(np.int32) - 0x4A800000
    return np.where(a < 0x3F800000, s, n) | ((b >> 28) & 8)


def main() -> int:
    t0, bad, step = time.time(), 0, 1 << 26
    for lo in range(0, 1 << 32, step):
        y = np.arange(lo, lo + step, dtype=np.uint64).astype(np.uint32).view(np.float32)
        with np.errstate(all="ignore"):
            bad += int((by_compares(y) != by_bits(y)).sum())
    print(f"2^32 inputs, {bad} differ ({time.time() - t0:.0f} s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
