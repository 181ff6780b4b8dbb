"""compressed-tensors checkpoints (vLLM `quant_method: "compressed-tensors"`).

Checked against compressed-tensors 0.20.1: `compressors/nvfp4/{base,helpers}.py`,
`compressors/mxfp4/base.py`, `compressors/mx_utils.py`, `compressors/mxfp8/base.py`,
`compressors/naive_quantized/base.py`, `compressors/pack_quantized/{base,helpers}.py`,
`quantization/lifecycle/forward.py` (`_dequantize`), `quantization/quant_scheme.py` (presets).

Per quantized layer (nn.Linear layout [N, K]):
- NVFP4 (`nvfp4-pack-quantized`): weight_packed uint8 [N, K/2] (element 2i in the low nibble),
  weight_scale float8_e4m3fn [N, K/16], weight_global_scale float32 [1] = 1 / tensor scale, a
  DIVISOR: W = fp4 * (weight_scale / weight_global_scale); input_global_scale likewise (W4A4).
- MXFP4 (`mxfp4-pack-quantized`): weight_packed as NVFP4, weight_scale uint8 E8M0 [N, K/32].
- MXFP8 (`mxfp8-quantized`): weight float8_e4m3fn, weight_scale uint8 E8M0 [N, K/32].
- FP8 (`float-quantized`): weight float8_e4m3fn, weight_scale float32 ([1] tensor, [N, 1]
  channel, [ceil(N/128), ceil(K/128)] block), a MULTIPLIER; input_scale [1] when static.
- INT4 (`pack-quantized`): weight_packed int32 [N, K/8], element i in bits 4i..4i+3 of its
  word, stored as q + 8 (so a byte holds elements 2i, 2i+1 low nibble first, each XOR 8 of its
  two's-complement nibble); weight_scale [N, K/group] float32, or float16/bfloat16 as stored
  by the fp16/bf16 scale formats (scale_dtype in the scheme; read back to the same recipe);
  weight_shape int64 [2];
  weight_zero_point (asymmetric) stored as zp + 8, packed the same way along dim 0
  (int32 [N/8, K/group]).
KV cache (`kv_cache.py`): `kv_cache_scheme` FP8 per tensor, static; <attn>.k_scale, v_scale [1].
"""
from __future__ import annotations

import re

import torch

from quantlib.export import _core
from quantlib.export.kv_cache import read_kv
from quantlib.packing import pack_nibbles, unpack_nibbles
from quantlib.qtensor import QuantizedTensor
from quantlib.recipes import RECIPES, Recipe
from quantlib.scaling import fp32_scale, nvfp4_scale

E4M3 = "torch.float8_e4m3fn"
HALF_SCALE_DTYPES = {"fp16": "torch.float16", "bf16": "torch.bfloat16"}


def _args(**kw) -> dict:
    base = {"num_bits": 8, "type": "float", "symmetric": True, "group_size": None,
            "strategy": "tensor", "block_structure": None, "dynamic": False, "actorder": None,
            "observer": None}
    base.update(kw)
    return base


