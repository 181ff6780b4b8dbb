"""Low-precision training: a linear layer whose three GEMMs take FP8 (or NVFP4, BF16) operands.

One training step of y = x W^T + b runs three GEMMs, each `a @ b.T` with both operands laid out
(rows, contraction) and quantized along that contraction dimension:

    fprop  y  = x    @ W^T    a = x    (M, K)   b = W    (N, K)
    dgrad  dx = dy   @ W      a = dy   (M, N)   b = W^T  (K, N)
    wgrad  dW = dy^T @ x      a = dy^T (N, M)   b = x^T  (K, M)

x and W take the recipe's forward format (E4M3), dy its gradient format (E5M2 in HYBRID). The
master weight, its gradient, the bias and the optimizer stay FP32; products accumulate in FP32.
On a GPU with FP8 tensor cores (sm_89+) the per-tensor, row-wise and block recipes call the FP8
GEMM kernel `quantlib.kernels.fp8_scaled_mm`; elsewhere this is the emulation: quantize,
dequantize, FP32 matmul (the same numbers, up to the order of the FP32 accumulation).

On the kernel path each operand is cast once into both of its FP8 copies (row-wise for one GEMM,
column-wise for the other: `quantlib.kernels.fp8_quantize_transpose`, one read), and the
weight's pair is kept across micro-steps while the weight is unchanged (keyed on its version
counter: any in-place update through autograd-visible ops, optimizer steps included, bumps it;
writes through `weight.data` do not, call `layer.drop_weight_cache()` after those).
"""
from __future__ import annotations

import fnmatch
import math

import torch
from torch import nn

from quantlib.codecs import encode, round_to_format
from quantlib.device import kernel_path
from quantlib.formats import get_format
from quantlib.nn.hadamard import hadamard_transform, random_hadamard_matrix
from quantlib.nn.training_recipes import ROLES, AmaxHistory, TrainingRecipe, get_training_recipe
from quantlib.qtensor import QuantizedTensor, quantize
from quantlib.recipes import get_recipe
from quantlib.scaling import scale_shape


