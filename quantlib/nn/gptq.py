"""GPTQ (Frantar et al., 2022): quantize a weight one column at a time, pushing each column's
rounding error onto the columns not yet quantized, weighted by the inverse Hessian of the layer's
loss ||X W^T - X Q^T||^2, H = 2 X^T X / n over calibration inputs X.

Where it applies: weight-only recipes with few bits (INT4, FP4: NVFP4, MXFP4), where round-to-
nearest loses accuracy; it needs a few hundred calibration tokens per layer and one forward pass
per layer. At 8 bits round-to-nearest is already close to lossless. Activations are not changed.

Scales are fixed before the column loop from the original weight (AutoGPTQ's `static_groups`,
with the recipe's calibrator, e.g. MSE clipping); GPTQ then only chooses the codes. That keeps the
result a plain `QuantizedTensor` of the recipe and makes act-order (columns by decreasing
Hessian diagonal) compatible with groups.
"""
from __future__ import annotations

import dataclasses

import torch

from quantlib.codecs import decode, encode
from quantlib.nn.calibrate import check_finite_inputs, element_scales, fixed_amax
from quantlib.packing import pack_nibbles
from quantlib.qtensor import QuantizedTensor, quantize
from quantlib.recipes import get_recipe
from quantlib.scaling import FLT_MAX, blocked, group_amax, pad_to_blocks


def hessian(inputs: torch.Tensor) -> torch.Tensor:
    """H = 2 X^T X / n of a layer's inputs X (n rows of in_features), float64 for accuracy."""
    if not isinstance(inputs, torch.Tensor) or not inputs.is_floating_point() or inputs.dim() < 1:
        raise TypeError(f"hessian takes a floating-point tensor of layer inputs (rows, "
                        f"in_features), got {getattr(inputs, 'dtype', type(inputs).__name__)}")
    x = inputs.reshape(-1, inputs.shape[-1]).double()
    if len(x) == 0:
        raise ValueError("GPTQ needs calibration inputs: got 0 rows for this layer")
    check_finite_inputs(x, "GPTQ's calibration inputs")
    return 2.0 * x.T @ x / len(x)


def element_grid(weight: torch.Tensor, recipe):
    """Fix the recipe's scales for `weight` (2-D): returns round_cols(cols, j), which rounds any
    columns j onto the grid of those scales, and a calibrator replaying their amax (None for
    asymmetric recipes, whose scales come from min/max)."""
    recipe = get_recipe(recipe)
    replay = None
    if not recipe.asymmetric:        # the calibrator (e.g. an MSE search) runs once, here
        wb, dims = blocked(pad_to_blocks(weight.detach().float(), recipe), recipe)
        amax = group_amax(wb, dims, recipe.calibrator).reshape(-1)
        amax_t = None
        if recipe.scale_format == "e4m3":      # two-level: the tensor amax is asked separately
            whole = wb.reshape(1, -1)
            amax_t = recipe.calibrator(whole, -1) if recipe.calibrator else whole.abs().amax(-1)
            amax_t = amax_t.reshape(()).float()
        replay = fixed_amax(amax, amax_t)
        recipe = dataclasses.replace(recipe, calibrator=replay)
    es = element_scales(weight, recipe)
    s, r, z = es["s"], es["r"], es["z"]
    fmt, fixed = recipe.format, (64.0 if recipe.mx_int8 else 1.0)

    def round_cols(cols: torch.Tensor, j) -> torch.Tensor:
        y = cols * r[:, j]
        if z is not None:                          # asymmetric: q = clamp(round(y) + z) - z
            return (torch.clamp(torch.round(y) + z[:, j], 0, fmt.max) - z[:, j]) * s[:, j]
        if fmt.is_int and fixed == 1.0:            # INT: RNE and saturation, as encode does
            return torch.clamp(torch.round(y), fmt.min, fmt.max) * s[:, j]
        q = decode(encode(y * fixed, fmt, rounding="rne", overflow="saturate"), fmt)
        return (q * (1.0 / fixed) if fixed != 1.0 else q) * s[:, j]

    return round_cols, replay