# ---- the scheme of one layer --------------------------------------------------------------------
def weight_scheme(r: Recipe, shape) -> tuple[str, dict]:
    """(compression format, weights args) for a weight recipe; ValueError when no
    compressed-tensors scheme stores it."""
    n, k = shape
    el, g, sf = r.format.name, r.granularity, r.scale_format

    def need(block):
        if k % block:
            raise ValueError(f"{r.name} weight of shape {tuple(shape)}: compressed-tensors "
                             f"needs in_features divisible by {block}")
    if el == "e2m1" and g == "group" and r.block == 16 and sf == "e4m3":
        need(16)
        return "nvfp4-pack-quantized", _args(num_bits=4, group_size=16, strategy="tensor_group",
                                             scale_dtype=E4M3)
    if el == "e2m1" and g == "group" and r.block == 32 and sf == "e8m0":
        need(32)
        return "mxfp4-pack-quantized", _args(num_bits=4, group_size=32, strategy="group",
                                             scale_dtype="torch.uint8")
    if el == "e4m3" and g == "group" and r.block == 32 and sf == "e8m0":
        need(32)
        return "mxfp8-quantized", _args(group_size=32, strategy="group",
                                        scale_dtype="torch.uint8")
    if el == "e4m3" and sf == "fp32" and g in ("tensor", "row", "block2d"):
        if g == "block2d":
            return "float-quantized", _args(strategy="block", block_structure=list(r.block))
        return "float-quantized", _args(strategy="tensor" if g == "tensor" else "channel")
    if el in ("int4", "uint4") and sf in ("fp32", "fp16", "bf16") and (g == "group" or (
            g == "channel" and r.axis in (0, -2))):
        need(r.block if g == "group" else 8)
        need(8)
        if n % 8 and el == "uint4":
            raise ValueError(f"asymmetric INT4 weight of shape {tuple(shape)}: the packed zero "
                             f"points need out_features divisible by 8")
        half = {"scale_dtype": HALF_SCALE_DTYPES[sf]} if sf in HALF_SCALE_DTYPES else {}
        return "pack-quantized", _args(num_bits=4, type="int", symmetric=el == "int4",
                                       group_size=r.block if g == "group" else None,
                                       strategy=g, **half)
    raise ValueError(f"weight recipe {r.name!r} has no compressed-tensors scheme here: export "
                     f"NVFP4, MXFP4, MXFP8 (E4M3), FP8 E4M3 (tensor, row, 128x128) or INT4 "
                     f"(group, channel; symmetric or asymmetric) weights")


def input_scheme(layer, input_amax: float | None, weight_format: str) -> dict | None:
    """The input_activations args of a layer (None: weight-only)."""
    a = layer.config.activation
    if a is None:
        return None
    el, g = a.format.name, a.granularity
    if weight_format == "nvfp4-pack-quantized" and a.name == "nvfp4":
        if input_amax is None:
            raise ValueError("NVFP4 W4A4 stores a calibrated input global scale: pass "
                             "calibration=batches to save_quantized")
        return _args(num_bits=4, group_size=16, strategy="tensor_group", dynamic="local",
                     scale_dtype=E4M3, observer="static_minmax")
    if weight_format == "float-quantized" and el == "e4m3" and a.scale_format == "fp32":
        if g == "tensor":
            return _args(dynamic=layer.act_amax is None)
        if g == "row":
            return _args(strategy="token", dynamic=True)
        if g == "group" and a.block == 128:
            return _args(strategy="group", group_size=128, dynamic=True)
    raise ValueError(f"activation recipe {a.name!r} with {weight_format} weights has no "
                     f"compressed-tensors scheme here: use NVFP4 W4A4, FP8 activations "
                     f"(tensor static/dynamic, per token, 1x128) with FP8 weights, or none")


def layer_scheme(layer, input_amax=None) -> tuple[str, dict, dict | None]:
    fmt, w = weight_scheme(layer.config.weight, (layer.out_features, layer.in_features))
    return fmt, w, input_scheme(layer, input_amax, fmt)


# ---- tensors ------------------------------------------------------------------------------------
def pack_int4(codes: torch.Tensor, symmetric: bool = True) -> torch.Tensor:
    """quantlib's packed INT4 bytes -> compressed-tensors' int32 words (each element q + 8,
    eight per word, element i in bits 4i..4i+3; little-endian bytes). Symmetric: q + 8 is the
    two's-complement nibble XOR 8. Asymmetric: quantlib's unsigned code u = q + 8 already (and
    its zero point z = zp + 8), so the bytes go as they are."""
    b = (codes ^ (0x88 if symmetric else 0)).contiguous()
    return b.reshape(-1).view(torch.int32).reshape(b.shape[0], -1)


def unpack_int4(words: torch.Tensor, symmetric: bool = True) -> torch.Tensor:
    w = words.contiguous()
    return w.reshape(-1).view(torch.uint8).reshape(w.shape[0], -1) ^ (0x88 if symmetric else 0)


