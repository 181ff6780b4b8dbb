"""Sub-byte packing along the last dimension: 4-bit codes two per byte, 6-bit four per 3 bytes.

Nibbles follow TransformerEngine, torchao, ModelOpt and triton.tools.mxfp: element 2i in the low
nibble, element 2i+1 in the high one. 6-bit codes are a little-endian bit stream: four codes
c0..c3 make the 24-bit word c0 | c1 << 6 | c2 << 12 | c3 << 18, stored low byte first.
numpy in -> numpy out, torch in -> torch out (same device); codes are uint8.
"""
from __future__ import annotations

import numpy as np
import torch


def _as_uint8(codes, what: str) -> tuple[torch.Tensor, bool]:
    is_numpy = not isinstance(codes, torch.Tensor)
    if is_numpy:
        a = np.ascontiguousarray(codes)               # negative strides: torch refuses them
        if a.dtype != np.uint8:
            raise TypeError(f"{what} needs uint8 codes (as quantlib.encode returns), got "
                            f"{type(codes).__name__} of dtype {a.dtype}")
        c = torch.from_numpy(a if a.flags.writeable else a.copy())   # read-only: torch warns
    else:
        c = codes
    if c.dtype != torch.uint8:
        raise TypeError(f"{what} needs uint8 codes (as quantlib.encode returns), got {c.dtype}")
    if c.dim() == 0:
        raise ValueError(f"{what} needs at least one dimension to pack along")
    return c, is_numpy


def _check_width(c: torch.Tensor, bits: int, what: str) -> None:
    if c.numel() and int(c.max()) >= 2 ** bits:   # one reduction
        raise ValueError(f"{what}: some codes do not fit in {bits} bits (max {int(c.max())}); "
                         f"encode to a {bits}-bit format first")


def _out(t: torch.Tensor, is_numpy: bool):
    return t.numpy() if is_numpy else t


def pack_nibbles(codes):
    """(..., K) 4-bit codes in uint8 -> (..., K/2) bytes, element 2i in the low nibble."""
    c, is_numpy = _as_uint8(codes, "pack_nibbles")
    if c.shape[-1] % 2:
        raise ValueError(f"pack_nibbles packs pairs along the last dimension, which has odd "
                         f"length {c.shape[-1]}: pad it to an even length first")
    _check_width(c, 4, "pack_nibbles")
    return _out(c[..., 0::2] | (c[..., 1::2] << 4), is_numpy)


def unpack_nibbles(packed):
    """(..., K/2) bytes -> (..., K) 4-bit codes in uint8 (low nibble first)."""
    p, is_numpy = _as_uint8(packed, "unpack_nibbles")
    out = torch.stack([p & 0x0F, p >> 4], dim=-1)
    return _out(out.reshape(*p.shape[:-1], 2 * p.shape[-1]), is_numpy)


def pack_6bit(codes):
    """(..., K) 6-bit codes (FP6 E2M3/E3M2) in uint8 -> (..., 3K/4) bytes; K a multiple of 4."""
    c, is_numpy = _as_uint8(codes, "pack_6bit")
    if c.shape[-1] % 4:
        raise ValueError(f"pack_6bit packs groups of 4 along the last dimension, whose length "
                         f"{c.shape[-1]} is not a multiple of 4: pad it first")
    _check_width(c, 6, "pack_6bit")
    c0, c1, c2, c3 = (c[..., i::4] for i in range(4))
    b0 = c0 | (c1 << 6)                 # c0's 6 bits, then c1's low 2
    b1 = (c1 >> 2) | (c2 << 4)          # c1's high 4, then c2's low 4
    b2 = (c2 >> 4) | (c3 << 2)          # c2's high 2, then c3's 6
    out = torch.stack([b0, b1, b2], dim=-1)
    return _out(out.reshape(*c.shape[:-1], 3 * c.shape[-1] // 4), is_numpy)


def unpack_6bit(packed):
    """(..., 3K/4) bytes -> (..., K) 6-bit codes in uint8."""
    p, is_numpy = _as_uint8(packed, "unpack_6bit")
    if p.shape[-1] % 3:
        raise ValueError(f"unpack_6bit reads groups of 3 bytes, but the last dimension has "
                         f"length {p.shape[-1]}")
    b0, b1, b2 = (p[..., i::3] for i in range(3))
    c0 = b0 & 0x3F
    c1 = (b0 >> 6) | ((b1 & 0x0F) << 2)
    c2 = (b1 >> 4) | ((b2 & 0x03) << 4)
    c3 = b2 >> 2
    out = torch.stack([c0, c1, c2, c3], dim=-1)
    return _out(out.reshape(*p.shape[:-1], 4 * p.shape[-1] // 3), is_numpy)