def gptq_quantize(weight: torch.Tensor, H: torch.Tensor, recipe, block_size: int = 128,
                  damp: float = 0.01, act_order: bool = True):
    """GPTQ on one weight (out_features, in_features) with Hessian H (in, in).

    Returns (QuantizedTensor, dequantized float32 weight). `damp` adds damp * mean(diag H) to the
    diagonal (numerical stability); inputs that are always zero get their weights zeroed."""
    recipe = get_recipe(recipe)
    if not isinstance(weight, torch.Tensor) or not isinstance(H, torch.Tensor):
        raise TypeError(f"gptq_quantize takes tensors weight and H, got "
                        f"{type(weight).__name__} and {type(H).__name__}")
    if weight.dim() != 2 or H.shape != (weight.shape[1], weight.shape[1]):
        raise ValueError(f"need a 2-D weight (N, K) and a (K, K) Hessian, got "
                         f"{tuple(weight.shape)} and {tuple(H.shape)}")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size={block_size!r}: GPTQ's lazy-update block is a positive "
                         f"number of columns (128 is usual)")
    if isinstance(damp, bool) or not isinstance(damp, (int, float)) or not 0 <= damp < 1e6 \
            or damp != damp:
        raise ValueError(f"damp={damp!r}: the dampening is a non-negative fraction of the mean "
                         f"Hessian diagonal (0.01 is usual; raise it if H is singular)")
    check_finite_inputs(weight.detach(), "the weight")
    check_finite_inputs(H.detach(), "the Hessian H")
    k = weight.shape[1]
    W = weight.detach().float().clone()
    H = H.detach().double().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    W0 = W.clone()
    round_cols, replay = element_grid(W0, recipe)   # scales fixed from the (cleaned) weight

    perm = torch.argsort(torch.diag(H), descending=True, stable=True) if act_order \
        else torch.arange(k)
    W, H = W[:, perm], H[perm][:, perm]
    H += damp * torch.mean(torch.diag(H)) * torch.eye(k, dtype=H.dtype)
    # upper Cholesky factor of H^-1: row i holds the update of columns >= i (OBS in closed form);
    # the factorisations in float64, the column loop in float32 (as the reference GPTQ code)
    eye = torch.eye(k, dtype=H.dtype)
    try:
        Hinv = torch.linalg.cholesky(torch.cholesky_solve(eye, torch.linalg.cholesky(H)),
                                     upper=True)
        if not bool(torch.isfinite(Hinv).all()):
            raise torch.linalg.LinAlgError("non-finite inverse")
    except torch.linalg.LinAlgError:
        raise ValueError(f"GPTQ: the dampened Hessian is not positive definite (damp={damp}); "
                         f"raise damp (e.g. gptq_options={{'damp': 0.1}}) or calibrate on more "
                         f"varied inputs") from None
    Hinv = Hinv.float()

    Q = torch.zeros_like(W)
    threads = torch.get_num_threads()
    if W.device.type == "cpu":      # thousands of tiny ops: worker threads cost more than they save
        torch.set_num_threads(1)
    try:
        _column_loop(W, Q, Hinv, perm, round_cols, block_size)
    finally:
        torch.set_num_threads(threads)

    Qf = torch.empty_like(Q)
    Qf[:, perm] = Q
    return to_quantized(Qf, W0, recipe, replay), Qf


def _column_loop(W, Q, Hinv, perm, round_cols, block_size):
    """GPTQ's loop: quantize column i, spread its error over columns > i (in place on W, Q)."""
    k = W.shape[1]
    for i1 in range(0, k, block_size):
        i2 = min(i1 + block_size, k)
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        Err1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            q = round_cols(W1[:, i:i + 1], perm[i1 + i: i1 + i + 1])[:, 0]
            Q[:, i1 + i] = q
            err = (W1[:, i] - q) / Hinv1[i, i]
            W1[:, i:] -= err[:, None] * Hinv1[i, i:][None, :]
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]       # lazy batch update of the later columns


def to_quantized(q: torch.Tensor, weight: torch.Tensor, recipe, replay) -> QuantizedTensor:
    """The QuantizedTensor of `q`, whose values lie on the grid of `weight`'s scales."""
    if replay is not None:          # same amax -> same scales; values on the grid -> same codes
        return dataclasses.replace(
            quantize(q, dataclasses.replace(recipe, calibrator=replay)), dtype=weight.dtype)
    # asymmetric: min/max of q may differ from weight's, so keep weight's scales and zero points
    ref = quantize(weight.float(), recipe)
    s, z = ref.scales, ref.zero_point.float()
    qb, dims = blocked(pad_to_blocks(q, recipe), recipe)
    keep = tuple(1 if d in dims else m for d, m in enumerate(qb.shape))
    r = torch.clamp(1.0 / s.float(), max=FLT_MAX)       # fp16/bf16 scales: r in float32
    codes = (torch.round(qb * r.reshape(keep)) + z.reshape(keep)).clamp(0, recipe.format.max)
    codes = codes.to(torch.uint8).reshape(ref.codes.shape[:-1] + (-1,))
    if recipe.format.bits == 4:
        codes = pack_nibbles(codes)
    return dataclasses.replace(ref, codes=codes, dtype=weight.dtype)
