"""Peers timed beside quantlib in the same run: torch's tinygemm INT4 kernel (the one behind
torchao's INT4 weight-only), `torch.ops.aten._weight_int4pack_mm`, in every CUDA build of torch
(a CPU twin, `_weight_int4pack_mm_for_cpu`, serves dry runs).

tinygemm computes w = (q - 8) * scale + zero with q unsigned 4-bit and BF16 (scale, zero) per
group, packed once into its own tiled layout (`_convert_weight_to_int4pack`). A quantlib INT4
weight maps onto it exactly up to the BF16 rounding of the scales: symmetric q_s * s is
(q_s + 8 - 8) * s + 0; asymmetric (q - z) * s is (q - 8) * s + (8 - z) * s.
"""
from __future__ import annotations

import torch
from torch import nn

INNER_K_TILES = 8       # torchao's default; K must be a multiple of 16 * INNER_K_TILES


def tinygemm_weight(qt):
    """(packed weight, scales_and_zeros (K/g, N, 2) bf16, group) from an INT4 QuantizedTensor
    with one FP32 scale per group (symmetric "int4" or asymmetric "uint4" codes)."""
    from quantlib.packing import unpack_nibbles
    r = qt.recipe
    if r.granularity != "group" or r.element not in ("int4", "uint4"):
        raise ValueError(f"tinygemm takes INT4 weights with group scales, not {r.name!r}")
    N, K = qt.shape
    q = unpack_nibbles(qt.codes).to(torch.int32)[:, :K]
    s = qt.scales.float().reshape(N, -1)
    if r.element == "int4":         # two's complement nibble -> offset binary, zero 0
        q = (q ^ 8)
        z = torch.zeros_like(s)
    else:
        z = (8 - qt.zero_point.float().reshape(N, -1)) * s
    sz = torch.stack([s.t(), z.t()], -1).to(torch.bfloat16).contiguous()
    tiles = INNER_K_TILES if K % (16 * INNER_K_TILES) == 0 else 2
    if q.device.type == "cuda":     # uint8 (N, K/2), element 2i in the HIGH nibble
        packed = torch.ops.aten._convert_weight_to_int4pack(
            ((q[:, ::2] << 4) | q[:, 1::2]).to(torch.uint8), tiles)
    else:
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.contiguous(), tiles)
    return packed, sz, r.block


def tinygemm_mm(x, packed, group, sz):
    """x (M, K) bf16 @ dequant(w)^T through tinygemm (CUDA) or its CPU twin."""
    if x.device.type == "cuda":
        return torch.ops.aten._weight_int4pack_mm(x, packed, group, sz)
    return torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, group, sz)


class TinyGemmLinear(nn.Module):
    """An nn.Linear replaced by tinygemm INT4 (its weight quantized with `recipe`)."""

    def __init__(self, linear: nn.Linear, recipe="int4_g128"):
        super().__init__()
        from quantlib.qtensor import quantize
        self.out_features = linear.out_features
        packed, sz, self.group = tinygemm_weight(quantize(linear.weight.detach().float(),
                                                          recipe))
        self.register_buffer("packed", packed)
        self.register_buffer("scales_and_zeros", sz)
        self.register_buffer("bias", None if linear.bias is None else
                             linear.bias.detach().to(torch.bfloat16))

    def forward(self, x):
        y = tinygemm_mm(x.reshape(-1, x.shape[-1]).to(torch.bfloat16).contiguous(),
                        self.packed, self.group, self.scales_and_zeros)
        if self.bias is not None:
            y = y + self.bias
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)


def tinygemm_model(model: nn.Module, skip=("lm_head",), recipe="int4_g128") -> nn.Module:
    """`model` with every nn.Linear but those named in `skip` swapped for TinyGemmLinear, in
    place."""
    for name, mod in list(model.named_modules()):
        for child_name, child in list(mod.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if isinstance(child, nn.Linear) and not any(s in full for s in skip):
                setattr(mod, child_name, TinyGemmLinear(child, recipe))
    return model
