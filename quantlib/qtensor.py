"""The quantized tensor and the one entry point, `quantize(x, recipe)`.

A `QuantizedTensor` holds what a checkpoint or a kernel needs: uint8 codes (4-bit codes packed
two per byte, element 2i in the low nibble; 6-bit codes four per 3 bytes), the stored scales
(float32; float16/bfloat16 for the fp16/bf16 scale formats; or uint8 E8M0/E4M3 codes), the
NVFP4 tensor scale, the zero point of asymmetric INT, the recipe, and the original shape and
dtype. The arithmetic is the one written out in
`quantlib.recipes`.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from quantlib.codecs import decode, encode
from quantlib.packing import pack_6bit, pack_nibbles, unpack_6bit, unpack_nibbles
from quantlib.recipes import Recipe, get_recipe, padded_last_dim
from quantlib.scaling import (
    FLT_MAX,
    HALF_DTYPES,
    blocked,
    compute_scale,
    e8m0_values,
    mx_element,
    pad_to_blocks,
    scale_shape,
)

_DTYPES = {str(d).removeprefix("torch."): d for d in (
    torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.float8_e4m3fn,
    torch.float8_e5m2)}


def _fixed_point(recipe) -> float:
    """MX integer elements are fixed point: INT8 codes count 2^-6 steps."""
    return 2.0 ** mx_element(recipe.format)[2] if recipe.mx_int8 else 1.0


def pack_codes(q: torch.Tensor, bits: int) -> torch.Tensor:
    """(..., Kp) codes -> what `QuantizedTensor.codes` stores: 4-bit codes two per byte, 6-bit
    codes four per 3 bytes (`quantlib.packing`), zero codes filling the last pair or quad."""
    if bits == 4:
        return pack_nibbles(torch.nn.functional.pad(q, (0, -q.shape[-1] % 2)))
    if bits == 6:
        return pack_6bit(torch.nn.functional.pad(q, (0, -q.shape[-1] % 4)))
    return q


def unpack_codes(codes: torch.Tensor, bits: int, kp: int) -> torch.Tensor:
    """Inverse of `pack_codes`: one uint8 code per element, (..., kp)."""
    if bits == 4:
        return unpack_nibbles(codes)[..., :kp]
    if bits == 6:
        return unpack_6bit(codes)[..., :kp]
    return codes


@dataclass(eq=False)
class QuantizedTensor:
    """Codes + scales (+ tensor scale, zero point) of one tensor under one recipe."""

    codes: torch.Tensor                 # uint8 (*shape[:-1], Kp), 4-bit: Kp/2, 6-bit: 3Kp/4
    scales: torch.Tensor                # float32 / float16 / bfloat16, or uint8 codes (E8M0, E4M3)
    recipe: Recipe
    shape: torch.Size                   # the original shape (before padding)
    dtype: torch.dtype = torch.float32  # the original dtype
    tensor_scale: torch.Tensor | None = None   # NVFP4's FP32 tensor scale (0-d)
    zero_point: torch.Tensor | None = None     # asymmetric INT: uint8, shape of scales

    def __post_init__(self):
        """Every part checked against the recipe and shape: a malformed QuantizedTensor is a
        clear error here, not a KeyError or an out-of-bounds read later."""
        self.recipe = get_recipe(self.recipe)
        if not isinstance(self.shape, (torch.Size, tuple, list)) or not all(
                isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in self.shape):
            raise TypeError(f"QuantizedTensor.shape must be a torch.Size of non-negative ints, "
                            f"got {self.shape!r}")
        self.shape = torch.Size(self.shape)
        if not (isinstance(self.dtype, torch.dtype) and self.dtype.is_floating_point):
            raise TypeError(f"QuantizedTensor.dtype is the original floating dtype, got "
                            f"{self.dtype!r}")
        r, sh = self.recipe, tuple(self.shape) or (1,)
        block_scales = r.scale_format in ("e8m0", "e4m3")
        kp = padded_last_dim(r, sh)
        per_row = {4: -(-kp // 2), 6: 3 * -(-kp // 4)}.get(r.format.bits, kp)
        parts = {"codes": (self.codes, torch.uint8, (*sh[:-1], per_row)),
                 "scales": (self.scales, torch.uint8 if block_scales else
                            HALF_DTYPES.get(r.scale_format, torch.float32),
                            tuple(scale_shape(r, sh))),
                 "tensor_scale": (self.tensor_scale, torch.float32, None),
                 "zero_point": (self.zero_point, torch.uint8, tuple(scale_shape(r, sh)))}
        needed = {"tensor_scale": r.scale_format == "e4m3", "zero_point": r.asymmetric}
        for name, (t, dt, want) in parts.items():
            if t is None:
                if needed.get(name, True):
                    raise ValueError(f"malformed QuantizedTensor: a {r.name!r} tensor needs a "
                                     f"{name.replace('_', ' ')} ({name}, {dt}), got None")
                continue
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"QuantizedTensor.{name} must be a tensor, got "
                                f"{type(t).__name__}")
            if t.dtype != dt:
                raise TypeError(f"QuantizedTensor.{name} of a {r.name!r} tensor is {dt}, got "
                                f"{t.dtype}: codes and scales keep their dtypes (cast the "
                                f"dequantized values instead)")
            if want is not None and tuple(t.shape) != want or want is None and t.numel() != 1:
                raise ValueError(f"malformed QuantizedTensor: {name} has shape "
                                 f"{tuple(t.shape)}; a "
                                 f"{r.name!r} tensor of shape {tuple(self.shape)} needs "
                                 f"{want if want is not None else 'one value'}")
            if t.device != self.codes.device:
                raise ValueError(f"QuantizedTensor.{name} is on {t.device}, its codes on "
                                 f"{self.codes.device}: keep all parts on one device")

    # ---- values -----------------------------------------------------------------------------
    def scale_values(self) -> torch.Tensor:
        """The stored scales as float32 (E8M0 -> 2^(b-127), E4M3 codes decoded; NVFP4's block
        scales without the tensor scale)."""
        sf = self.recipe.scale_format
        if sf == "e8m0":
            return e8m0_values(self.scales)
        if sf == "e4m3":
            return decode(self.scales, "e4m3")
        return self.scales.to(torch.float32)         # fp16/bf16 -> float32 is exact

    def _codes_unpacked(self) -> torch.Tensor:
        kp = padded_last_dim(self.recipe, tuple(self.shape) or (1,))
        return unpack_codes(self.codes, self.recipe.format.bits, kp)

    def _apply(self, v: torch.Tensor, fn) -> torch.Tensor:
        """fn(blocked values, keepdim scale shape) on the padded code grid, cropped to shape."""
        r, shape = self.recipe, tuple(self.shape) or (1,)
        m = v.numel() // v.shape[-1]
        if r.granularity == "block2d" and (m % r.block[0]):
            v = torch.nn.functional.pad(v.reshape(m, -1), (0, 0, 0, -m % r.block[0]))
        vb, dims = blocked(v, r)
        keep = tuple(1 if d in dims else n for d, n in enumerate(vb.shape))
        out = fn(vb, keep).reshape(-1, v.shape[-1])[:m]
        return out[:, :shape[-1]].reshape(self.shape)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """x ~= decode(codes) * scale, in float32, then cast to `dtype` (a floating torch dtype)."""
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(f"dequantize(dtype) takes a floating torch dtype such as "
                            f"torch.float32 or torch.bfloat16, got {dtype!r}")
        r = self.recipe
        if self.codes.is_meta:
            raise ValueError("this QuantizedTensor is on the 'meta' device (no values): move it "
                             "to a real device with .to(device) before dequantizing")
        if self.numel == 0:
            return torch.zeros(self.shape, dtype=dtype, device=self.device)
        s = self.scale_values()
        if r.scale_format == "e4m3":
            s = s * self.tensor_scale

        def scaled(vb, keep):
            if r.asymmetric:
                vb = vb - self.zero_point.to(torch.float32).reshape(keep)
            if r.mx_int8:
                vb = vb * (1.0 / _fixed_point(r))
            return vb * s.reshape(keep)

        return self._apply(decode(self._codes_unpacked(), r.format), scaled).to(dtype)

    def element_scales(self) -> torch.Tensor:
        """The dequantization scale of every element (float32, x.shape): what one code step of
        value 1 is worth there (NVFP4: block scale x tensor scale; MX INT8: 2^-6 x scale)."""
        r = self.recipe
        s = self.scale_values()
        if r.scale_format == "e4m3":
            s = s * self.tensor_scale
        s = s / _fixed_point(r)
        if self.numel == 0:
            return torch.zeros(self.shape, device=self.device)
        ones = torch.ones(self._codes_unpacked().shape, device=self.device)
        return self._apply(ones, lambda vb, keep: vb * s.reshape(keep))

    # ---- size -------------------------------------------------------------------------------
    @property
    def numel(self) -> int:
        return self.shape.numel()

    @property
    def nbytes(self) -> int:
        """Bytes stored: codes, scales, tensor scale and zero point."""
        parts = [self.codes, self.scales, self.tensor_scale, self.zero_point]
        return sum(t.numel() * t.element_size() for t in parts if t is not None)

    @property
    def bits_per_element(self) -> float:
        """Stored bits per original element, scales included (NVFP4 ~4.5, MXFP6 ~6.25, MXFP4
        ~4.25)."""
        return 8 * self.nbytes / max(self.numel, 1)

    # ---- moving and saving ------------------------------------------------------------------
    def to(self, device) -> QuantizedTensor:
        """The same quantized tensor on another device. Only the device: codes and scales keep
        their dtypes (casting them would change the numbers), so a dtype is a TypeError; for
        values in another dtype use `dequantize(dtype)`."""
        if isinstance(device, torch.dtype):
            raise TypeError(f"QuantizedTensor.to({device}): a quantized tensor's codes and "
                            f"scales keep their dtypes, only the device moves; for values in "
                            f"{device} use dequantize({device})")
        if not isinstance(device, (str, int, torch.device)):
            raise TypeError(f"QuantizedTensor.to takes a device ('cpu', 'cuda', "
                            f"torch.device), got {type(device).__name__}")
        mv = lambda t: None if t is None else t.to(device)
        return dataclasses.replace(self, codes=mv(self.codes), scales=mv(self.scales),
                                   tensor_scale=mv(self.tensor_scale),
                                   zero_point=mv(self.zero_point))

    @property
    def device(self) -> torch.device:
        return self.codes.device

    def state_dict(self) -> dict:
        """Tensors and plain values only (loads with torch.load(weights_only=True)); the
        recipe's calibrator is not saved (it is not needed to dequantize)."""
        rec = {f.name: getattr(self.recipe, f.name) for f in dataclasses.fields(self.recipe)
               if f.name != "calibrator"}
        sd = {"codes": self.codes, "scales": self.scales, "recipe": rec,
              "shape": list(self.shape), "dtype": str(self.dtype).removeprefix("torch.")}
        if self.tensor_scale is not None:
            sd["tensor_scale"] = self.tensor_scale
        if self.zero_point is not None:
            sd["zero_point"] = self.zero_point
        return sd

    @classmethod
    def from_state_dict(cls, sd: dict) -> QuantizedTensor:
        """The QuantizedTensor `state_dict()` saved; missing or malformed parts are a clear
        ValueError/TypeError naming the part."""
        if not hasattr(sd, "keys"):
            raise TypeError(f"from_state_dict takes the dict QuantizedTensor.state_dict() "
                            f"returns, got {type(sd).__name__}")
        missing = [k for k in ("codes", "scales", "recipe", "shape", "dtype") if k not in sd]
        if missing:
            raise ValueError(f"this QuantizedTensor state dict lacks {missing}: save it with "
                             f"QuantizedTensor.state_dict()")
        if not hasattr(sd["recipe"], "keys"):
            raise TypeError(f"state dict 'recipe' must be a dict of Recipe fields, got "
                            f"{type(sd['recipe']).__name__}")
        rec = dict(sd["recipe"])
        if isinstance(rec.get("block"), list):
            rec["block"] = tuple(rec["block"])
        try:
            recipe = Recipe(**rec)
        except TypeError as e:
            raise ValueError(f"state dict 'recipe' {rec!r} is not a Recipe: {e}") from None
        if sd["dtype"] not in _DTYPES:
            raise ValueError(f"state dict 'dtype' {sd['dtype']!r}: use one of {list(_DTYPES)}")
        if not isinstance(sd["shape"], (list, tuple, torch.Size)):
            raise TypeError(f"state dict 'shape' must be a list of ints, got {sd['shape']!r}")
        return cls(codes=sd["codes"], scales=sd["scales"], recipe=recipe,
                   shape=sd["shape"], dtype=_DTYPES[sd["dtype"]],
                   tensor_scale=sd.get("tensor_scale"), zero_point=sd.get("zero_point"))

    def __repr__(self) -> str:
        return (f"QuantizedTensor({self.recipe.name}, shape={tuple(self.shape)}, "
                f"dtype={self.dtype}, codes={tuple(self.codes.shape)}, "
                f"scales={tuple(self.scales.shape)} {self.scales.dtype}, "
                f"bits/element={self.bits_per_element:.3f})")


