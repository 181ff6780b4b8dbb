"""Weight and KV-cache memory at inference, by storage format, block-scale overhead included.

A block-scaled format stores `element_bits` per value plus one `scale_bits` scale per `block`
values, so bits_per_element = element_bits + scale_bits / block:
MXFP8 = 8 + 8/32 = 8.25, MXFP4 = 4 + 8/32 = 4.25, NVFP4 = 4 + 8/16 = 4.5 (its one FP32
per-tensor scale is 32 bits per tensor, negligible, and not counted). INT4 with one scale per
group of 128 costs 4 + 32/128 = 4.25 bits with the FP32 scales `quantlib.recipes`' "int4_g128"
keeps, and 4 + 16/128 = 4.125 bits with the FP16 scales GPTQ/AWQ-style checkpoints store
(compressed-tensors' pack-quantized, Marlin; the recipe "int4_g128_fp16"); asymmetric ones add
a 4-bit zero point per group, packed eight to an int32: 4 + 20/128 = 4.156 bits (AWQ; GPTQ's
own format keeps these zero points even when symmetric; the recipe "int4_g128_asym_fp16" holds
them one byte each in memory, 4.1875 bits, and packs them on export). Element, scale format and
block of the block formats come from `quantlib.recipes`, so the book has one definition of each.

Weights need every parameter, MoE experts included (`param_count`); what a token reads at
decode time is its active parameters (`param_count(..., active=True)`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from quantlib.formats import get_format
from quantlib.memory.config import ModelConfig, _as_config, param_count
from quantlib.memory.units import to_unit
from quantlib.recipes import RECIPES, get_recipe
from quantlib.table import Table


@dataclass(frozen=True)
class StorageFormat:
    """How a tensor is stored: an element format plus, for block formats, one scale per block."""
    name: str
    element: str               # quantlib.formats name of the elements ("e2m1", "int4", ...)
    scale: str | None = None   # quantlib.formats name of the block scales
    block: int | None = None   # elements per scale
    zero_point_bits: int = 0   # asymmetric INT: one zero point per block too

    @property
    def element_bits(self) -> int:
        return get_format(self.element).bits

    @property
    def scale_bits(self) -> int:
        """Bits stored per block: the scale, plus the zero point of asymmetric formats."""
        return (get_format(self.scale).bits if self.scale else 0) + self.zero_point_bits

    @property
    def bits_per_element(self) -> float:
        """element_bits + scale_bits / block: the storage cost of one value, scales included."""
        return self.element_bits + (self.scale_bits / self.block if self.block else 0.0)

    def element_bytes(self, n: int) -> int:
        """Bytes of `n` packed elements (sub-byte elements packed, rounded up to a byte)."""
        return math.ceil(n * self.element_bits / 8)

    def scale_bytes(self, n: int) -> int:
        """Bytes of the scales of `n` elements: ceil(n / block) scales."""
        return math.ceil(math.ceil(n / self.block) * self.scale_bits / 8) if self.block else 0

    def nbytes(self, n: int) -> int:
        return self.element_bytes(n) + self.scale_bytes(n)


def _from_recipe(name: str, recipe) -> StorageFormat:
    """The storage cost of a `quantlib.recipes` recipe: its element format, scale format and block
    (a per-tensor scale is a few bytes per tensor and is not counted)."""
    r = get_recipe(recipe)
    scale = {"pow2": "fp32"}.get(r.scale_format, r.scale_format)  # power-of-two scales in FP32
    if r.granularity == "tensor":
        return StorageFormat(name, r.element)
    if r.granularity == "group":
        return StorageFormat(name, r.element, scale, r.block, 8 if r.asymmetric else 0)
    if r.granularity == "block2d":
        return StorageFormat(name, r.element, scale, r.block[0] * r.block[1])
    raise ValueError(f"recipe {r.name!r} has one scale per {r.granularity}: its overhead depends "
                     f"on the tensor's shape; use a block recipe or a plain format")


STORAGE_FORMATS: dict[str, StorageFormat] = {f.name: f for f in [
    StorageFormat("FP32", "fp32"),
    StorageFormat("FP16", "fp16"),
    StorageFormat("BF16", "bf16"),
    StorageFormat("FP8", "e4m3"),        # per-tensor scale: one FP32 per tensor, not counted
    StorageFormat("INT8", "int8"),
    StorageFormat("INT4", "int4"),
    _from_recipe("MXFP8", "mxfp8_e4m3"),
    _from_recipe("MXFP6", "mxfp6_e2m3"),
    _from_recipe("MXFP4", "mxfp4"),
    _from_recipe("NVFP4", "nvfp4"),
    # GPTQ/AWQ-style checkpoints: FP16 scale per group of 128, zero points packed 4-bit.
    StorageFormat("INT4 g128 FP16", "int4", "fp16", 128),
    StorageFormat("INT4 g128 FP16+zp", "uint4", "fp16", 128, 4),
]}


def _key(name: str) -> str:
    return "".join(ch for ch in str(name).upper() if ch not in " -_+/")


_BY_KEY = {_key(f.name): f for f in STORAGE_FORMATS.values()}
_BY_KEY[_key("INT4 g128 FP16 zp")] = STORAGE_FORMATS["INT4 g128 FP16+zp"]


def storage_format(name: str | StorageFormat, group_size: int | None = None) -> StorageFormat:
    """Look a storage format up by name (case-insensitive), or take any block recipe of
    `quantlib.recipes` by its name ("fp8_e4m3_1x128"). `group_size` adds one FP32 scale per group
    to an integer format, as the recipes store them: storage_format("INT4", 128) is
    4 + 32/128 = 4.25 bits (the recipe "int4_g128"); a GPTQ/AWQ checkpoint's layout is
    "INT4 g128 FP16" (4.125 bits) or, with zero points, "INT4 g128 FP16+zp" (4.156 bits)."""
    if isinstance(name, StorageFormat):
        fmt = name
    else:
        key = _key(name)
        aliases = {"FLOAT32": "FP32", "FLOAT16": "FP16", "BFLOAT16": "BF16", "E4M3": "FP8",
                   "FP8E4M3": "FP8"}
        key = aliases.get(key, key)
        if key in _BY_KEY:
            fmt = _BY_KEY[key]
        elif str(name).strip().lower() in RECIPES:
            fmt = _from_recipe(str(name).strip().lower(), str(name).strip().lower())
        else:
            raise ValueError(f"unknown weight format {name!r}; valid formats: "
                             f"{', '.join(STORAGE_FORMATS)} (INT8/INT4 take group_size=...), or "
                             f"a block recipe name from quantlib.recipes")
    if group_size is not None:
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size <= 0:
            raise ValueError(f"group_size must be a positive int, got {group_size!r}")
        if fmt.block is not None or not get_format(fmt.element).is_int:
            raise ValueError(f"group_size applies to INT8/INT4 (FP32 scale per group); "
                             f"{fmt.name} has its own scaling")
        fmt = StorageFormat(f"{fmt.name} g{group_size} FP32", fmt.element, "fp32", group_size)
    return fmt


def bits_per_element(name: str | StorageFormat, group_size: int | None = None) -> float:
    """Storage bits per value, scales included: FP32 32, BF16 16, FP8 8, INT4 4 (4.25 with
    group_size=128), MXFP8 8.25, MXFP6 6.25 (packed), MXFP4 4.25, NVFP4 4.5."""
    return storage_format(name, group_size).bits_per_element


@dataclass(frozen=True)
class InferenceMemory:
    """Weight memory of a model stored in one format (bytes as ints)."""
    model: str
    format: str
    bits_per_element: float
    parameters: int
    weight_bytes: int    # the packed elements
    scale_bytes: int     # the block scales

    @property
    def total(self) -> int:
        return self.weight_bytes + self.scale_bytes


def inference_memory(config: ModelConfig | str, fmt: str = "BF16",
                     group_size: int | None = None) -> InferenceMemory:
    """Bytes to hold every parameter in `fmt` (all parameters, embeddings and every MoE expert
    included, in one format)."""
    c, f = _as_config(config), storage_format(fmt, group_size)
    n = param_count(c)
    return InferenceMemory(c.name, f.name, f.bits_per_element, n, f.element_bytes(n),
                           f.scale_bytes(n))


# The rule-of-thumb figures quoted for Llama-2-7B: 7e9 parameters x bytes per element.
RULE_OF_THUMB_GB = {"FP32": 28, "FP16": 14, "BF16": 14, "FP8": 7, "INT4": 3.5}


def inference_table(config: ModelConfig | str = "Llama-2-7B",
                    formats=("FP32", "BF16", "FP8", "INT4", "MXFP8", "MXFP4", "NVFP4"),
                    group_size: int | None = None) -> Table:
    """Weight memory by format: exact GB (10^9) and GiB (2^30), the scales' share, and for
    Llama-2-7B the rule-of-thumb figure (7e9 parameters x bytes per element)."""
    c = _as_config(config)
    title = f"{c.name}: {param_count(c):,} parameters"
    if c.is_moe:
        title += f" ({param_count(c, active=True):,} active per token)"
    t = Table(["format", "bits/element", "weights GB", "scales GB", "total GB", "total GiB",
               "rule of thumb"], title=title, digits=2)
    for name in formats:
        m = inference_memory(c, name, group_size if name.upper().startswith("INT") else None)
        seed = RULE_OF_THUMB_GB.get(m.format)
        t.append([m.format, f"{m.bits_per_element:g}", to_unit(m.weight_bytes),
                  to_unit(m.scale_bytes),
                  to_unit(m.total), to_unit(m.total, "GiB"),
                  f"~{seed:g} GB" if seed and c.name == "Llama-2-7B" else "-"])
    return t


def kv_cache_memory(config: ModelConfig | str, batch_size: int, seq_len: int,
                    fmt: str = "BF16") -> int:
    """Bytes of the KV cache: K and V for every layer, batch element, position and key/value head:
    2 * batch * seq_len * layers * kv_heads * head_dim elements in `fmt` (block scales along
    head_dim counted per head vector). MLA caches one vector per position and layer instead: the
    compressed latent and the shared RoPE key, kv_lora_rank + qk_rope_head_dim values (DeepSeek-V2
    paper, section 2.1; block scales along that vector)."""
    c, f = _as_config(config), storage_format(fmt)
    for n, v in (("batch_size", batch_size), ("seq_len", seq_len)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{n} must be a positive int, got {v!r}")
    if c.is_mla:
        return batch_size * seq_len * c.num_hidden_layers * f.nbytes(c.kv_cache_width)
    vectors = 2 * batch_size * seq_len * c.num_hidden_layers * c.num_key_value_heads
    return vectors * f.nbytes(c.head_dim)


def kv_cache_table(config: ModelConfig | str = "Llama-2-7B", batch_size: int = 1,
                   seq_lens=(2048, 8192, 32768, 131072),
                   formats=("BF16", "FP8", "MXFP8", "NVFP4")) -> Table:
    """KV-cache GB by context length (rows) and format (columns), next to the weights in BF16."""
    c = _as_config(config)
    shape = (f"MLA latent {c.kv_lora_rank} + RoPE key {c.qk_rope_head_dim}" if c.is_mla else
             f"{c.num_key_value_heads} KV heads x {c.head_dim}")
    t = Table(["seq_len", *[f"{storage_format(f).name} GB" for f in formats]],
              title=f"{c.name} KV cache, batch {batch_size} "
                    f"({shape}; BF16 weights "
                    f"{to_unit(inference_memory(c).total):.2f} GB)", digits=2)
    for s in seq_lens:
        t.append([s, *[to_unit(kv_cache_memory(c, batch_size, s, f)) for f in formats]])
    return t


def scale_overhead_table(formats=("FP8", "MXFP8", "MXFP6", "MXFP4", "NVFP4", "INT4 g128 FP16",
                                  "INT4 g128 FP16+zp"),
                         group_sizes=(128, 64, 32)) -> Table:
    """Bits per element of each format: element bits + scale bits / block (zero points
    included), and the scales' share of the storage (then INT4 with FP32 group scales, as
    `quantlib.recipes` keeps them, for each of `group_sizes`)."""
    t = Table(["format", "element", "element bits", "scale", "block", "bits/element",
               "scale overhead %"], title="Block-scale overhead (zero points included)",
              digits=3)
    fmts = [storage_format(f) for f in formats]
    fmts += [storage_format("INT4", g) for g in group_sizes]
    for f in fmts:
        t.append([f.name, get_format(f.element).title, f.element_bits,
                  get_format(f.scale).title if f.scale else "per tensor",
                  f.block or "-", f.bits_per_element,
                  100 * (f.bits_per_element / f.element_bits - 1)])
    return t


def moe_table(names=("Mixtral-8x7B", "Qwen3-30B-A3B", "DeepSeek-V3"), fmt: str = "BF16",
              seq_len: int = 32768) -> Table:
    """Total against active parameters of MoE models: the weights to hold (every expert) and
    the weights one token reads (its experts only, in `fmt`), and the KV cache of one sequence
    of `seq_len` tokens in BF16."""
    f = storage_format(fmt)
    t = Table(["model", "experts per token", "total params (B)", "active params (B)", "active %",
               f"weights {f.name} GB", f"read per token {f.name} GB",
               f"KV cache {seq_len // 1024}K BF16 GB"],
              title=f"Mixture of experts: total vs active parameters ({f.name} weights)",
              digits=2)
    for n in names:
        c = _as_config(n)
        total, active = param_count(c), param_count(c, active=True)
        experts = (f"{c.num_experts_per_tok} of {c.num_experts}"
                   + (" + shared" if c.shared_expert_intermediate_size else "")
                   if c.is_moe else "dense")
        t.append([c.name, experts, total / 1e9, active / 1e9, 100 * active / total,
                  to_unit(f.nbytes(total)), to_unit(f.nbytes(active)),
                  to_unit(kv_cache_memory(c, 1, seq_len))])
    return t
