"""Tensors of a module that dtype casts leave alone: the stored numbers of a quantized layer.

`model.half()`, `.bfloat16()` and `.to(dtype)` cast every floating-point parameter and buffer.
For a quantized layer that would round its FP32 scales, amaxes and transforms to FP16/BF16, and
the layer would no longer compute what its recipe defines (or what it was trained as). A module
that inherits `ExactUnderCasts` names those tensors in `_EXACT`; a cast then changes only the
compute dtype (weights, bias, outputs) while the named tensors keep their dtype and bits. Devices
move as usual. A named parameter stays the same `nn.Parameter` object (optimizers keep seeing
it, gradients keep flowing to it) and its gradient keeps the parameter's dtype.
"""
from __future__ import annotations

from torch import nn


class ExactUnderCasts(nn.Module):
    """Mixin: the parameters and buffers named in `_EXACT` keep their dtype under every cast."""

    _EXACT: tuple[str, ...] = ()

    def _apply(self, fn, recurse=True):
        kept = {}
        for n in self._EXACT:
            p, b = self._parameters.get(n), self._buffers.get(n)
            if p is not None:     # .data: an alias that keeps the old storage when p is cast
                kept[n] = (p.data, None if p.grad is None else p.grad.data)
            elif b is not None:
                kept[n] = (b, None)
        out = super()._apply(fn, recurse)
        for n, (t, g) in kept.items():
            if n in self._parameters:
                p = self._parameters[n]
                if p.dtype != t.dtype:
                    p.data = t.to(device=p.device)
                if g is not None and p.grad is not None and p.grad.dtype != g.dtype:
                    p.grad = g.to(device=p.grad.device)
            else:
                new = self._buffers[n]
                if new is not None and new.dtype != t.dtype:
                    self._buffers[n] = t.to(device=new.device)    # same tensor if not moved
        return out
