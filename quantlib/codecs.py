"""Bit-exact codecs: float32 values <-> the bit codes of any format in `quantlib.formats`.

`encode` rounds (RNE by default, or RTZ, RNA, stochastic), then handles overflow ("saturate" to
+-max, or "nonfinite": NaN for E4M3, Inf for E5M2 and IEEE formats), then packs sign, exponent
and mantissa. `decode` goes back to float32; `round_to_format` is decode(encode(x)), the value a
fake-quantized tensor holds. numpy in -> numpy out, torch in -> torch out (same device).

The readable reference is `_encode_explicit` / `_decode_explicit`: integer arithmetic on the
float32 bits, pure torch ops, the same on CPU and CUDA. `method="auto"` (the default) takes a
fast path from `quantlib._codecs_fast` where one gives the same codes (torch's casts, checked once
per device; a 65,536-entry table; torch.round for integers); tests prove both paths agree bit
for bit, and `method="explicit"` forces the reference. Stochastic rounding always runs the
reference. Checks that need the data (NaN into a format without NaN, E8M0 negatives, codes wider
than a sub-byte format) cost one reduction, which on a GPU is a device sync.

Policies (for inputs a format cannot hold):
- NaN into a format with NaN gives its NaN (sign kept); into one without (FP6, FP4, INT) raises.
- Inf: "saturate" gives +-max; "nonfinite" gives Inf, or NaN in E4M3/E8M0.
- "nonfinite" for a format with neither Inf nor NaN (FP6, FP4, INT) raises.
- RTZ never rounds a finite value up to Inf/NaN: it gives +-max (IEEE 754's rule), so it never
  increases a magnitude.
- Inputs are converted to float32 first; float64 is rounded to odd on the way (formats narrower
  than FP32), so the result is the correct rounding of the float64 value itself.
- E8M0 (unsigned, no zero): 0, -0 and positives below 2^-127 give code 0x00 (2^-127, the smallest
  scale, as torch does); negative values raise (ml_dtypes gives NaN). With no mantissa every
  significand is odd, so RNE ties (1.5 * 2^k) round up, as in ml_dtypes and torch. Between 2^-127
  and 2^-126 we round to the nearest; ml_dtypes and torch send all of (2^-127, 2^-126) up.
- Integers: round with the rounding mode, then saturate to [min, max]; codes are two's
  complement in the low bits (INT4 -1 is 0x0F).
"""
from __future__ import annotations

import numpy as np
import torch

from quantlib import _codecs_fast
from quantlib.formats import Format, get_format

ROUNDINGS = ("rne", "rtz", "rna", "stochastic")
OVERFLOWS = ("saturate", "nonfinite")
_RAND_BITS = 62  # random bits per element for stochastic rounding


# ---- entry points ---------------------------------------------------------------------------
def encode(x, fmt, rounding: str = "rne", overflow: str | None = None, generator=None,
           method: str = "auto"):
    """Bit codes of `x` in `fmt`: numpy uint8/uint16/uint32 or torch uint8/int16/int32.

    rounding: "rne" (default), "rtz", "rna" or "stochastic" (needs `generator`: a
    torch.Generator on x's device for tensors, a numpy Generator for arrays).
    overflow: "saturate" or "nonfinite"; None takes the format's default (`fmt.default_overflow`).
    method: "auto" (native casts where they agree bit for bit) or "explicit" (the reference).
    """
    f = get_format(fmt)
    overflow = _check_policy(f, rounding, overflow, generator, method)
    t, is_numpy = _as_float32(x, odd=f.bits < 32)
    if not is_numpy and t.is_meta:
        raise ValueError("encode: x is on the 'meta' device (shapes, no values): codes depend on "
                         "the values; move it to 'cpu' or 'cuda' first")
    _check_nan(t, f)
    rand = _random_bits(t, generator, is_numpy) if rounding == "stochastic" else None
    codes = _codecs_fast.encode(t, f, rounding, overflow) if method == "auto" and rand is None \
        else None
    if codes is None:
        codes = _as_code_dtype(_encode_explicit(t, f, rounding, overflow, rand), f)
    return _to_numpy_codes(codes, f) if is_numpy else codes


def decode(codes, fmt, method: str = "auto"):
    """float32 values of bit codes (as `encode` returns them; sub-byte codes in the low bits).

    NaN codes decode to a NaN of the code's sign; its payload is not specified."""
    f = get_format(fmt)
    if method not in ("auto", "explicit"):
        raise ValueError(f"method must be 'auto' or 'explicit', got {method!r}")
    c, is_numpy = _as_code_tensor(codes, f)
    out = _codecs_fast.decode(c, f) if method == "auto" else None
    if out is None:
        c32 = c.to(torch.int32)
        out = _decode_explicit(c32 & (2 ** f.bits - 1) if f.bits < 32 else c32, f)
    return out.numpy() if is_numpy else out