class FP8Linear(nn.Linear):
    """nn.Linear trained with low-precision GEMMs (`recipe`: a TrainingRecipe or its name).

    Same parameters and state_dict keys as nn.Linear. Delayed-scaling amax histories and the
    Hadamard matrix are non-persistent buffers. On the FP8 kernel path the layer keeps its
    weight's two FP8 copies between steps (2 bytes per weight element; `drop_weight_cache()`). `record_stats = True` fills `stats` with one
    `cast_stats` dict per cast (flushed values, QSNR energies, clipped values); it also forces
    the emulation. `use_kernel = False` forces it too.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 recipe: TrainingRecipe | str = "fp8_current", seed: int = 0,
                 device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.recipe = get_training_recipe(recipe)
        check_shape(self.recipe, in_features, out_features)
        self.seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}
        self.record_stats, self.stats = False, []
        self.use_kernel = True      # False: emulate even where the FP8 GEMM kernel could run;
        self._wcache = None         # "force": the kernels on the Triton interpreter too (tests)
        self._init_buffers(device)

    def _init_buffers(self, device) -> None:
        r = self.recipe
        if r.scaling == "delayed":
            for role in ROLES:
                self.register_buffer(f"amax_history_{role}", torch.zeros(
                    r.amax_history_len, device=device), persistent=False)
        if r.hadamard_wgrad:
            self.register_buffer("hadamard", random_hadamard_matrix(r.hadamard_size, self.seed).to(
                device), persistent=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, recipe: TrainingRecipe | str, seed: int = 0):
        """An FP8Linear that shares `linear`'s Parameter objects (optimizer state stays valid)."""
        new = cls(linear.in_features, linear.out_features, linear.bias is not None, recipe, seed,
                  device="meta")
        new.weight, new.bias = linear.weight, linear.bias
        new._init_buffers(linear.weight.device)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_floating_point():
            raise TypeError(f"FP8Linear takes floating-point input, got {x.dtype}")
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"input of shape {tuple(x.shape)}: the layer takes (..., "
                             f"{self.in_features})")
        if x.numel() == 0:               # no tokens: nothing to scale or quantize
            return x.new_zeros(*x.shape[:-1], self.out_features)
        return _LowPrecisionLinear.apply(x, self.weight, self.bias, self)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", recipe={self.recipe.name}"

    # ---- scales and casts -------------------------------------------------------------------
    def tensor_scale(self, t: torch.Tensor, role: str) -> torch.Tensor | None:
        """The per-tensor dequantization scale `role` uses this step, when the recipe fixes it
        outside `quantize` ("delayed": from the history, then this amax is recorded; "none": 1)."""
        r = self.recipe
        if r.kind != "fp8" or r.granularity != "tensor" or r.scaling == "current":
            return None
        if r.scaling == "none":
            return torch.ones((), device=t.device)
        hist = AmaxHistory(get_format(r.element(role)).max, algo=r.amax_compute_algo,
                           margin=r.margin, history=getattr(self, f"amax_history_{role}"))
        s = hist.scale()
        if self.training:
            hist.update(t.detach().abs().amax().float())
        return s

    def cast(self, t: torch.Tensor, role: str, gemm: str,
             scale: torch.Tensor | None = None) -> torch.Tensor:
        """`t` (rows, contraction) quantized as `role` and dequantized to FP32 (+ stats)."""
        q, used = cast_operand(t, self.recipe, role, scale, self._generator(t.device))
        if self.record_stats:
            self.stats.append(cast_stats(t.detach().float(), q, role, gemm, used,
                                         self.recipe.element(role)))
        return q

    def operand(self, t: torch.Tensor, role: str, gemm: str, scale=None):
        """`t` (rows, contraction) quantized as `role`: a QuantizedTensor for the FP8 GEMM kernel
        where the device has FP8 tensor cores and the recipe's scales fit it, else the
        dequantized FP32 operand of the emulation."""
        if self._fp8_kernel_ok(t):
            return self.quantize_operand(t, role, scale)
        return self.cast(t, role, gemm, scale)

    def transposed(self, q, role: str):
        """q^T for the GEMM that contracts over q's other dimension, when quantizing the
        transpose gives the same values (per-tensor scales, 128x128 / 16x16 weight blocks, BF16),
        as real FP8 training reuses one FP8 copy; None when it must be quantized again."""
        r = self.recipe
        same = (r.kind in ("none", "cast") or (r.kind == "fp8" and r.granularity == "tensor")
                or (role == "w" and (r.kind == "nvfp4" or r.granularity == "block")))
        return q.t() if same and isinstance(q, torch.Tensor) else None

    def _fp8_kernel_ok(self, t: torch.Tensor) -> bool:
        r = self.recipe
        if not (self.use_kernel and not self.record_stats and r.kind == "fp8"
                and r.granularity in ("tensor", "row", "block")):
            return False
        if self.use_kernel == "force":
            return kernel_path(t.device) != "reference"
        return t.is_cuda and kernel_path(t.device) in ("native-fp8", "native-fp4")

    def operand_pair(self, t: torch.Tensor, role: str, scale=None):
        """(`t`, `t`^T) as FP8 QuantizedTensors for the GEMM kernel, both laid out (rows,
        contraction), from one read of `t` (per-tensor, 1x128 and 128x128 recipes; row-wise:
        two casts). A per-tensor scale fixed outside (delayed) gives the same codes twice."""
        from quantlib.kernels import fp8_quantize_transpose
        t = t.detach()
        if scale is not None:
            q = self.quantize_operand(t, role, scale)
            return q, QuantizedTensor(q.codes.t().contiguous(), q.scales, q.recipe,
                                      (t.shape[1], t.shape[0]), q.dtype)
        if t.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            t = t.float()
        return fp8_quantize_transpose(t.contiguous(), self.recipe.operand_recipe(role))

    def fused_delayed(self) -> bool:
        """Delayed scaling on the kernel path casts with delayed_pair (one read per operand)."""
        r = self.recipe
        return r.kind == "fp8" and r.scaling == "delayed" and not r.hadamard_wgrad

    def delayed_pair(self, t: torch.Tensor, role: str):
        """operand_pair under delayed scaling in one read: the cast takes the history's amax
        (times 2^margin; scale = fl(amax / qmax), 1 for an empty or NaN history, as
        AmaxHistory.scale) and reduces this tensor's amax in the same pass, which then goes
        into the history (in training mode), as tensor_scale does with a pass of its own."""
        from quantlib.kernels import fp8_quantize_transpose
        r = self.recipe
        h = getattr(self, f"amax_history_{role}")
        a = h.max() if r.amax_compute_algo == "max" else h[0]
        a = torch.where(a > 0, a.float() * 2.0 ** r.margin, 0.0)
        t = t.detach()
        if t.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            t = t.float()
        q, qt, amax = fp8_quantize_transpose(t.contiguous(), f"fp8_{r.element(role)}_tensor",
                                             amax=a.to(t.device), return_amax=True)
        if self.training:
            AmaxHistory(get_format(r.element(role)).max, algo=r.amax_compute_algo,
                        margin=r.margin, history=h).update(amax)
        return q, qt

    def weight_pair(self, weight: torch.Tensor, scale=None):
        """operand_pair of the weight, cached while the weight is unchanged (same storage, same
        version counter, same device): gradient-accumulation micro-steps cast it once. Not with
        a scale fixed outside (delayed scaling: the scale moves every step)."""
        key = (weight.data_ptr(), weight._version, weight.device, weight.dtype, weight.shape)
        if scale is None and self._wcache is not None and self._wcache[0] == key:
            return self._wcache[1]
        pair = self.operand_pair(weight, "w", scale)
        self._wcache = (key, pair) if scale is None else None
        return pair

    def drop_weight_cache(self) -> None:
        """Forget the cached FP8 copies of the weight (after writing it through .data)."""
        self._wcache = None

    def quantize_operand(self, t: torch.Tensor, role: str, scale=None) -> QuantizedTensor:
        """`t` (rows, contraction) as an FP8 QuantizedTensor for the GEMM kernel."""
        from quantlib.kernels import fp8_quantize
        t, r = t.detach().float().contiguous(), self.recipe
        if scale is None:
            return fp8_quantize(t, r.operand_recipe(role))
        recipe = get_recipe(f"fp8_{r.element(role)}_tensor")     # a scale fixed outside
        codes = encode(t * (1.0 / scale), recipe.element, overflow="saturate")
        return QuantizedTensor(codes, scale.float().reshape(scale_shape(recipe, t.shape)), recipe,
                               t.shape, t.dtype)

    def _generator(self, device: torch.device) -> torch.Generator:
        if device not in self._generators:
            self._generators[device] = torch.Generator(device).manual_seed(self.seed)
        return self._generators[device]