def pack_zero_point(z: torch.Tensor) -> torch.Tensor:
    """Asymmetric zero points uint8 [N, G] (0..15) -> int32 [N/8, G] packed along dim 0."""
    zt = z.T.contiguous()
    words = pack_nibbles(zt).reshape(-1).view(torch.int32)
    return words.reshape(zt.shape[0], -1).T.contiguous()


def unpack_zero_point(words: torch.Tensor) -> torch.Tensor:
    wt = words.T.contiguous()
    return unpack_nibbles(wt.reshape(-1).view(torch.uint8).reshape(wt.shape[0], -1)).T.contiguous()


def global_scale(tensor_scale: torch.Tensor) -> torch.Tensor:
    """compressed-tensors' divisor from quantlib's tensor scale (a multiplier): fl(1 / s_t)."""
    return (1.0 / tensor_scale.float()).reshape(1)


def layer_tensors(layer, fmt: str, input_amax=None) -> dict:
    """The checkpoint tensors of one layer, by local name."""
    qt = layer.qweight
    n, k = qt.shape
    out = {}
    if fmt in ("nvfp4-pack-quantized", "mxfp4-pack-quantized"):
        out["weight_packed"] = qt.codes.contiguous()
        if fmt.startswith("nvfp4"):
            out["weight_scale"] = qt.scales.view(torch.float8_e4m3fn)
            out["weight_global_scale"] = global_scale(qt.tensor_scale)
            if input_amax is not None:
                _, s_in, _, _ = nvfp4_scale(torch.ones(1), torch.tensor(float(input_amax)), 6.0)
                out["input_global_scale"] = global_scale(s_in)
        else:
            out["weight_scale"] = qt.scales.contiguous()
    elif fmt == "mxfp8-quantized":
        out["weight"] = qt.codes.view(torch.float8_e4m3fn)
        out["weight_scale"] = qt.scales.contiguous()
    elif fmt == "float-quantized":
        out["weight"] = qt.codes.view(torch.float8_e4m3fn)
        g = layer.config.weight.granularity
        out["weight_scale"] = qt.scales.float().reshape(1) if g == "tensor" else \
            qt.scales.float().reshape(n, 1) if g == "row" else qt.scales.float().contiguous()
        if layer.act_amax is not None:
            out["input_scale"] = fp32_scale(layer.act_amax.float().reshape(1), 448.0)[0]
    elif fmt == "pack-quantized":
        out["weight_packed"] = pack_int4(qt.codes, qt.zero_point is None)
        sc = qt.scales if qt.scales.dtype in (torch.float16, torch.bfloat16) else \
            qt.scales.float()             # half scales go as stored: they encoded the codes
        out["weight_scale"] = sc.reshape(n, -1).contiguous()
        out["weight_shape"] = torch.tensor([n, k], dtype=torch.int64)
        if qt.zero_point is not None:
            out["weight_zero_point"] = pack_zero_point(qt.zero_point.reshape(n, -1))
    return out


# ---- writing ------------------------------------------------------------------------------------
KV_CACHE_SCHEME = _args()      # FP8 E4M3, per tensor, symmetric, static: k_scale / v_scale


def quantization_config(schemes: dict, ignore: list[str]) -> dict:
    """`quantization_config` for config.json from {layer: (format, weights, inputs)}: one config
    group per distinct scheme; `format: mixed-precision` (and a format per group) when they
    differ."""
    groups: dict[str, dict] = {}
    for name, (fmt, w, a) in schemes.items():
        key = repr((fmt, sorted(w.items()), a and sorted(a.items())))
        groups.setdefault(key, {"targets": [], "weights": w, "input_activations": a,
                                "output_activations": None, "format": fmt})["targets"].append(name)
    mixed = len(groups) > 1
    cg = {}
    for i, g in enumerate(groups.values()):
        if not mixed:
            g["targets"], g["format"] = ["Linear"], None
        cg[f"group_{i}"] = g
    fmt = "mixed-precision" if mixed else next(iter(groups.values()))["format"] or \
        next(iter(schemes.values()))[0]
    return {"quant_method": "compressed-tensors", "format": fmt, "config_groups": cg,
            "ignore": ignore, "kv_cache_scheme": None, "quantization_status": "compressed",
            "global_compression_ratio": None, "sparsity_config": {}}


