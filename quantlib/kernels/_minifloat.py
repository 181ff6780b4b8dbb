"""Triton helpers: fp32 <-> small floats (E4M3, E5M2, E2M1, E8M0) in integer arithmetic.

Why integers: the Triton interpreter's float downcasts round wrongly (ties away, no sticky bit,
lost carries) and sm_80 has no FP8 conversion instructions. Bit twiddling on the fp32 pattern
gives the same RNE bits everywhere: GPU, interpreter, any compute capability.

A format is described by constexprs: EBITS, MBITS, BIAS (exponent bias), MAXCODE (the
largest finite magnitude code), and the codes returned for overflow and NaN:
  E4M3: 4, 3, 7, 0x7E (448), NaN 0x7F    E5M2: 5, 2, 15, 0x7B (57344), Inf 0x7C, NaN 0x7F
  E2M1: 2, 1, 1, 0x7 (6), no Inf/NaN.
"""
import triton
import triton.language as tl


@triton.jit
def encode_minifloat(x, EBITS: tl.constexpr, MBITS: tl.constexpr, BIAS: tl.constexpr,
                     MAXCODE: tl.constexpr, OVERFLOW_CODE: tl.constexpr, NAN_CODE: tl.constexpr,
                     INF_CODE: tl.constexpr):
    """fp32 -> code (int32, sign at bit EBITS+MBITS), round to nearest even.

    Overflow (decided after rounding) gives OVERFLOW_CODE (MAXCODE to saturate), +-Inf gives
    INF_CODE, NaN gives NAN_CODE; the sign bit is added to all of them."""
    bits = x.to(tl.int32, bitcast=True)
    sign = (bits >> 31) & 1
    a = bits & 0x7FFFFFFF
    e = (a >> 23) - 127                       # unbiased fp32 exponent (fp32 subnormals: -127)
    m = (a & 0x7FFFFF) | 0x800000             # 24-bit significand with the hidden bit
    # Bits to drop: 23 - MBITS in the target's normal range, more below its smallest normal.
    shift = (23 - MBITS) + tl.maximum((1 - BIAS) - e, 0)
    shift = tl.minimum(shift, 25)             # beyond 25 everything rounds to zero anyway
    r = m >> shift
    rem = m & ((1 << shift) - 1)
    half = 1 << (shift - 1)
    r = r + ((rem > half) | ((rem == half) & ((r & 1) == 1))).to(tl.int32)
    # Normal: code = (biased exponent - 1) << MBITS plus r (r carries the hidden bit, so a
    # rounding carry r == 2^(MBITS+1) lands in the exponent by itself). Subnormal: code = r.
    code = r + (tl.maximum(e + BIAS - 1, 0) << MBITS)
    code = tl.where(a < 0x00800000, 0, code)  # fp32 zero and subnormals are far below any target
    code = tl.where(code > MAXCODE, OVERFLOW_CODE, code)
    code = tl.where(a == 0x7F800000, INF_CODE, code)
    code = tl.where(a > 0x7F800000, NAN_CODE, code)
    return code | (sign << (EBITS + MBITS))


@triton.jit
def decode_minifloat(code, EBITS: tl.constexpr, MBITS: tl.constexpr, BIAS: tl.constexpr,
                     HAS_INF: tl.constexpr, NAN_CODE: tl.constexpr):
    """Code (any int tensor, sign at bit EBITS+MBITS) -> fp32, exact for every code.

    NAN_CODE < 0 means the format has no NaN; HAS_INF means exponent all-ones, mantissa 0 is Inf
    and every other all-ones exponent is NaN (E5M2); otherwise only the NAN_CODE magnitude is."""
    c = code.to(tl.int32) & ((1 << (1 + EBITS + MBITS)) - 1)
    sign = (c >> (EBITS + MBITS)) & 1
    ef = (c >> MBITS) & ((1 << EBITS) - 1)
    mf = c & ((1 << MBITS) - 1)
    # Normal: rebias the exponent into fp32's field, left-align the mantissa.
    normal = ((ef - BIAS + 127) << 23) | (mf << (23 - MBITS))
    # Subnormal: mf * 2^(1 - BIAS - MBITS); mf < 2^MBITS is exact in fp32, so is the product.
    sub = mf.to(tl.float32) * (2.0 ** (1 - BIAS - MBITS))
    mag = tl.where(ef == 0, sub, normal.to(tl.float32, bitcast=True))
    if HAS_INF:
        top = ef == ((1 << EBITS) - 1)
        mag = tl.where(top & (mf == 0), float("inf"), mag)
        mag = tl.where(top & (mf != 0), float("nan"), mag)
    elif NAN_CODE >= 0:
        mag = tl.where((c & ((1 << (EBITS + MBITS)) - 1)) == NAN_CODE, float("nan"), mag)
    return tl.where(sign == 1, -mag, mag)


@triton.jit
def encode_e4m3(x):
    """fp32 -> E4M3 code, RNE, saturating to +-448; NaN -> 0x7F (sign kept)."""
    return encode_minifloat(x, 4, 3, 7, 0x7E, 0x7E, 0x7F, 0x7E)