def cast_operand(t: torch.Tensor, recipe: TrainingRecipe, role: str,
                 scale: torch.Tensor | None = None, generator: torch.Generator | None = None):
    """(`t` quantized as `role` of `recipe` and dequantized to FP32, the per-tensor scale used or
    None). `t` is laid out (rows, contraction); `scale` fixes a per-tensor scale (delayed scaling,
    or 1 for no scaling); `generator` drives stochastic rounding of gradients."""
    r, t = recipe, t.detach().float()
    if r.kind == "none":
        return t, None
    if r.kind == "cast":
        return round_to_format(t, r.cast_format), None
    if scale is not None:          # per-tensor scale chosen outside (delayed / none)
        return round_to_format(t * (1.0 / scale), r.element(role), overflow="saturate") * scale, \
            scale
    if role == "dy" and r.stochastic_grad:
        return _stochastic_quantize(t, r.operand_recipe(role), generator), None
    qt = quantize(t, r.operand_recipe(role))
    return qt.dequantize(), qt.scales.reshape(()) if qt.recipe.granularity == "tensor" else None


def _stochastic_quantize(t: torch.Tensor, recipe, generator: torch.Generator) -> torch.Tensor:
    """Quantize with `recipe`'s scales but stochastic rounding of the elements: the scales come
    from `quantize`, the elements from round_to_format(t * r, rounding="stochastic")."""
    qt = quantize(t, recipe)
    s = qt.scale_values() if qt.tensor_scale is None else qt.scale_values() * qt.tensor_scale
    s = s.repeat_interleave(recipe.block, dim=-1)[..., :t.shape[-1]] \
        if recipe.granularity == "group" else s
    r = (1.0 / s).clamp(max=torch.finfo(torch.float32).max)   # a zero scale: r = FLT_MAX
    return round_to_format(t * r, recipe.element, rounding="stochastic", overflow="saturate",
                           generator=generator) * s


def _clip_threshold(element) -> float:
    """Scaled magnitudes above this do not round to max: they are clipped (E4M3: 464 -> 448 is
    rounding, beyond is clipping)."""
    f = get_format(element)
    return f.max + 2.0 ** (math.floor(math.log2(f.max)) - f.mbits - 1)


