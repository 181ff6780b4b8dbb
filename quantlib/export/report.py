"""Tables for looking inside a checkpoint folder (chapter 13): its files, its tensors, how they
compare with the quantized model, the two conventions for the NVFP4 tensor scale, and the
KV-cache scales."""
from __future__ import annotations

from pathlib import Path

import torch

from quantlib.table import Table


def files_table(path) -> Table:
    """The files of a checkpoint folder and their sizes in bytes."""
    path = Path(path)
    t = Table(["file", "bytes"], title=f"Files in {path.name}/")
    for f in sorted(path.iterdir()):
        if f.is_file():
            t.append([f.name, f.stat().st_size])
    return t


def tensors_table(path, contains: str | tuple[str, ...] = "") -> Table:
    """Name, dtype and shape of every tensor whose name contains `contains` (or one of several
    strings); header only: the safetensors files are not loaded."""
    from safetensors import safe_open
    parts = (contains,) if isinstance(contains, str) else tuple(contains)
    t = Table(["tensor", "dtype", "shape"], title=f"Tensors of {Path(path).name}/"
              + (" named " + " or ".join(f"*{c}*" for c in parts) if any(parts) else ""))
    rows = []
    for f in sorted(Path(path).glob("*.safetensors")):
        with safe_open(str(f), "pt") as h:
            for k in h.keys():
                if any(c in k for c in parts):
                    s = h.get_slice(k)
                    rows.append([k, s.get_dtype(), str(tuple(s.get_shape()))])
    for r in sorted(rows):
        t.append(r)
    return t


def compare_table(model, checkpoint) -> Table:
    """Per quantized layer of `model`: do the checkpoint's codes, block scales and dequantized
    weights equal the model's, bit for bit? And the largest relative tensor-scale difference."""
    from quantlib.nn.linear import QuantLinear
    t = Table(["layer", "codes equal", "scales equal", "tensor scale rel. diff",
               "weights equal"], title="Read back vs the quantized model", digits=3)
    for n, m in model.named_modules():
        if not isinstance(m, QuantLinear):
            continue
        a, b = m.qweight, checkpoint[n]
        ts = None
        if a.tensor_scale is not None:
            ts = float((b.tensor_scale - a.tensor_scale).abs() / a.tensor_scale)
        t.append([n, torch.equal(a.codes, b.codes), torch.equal(a.scales, b.scales), ts,
                  torch.equal(a.dequantize(), b.dequantize())])
    return t


def scale_conventions(tensor_scale: torch.Tensor, block_scale: float = 1.0,
                      code: float = 6.0) -> Table:
    """One NVFP4 tensor scale s_t in both conventions: ModelOpt's multiplier weight_scale_2 = s_t,
    compressed-tensors' divisor weight_global_scale g = fl(1/s_t), what each gives back, and the
    weight a reader computes if it multiplies by the divisor. Values with 9 significant digits
    (enough to tell float32 values apart)."""
    s = tensor_scale.float().reshape(())
    g = 1.0 / s
    w = code * block_scale
    t = Table(["quantity", "value"], title="The NVFP4 tensor scale: multiplier or divisor")
    rows = [("s_t = amax / (6 * 448)  (ModelOpt weight_scale_2, multiplies)", s),
            ("g = fl(1 / s_t)  (compressed-tensors weight_global_scale, divides)", g),
            ("fl(1 / g)  (s_t read back from g)", 1.0 / g),
            (f"weight {code:g} x {block_scale:g} x s_t", w * s),
            (f"weight {code:g} x {block_scale:g} / g", w / g),
            (f"weight {code:g} x {block_scale:g} x g  (the divisor read as a multiplier)", w * g),
            ("g^2  (how much too large that weight is)", g * g)]
    for name, v in rows:
        t.append([name, f"{float(v):.9g}"])
    return t


def kv_scales_table(model, kv_cache, checkpoint) -> Table:
    """Per attention layer: the calibrated K and V amax, the scale quantlib's static FP8 cache
    uses (amax / 448 in float32) and the k_scale / v_scale read back from the checkpoint, and
    whether they are the same float32 numbers. Values with 6 significant digits."""
    from quantlib.export.kv_cache import attention_modules, kv_amax
    from quantlib.scaling import fp32_scale
    ka, va = kv_amax(kv_cache)
    t = Table(["layer", "K amax", "k_scale stored", "V amax", "v_scale stored",
               "= amax / 448"], title="KV-cache scales: calibrated and read back")
    for attn, k, v in zip(attention_modules(model), ka, va):
        ks, vs = checkpoint.kv_scales[f"{attn}.k_scale"], checkpoint.kv_scales[f"{attn}.v_scale"]
        same = torch.equal(ks, fp32_scale(k, 448.0)[0]) and torch.equal(vs, fp32_scale(v, 448.0)[0])
        t.append([attn, f"{float(k):.6g}", f"{float(ks):.6g}", f"{float(v):.6g}",
                  f"{float(vs):.6g}", same])
    return t