def round_to_format(x, fmt, rounding: str = "rne", overflow: str | None = None, generator=None,
                    method: str = "auto"):
    """decode(encode(x)): the float32 value `x` takes in `fmt` (what fake quantization uses)."""
    return decode(encode(x, fmt, rounding, overflow, generator, method), fmt, method)


# ---- checks and conversions -----------------------------------------------------------------
def _check_policy(f: Format, rounding, overflow, generator, method) -> str:
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
    if method not in ("auto", "explicit"):
        raise ValueError(f"method must be 'auto' or 'explicit', got {method!r}")
    if rounding == "stochastic" and generator is None:
        raise ValueError("rounding='stochastic' needs a seeded generator: "
                         "torch.Generator(device=x.device).manual_seed(0) for tensors, "
                         "numpy.random.default_rng(0) for arrays")
    overflow = f.default_overflow if overflow is None else overflow
    if overflow not in OVERFLOWS:
        raise ValueError(f"overflow must be one of {OVERFLOWS} or None, got {overflow!r}")
    if overflow == "nonfinite" and not f.has_nan:
        raise ValueError(f"{f.title} has neither Inf nor NaN, so overflow='nonfinite' cannot be "
                         f"encoded: use overflow='saturate'")
    return overflow


def _as_float32(x, odd: bool = False) -> tuple[torch.Tensor, bool]:
    """x as a float32 tensor (numpy arrays shared, not copied, when already float32).

    float64 input: with `odd`, rounded to odd (see `float64_to_float32_odd`), so that encoding
    it into a format narrower than FP32 rounds the float64 value once, correctly; otherwise to
    nearest. Complex, string and object input is refused rather than coerced."""
    if isinstance(x, torch.Tensor):
        if x.dtype.is_complex:
            raise TypeError(f"encode needs real numbers, got {x.dtype}: take x.real or x.abs()")
        if x.dtype == torch.float64 and odd:
            return float64_to_float32_odd(x), False
        return x.to(torch.float32), False
    a = np.asarray(x, order="C")                  # keeps 0-d arrays 0-d
    if a.dtype.kind in "OUScMm":                  # objects, strings, complex, dates
        raise TypeError(f"encode needs numbers (a numpy array or a torch tensor of real "
                        f"numbers), got {type(x).__name__} of dtype {a.dtype}")
    if a.dtype == np.float64 and odd:
        return float64_to_float32_odd(torch.from_numpy(_writeable(a))), True
    return torch.from_numpy(_writeable(a.astype(np.float32, copy=False))), True


def float64_to_float32_odd(x: torch.Tensor) -> torch.Tensor:
    """float64 -> float32 rounded to odd: toward zero, then the last bit set if any bits were
    lost. A float32 with 24 significant bits rounded this way keeps enough of the float64 value
    (the lost part only as a sticky bit) that rounding it again to any format of at most 22
    significant bits, in any rounding mode, gives that format's correct rounding of the float64
    value: no double-rounding error (Boldo and Melquiond, 2008). Finite values never become Inf
    (beyond FLT_MAX they give FLT_MAX, whose last bit is set)."""
    t = x.to(torch.float32)                                  # to nearest
    bits = t.view(torch.int32)
    back = t.double().abs() > x.abs()                        # rounded away from zero (Inf too)
    bits = torch.where(back, bits - 1, bits)                 # one ulp toward zero: the magnitude
    t = bits.view(torch.float32)                             # bits sit below the sign bit
    inexact = (t.double() != x) & ~torch.isnan(x)
    return torch.where(inexact, bits | 1, bits).view(torch.float32)


def _writeable(a: np.ndarray) -> np.ndarray:
    """torch.from_numpy warns on read-only arrays (np.broadcast_to, ...): copy those."""
    return a if a.flags.writeable else a.copy()


def _check_nan(t: torch.Tensor, f: Format) -> None:
    # Only for formats without NaN: one sum (a sum is NaN when any element is), then a
    # full look only if the sum is NaN. On a GPU this is a device sync.
    if not f.has_nan and bool(torch.isnan(t.sum())) and bool(torch.isnan(t).any()):
        raise ValueError(f"the input has NaN but {f.title} has no NaN code: replace NaNs first "
                         f"(e.g. torch.nan_to_num / numpy.nan_to_num) or use a format with NaN "
                         f"(E4M3, E5M2, BF16)")
    if f.name == "e8m0" and bool((t < 0).any()):
        raise ValueError("E8M0 is unsigned (a power-of-two scale): it has no code for negative "
                         "values; encode abs(x) or amax instead")