def cast_stats(t, q, role, gemm, scale, element) -> dict:
    """What one cast did: counts of nonzero values and of those flushed to zero, signal and
    noise energy (for QSNR), and values beyond max * scale past rounding (per-tensor scales only,
    else None)."""
    nonzero = t != 0
    return {"gemm": gemm, "role": role, "format": element, "numel": t.numel(),
            "amax": t.abs().max().item(), "scale": None if scale is None else scale.item(),
            "nonzero": nonzero.sum().item(), "flushed": ((q == 0) & nonzero).sum().item(),
            "signal": t.double().square().sum().item(),
            "noise": (t.double() - q.double()).square().sum().item(),
            "clipped": None if scale is None else (t.abs() * (1.0 / scale) > _clip_threshold(
                element)).sum().item()}


def summarize_stats(stats: list[dict]) -> dict:
    """Casts pooled: share of nonzero values flushed to zero, QSNR (dB), clipped count."""
    nz, sig, noise = (sum(s[k] for s in stats) for k in ("nonzero", "signal", "noise"))
    return {"flushed": sum(s["flushed"] for s in stats) / max(nz, 1),
            "qsnr": math.inf if noise == 0 else 10 * math.log10(sig / noise) if sig else -math.inf,
            "clipped": sum(s["clipped"] or 0 for s in stats)}


def _matmul(qa, qb, bias=None, out_dtype=torch.float32) -> torch.Tensor:
    """a @ b.T (+ bias) summed in FP32, rounded once to `out_dtype`: `fp8_scaled_mm` for
    QuantizedTensors (quantlib's kernel adds the bias and rounds in its epilogue; on sm_89+
    torch._scaled_mm takes the per-tensor cases), else the emulation's FP32 matmul."""
    if isinstance(qa, QuantizedTensor):
        from quantlib.kernels import fp8_scaled_mm
        kdt = out_dtype if out_dtype in (torch.float32, torch.bfloat16) else torch.float32
        y = fp8_scaled_mm(qa, qb, bias=None if bias is None else bias.detach().float(),
                          out_dtype=kdt)
        return y.to(out_dtype)
    y = qa @ qb.t()
    if bias is not None:
        y = y + bias.float()
    return y.to(out_dtype)


