"""Element formats: the fields of each number format and every property derived from them.

A float format is sign, E exponent bits and M mantissa bits with a bias:
value = (-1)^s * 2^(e - bias) * (1 + m / 2^M), and, for e = 0, the subnormal
(-1)^s * 2^(1 - bias) * (m / 2^M). What the top codes mean is the format's `special` rule:

- "ieee": the all-ones exponent is reserved: m = 0 is Inf, m != 0 is NaN (FP32, FP16, BF16, E5M2).
- "fn":   only the all-ones code (S.1111.111) is NaN, no Inf ("finite + NaN": E4M3, E8M0).
- "none": every code is a finite number (FP6 E2M3/E3M2, FP4 E2M1).
- "int":  integers, two's complement when signed (INT8, INT4, UINT8, UINT4).

E8M0 is the MX scale format: unsigned (no sign bit), no mantissa, no subnormals (code 0 is
2^-127, so it has no zero), 0xFF is NaN. Every property below is computed from the fields.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from quantlib.table import Table


@dataclass(frozen=True)
class Format:
    """One element format: its bit fields and special-value rule; properties follow from them."""

    name: str                 # short canonical name: "e4m3", "bf16", "int4", ...
    title: str                # name as printed in the book: "FP8 E4M3"
    bits: int
    ebits: int = 0            # exponent bits (0 for integers)
    mbits: int = 0            # mantissa (fraction) bits, or value bits for integers
    bias: int = 0
    signed: bool = True
    special: str = "none"     # "ieee", "fn", "none" or "int" (see module docstring)
    subnormals: bool = True   # False only for E8M0, whose exponent field 0 is 2^-bias
    torch_name: str | None = None    # torch dtype with the same bits, if torch has one
    ml_dtypes_name: str | None = None  # ml_dtypes dtype with the same bits, if any
    aliases: tuple[str, ...] = field(default=(), repr=False)

    # ---- kind -------------------------------------------------------------------------------
    @property
    def is_float(self) -> bool:
        return self.special != "int"

    @property
    def is_int(self) -> bool:
        return self.special == "int"

    @property
    def has_inf(self) -> bool:
        return self.special == "ieee"

    @property
    def has_nan(self) -> bool:
        return self.special in ("ieee", "fn")

    @property
    def default_overflow(self) -> str:
        """What encode does with values beyond max unless told: IEEE formats and E5M2 go to Inf
        ("nonfinite"); E4M3, FP6, FP4, E8M0 and integers saturate."""
        return "nonfinite" if self.special == "ieee" else "saturate"

    # ---- fields -> values ---------------------------------------------------------------------
    @property
    def max_code(self) -> int:
        """The magnitude code of the largest finite value (sign bit clear)."""
        if self.is_int:
            return 2 ** (self.bits - 1) - 1 if self.signed else 2 ** self.bits - 1
        all_ones = 2 ** (self.bits - self.signed) - 1
        if self.special == "ieee":   # top exponent reserved: exponent 2^E - 2, mantissa all ones
            return all_ones - 2 ** self.mbits
        if self.special == "fn":             # only the all-ones code is NaN
            return all_ones - 1
        return all_ones

    def magnitude(self, code: int) -> float:
        """Exact value of a float magnitude code (no sign bit), from the fields."""
        e, m = code >> self.mbits, code & (2 ** self.mbits - 1)
        if e == 0 and self.subnormals:
            return math.ldexp(m, 1 - self.bias - self.mbits)
        return math.ldexp(2 ** self.mbits + m, e - self.bias - self.mbits)

    @property
    def max(self) -> float:
        """Largest finite value."""
        return float(self.max_code) if self.is_int else self.magnitude(self.max_code)

    @property
    def min(self) -> float:
        """Most negative finite value (the smallest value for unsigned formats)."""
        if self.is_int:
            return float(-2 ** (self.bits - 1)) if self.signed else 0.0
        return -self.max if self.signed else self.magnitude(0)

    @property
    def min_normal(self) -> float:
        """Smallest positive normal value (1 for integers)."""
        if self.is_int:
            return 1.0
        return self.magnitude(2 ** self.mbits if self.subnormals else 0)

    @property
    def min_subnormal(self) -> float | None:
        """Smallest positive subnormal; None for formats without subnormals (E8M0, integers)."""
        if self.is_int or not self.subnormals or self.mbits == 0:
            return None
        return self.magnitude(1)

    @property
    def min_positive(self) -> float:
        """Smallest positive value: the min subnormal, else the min normal."""
        return self.min_subnormal if self.min_subnormal is not None else self.min_normal

    @property
    def eps(self) -> float:
        """Machine epsilon: the gap between 1 and the next value, 2^-M (1 for integers)."""
        return 1.0 if self.is_int else math.ldexp(1.0, -self.mbits)

    @property
    def num_codes(self) -> int:
        return 2 ** self.bits

    @property
    def num_finite(self) -> int:
        """Codes that decode to a finite number (+0 and -0 count as two)."""
        if self.special == "ieee":
            return self.num_codes - 2 * 2 ** self.mbits   # both signs of the top exponent
        if self.special == "fn":
            return self.num_codes - (2 if self.signed else 1)
        return self.num_codes

    @property
    def binades(self) -> float:
        """Dynamic range in binades (powers of two): log2(max / smallest positive value)."""
        return math.log2(self.max / self.min_positive)

    @property
    def decimal_digits(self) -> float:
        """Precision in decimal digits: log10 of 2^(M+1) significand steps (integers: of max)."""
        if self.is_int:
            return math.log10(self.max)
        return (self.mbits + 1) * math.log10(2)

    # ---- dtypes --------------------------------------------------------------------------------
    @property
    def torch_dtype(self):
        """The torch dtype with this format's bits, or None (torch has no FP6, no unpacked FP4)."""
        import torch
        return getattr(torch, self.torch_name) if self.torch_name else None

    @property
    def ml_dtype(self):
        """The numpy dtype (from ml_dtypes when needed) with this format's bits, or None."""
        if self.ml_dtypes_name is None:
            return None
        if self.ml_dtypes_name in ("float32", "float16", "int8", "uint8"):   # numpy's own
            return np.dtype(self.ml_dtypes_name)
        try:
            import ml_dtypes
        except ImportError:
            return None
        return np.dtype(getattr(ml_dtypes, self.ml_dtypes_name))

    def __str__(self) -> str:
        return self.title