def export(model, input_amax: dict, kv_cache: bool = False) -> tuple[dict, dict]:
    """(quantization_config, {name: tensor}) of a quantized model's quantized layers; with
    kv_cache, the config declares static FP8 KV-cache scales (`kv_cache_scheme`)."""
    layers = _core.quant_layers(model)
    _core.check_fused(layers, input_amax, _core.linear_names(model))
    schemes, tensors = {}, {}
    for name, q in layers.items():
        try:
            schemes[name] = layer_scheme(q, input_amax.get(name))
        except ValueError as e:
            raise ValueError(f"layer {name!r}: {e}") from None
        amax = input_amax.get(name) if schemes[name][2] is not None else None
        for k, t in layer_tensors(q, schemes[name][0], amax).items():
            tensors[f"{name}.{k}"] = t
    qc = quantization_config(schemes, _core.unquantized_linears(model))
    if qc["format"] != "mixed-precision":
        qc["format"] = next(iter(schemes.values()))[0]
    if kv_cache:
        qc["kv_cache_scheme"] = dict(KV_CACHE_SCHEME)
    return qc, tensors


# ---- reading ------------------------------------------------------------------------------------
def _matches(name: str, target: str) -> bool:
    if target.startswith("re:"):
        return re.match(target[3:], name) is not None
    return name == target or target in ("Linear",)


def _group_of(name: str, groups: dict) -> dict:
    named = [g for g in groups.values() if any(t != "Linear" and _matches(name, t)
                                               for t in g.get("targets", []))]
    hits = named or [g for g in groups.values() if "Linear" in g.get("targets", [])]
    if not hits:
        raise ValueError(f"{name!r} has quantized tensors but no config group targets it")
    return hits[0]


def recipe_of(w: dict, shape, scale_dtype=None) -> Recipe:
    """The quantlib recipe of a compressed-tensors weights scheme; for INT4, `scale_dtype` (the
    dtype of the stored weight_scale) torch.float16/bfloat16 selects the fp16/bf16 scale
    format, so the scales that encoded the codes are kept as they are."""
    bits, typ, strat = w["num_bits"], w["type"], w["strategy"]
    gs = w.get("group_size")
    if typ == "float" and bits == 4 and gs == 16:
        return RECIPES["nvfp4"]
    if typ == "float" and bits == 4 and gs == 32:
        return RECIPES["mxfp4"]
    if typ == "float" and bits == 8 and strat == "group" and gs == 32:
        return RECIPES["mxfp8_e4m3"]
    if typ == "float" and bits == 8 and strat in ("tensor", "channel", "block"):
        if strat == "block":
            bs = tuple(w["block_structure"])
            return Recipe(f"fp8_e4m3_{bs[0]}x{bs[1]}", "e4m3", "block2d", bs, pad=True)
        return RECIPES["fp8_e4m3_tensor" if strat == "tensor" else "fp8_e4m3_rowwise"]
    if typ == "int" and bits == 4 and strat in ("group", "channel"):
        el = "int4" if w.get("symmetric", True) else "uint4"
        sf = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(scale_dtype, "fp32")
        tail = "" if sf == "fp32" else f"_{sf}"
        if strat == "channel":
            return Recipe("int4_channel" + ("" if el == "int4" else "_asym") + tail, el,
                          "channel", axis=0, scale_format=sf)
        name = f"int4_g{gs}" + ("" if el == "int4" else "_asym") + tail
        return RECIPES.get(name) or Recipe(name, el, "group", gs, scale_format=sf)
    raise ValueError(f"compressed-tensors weights {w} are not a scheme quantlib reads "
                     f"(NVFP4, MXFP4, MXFP8, FP8 tensor/channel/block, INT4 group/channel)")