class _LowPrecisionLinear(torch.autograd.Function):
    """The three GEMMs of the module docstring; FP32 in, FP32 out."""

    @staticmethod
    def forward(ctx, x, weight, bias, layer: FP8Linear):
        x2 = x.reshape(-1, x.shape[-1])
        pairs = layer._fp8_kernel_ok(x2)
        delayed = pairs and layer.fused_delayed()
        sx = sw = None
        if not delayed:
            sx, sw = layer.tensor_scale(x2, "x"), layer.tensor_scale(weight, "w")
        if delayed:               # the history's scale, this amax recorded, in one read
            qx, qxt = layer.delayed_pair(x2, "x")
            qw, qwt = layer.delayed_pair(weight, "w")
        elif pairs:               # both FP8 copies of x and W, each from one read
            qw, qwt = layer.weight_pair(weight, sw)
            if x2.shape[0] % layer.recipe.block == 0:
                qx, qxt = layer.operand_pair(x2, "x", sx)
            else:                 # tokens that fill no whole block: fprop only (wgrad refuses)
                qx, qxt = layer.operand(x2, "x", "fprop", sx), None
        else:
            qx, qw = layer.operand(x2, "x", "fprop", sx), layer.operand(weight, "w", "fprop", sw)
        y = _matmul(qx, qw, bias, x.dtype)
        ctx.save_for_backward(x2, weight)
        ctx.layer, ctx.scales, ctx.x_shape, ctx.has_bias = layer, (sx, sw), x.shape, bias is not None
        if pairs:
            ctx.qxt, ctx.qwt = (None if layer.recipe.hadamard_wgrad else qxt), qwt
        else:
            ctx.qxt = None if layer.recipe.hadamard_wgrad else layer.transposed(qx, "x")
            ctx.qwt = layer.transposed(qw, "w")
        ctx.pairs, ctx.delayed = pairs, delayed
        return y.reshape(*x.shape[:-1], -1).to(x.dtype)

    @staticmethod
    def backward(ctx, dy):
        x2, weight = ctx.saved_tensors
        layer, (sx, sw), r = ctx.layer, ctx.scales, ctx.layer.recipe
        dy2 = dy.reshape(-1, dy.shape[-1])
        dx = dw = db = None
        qg = qgt = sg = None
        if ctx.delayed:
            qg, qgt = layer.delayed_pair(dy2, "dy")
        else:
            sg = layer.tensor_scale(dy2, "dy")
        if (not ctx.delayed and ctx.pairs and not r.hadamard_wgrad and all(ctx.needs_input_grad[:2])
                and dy2.shape[0] % r.block == 0):
            qg, qgt = layer.operand_pair(dy2, "dy", sg)   # dgrad's dy and wgrad's dy^T
        if ctx.needs_input_grad[0]:
            qg = qg if qg is not None else layer.operand(dy2, "dy", "dgrad", sg)
            qwt = ctx.qwt if ctx.qwt is not None else layer.operand(weight.t(), "w", "dgrad", sw)
            dx = _matmul(qg, qwt, None, dy.dtype).reshape(ctx.x_shape)
        if ctx.needs_input_grad[1]:
            check_tokens(r, x2.shape[0])
            a, b = dy2.t(), x2.t()
            if r.hadamard_wgrad:        # (dy^T H)(x^T H)^T = dy^T x: only the rounding changes
                a, b = hadamard_transform(a.float(), layer.hadamard), \
                    hadamard_transform(b.float(), layer.hadamard)
            if qgt is None:
                qgt = None if qg is None or r.hadamard_wgrad else layer.transposed(qg, "dy")
            qa = qgt if qgt is not None else layer.operand(a, "dy", "wgrad", sg)
            qb = ctx.qxt if ctx.qxt is not None else layer.operand(b, "x", "wgrad", sx)
            dw = _matmul(qa, qb, None, weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = dy2.float().sum(0)
        ctx.qxt = ctx.qwt = None
        return dx, dw, db, None


def check_shape(recipe: TrainingRecipe, in_features: int, out_features: int,
                name: str = "") -> None:
    """Block recipes need whole blocks along every contraction dimension: K (fprop), N (dgrad)."""
    b = recipe.block
    for what, n in (("in_features", in_features), ("out_features", out_features)):
        if n % b:
            layer = f"layer {name!r}: " if name else ""
            raise ValueError(f"{layer}{what}={n} is not a multiple of the {b}-element block of "
                             f"training recipe {recipe.name!r} (scales are shared along the "
                             f"contraction dimension): pad the layer to a multiple of {b}, or "
                             "leave it in high precision with skip=[...]")


def check_tokens(recipe: TrainingRecipe, m: int) -> None:
    """wgrad contracts over the tokens (batch x sequence): they must fill whole blocks too."""
    b = max(recipe.block, recipe.hadamard_size if recipe.hadamard_wgrad else 1)
    if m % b:
        raise ValueError(f"{m} tokens (batch x sequence) is not a multiple of {b}: the wgrad "
                         f"GEMM of recipe {recipe.name!r} contracts over tokens in blocks of {b}; "
                         "change the batch size or the sequence length")


def convert_to_low_precision_training(model: nn.Module, recipe: TrainingRecipe | str,
                                      skip=(), seed: int = 0) -> nn.Module:
    """Swap every nn.Linear of `model` (in place) for an FP8Linear running `recipe`, except those
    whose qualified name matches a pattern in `skip` (fnmatch: "head", "blocks.0.*").
    Parameters are shared, not copied, so state_dict keys and the optimizer are unchanged."""
    recipe = get_training_recipe(recipe)
    skip = [skip] if isinstance(skip, str) else list(skip)
    if type(model) is nn.Linear:
        check_shape(recipe, model.in_features, model.out_features)
        return FP8Linear.from_linear(model, recipe, seed)
    linears = [n for n, m in model.named_modules() if type(m) is nn.Linear]
    for pattern in skip:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in linears):
            raise ValueError(f"skip pattern {pattern!r} matches no nn.Linear; the linear layers "
                             f"are {linears}")
    for i, name in enumerate(linears):
        if any(fnmatch.fnmatchcase(name, p) for p in skip):
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        lin = getattr(parent, child)
        check_shape(recipe, lin.in_features, lin.out_features, name)
        setattr(parent, child, FP8Linear.from_linear(lin, recipe, seed + i))
    return model
