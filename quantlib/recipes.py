"""Named recipes: NVFP4, MX (MXFP8/6/4, MXINT8), FP8 (tensor, row, 1x128, 128x128), INT.

A `Recipe` says which element format, which granularity (who shares a scale), and which scale
format; `quantlib.quantize(x, recipe)` applies it. Recipes are frozen dataclasses:
`dataclasses.replace(get_recipe("mxfp4"), scale_rule="rceil")` makes a variant.

The exact arithmetic (kernels reproduce it bit for bit)
------------------------------------------------------
Notation: fl(a op b) is one float32 operation rounded to nearest even; encode/decode are
`quantlib.codecs` (RNE, overflow "saturate" for every element and scale cast). x is converted to
float32 first (exact from fp16/bf16). Every stored scale s is a dequantization scale; encoding
multiplies by r = the float32 reciprocal of s, never divides.

1. Groups. One scale per: the whole tensor ("tensor"); each row, i.e. the last dimension
   ("row", scale shape (*x.shape[:-1], 1)); each index of `axis` ("channel", scale shape x.shape
   with every other dim 1); each `block` consecutive elements of the last dimension ("group",
   scale shape (*x.shape[:-1], K/block)); each (bh, bw) tile of the 2-D view
   (prod(x.shape[:-1]), K) ("block2d", scale shape (M/bh, K/bw)). If the block does not divide
   the shape: `pad=False` (default) raises ValueError; `pad=True` zero-pads (zeros never change an
   amax), codes keep the padded last dimension Kp, `dequantize()` crops back to x.shape.

2. amax of each group = max |x| over its elements (NaN propagates), or `calibrator(rows, -1)`
   where rows is the (n_groups, elems_per_group) float32 view (see `quantlib.scaling`).
   qmax = the element format's max (E4M3 448, E5M2 57344, E2M3 7.5, E3M2 28, E2M1 6), 2^(b-1)-1
   for signed INT (127, 7: symmetric; the code -2^(b-1) appears only where values exceed the
   scale's range: a clipping calibrator, or MX INT8's rounding).

3. Scale, by `scale_format`:
   fp32:  s = fl(amax / qmax); if amax == 0 or s == 0: s = 1.
          r = min(fl(1 / s), FLT_MAX).
   fp16, bf16 (the FP16 scales of GPTQ/AWQ checkpoints; compressed-tensors stores the model's
          dtype): s32 = the s of the fp32 rule (asymmetric INT: of step 4's rule);
          s = s32 rounded once to FP16/BF16 (RNE); s rounding beyond the format's max saturates
          to it (FP16 65504, BF16 3.3895e38), so values beyond qmax * 65504 then clip to the end
          codes, as under NVFP4's saturating E4M3 block scale; s == 0 (s32 at most half the
          smallest subnormal: FP16 2^-25, BF16 2^-134) -> s = 1; NaN stays NaN.
          r = min(fl(1 / float32(s)), FLT_MAX) (float32(s) is exact). Stored: s, float16/bfloat16.
   pow2:  d = fl(amax / qmax); k = ceil(log2(d)) exactly (from d's bits: frexp); k = clamp(k,
          -126, 127); d == 0 with amax > 0 gives k = -126; amax == 0 gives k = 0.
          s = 2^k, r = 2^-k (both exact). Rounding the scale up means nothing saturates.
   e8m0 (MX, group of 32): a byte b, s = 2^(b - 127) (b = 0 is 2^-127, an fp32 subnormal, exact),
          r = 2^(127 - b) (exact). With A = the int32 bits of amax, E = A >> 23, M = A & 0x7FFFFF,
          emax = floor(log2(qmax)) of the element (E4M3 8, E5M2 15, E2M3 2, E3M2 4, E2M1 2,
          MX INT8 0) and mbits its mantissa bits (MX INT8: 6):
            floor (OCP spec, default): e = (E - 127) - emax
            ceil:  e = (E - 127) + (M != 0) - emax
            even:  A' = (A + (1 << (22 - mbits))) & 0x7F800000, then e = (A' >> 23) - 127 - emax
            rceil (cuBLAS, TransformerEngine): d = fl(amax / qmax); e = ceil(log2(d)) exactly
                   (frexp of d; d == 0 gives -127)
          then e = clamp(e, -127, 127) and b = e + 127. An all-zero block gets b = 0.
          Differences from torchao, chosen for consistency: torchao divides FLOOR/CEIL/EVEN data
          by max(s, 2^-126) and multiplies RCEIL data by 1 when b == 0; here data always uses
          r = 2^(127 - b), so dequantize(quantize(x)) uses the same scale that encoded it.
          torchao's RCEIL takes ceil(torch.log2(d)) in float, which misses d just above a power of
          two; here the ceiling is exact.
   e4m3 (NVFP4's two levels, TransformerEngine's formulation; any element format):
          amax_t = amax of the whole tensor.
          s_t = fl(amax_t / fl(448 * qmax))            (NVFP4: amax_t / 2688)
          if amax_t == 0 or s_t == 0: s_t = 1
          s_b = fl(fl(amax_b / qmax) / s_t); code_b = encode(s_b, E4M3, RNE, saturate at 448)
          t_b = fl(decode(code_b) * s_t); r = min(fl(1 / t_b), FLT_MAX)   (t_b == 0 -> FLT_MAX)
          No lower clamp on s_b (TransformerEngine; torchao clamps to 2^-6, ModelOpt to 2^-9): a
          block whose s_b rounds to E4M3 zero dequantizes to zeros.
          Stored: scales = code_b (uint8 E4M3 codes), tensor_scale = s_t (float32, 0-d).

4. Element codes: q = encode(fl(x * r), element, RNE, saturate), r broadcast over each group.
   MX INT8 (element int8 with an e8m0 scale: 1.6 fixed point, value = int8 * 2^-6):
   q = encode(fl(fl(x * r) * 64), INT8, RNE, saturate).
   Asymmetric INT (element uint8 / uint4, with a zero point z, as GPTQ/AWQ):
          lo = min(min(x), 0), hi = max(max(x), 0) per group; qmax = 2^b - 1;
          s = fl(fl(hi - lo) / qmax); if s == 0: s = 1; r = min(fl(1 / s), FLT_MAX)
          (scale_format fp16/bf16: s rounded as in step 3 before r and z are taken)
          z = clamp(round(fl(-lo * r)), 0, qmax);  q = clamp(round(fl(x * r)) + z, 0, qmax)
          where round is torch.round (to nearest even), the integer rounding GPTQ and AWQ use.
   Codes are uint8; 4-bit codes are packed two per byte along the last dimension, element 2i in
   the low nibble (an odd last dimension gets one zero nibble); 6-bit codes (MXFP6) four per
   3 bytes, c0 | c1 << 6 | c2 << 12 | c3 << 18 little-endian (`quantlib.packing.pack_6bit`; MX
   blocks of 32 fill whole quads, other last dimensions get zero codes up to a multiple of 4).

5. Non-finite input: a group whose amax is NaN or Inf gets a NaN scale (fp32, fp16, bf16, pow2:
   NaN; e8m0: 0xFF; e4m3: code 0x7F and, since the tensor amax is then non-finite too, a NaN
   tensor scale) and element codes 0: every element that shares a scale with a NaN or Inf dequantizes to NaN.
   For per-tensor scales and NVFP4 (one tensor scale) that is the whole tensor.

6. Dequantization (float32, then cast to the requested dtype):
   fp32, fp16, bf16, pow2, e8m0:  x = fl(decode(q) * s)   (s as float32: exact from fp16/bf16)
                                  (MX INT8: fl(fl(decode(q) * 2^-6) * s))
   e4m3:                          x = fl(decode(q) * fl(decode(code_b) * s_t))
   asymmetric:                    x = fl(fl(q - z) * s)

Empty tensors quantize to empty codes (scales of the shape the rules give, fp32 scales 1).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

from quantlib.formats import get_format
from quantlib.scaling import scale_shape
from quantlib.table import Table

GRANULARITIES = ("tensor", "row", "channel", "group", "block2d")
SCALE_FORMATS = ("fp32", "pow2", "e4m3", "e8m0", "fp16", "bf16")
SCALE_RULES = ("floor", "ceil", "even", "rceil")


@dataclass(frozen=True)
class Recipe:
    """How to quantize a tensor: element format, who shares a scale, and the scale's format."""

    name: str
    element: str                          # element format: "e2m1", "e4m3", "int8", "uint4", ...
    granularity: str = "tensor"           # one of GRANULARITIES
    block: int | tuple[int, int] | None = None   # group size, or (rows, cols) for "block2d"
    axis: int = 0                         # the axis that keeps its own scales ("channel")
    scale_format: str = "fp32"            # one of SCALE_FORMATS
    scale_rule: str = "floor"             # E8M0 scales only: one of SCALE_RULES
    pad: bool = False                     # zero-pad to whole blocks instead of raising
    calibrator: Callable | None = dataclasses.field(default=None, compare=False)
    description: str = dataclasses.field(default="", compare=False)

    def __post_init__(self):
        for f, kind in (("name", str), ("element", str), ("granularity", str),
                        ("scale_format", str), ("scale_rule", str), ("pad", bool)):
            if not isinstance(getattr(self, f), kind):
                raise TypeError(f"Recipe.{f} must be a {kind.__name__}, got "
                                f"{getattr(self, f)!r}")
        if isinstance(self.axis, bool) or not isinstance(self.axis, int):
            raise TypeError(f"Recipe.axis must be an int, got {self.axis!r}")
        if self.calibrator is not None and not callable(self.calibrator):
            raise TypeError(f"Recipe.calibrator must be None or a callable (rows, dim) -> amax, "
                            f"got {type(self.calibrator).__name__}")
        fmt = get_format(self.element)       # raises on an unknown element format
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity {self.granularity!r}: use one of {GRANULARITIES}")
        if self.scale_format not in SCALE_FORMATS:
            raise ValueError(f"scale_format {self.scale_format!r}: use one of {SCALE_FORMATS}")
        if self.scale_rule not in SCALE_RULES:
            raise ValueError(f"scale_rule {self.scale_rule!r}: use one of {SCALE_RULES}")
        if self.granularity == "group" and not (isinstance(self.block, int) and self.block > 0):
            raise ValueError(f"granularity 'group' needs block = a positive int, "
                             f"got {self.block!r}")
        if self.granularity == "block2d" and not (
                isinstance(self.block, tuple) and len(self.block) == 2
                and all(isinstance(b, int) and b > 0 for b in self.block)):
            raise ValueError(f"granularity 'block2d' needs block = (rows, cols), "
                             f"got {self.block!r}")
        if self.scale_format in ("e8m0", "e4m3") and self.granularity not in ("group", "block2d"):
            raise ValueError(f"{self.scale_format} scales are block scales: use granularity "
                             f"'group' or 'block2d', not {self.granularity!r}")
        if not fmt.signed and not fmt.is_int:
            raise ValueError(f"element {fmt.title} is a scale format, not an element format")
        if self.scale_format in ("e8m0", "e4m3") and fmt.bits > 8:
            raise ValueError(f"{self.scale_format} block scales serve elements of at most 8 bits "
                             f"(MX, NVFP4); {fmt.title} has {fmt.bits}: use fp32 scales")
        if self.scale_format == "e8m0" and fmt.is_int and fmt.signed and fmt.name != "int8":
            # E8M0 scales on integers mean MX fixed point, defined for INT8 (1.6) only; plain
            # INT4 codes under a power-of-two scale chosen for 1.2 fixed point would waste codes
            raise ValueError(f"E8M0 scales serve MX elements: FP8/FP6/FP4 or INT8 (MXINT8); "
                             f"{fmt.title} has no MX fixed-point definition: use "
                             f"scale_format='pow2' (power-of-two FP32 scale) or 'fp32'")
        if self.asymmetric and self.scale_format not in ("fp32", "fp16", "bf16"):
            raise ValueError(f"asymmetric {fmt.title} (zero point) uses fp32, fp16 or bf16 "
                             f"scales, not {self.scale_format}")

    @property
    def format(self):
        """The element `Format`."""
        return get_format(self.element)

    @property
    def asymmetric(self) -> bool:
        """Unsigned integer elements mean an asymmetric recipe with a zero point."""
        f = self.format
        return f.is_int and not f.signed

    @property
    def mx_int8(self) -> bool:
        """INT8 elements under an E8M0 scale are MX's 1.6 fixed point (value = int8 * 2^-6)."""
        return self.scale_format == "e8m0" and self.format.name == "int8"

    def bits_per_element(self, shape=(4096, 4096)) -> float:
        """Stored bits per element of a tensor of this shape, scales and zero points included."""
        n = math.prod(shape)
        kp = padded_last_dim(self, shape)
        rows = n // shape[-1] if shape else 1
        per_row = {4: -(-kp // 2), 6: 3 * -(-kp // 4)}.get(self.format.bits, kp)   # packed
        code_bytes = rows * per_row
        n_scales = math.prod(scale_shape(self, shape))
        scale_bytes = n_scales * {"e8m0": 1, "e4m3": 1, "fp16": 2, "bf16": 2}.get(
            self.scale_format, 4)
        extra = (4 if self.scale_format == "e4m3" else 0) + (n_scales if self.asymmetric else 0)
        return 8 * (code_bytes + scale_bytes + extra) / n


def padded_last_dim(recipe: Recipe, shape) -> int:
    """The last dimension once padded to whole blocks (== K when the block divides it)."""
    k = shape[-1] if len(shape) else 1
    b = {"group": recipe.block, "block2d": recipe.block[1] if recipe.granularity == "block2d"
         else None}.get(recipe.granularity)
    return -(-k // b) * b if b else k


def _mx(name, element, title):
    return Recipe(name, element, "group", 32, scale_format="e8m0",
                  description=f"OCP MX: {title} elements, one E8M0 scale per 32 (FLOOR rule)")


_RECIPES = [
    Recipe("nvfp4", "e2m1", "group", 16, scale_format="e4m3",
           description="NVIDIA NVFP4: E2M1, E4M3 scale per 16, FP32 tensor scale amax/(448*6)"),
    _mx("mxfp8_e4m3", "e4m3", "E4M3"),
    _mx("mxfp8_e5m2", "e5m2", "E5M2"),
    _mx("mxfp6_e2m3", "e2m3", "E2M3"),
    _mx("mxfp6_e3m2", "e3m2", "E3M2"),
    _mx("mxfp4", "e2m1", "E2M1"),
    Recipe("mxint8", "int8", "group", 32, scale_format="e8m0",
           description="OCP MX: INT8 (1.6 fixed point) elements, one E8M0 scale per 32"),
]
for _e, _t in (("e4m3", "E4M3"), ("e5m2", "E5M2")):
    _RECIPES += [
        Recipe(f"fp8_{_e}_tensor", _e, "tensor",
               description=f"FP8 {_t}, one FP32 scale amax/max for the tensor"),
        Recipe(f"fp8_{_e}_rowwise", _e, "row",
               description=f"FP8 {_t}, one FP32 scale per row"),
        Recipe(f"fp8_{_e}_1x128", _e, "group", 128,
               description=f"FP8 {_t}, FP32 scale per 1x128 (DeepSeek-V3 activations)"),
        Recipe(f"fp8_{_e}_128x128", _e, "block2d", (128, 128),
               description=f"FP8 {_t}, FP32 scale per 128x128 block (DeepSeek-V3 weights)"),
    ]
_RECIPES += [
    Recipe("int8_tensor", "int8", "tensor", description="INT8 symmetric, one scale amax/127"),
    Recipe("int8_channel", "int8", "channel", axis=0,
           description="INT8 symmetric, one scale per output channel (row of a weight)"),
    Recipe("int8_rowwise", "int8", "row", description="INT8 symmetric, one scale per row"),
    Recipe("int8_channel_asym", "uint8", "channel", axis=0,
           description="INT8 asymmetric (UINT8 codes + zero point) per output channel"),
    Recipe("int4_channel", "int4", "channel", axis=0,
           description="INT4 symmetric, one scale amax/7 per output channel"),
    Recipe("int4_g128", "int4", "group", 128,
           description="INT4 symmetric, FP32 scale amax/7 per group of 128 (GPTQ/AWQ grouping)"),
    Recipe("int4_g128_asym", "uint4", "group", 128,
           description="INT4 asymmetric (UINT4 codes + zero point) per group of 128"),
    Recipe("int4_g128_fp16", "int4", "group", 128, scale_format="fp16",
           description="INT4 symmetric, FP16 scale per group of 128 (GPTQ's stored layout)"),
    Recipe("int4_g128_asym_fp16", "uint4", "group", 128, scale_format="fp16",
           description="INT4 asymmetric, FP16 scale + zero point per group of 128 (AWQ's scales)"),
    Recipe("int4_g64", "int4", "group", 64, description="INT4 symmetric, group of 64"),
    Recipe("int4_g32", "int4", "group", 32, description="INT4 symmetric, group of 32"),
]
RECIPES: dict[str, Recipe] = {r.name: r for r in _RECIPES}


def get_recipe(recipe) -> Recipe:
    """A Recipe by name ("nvfp4", "mxfp4", "fp8_e4m3_1x128", ...), or a Recipe passed through."""
    if isinstance(recipe, Recipe):
        return recipe
    if not isinstance(recipe, str):
        raise TypeError(f"expected a Recipe or a recipe name such as 'nvfp4', got "
                        f"{type(recipe).__name__}: use quantlib.get_recipe(name) or Recipe(...)")
    if recipe.strip().lower() in RECIPES:
        return RECIPES[recipe.strip().lower()]
    raise ValueError(f"unknown recipe {recipe!r}: use a Recipe or one of {', '.join(RECIPES)}")


def recipes() -> Table:
    """Every named recipe: element, granularity, scale format and bits per element with scales."""
    t = Table(["recipe", "element", "granularity", "scale", "bits/element", "description"],
              title="Named recipes (bits/element for a 4096x4096 tensor, scales included)",
              digits=3)
    for r in RECIPES.values():
        gran = r.granularity + (f" {r.block}" if r.block else "")
        if r.granularity == "block2d":
            gran = f"block {r.block[0]}x{r.block[1]}"
        scale = r.scale_format.upper() + (f" {r.scale_rule}" if r.scale_format == "e8m0" else "")
        if r.scale_format == "e4m3":
            scale = "E4M3 + FP32 tensor"
        t.append([r.name, r.format.title, gran, scale, r.bits_per_element(), r.description])
    return t
