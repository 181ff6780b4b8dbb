"""Tables that take numbers apart: the fields of one value in every format, each format's special
values, a grid of all 8-bit codes, rounding modes and overflow policies side by side.

The book's chapters on formats and rounding show these; every value in them comes from
`quantlib.codecs` (ml_dtypes and torch appear only in `compare_casts`, to show where they differ).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from quantlib.codecs import decode, encode, round_to_format
from quantlib.formats import Format, get_format
from quantlib.table import Table

ANATOMY_FORMATS = ("fp32", "fp16", "bf16", "e4m3", "e5m2", "e2m3", "e3m2", "e2m1", "e8m0")


def fields(fmt) -> list[tuple[str, int]]:
    """The bit fields of a format, most significant first: ("sign", 1), ("exponent", E),
    ("mantissa", M); integers are one ("integer", bits) field (two's complement)."""
    f = get_format(fmt)
    if f.is_int:
        return [("integer", f.bits)]
    out = [("sign", 1)] if f.signed else []
    out.append(("exponent", f.ebits))
    if f.mbits:
        out.append(("mantissa", f.mbits))
    return out


def code_of(x: float, fmt, **kw) -> int:
    """The bit code of one number in a format (quantlib's encode, RNE unless told)."""
    codes = encode(np.array([x], np.float32), get_format(fmt), **kw)
    return int(codes.astype(np.int64)[0])


def value_of(code: int, fmt) -> float:
    """The value of one bit code (quantlib's decode)."""
    f = get_format(fmt)
    dt = np.uint8 if f.bits <= 8 else np.uint16 if f.bits == 16 else np.uint32
    return float(decode(np.array([code], dt), f)[0])


def split_code(code: int, fmt) -> dict[str, int]:
    """A code's fields as integers: {"sign": s, "exponent": e, "mantissa": m} (those it has)."""
    f = get_format(fmt)
    out, shift = {}, f.bits
    for name, n in fields(f):
        shift -= n
        out[name] = (code >> shift) & (2 ** n - 1)
    return out


def _formula(parts: dict[str, int], f: Format) -> str:
    """The code's value written as the formula (-1)^s * 2^(e-bias) * (1 + m/2^M)."""
    sign = "-" if parts.get("sign") else "+"
    e, m = parts["exponent"], parts.get("mantissa", 0)
    if f.special == "ieee" and e == 2 ** f.ebits - 1 or f.special == "fn" and \
            all(v == 2 ** n - 1 for (k, n), v in zip(fields(f), parts.values()) if k != "sign"):
        return "special (Inf/NaN)"
    if f.mbits == 0:
        return f"{sign}2^{e - f.bias}"
    if e == 0 and f.subnormals:
        return f"{sign}2^{1 - f.bias} x (0 + {m}/{2 ** f.mbits})"
    return f"{sign}2^{e - f.bias} x (1 + {m}/{2 ** f.mbits})"


def take_apart(x: float, formats=ANATOMY_FORMATS) -> Table:
    """One number in every float format, field by field: the sign, exponent and mantissa bits
    of its nearest code (RNE, default overflow), the formula they spell, the stored value and
    the error."""
    cols = ["format", "sign", "exponent", "mantissa", "formula", "stored value", "error",
            "rel. error"]
    t = Table(cols, title=f"{x} taken apart", digits=6)
    for name in formats:
        f = get_format(name)
        if f.is_int:
            raise ValueError(f"take_apart shows float fields; {f.title} is an integer format "
                             f"(integers need a scale: see the chapter on scaling)")
        code = code_of(x, f)
        parts = split_code(code, f)
        stored = value_of(code, f)
        bits = {k: format(v, f"0{n}b") for (k, n), v in zip(fields(f), parts.values())}
        err = stored - x if math.isfinite(stored) else math.nan
        t.append([f.title, bits.get("sign", ""), bits["exponent"], bits.get("mantissa", ""),
                  _formula(parts, f), stored, err, abs(err) / abs(x) if x else math.nan])
    return t


def _code_value(x: float, f: Format) -> str:
    code = code_of(x, f)
    v = value_of(code, f)
    return f"0x{code:0{-(-f.bits // 4)}X} = {v:.5g}"


def special_values(formats=ANATOMY_FORMATS) -> Table:
    """What each format does with 0, -0, Inf and NaN (encode with its default overflow policy;
    "no code" where it has no NaN), its max, min normal and min subnormal (as code = value), and
    how many Inf and NaN codes it has."""
    cols = ["format", "0", "-0", "Inf", "NaN", "max", "min normal", "min subnormal", "Inf codes",
            "NaN codes"]
    t = Table(cols, title="Special values: code = value")
    for name in formats:
        f = get_format(name)
        inf_codes = 2 if f.has_inf else 0
        row = [f.title] + [_code_value(v, f) for v in (0.0, -0.0, math.inf)]
        row.append(_code_value(math.nan, f) if f.has_nan else "no code")   # encode raises
        row += [_code_value(v, f) for v in (f.max, f.min_normal)]
        row.append(_code_value(f.min_subnormal, f) if f.min_subnormal else "none")
        row += [inf_codes, f.num_codes - f.num_finite - inf_codes]
        t.append(row)
    return t


def _short(v: float) -> str:
    """A value in at most 8 characters, sign included, for 8-bit formats' grids: whole numbers
    written out (57344, not 5.734e+04), values below 0.01 to 3 significant digits with a short
    exponent (-1.95e-3), the rest to 4 (0.1094)."""
    if not math.isfinite(v) or v == 0:
        return f"{v:g}"
    if v == int(v) and abs(v) < 1e6:
        return str(int(v))
    text = f"{v:.2e}" if abs(v) < 0.01 else f"{v:.4g}"
    return text.replace("e-0", "e-").replace("e+0", "e+")


def code_grid(fmt, ncol: int = 16) -> Table:
    """Every code of a format of <= 8 bits as a grid, each cell the decoded value to 4
    significant digits. With `ncol=16`: row = high bits, column = low 4 bits (so E4M3's 256
    codes fit in 16 x 16). With fewer columns (8, 4, 2) the grid keeps every code in a narrower
    table: each row holds `ncol` consecutive codes, labelled by the first, and the column header
    is what to add to it (code = row + column), and each value takes at most 8 characters
    (below 0.01, 3 significant digits)."""
    f = get_format(fmt)
    if f.bits > 8:
        raise ValueError(f"code_grid lists formats of at most 8 bits, not {f.title} "
                         f"({f.num_codes:,} codes)")
    if ncol not in (2, 4, 8, 16):
        raise ValueError(f"ncol must be 16, 8, 4 or 2 (a power of two, so each row starts at a "
                         f"round code), not {ncol!r}")
    values = decode(np.arange(f.num_codes, dtype=np.uint8), f).tolist()
    ncol = min(ncol, f.num_codes)
    if ncol == 16:
        t = Table(["code"] + [f"x{c:X}" for c in range(ncol)],
                  title=f"{f.title}: value of each code (row = high bits, column = low 4 bits)")
        label = "{:X}x".format
    else:
        t = Table(["code"] + [f"+{c}" for c in range(ncol)],
                  title=f"{f.title}: value of each code (code = row + column)")
        digits = -(-f.bits // 4)
        label = lambda r: f"0x{r * ncol:0{digits}X}"   # noqa: E731
    for r in range(f.num_codes // ncol):
        cell = "{:.4g}".format if ncol == 16 else _short
        t.append([label(r)] + [cell(v) for v in values[r * ncol:(r + 1) * ncol]])
    return t


def rounding_table(values, fmt, modes=("rne", "rna", "rtz"), draws: int = 0,
                   seed: int = 0) -> Table:
    """Each value rounded to a format under each rounding mode; with `draws` > 0 a last column
    holds the mean of that many stochastic roundings (it tends to the value itself)."""
    f = get_format(fmt)
    x = torch.tensor([float(v) for v in values], dtype=torch.float32)
    cols = ["x"] + [m.upper() for m in modes]
    rounded = [round_to_format(x, f, rounding=m).tolist() for m in modes]
    if draws:
        g = torch.Generator().manual_seed(seed)
        many = x.repeat(draws, 1)
        rounded.append(round_to_format(many, f, rounding="stochastic", generator=g)
                       .double().mean(0).tolist())
        cols.append(f"stochastic, mean of {draws}")
    return Table(cols, [[v, *r] for v, *r in zip(x.tolist(), *rounded)],
                 title=f"Rounding to {f.title}", digits=5)


def compare_casts(values, fmt) -> Table:
    """One format's overflow and rounding, four ways: quantlib's two overflow policies,
    ml_dtypes' cast and torch's `.to(dtype)` (a column is empty where a library or a policy
    does not exist for the format)."""
    f = get_format(fmt)
    x = np.array([float(v) for v in values], dtype=np.float32)
    cols = ["x", "quantlib saturate", "quantlib nonfinite", "ml_dtypes", "torch"]
    quant = [round_to_format(x, f, overflow=o).tolist() if o == "saturate" or f.has_nan
             else [None] * len(x) for o in ("saturate", "nonfinite")]   # FP6/FP4: no Inf, no NaN
    ml = [None] * len(x)
    if f.ml_dtype is not None:
        with np.errstate(all="ignore"):     # overflow casts warn in numpy; the result is the point
            ml = x.astype(f.ml_dtype).astype(np.float32).tolist()
    th = [None] * len(x)
    if f.torch_dtype is not None:
        th = torch.from_numpy(x).to(f.torch_dtype).float().tolist()
    return Table(cols, [list(r) for r in zip(x.tolist(), *quant, ml, th)],
                 title=f"{f.title}: casts compared", digits=4)


def _power_of_two(s: float) -> str | float:
    """A scale as "2^k" when it is a power of two (how loss scales are chosen), else as is."""
    k = math.log2(s)
    return f"2^{k:g}" if k == int(k) else float(s)


def range_report(values, formats=("fp16", "bf16"), scales=(1.0,)) -> Table:
    """Where values land when stored in each format after multiplying by each scale (loss
    scaling): the share flushed to zero, kept only as subnormals, overflowed (rounded past the
    max: Inf/NaN, or clamped where the format saturates), and the median relative error of the
    rest once divided back by the scale."""
    if any(not s > 0 for s in scales):
        raise ValueError(f"scales must be positive (loss scales such as 2**12), got {scales}")
    x = torch.as_tensor(values, dtype=torch.float32).flatten()
    x = x[x != 0]
    cols = ["format", "scale", "flushed to 0 (%)", "subnormal (%)", "overflow (%)",
            "median rel. error"]
    t = Table(cols, title="Where the values land", digits=2)
    for name in formats:
        f = get_format(name)
        for s in scales:
            q = round_to_format(x * s, f)
            zero = q == 0
            if f.has_nan:       # overflow is decided after rounding: ask the nonfinite policy
                over = ~torch.isfinite(round_to_format(x * s, f, overflow="nonfinite"))
            else:               # no Inf/NaN to ask (FP6, FP4, INT): beyond max is clamped
                over = (x * s).abs() > f.max
            sub = (q != 0) & (q.abs() < f.min_normal)
            ok = ~zero & ~over
            rel = ((q[ok] / s - x[ok]).abs() / x[ok].abs()).median().item() if ok.any() \
                else math.nan
            t.append([f.title, _power_of_two(s), 100 * zero.float().mean().item(),
                      100 * sub.float().mean().item(), 100 * over.float().mean().item(), rel])
    return t