def _random_bits(t: torch.Tensor, generator, is_numpy: bool) -> torch.Tensor:
    if is_numpy:
        if not isinstance(generator, np.random.Generator):
            raise TypeError("stochastic rounding of a numpy array needs a numpy Generator "
                            f"(numpy.random.default_rng(seed)), got {type(generator).__name__}")
        r = generator.integers(0, 2 ** _RAND_BITS, size=tuple(t.shape), dtype=np.int64)
        return torch.from_numpy(r)
    if not isinstance(generator, torch.Generator):
        raise TypeError("stochastic rounding of a tensor needs a torch.Generator on its device "
                        f"(torch.Generator(device=x.device).manual_seed(seed)), got "
                        f"{type(generator).__name__}")
    return torch.randint(0, 2 ** _RAND_BITS, t.shape, generator=generator, device=t.device,
                         dtype=torch.int64)


def _as_code_dtype(c: torch.Tensor, f: Format) -> torch.Tensor:
    """int32 codes -> the contract's torch code dtype: uint8 (<= 8 bits), int16 or int32."""
    return c.to({8: torch.uint8, 16: torch.int16, 32: torch.int32}[max(8, f.bits)])


def _to_numpy_codes(c: torch.Tensor, f: Format) -> np.ndarray:
    """torch codes -> numpy uint8 / uint16 / uint32 (same bits)."""
    return c.numpy().view({8: np.uint8, 16: np.uint16, 32: np.uint32}[max(8, f.bits)])


def _as_code_tensor(codes, f: Format) -> tuple[torch.Tensor, bool]:
    """Codes as a torch integer tensor (numpy uint16/uint32 viewed as int16/int32), checked."""
    if isinstance(codes, torch.Tensor):
        is_numpy, c = False, codes
    else:
        is_numpy, a = True, np.asarray(codes, order="C")
        if a.dtype.kind not in "iu":
            raise TypeError(f"decode needs integer codes (as encode returns), got {a.dtype}")
        if not a.dtype.isnative:                  # big-endian codes: torch takes native order
            a = a.astype(a.dtype.newbyteorder("="))
        if a.dtype in (np.uint16, np.uint32):
            a = a.view({np.dtype(np.uint16): np.int16, np.dtype(np.uint32): np.int32}[a.dtype])
        c = torch.from_numpy(_writeable(a))
    if c.dtype.is_floating_point or c.dtype.is_complex or c.dtype == torch.bool:
        raise TypeError(f"decode needs integer codes (as encode returns), got {c.dtype}")
    if c.dtype not in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64):
        c = c.to(torch.int64)
    if f.bits < 8 and c.numel() and (int(c.min()) < 0 or int(c.max()) >= 2 ** f.bits):
        raise ValueError(f"{f.title} codes are {f.bits}-bit but some have higher bits set (or are "
                         f"negative): unpack packed bytes first (quantlib.unpack_nibbles)")
    # wider integer dtypes than the code needs: values must fit the format's bits (as unsigned,
    # or as the signed view encode returns for 16 and 32 bits)
    if f.bits >= 8 and c.numel() and c.element_size() * 8 > f.bits and (
            int(c.min()) < -2 ** (f.bits - 1) or int(c.max()) >= 2 ** f.bits):
        raise ValueError(f"{f.title} codes are {f.bits}-bit, but some of these {c.dtype} codes "
                         f"are outside [-2^{f.bits - 1}, 2^{f.bits}): pass the codes encode "
                         f"returned")
    return c, is_numpy


# ---- the explicit reference ---------------------------------------------------------------------
def _round_shift(sig: torch.Tensor, shift: torch.Tensor, rounding: str, rand) -> torch.Tensor:
    """sig / 2^shift rounded to an integer (sig < 2^24, shift >= 0): every encoder's core."""
    if rounding == "stochastic":
        # add uniform random bits below the cut: rounds up with probability rem / 2^shift
        s = shift.clamp(max=_RAND_BITS).to(torch.int64)
        return ((sig.to(torch.int64) + (rand >> (_RAND_BITS - s))) >> s).to(torch.int32)
    s = shift.clamp(max=30)          # past 2^30 the quotient is 0 whatever the rounding
    q = sig >> s
    twice_rem = (sig - (q << s)) << 1   # compare 2*rem with 2^s: no half-ulp constant needed
    one = torch.ones_like(s) << s
    if rounding == "rtz":
        return q
    if rounding == "rna":
        return q + (twice_rem >= one).to(torch.int32) * (twice_rem > 0).to(torch.int32)
    up = (twice_rem > one) | ((twice_rem == one) & ((q & 1) == 1))   # ties to the even quotient
    return q + up.to(torch.int32)