def _float(name, title, e, m, bias, special, torch_name, mld, aliases, signed=True,
           subnormals=True):
    return Format(name, title, 1 + e + m if signed else e + m, e, m, bias, signed, special,
                  subnormals, torch_name, mld, aliases)


def _int(name, title, bits, signed, torch_name, mld, aliases):
    return Format(name, title, bits, 0, bits - signed, 0, signed, "int", False, torch_name, mld,
                  aliases)


FORMATS: dict[str, Format] = {f.name: f for f in [
    _float("fp32", "FP32", 8, 23, 127, "ieee", "float32", "float32", ("float32", "float", "f32")),
    _float("fp16", "FP16", 5, 10, 15, "ieee", "float16", "float16", ("float16", "half", "f16")),
    _float("bf16", "BF16", 8, 7, 127, "ieee", "bfloat16", "bfloat16", ("bfloat16",)),
    _float("e4m3", "FP8 E4M3", 4, 3, 7, "fn", "float8_e4m3fn", "float8_e4m3fn",
           ("fp8_e4m3", "fp8_e4m3fn", "float8_e4m3fn", "e4m3fn")),
    _float("e5m2", "FP8 E5M2", 5, 2, 15, "ieee", "float8_e5m2", "float8_e5m2",
           ("fp8_e5m2", "float8_e5m2")),
    _float("e2m3", "FP6 E2M3", 2, 3, 1, "none", None, "float6_e2m3fn",
           ("fp6_e2m3", "float6_e2m3fn", "e2m3fn")),
    _float("e3m2", "FP6 E3M2", 3, 2, 3, "none", None, "float6_e3m2fn",
           ("fp6_e3m2", "float6_e3m2fn", "e3m2fn")),
    _float("e2m1", "FP4 E2M1", 2, 1, 1, "none", None, "float4_e2m1fn",
           ("fp4_e2m1", "fp4", "float4_e2m1fn", "e2m1fn", "float4_e2m1fn_x2")),
    _float("e8m0", "E8M0", 8, 0, 127, "fn", "float8_e8m0fnu", "float8_e8m0fnu",
           ("fp8_e8m0", "float8_e8m0fnu", "e8m0fnu", "ue8m0"), signed=False, subnormals=False),
    _int("int8", "INT8", 8, True, "int8", "int8", ("i8",)),
    _int("int4", "INT4", 4, True, None, "int4", ("i4",)),
    _int("uint8", "UINT8", 8, False, "uint8", "uint8", ("u8",)),
    _int("uint4", "UINT4", 4, False, None, "uint4", ("u4",)),
]}