def read(config: dict, tensors: dict) -> dict:
    """{module: QuantizedTensor}, input scales and KV scales of a compressed-tensors folder."""
    qc = config["quantization_config"]
    groups = qc.get("config_groups", {})
    weights, inputs = {}, {}
    mods = set(_core.modules_with(tensors, "weight_scale"))
    for m in sorted(mods):
        g = _group_of(m, groups)
        w = g["weights"]
        sc = tensors[f"{m}.weight_scale"]
        if f"{m}.weight_packed" in tensors and w["type"] == "int":
            n, k = (int(v) for v in tensors[f"{m}.weight_shape"])
            if f"{m}.weight_g_idx" in tensors:
                gi = tensors[f"{m}.weight_g_idx"].long()
                if not torch.equal(gi, torch.arange(k) // (w.get("group_size") or k)):
                    raise ValueError(f"{m}: weight_g_idx puts columns in groups out of order "
                                     f"(GPTQ act-order with dynamic groups); a QuantizedTensor "
                                     f"holds contiguous groups only")
            r = recipe_of(w, (n, k), sc.dtype)
            codes = unpack_int4(tensors[f"{m}.weight_packed"], w.get("symmetric", True))
            codes = codes[:, :(k + 1) // 2]
            zp = tensors.get(f"{m}.weight_zero_point")
            zp = None if zp is None else unpack_zero_point(zp)[:n].to(torch.uint8)
            shape = torch.Size((n, k))
            sc = sc if r.scale_format in HALF_SCALE_DTYPES else sc.float()
            qt = QuantizedTensor(codes, sc.reshape(_sshape(r, shape)), r, shape,
                                 torch.bfloat16, zero_point=None if zp is None else
                                 zp.reshape(_sshape(r, shape)))
        elif f"{m}.weight_packed" in tensors:
            codes = tensors[f"{m}.weight_packed"]
            shape = torch.Size((codes.shape[0], codes.shape[1] * 2))
            r = recipe_of(w, shape)
            ts = None
            if r.scale_format == "e4m3":
                ts = (1.0 / tensors[f"{m}.weight_global_scale"].float()).reshape(())
                sc = sc.view(torch.uint8)
            qt = QuantizedTensor(codes, sc.contiguous(), r, shape, torch.bfloat16,
                                 tensor_scale=ts)
        else:
            wt = tensors[f"{m}.weight"]
            if wt.dtype != torch.float8_e4m3fn:
                raise ValueError(f"{m}: a {wt.dtype} weight with weight_scale (scheme {w}) is "
                                 f"not a layout quantlib reads (NVFP4, MXFP4, MXFP8, FP8, INT4)")
            shape = wt.shape
            r = recipe_of(w, shape)
            sc = sc.contiguous() if r.scale_format == "e8m0" else \
                sc.float().reshape(_sshape(r, shape))
            qt = QuantizedTensor(wt.view(torch.uint8), sc, r, shape, torch.bfloat16)
        weights[m] = qt
        if f"{m}.input_global_scale" in tensors:
            inputs[m] = (1.0 / tensors[f"{m}.input_global_scale"].float()).reshape(())
        elif f"{m}.input_scale" in tensors:
            inputs[m] = tensors[f"{m}.input_scale"].float().reshape(())
    return {"weights": weights, "input_scales": inputs, "kv_scales": read_kv(tensors)}


def _sshape(r, shape):
    from quantlib.scaling import scale_shape
    return scale_shape(r, shape)


__all__ = ["export", "read", "weight_scheme", "layer_scheme", "layer_tensors",
           "quantization_config", "pack_int4", "unpack_int4", "pack_zero_point",
           "unpack_zero_point", "global_scale", "recipe_of"]