def _encode_explicit(x: torch.Tensor, f: Format, rounding: str, overflow: str,
                     rand=None) -> torch.Tensor:
    """The reference encoder: integer arithmetic on the float32 bits. Returns int32 codes."""
    if f.name == "fp32" and overflow == "nonfinite":
        return x.view(torch.int32).clone()      # encoding float32 in float32 is the identity
    xi = x.view(torch.int32)
    negative = xi < 0
    mag = xi & 0x7FFFFFFF
    is_nan, is_inf, is_zero = mag > 0x7F800000, mag == 0x7F800000, mag == 0
    # |x| = sig * 2^(e - 23) with sig in [2^23, 2^24). float32 subnormals are scaled by 2^32
    # first (exact) so that they too get an implicit leading bit.
    sub = mag < 0x00800000
    a = torch.where(sub, x.abs() * 2.0 ** 32, x.abs()).view(torch.int32)
    e = (a >> 23) - 127 - sub.to(torch.int32) * 32
    sig = torch.where(is_zero, 0, (a & 0x7FFFFF) | 0x800000)

    if f.is_int:
        qexp = torch.zeros_like(e)                   # integers: the quantum is 1 everywhere
    else:
        emin = 1 - f.bias if f.subnormals else -f.bias  # exponent of the smallest normal
        qexp = e.clamp(min=emin) - f.mbits            # exponent of the quantum at |x|
    shift = (qexp - (e - 23)).clamp(min=0)
    q = _round_shift(sig, shift, rounding, rand)      # |x| rounded, in quanta

    if f.is_int:
        limit = torch.where(negative, -int(f.min), int(f.max)).to(torch.int32)
        q = torch.minimum(q, limit)                   # saturate (Inf too)
        q = torch.where(negative, -q, q)
        return q & (2 ** f.bits - 1)                  # two's complement in the low bits

    # magnitude code: exponent field above the mantissa; q = 2^(M+1) carries into the exponent
    # by itself (31.27 -> 32 in E4M3). Below the normal range q is the subnormal mantissa.
    code = ((e - emin).clamp(min=0) << f.mbits) + q
    if not f.subnormals:                              # E8M0: field 0 is already 2^emin
        code = (code - 2 ** f.mbits).clamp(min=0)     # below 2^-127 (and 0): the smallest code
    over = code > f.max_code
    nonfinite = f.max_code + 1          # Inf (ieee: exponent all ones, mantissa 0) or NaN (fn)
    if overflow == "saturate" or rounding == "rtz":
        code = torch.where(over, f.max_code, code)
    else:
        code = torch.where(over, nonfinite, code)
    code = torch.where(is_inf, f.max_code if overflow == "saturate" else nonfinite, code)
    if f.has_nan:
        quiet = 2 ** (f.mbits - 1) if f.special == "ieee" else 0  # ieee: quiet bit set
        code = torch.where(is_nan, nonfinite + quiet, code)
    if f.signed:
        code = code | (negative.to(torch.int32) << (f.bits - 1))
    return code


def _decode_explicit(c: torch.Tensor, f: Format) -> torch.Tensor:
    """The reference decoder: float32 bits assembled from the code's fields."""
    if f.name == "fp32":
        return c.view(torch.float32).clone()
    if f.is_int:
        if f.signed:   # two's complement: subtract 2^bits when the top bit is set
            c = c - ((c >> (f.bits - 1)) & 1) * 2 ** f.bits
        return c.to(torch.float32)
    sign = ((c >> (f.bits - 1)) & 1) << 31 if f.signed else torch.zeros_like(c)
    mag = c & (2 ** (f.bits - f.signed) - 1)
    e, m = mag >> f.mbits, mag & (2 ** f.mbits - 1)
    # normal: move the exponent to float32's bias and the mantissa to float32's top bits
    bits = ((e - f.bias + 127).clamp(min=0) << 23) | (m << (23 - f.mbits))
    value = (bits | sign).view(torch.float32)
    if f.subnormals:   # e = 0: m * 2^(1 - bias - M), exact in float32
        sub = (m.to(torch.float32) * 2.0 ** (1 - f.bias - f.mbits))
        sub = torch.where(sign != 0, -sub, sub)
        value = torch.where(e == 0, sub, value)
    else:              # E8M0 code 0 is 2^-127, a float32 subnormal
        value = torch.where(e == 0, 2.0 ** -f.bias, value)
    inf = torch.tensor(float("inf"), device=c.device)
    nan = torch.tensor(float("nan"), device=c.device)
    if f.special == "ieee":
        top = e == 2 ** f.ebits - 1
        value = torch.where(top & (m == 0), torch.where(sign != 0, -inf, inf), value)
        value = torch.where(top & (m != 0), torch.where(sign != 0, -nan, nan), value)
    elif f.special == "fn":
        value = torch.where(mag == 2 ** (f.bits - f.signed) - 1,
                            torch.where(sign != 0, -nan, nan), value)
    return value