_BY_NAME = {a: f for f in FORMATS.values() for a in (f.name, *f.aliases)}


def get_format(fmt) -> Format:
    """Look a format up by name ("e4m3", "fp8_e4m3", "float8_e4m3fn", "torch.bfloat16"), by a torch
    or numpy/ml_dtypes dtype, or pass a Format through."""
    if isinstance(fmt, Format):
        return fmt
    if isinstance(fmt, str):
        key = fmt.strip().lower().replace("-", "_").replace(" ", "_")
        key = key.removeprefix("torch.").removeprefix("ml_dtypes.").removeprefix("np.")
        if key in _BY_NAME:
            return _BY_NAME[key]
        raise ValueError(f"unknown format {fmt!r}: use one of {sorted(FORMATS)} "
                         f"(or an alias such as 'fp8_e4m3', a torch or ml_dtypes dtype)")
    # torch.dtype prints as "torch.float8_e4m3fn"; numpy/ml_dtypes dtypes and scalar types by name
    name = str(fmt) if type(fmt).__module__ == "torch" else None
    if name is None:
        try:
            name = np.dtype(fmt).name
        except TypeError:
            raise TypeError(f"cannot read a format from {fmt!r} ({type(fmt).__name__}): pass a "
                            f"name such as 'e4m3', a Format, or a torch/numpy dtype") from None
    try:
        return get_format(name)
    except ValueError:
        raise ValueError(f"dtype {fmt!r} is not one of quantlib's formats {sorted(FORMATS)}") \
            from None


def _bits_str(code: int, f: Format) -> str:
    b = format(code, f"0{f.bits}b")
    if f.is_int:
        return b
    s = b[:1] if f.signed else ""
    rest = b[1:] if f.signed else b
    return ".".join(p for p in (s, rest[:f.ebits], rest[f.ebits:]) if p)


def value_table(fmt) -> Table:
    """Every code of a format of <= 8 bits: code, bits (S.E.M), fields and value (NaN/Inf too)."""
    f = get_format(fmt)
    if f.bits > 8:
        raise ValueError(f"{f.title} has {f.num_codes:,} codes: value_table lists formats of at "
                         f"most 8 bits (e.g. 'e4m3', 'e2m1', 'int4')")
    from quantlib.codecs import decode
    codes = np.arange(f.num_codes, dtype=np.uint8)
    values = decode(codes, f)
    cols = ["code", "bits", "sign", "exponent", "mantissa", "value", "class"]
    t = Table(cols, title=f"{f.title}: all {f.num_codes} codes", digits=6)
    for c, v in zip(codes.tolist(), values.tolist()):
        sign = (c >> (f.bits - 1)) if f.signed else 0
        e, m = ((c >> f.mbits) & (2 ** f.ebits - 1), c & (2 ** f.mbits - 1)) if f.is_float \
            else (None, None)
        v = int(v) if f.is_int else v
        t.append([f"0x{c:02X}", _bits_str(c, f), sign, e, m, v, _value_class(f, e, v)])
    return t


def _value_class(f: Format, e, v: float) -> str:
    if f.is_int:
        return "zero" if v == 0 else "integer"
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "Inf"
    if v == 0:
        return "zero"
    if f.is_float and e == 0 and f.subnormals:
        return "subnormal"
    return "normal" if f.is_float else "integer"


def compare_formats(formats=("fp32", "fp16", "bf16", "e4m3", "e5m2", "e2m1")) -> Table:
    """The seed's comparison table, computed: bits, exponent and mantissa bits, max, smallest
    positive value, dynamic range in binades, precision in decimal digits, memory vs FP32."""
    cols = ["format", "bits", "exponent", "mantissa", "max", "min positive", "binades",
            "decimal digits", "memory vs FP32"]
    t = Table(cols, title="Number formats compared", digits=3)
    for name in formats:
        f = get_format(name)
        t.append([f.title, f.bits, f.ebits, f.mbits, f.max, f.min_positive, f.binades,
                  f.decimal_digits, f.bits / 32])
    return t
