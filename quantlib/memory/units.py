"""Bytes as people write them: decimal GB (10^9 bytes, the seed's "28 GB") or binary GiB (2^30)."""
from __future__ import annotations

GB = 10**9
GiB = 2**30
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": GB, "TB": 10**12,
          "KiB": 2**10, "MiB": 2**20, "GiB": GiB, "TiB": 2**40}


def to_unit(nbytes: float, unit: str = "GB") -> float:
    """`nbytes` in `unit`: "GB" is decimal (10^9 bytes), "GiB" binary (2^30 bytes)."""
    if unit not in _UNITS:
        raise ValueError(f"unknown unit {unit!r}; use one of {list(_UNITS)} (GB = 10^9 bytes, "
                         f"GiB = 2^30 bytes)")
    return nbytes / _UNITS[unit]


def format_bytes(nbytes: float, unit: str = "GB", digits: int = 2) -> str:
    """"26.95 GB" (decimal) or, with unit="GiB", "25.10 GiB" (binary)."""
    return f"{to_unit(nbytes, unit):.{digits}f} {unit}"