def quantize(x: torch.Tensor, recipe) -> QuantizedTensor:
    """Quantize x with a recipe (a Recipe or a name such as "nvfp4", "mxfp4", "int4_g128")."""
    recipe = get_recipe(recipe)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"quantize needs a torch.Tensor, got {type(x).__name__}: "
                        f"use torch.as_tensor(x, dtype=torch.float32)")
    if not x.is_floating_point():
        raise TypeError(f"quantize needs a floating-point tensor, got {x.dtype}: "
                        f"convert it first, e.g. x.float()")
    if x.is_meta:
        raise ValueError("quantize: x is on the 'meta' device (shapes, no values): scales and "
                         "codes need data; materialize the tensor (e.g. model.to_empty(device=...)"
                         " and load the weights) first")
    shape, dtype = x.shape, x.dtype
    xf = x.detach().to(torch.float32).reshape(tuple(shape) or (1,))
    if x.dtype == torch.float64:       # finite values beyond FP32's range: its max, not Inf
        xf = torch.where(torch.isinf(xf) & torch.isfinite(x.detach().reshape(xf.shape)),
                         xf.sign() * FLT_MAX, xf)
    m = math.prod(xf.shape[:-1])                 # rows of the 2-D view
    xp = pad_to_blocks(xf, recipe)
    xb, dims = blocked(xp, recipe)
    sc = compute_scale(xb, dims, recipe)
    y = xb * sc["r"]
    if sc["bad"].any():                                # codes 0 where the scale is NaN
        y = torch.where(sc["bad"], 0.0, y)
    fmt = recipe.format
    if recipe.asymmetric:
        q = (torch.round(y) + sc["zero_point"]).clamp(0, fmt.max).to(torch.uint8)
    else:
        if recipe.mx_int8:
            y = y * _fixed_point(recipe)
        q = encode(y, fmt, rounding="rne", overflow="saturate")
    kp = xp.shape[-1]
    q = q.reshape(math.prod(xp.shape[:-1]), kp)[:m].reshape(*xf.shape[:-1], kp)
    q = pack_codes(q, fmt.bits)                  # 4-bit two per byte, 6-bit four per 3 bytes
    sshape = scale_shape(recipe, xf.shape)
    zp = sc["zero_point"]
    return QuantizedTensor(
        codes=q, scales=sc["scales"].reshape(sshape), recipe=recipe, shape=shape, dtype=dtype,
        tensor_scale=sc["tensor_scale"],
        zero_point=None if zp is None else zp.reshape(sshape))