@triton.jit
def encode_e4m3_nonfinite(x):
    """fp32 -> E4M3 code, RNE; overflow and +-Inf -> NaN (0x7F, sign kept)."""
    return encode_minifloat(x, 4, 3, 7, 0x7E, 0x7F, 0x7F, 0x7F)


@triton.jit
def encode_e5m2(x):
    """fp32 -> E5M2 code, RNE, saturating to +-57344 (Inf too); NaN -> 0x7F."""
    return encode_minifloat(x, 5, 2, 15, 0x7B, 0x7B, 0x7F, 0x7B)


@triton.jit
def encode_e5m2_nonfinite(x):
    """fp32 -> E5M2 code, RNE; overflow -> Inf (0x7C), NaN -> 0x7F."""
    return encode_minifloat(x, 5, 2, 15, 0x7B, 0x7C, 0x7F, 0x7C)


@triton.jit
def encode_e2m1(x):
    """fp32 -> E2M1 code (4 bits), RNE, saturating to +-6 (Inf too); NaN -> +-6 as well."""
    return encode_minifloat(x, 2, 1, 1, 0x7, 0x7, 0x7, 0x7)


@triton.jit
def decode_e4m3(code):
    return decode_minifloat(code, 4, 3, 7, False, 0x7F)


@triton.jit
def decode_e5m2(code):
    return decode_minifloat(code, 5, 2, 15, True, -1)


@triton.jit
def decode_e2m1(code):
    return decode_minifloat(code, 2, 1, 1, False, -1)


@triton.jit
def decode_e8m0(code):
    """E8M0 byte -> 2^(code - 127) as fp32; 0 -> 2^-127 (an fp32 subnormal), 0xFF -> NaN."""
    c = code.to(tl.int32) & 0xFF
    bits = tl.where(c == 0, 0x00400000, c << 23)
    bits = tl.where(c == 0xFF, 0x7FC00000, bits)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def bf16_bits_rne(x):
    """fp32 -> bf16 bit pattern (int16), RNE; NaN stays NaN. The interpreter truncates instead."""
    b = x.to(tl.int32, bitcast=True)
    r = (b + 0x7FFF + ((b >> 16) & 1)) >> 16
    r = tl.where((b & 0x7FFFFFFF) > 0x7F800000, (b >> 16) | 0x40, r)
    return r.to(tl.int16)


@triton.jit
def to_f32(x, BF16_BITS: tl.constexpr):
    """Loaded input -> fp32. With BF16_BITS, x holds bf16 bit patterns (int16): shifting them
    into the top half of an fp32 is exact for every value (the interpreter's bf16 -> fp32 cast
    loses subnormals)."""
    if BF16_BITS:
        return (x.to(tl.int32) << 16).to(tl.float32, bitcast=True)
    else:
        return x.to(tl.float32)


@triton.jit
def unpack_pair(w, WORD: tl.constexpr):
    """A word holding two consecutive elements -> (element 2i, element 2i+1) as fp32, exactly.
    Little endian: element 2i is the low half. WORD 1: two bf16 in an int32 (each half shifted
    into the top of an fp32, as `to_f32`); 2: two fp16 in an int32; 3: two fp32 in an int64."""
    if WORD == 1:
        lo = (w << 16).to(tl.float32, bitcast=True)
        hi = (w & -65536).to(tl.float32, bitcast=True)
    elif WORD == 2:
        lo = w.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
        hi = (w >> 16).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    else:
        lo = w.to(tl.int32).to(tl.float32, bitcast=True)
        hi = (w >> 32).to(tl.int32).to(tl.float32, bitcast=True)
    return lo, hi


@triton.jit
def exp2i(k):
    """2^k as fp32 bits made from the integer k in [-127, 127] (2^-127 is a subnormal)."""
    b = tl.where(k >= -126, (k + 127) << 23, 0x00400000)
    return b.to(tl.float32, bitcast=True)


@triton.jit
def ceil_log2(d):
    """ceil(log2(d)) exactly for finite d >= 0, from the bits; results below -127 (d <= 2^-128,
    0 included) come out as -127 or less, which every caller clamps to."""
    b = d.to(tl.int32, bitcast=True)
    e = b >> 23
    m = b & 0x7FFFFF
    normal = e - 127 + (m != 0).to(tl.int32)
    sub = tl.where(m > 0x400000, -126, -127)      # d < 2^-126: d > 2^-127 rounds up to -126
    return tl.where(e == 0, tl.where(m == 0, -1000, sub), normal)


@triton.jit
def div_rn(x, y, INTERPRET: tl.constexpr):
    """x / y correctly rounded, subnormals kept: the reference divides in fp32 (IEEE). On the
    GPU Triton's `/` is approximate and libdevice's div_rn flushes subnormals (Triton sets
    nvvm-reflect-ftz), so use the PTX instruction itself."""
    y = y + tl.zeros_like(x)  # x: a tensor; y: a tensor of x's shape or a number
    if INTERPRET:
        return x / y          # numpy float32 division is IEEE
    else:
        return tl.inline_asm_elementwise("div.rn.f32 $0, $1, $2;", "=r,r,r", [x, y],
                                         dtype=tl.float32, is_pure=True, pack=1)
