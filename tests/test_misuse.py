"""Misuse of the public API that used to give silent wrong numbers or unhelpful crashes: each is
now a correct result or a clear ValueError/TypeError that names the argument and what to do."""
import copy
import dataclasses
import io
import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from quantlib import kernels as K
from quantlib.nn import QuantLinear, convert, prepare_qat, quantize_model
from quantlib.nn.calibrate import (
    calibrate_activations,
    fixed_amax,
    mse_calibrator,
    percentile_calibrator,
    with_calibrator,
)
from quantlib.nn.gptq import gptq_quantize, hessian
from quantlib.nn.transforms import awq_factors, smoothquant_factors
from quantlib.qtensor import QuantizedTensor, quantize
from quantlib.recipes import Recipe, get_recipe
from quantlib.scaling import (
    asym_scale,
    blocked,
    compute_scale,
    e8m0_scale,
    fp32_scale,
    nvfp4_scale,
    pad_to_blocks,
    pow2_scale,
)


def mlp(seed=0, widths=(64, 32, 16)):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(widths, widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


class Shared(nn.Module):
    """One nn.Linear registered under two names, used twice."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(32, 32)
        self.b = self.a
        self.head = nn.Linear(32, 8)

    def forward(self, x):
        return self.head(self.b(torch.relu(self.a(x))))


# ---- shared modules and undivided layers ----------------------------------------------------
def test_every_alias_of_a_shared_linear_becomes_one_quantlinear():
    torch.manual_seed(0)
    m, x = Shared(), torch.randn(4, 32)
    q = quantize_model(m, "int4_g32")
    assert isinstance(q.a, QuantLinear) and q.b is q.a
    wa = quantize(m.a.weight, "int4_g32").dequantize()
    wh = quantize(m.head.weight, "int4_g32").dequantize()
    h = F.linear(torch.relu(F.linear(x, wa, m.a.bias)), wa, m.a.bias)
    assert torch.equal(q(x), F.linear(h, wh, m.head.bias))
    qat = prepare_qat(m, "int4_g32")                          # QAT and convert do the same
    assert qat.b is qat.a and type(qat.a).__name__ == "QATLinear"
    real = convert(qat)
    assert isinstance(real.a, QuantLinear) and real.b is real.a
    assert torch.equal(real(x), q(x))
    seq = nn.Sequential(m.a, nn.ReLU(), m.a)                 # the same module twice in a list
    qs = quantize_model(seq, "int8")
    assert isinstance(qs[2], QuantLinear) and qs[2] is qs[0]


def test_undivided_layers_stay_full_precision_with_one_warning_or_are_padded():
    m, x = mlp(widths=(256, 100, 16)), torch.randn(3, 256)      # layer '2' has in_features 100
    with pytest.warns(UserWarning, match=r"1 layers left in full precision.*\['2'\].*pad=True") \
            as rec:
        q = quantize_model(m, "int4_g128")
    assert len(rec) == 1
    assert isinstance(q[0], QuantLinear) and type(q[2]) is nn.Linear
    assert torch.equal(q[2].weight, m[2].weight)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = quantize_model(m, "int4_g128", pad=True)
    assert isinstance(p[2], QuantLinear)
    # the padded layer's weight is the weight zero-padded to 128 columns, quantized, cropped
    w = m[2].weight.detach()
    want = quantize(F.pad(w, (0, 28)), "int4_g128").dequantize()[:, :100]
    assert torch.equal(p[2].qweight.dequantize(), want)
    h = torch.relu(p[0](x))
    assert torch.equal(p(x), F.linear(h, want, m[2].bias))
    with pytest.raises(TypeError, match="pad="):
        quantize_model(m, "int4_g128", pad="yes")


def test_undivided_activation_blocks_count_too():
    m = mlp(widths=(64, 40, 16))                                 # 40 is not a multiple of 16
    with pytest.warns(UserWarning, match=r"\['2'\]"):
        q = quantize_model(m, "nvfp4_w4a4")
    assert type(q[2]) is nn.Linear
    p = quantize_model(m, "nvfp4_w4a4", pad=True)
    y = p(torch.randn(2, 64))
    assert torch.isfinite(y).all()


# ---- dtype casts keep the stored numbers exact ----------------------------------------------
def _parts(model):
    return {f"{n}.{b}": t.clone() for n, mod in model.named_modules()
            if isinstance(mod, QuantLinear) for b, t in mod.named_buffers(recurse=False)
            if t is not None}


@pytest.mark.parametrize("config,opts", [
    ("nvfp4", {}), ("int4_g32", {}), ("int8_channel", {}),
    ("w8a8_int8_static", {"calibration": "x"}),
    ("int4_g32", {"calibration": "x", "smooth": "smoothquant", "rotate": 16}),
])
@pytest.mark.parametrize("cast", ["half", "bfloat16", "to_f16", "double"])
def test_dtype_casts_change_only_the_compute_dtype(config, opts, cast):
    torch.manual_seed(1)
    x = torch.randn(32, 64) * torch.linspace(0.1, 20, 64)
    opts = {k: (x if v == "x" else v) for k, v in opts.items()}
    q = quantize_model(mlp(), config, **opts)
    before = _parts(q)
    deq = [m.qweight.dequantize() for m in q.modules() if isinstance(m, QuantLinear)]
    y32 = q(x)
    dtype = {"half": torch.float16, "bfloat16": torch.bfloat16, "to_f16": torch.float16,
             "double": torch.float64}[cast]
    q = {"half": q.half, "bfloat16": q.bfloat16, "to_f16": lambda: q.to(torch.float16),
         "double": q.double}[cast]()
    after = _parts(q)
    assert before.keys() == after.keys()
    for k in before:
        assert before[k].dtype == after[k].dtype and torch.equal(before[k], after[k]), k
    assert [m.qweight.dequantize() for m in q.modules() if isinstance(m, QuantLinear)] and all(
        torch.equal(a, m.qweight.dequantize())
        for a, m in zip(deq, [m for m in q.modules() if isinstance(m, QuantLinear)]))
    assert q[0].bias.dtype == dtype                      # the compute dtype did change
    y = q(x.to(dtype))
    assert y.dtype == dtype
    tol = 1e-6 if dtype == torch.float64 else 0.05
    assert (y.float() - y32).abs().max() <= tol * y32.abs().max()


def test_quantized_tensor_to_refuses_a_dtype():
    qt = quantize(torch.randn(4, 32), "nvfp4")
    for dt in (torch.uint8, torch.float16, torch.float32):
        with pytest.raises(TypeError, match="dequantize"):
            qt.to(dt)
    with pytest.raises(TypeError, match="device"):
        qt.to(3.5)
    moved = qt.to("cpu")
    assert torch.equal(moved.dequantize(), qt.dequantize())


# QAT: the learned LSQ amax (a parameter) and the static act_amax (a buffer) are the recipe's FP32
# numbers; a cast rounds the weights (here already on the BF16 grid, so it is exact) and the
# compute dtype, never the amax
_CASTS = {"half": (torch.float16, lambda m: m.half()),
          "bfloat16": (torch.bfloat16, lambda m: m.bfloat16()),
          "to_f16": (torch.float16, lambda m: m.to(torch.float16)),
          "to_bf16": (torch.bfloat16, lambda m: m.to(torch.bfloat16)),
          "double": (torch.float64, lambda m: m.double())}


def _trained_qat(lsq):
    m, x = mlp(), torch.randn(64, 64)
    qat = prepare_qat(m, "w4a4_int4", calibration=[x], lsq=lsq)
    opt = torch.optim.SGD(qat.parameters(), lr=0.05)
    for _ in range(2):                                         # learned amaxes move off any grid
        opt.zero_grad()
        F.mse_loss(qat(x), torch.zeros(64, 16)).backward()
        opt.step()
    with torch.no_grad():                                      # weights on the BF16 grid
        for n, p in qat.named_parameters():
            if not n.endswith("amax"):
                p.copy_(p.bfloat16().float())
    return qat, x.bfloat16().float()


def _amaxes(model):
    return {n: t for n, t in [*model.named_parameters(), *model.named_buffers()]
            if n.endswith("amax") and t is not None}


@pytest.mark.parametrize("lsq", [False, True])
@pytest.mark.parametrize("cast", list(_CASTS))
def test_qat_dtype_casts_keep_the_amax_fp32(lsq, cast):
    dtype, apply = _CASTS[cast]
    ref, x = _trained_qat(lsq)
    qat = copy.deepcopy(ref)
    before = {n: t.detach().clone() for n, t in _amaxes(qat).items()}
    params = {n: p for n, p in qat.named_parameters() if n.endswith("amax")}
    assert len(before) == (4 if lsq else 2) and len(params) == (4 if lsq else 0)
    # the test can fail: a cast would round these amaxes (or widen them, for float64)
    assert dtype == torch.float64 or \
        any(not torch.equal(t, t.to(dtype).float()) for t in before.values())
    assert apply(qat) is qat
    after = _amaxes(qat)
    assert after.keys() == before.keys()
    for n, t in after.items():
        assert t.dtype == torch.float32 and torch.equal(t, before[n]), n
    assert qat[0].weight.dtype == dtype and qat[0].bias.dtype == dtype
    for n, p in qat.named_parameters():                        # the same Parameter objects
        if n.endswith("amax"):
            assert p is params[n] and isinstance(p, nn.Parameter) and p.requires_grad
    # forward: the FP32 model's fake-quantized input and weight, rounded to dtype, multiplied
    layer, layer32, xd = qat[0], ref[0], x.to(dtype)
    if lsq:
        xq, wq = layer32.act_lsq(x), layer32.weight_lsq(layer32.weight)
    else:
        static = with_calibrator(layer32.config.activation, fixed_amax(layer32.act_amax))
        xq = quantize(x, static).dequantize()
        wq = quantize(layer32.weight.detach(), layer32.config.weight).dequantize()
    want = F.linear(xq.detach().to(dtype), wq.detach().to(dtype), layer32.bias.detach().to(dtype))
    y = layer(xd)
    assert y.dtype == dtype and torch.equal(y, want)
    # gradients reach the FP32 amax, and an optimizer steps it
    if lsq:
        qat(xd).float().square().mean().backward()
        amax = qat[0].act_lsq.amax
        assert amax.grad is not None and amax.grad.dtype == torch.float32 and amax.grad.any()
        assert any(p is amax for p in qat.parameters())
        old = amax.detach().clone()
        torch.optim.SGD(qat.parameters(), lr=0.1).step()
        assert amax.dtype == torch.float32 and not torch.equal(amax.detach(), old)
        apply(qat)                                            # a cast keeps the FP32 gradient
        assert amax.grad.dtype == torch.float32


@pytest.mark.parametrize("lsq", [False, True])
@pytest.mark.parametrize("cast", list(_CASTS))
def test_qat_convert_after_a_cast_stores_the_same_codes_and_scales(lsq, cast):
    dtype, apply = _CASTS[cast]
    ref, x = _trained_qat(lsq)
    real32 = convert(ref)
    real = convert(apply(copy.deepcopy(ref)))
    for i in (0, 2):
        a, b = dict(real32[i].named_buffers()), dict(real[i].named_buffers())
        assert a.keys() == b.keys() and "act_amax" in a
        for n in a:
            if a[n] is not None:
                assert a[n].dtype == b[n].dtype and torch.equal(a[n], b[n]), (i, n)
    assert real[0].bias.dtype == dtype
    assert torch.equal(real(x.to(dtype)), real32.to(dtype)(x.to(dtype)))


# ---- NaN/Inf in calibration data: one refusal on every path --------------------------------
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_calibration_data_is_refused_on_every_path(bad):
    m, x = mlp(), torch.randn(16, 64)
    x[3, 5] = bad
    paths = [
        dict(config="w8a8_int8_static", calibration=x),
        dict(config="int8", calibration=x, smooth="smoothquant"),
        dict(config="int4_g32", calibration=x, smooth="awq"),
        dict(config="int4_g32", calibration=x, method="gptq"),
        dict(config="int4_g32", calibration=x, method="gptq", gptq_options={"sequential": False}),
        dict(config="w8a8_int8_static", calibration=x, rotate=16),
        dict(config="w8a8_int8_static", calibration=x, act_calibrator="percentile_99"),
    ]
    for kw in paths:
        config = kw.pop("config")
        with pytest.raises(ValueError, match="NaN or Inf"):
            quantize_model(m, config, **kw)
    w = torch.randn(8, 64)
    for call in (lambda: smoothquant_factors(x, w), lambda: awq_factors(x, w, "int4_g32"),
                 lambda: hessian(x), lambda: calibrate_activations(m, [x])):
        with pytest.raises(ValueError, match="NaN or Inf"):
            call()
    with pytest.raises(ValueError, match="NaN or Inf"):
        prepare_qat(m, "w4a4_int4", calibration=x)


def test_calibrators_keep_a_non_finite_group_bad():
    rows = torch.randn(3, 200)
    rows[1, 7] = float("nan")
    rows[2, 9] = float("inf")
    for cal in (percentile_calibrator(99), mse_calibrator("int8_rowwise")):
        a = cal(rows, -1)
        assert torch.isfinite(a[0]) and not torch.isfinite(a[1:]).any()
        q = quantize(rows, with_calibrator("int8_rowwise", cal)).dequantize()
        assert torch.isfinite(q[0]).all() and torch.isnan(q[1:]).all()   # as with max |x|


# ---- scale helpers ------------------------------------------------------------------------
def test_scale_helpers_refuse_negative_and_non_finite_amax():
    for bad in (torch.tensor([1.0, -2.0]), torch.tensor([1.0, float("nan")]),
                torch.tensor([float("inf")]), torch.tensor([-float("inf")])):
        for call in (lambda: fp32_scale(bad, 448.0), lambda: pow2_scale(bad, 448.0),
                     lambda: e8m0_scale(bad, "e4m3"), lambda: nvfp4_scale(bad, bad.abs(), 6.0),
                     lambda: nvfp4_scale(torch.ones(2), bad.min(), 6.0)):
            with pytest.raises(ValueError, match="amax"):
                call()
    with pytest.raises(ValueError, match="range must be finite"):
        asym_scale(torch.tensor([float("-inf")]), torch.tensor([1.0]), 15.0)
    for qmax in (0.0, -1.0, float("inf"), "448"):
        with pytest.raises(ValueError, match="qmax"):
            fp32_scale(torch.tensor([1.0]), qmax)
    with pytest.raises(TypeError, match="amax"):
        fp32_scale([1.0], 448.0)
    # the permitted form (quantize's own): NaN in, NaN scale out, documented
    s, _ = fp32_scale(torch.tensor([float("nan"), 2.0]), 4.0, nonfinite="nan")
    assert torch.isnan(s[0]) and s[1] == 0.5


def test_e8m0_scales_on_plain_integers_are_refused_mxint8_kept():
    with pytest.raises(ValueError, match="MXINT8.*pow2"):
        Recipe("int4_mx", "int4", "group", 32, scale_format="e8m0")
    x = torch.randn(4, 64)
    q = quantize(x, "mxint8")
    assert (q.dequantize() - x).abs().max() <= 2.0 ** -6 * x.abs().max() * 2


def test_recipe_names_work_where_a_recipe_is_expected():
    x = torch.randn(4, 64)
    r = get_recipe("nvfp4")
    xb, dims = blocked(pad_to_blocks(x, "nvfp4"), "nvfp4")
    by_name, by_recipe = compute_scale(xb, dims, "nvfp4"), compute_scale(xb, dims, r)
    assert torch.equal(by_name["scales"], by_recipe["scales"])
    assert torch.equal(by_name["tensor_scale"], by_recipe["tensor_scale"])
    with pytest.raises(ValueError, match="unknown recipe"):
        compute_scale(xb, dims, "nvfp5")
    with pytest.raises(TypeError, match="Recipe or a recipe name"):
        compute_scale(xb, dims, 4)
    with pytest.raises(ValueError, match="dims"):
        compute_scale(xb, (7,), r)
    with pytest.raises(TypeError, match="Recipe.pad"):
        Recipe("x", "int8", pad="yes")
    from quantlib.nn import QuantConfig
    from quantlib.nn.linear import static_recipe, supports_static
    cfg = QuantConfig("mine", "int4_g32", "int8_tensor")
    assert cfg.weight is get_recipe("int4_g32") and supports_static("int8_tensor")
    lin = nn.Linear(32, 8)
    assert torch.equal(QuantLinear.from_linear(lin, cfg, act_amax=2.0)(x[:, :32]),
                       QuantLinear.from_linear(lin, QuantConfig("mine", get_recipe("int4_g32"),
                                                                get_recipe("int8_tensor")),
                                               act_amax=2.0)(x[:, :32]))
    assert static_recipe("int8_tensor", torch.tensor(2.0)).calibrator is not None
    with pytest.raises(TypeError, match="weight"):
        QuantConfig("mine", None)
    with pytest.raises(TypeError, match="hessian"):
        hessian([[1.0, 2.0]])


# ---- fp8_linear and autograd -----------------------------------------------------------------
def test_fp8_linear_refuses_grad_inputs_clearly():
    x, w = torch.randn(4, 128, requires_grad=True), torch.randn(16, 128)
    with pytest.raises(ValueError, match="x requires grad.*no_grad"):
        K.fp8_linear(x, w, path="reference")
    with pytest.raises(ValueError, match="w requires grad"):
        K.fp8_linear(x.detach(), w.requires_grad_(), path="reference")
    with torch.no_grad():
        y = K.fp8_linear(x, w, out_dtype=torch.float32, path="reference")
    assert y.shape == (4, 16) and not y.requires_grad


# ---- saving and loading -------------------------------------------------------------------------
def _reload(model):
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def test_quantized_models_pickle_and_load():
    torch.manual_seed(0)
    m, x = mlp(), torch.randn(64, 64)
    made = {
        "gptq": quantize_model(m, "int4_g32", calibration=x, method="gptq"),
        "mse": quantize_model(m, "int4_g32", weight_calibrator="mse"),
        "percentile": quantize_model(m, "w8a8_int8_static", calibration=x,
                                     weight_calibrator="percentile_99",
                                     act_calibrator="percentile_99.9"),
        "lsq (qat)": prepare_qat(m, "w4a4_int4", calibration=x, lsq=True),
        "lsq (converted)": convert(prepare_qat(m, "w4a4_int4", calibration=x, lsq=True)),
        "awq": quantize_model(m, "int4_g32", calibration=x, smooth="awq", rotate=16),
    }
    for name, q in made.items():
        with torch.no_grad():
            assert torch.equal(_reload(q)(x), q(x)), name


def test_state_dict_and_safetensors_round_trip():
    import os
    import tempfile

    st = pytest.importorskip("safetensors.torch")     # installed with transformers
    load_file, save_file = st.load_file, st.save_file
    torch.manual_seed(0)
    x = torch.randn(8, 64)
    q = quantize_model(mlp(0), "nvfp4_w4a4")
    other = quantize_model(mlp(1), "nvfp4_w4a4")
    other.load_state_dict(q.state_dict())
    assert torch.equal(other(x), q(x))
    # safetensors holds the tensors (codes, scales, ...); the recipes are the model's config
    tensors = {k: v for k, v in q.state_dict().items() if isinstance(v, torch.Tensor)}
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "q.safetensors")
        save_file(tensors, path)
        loaded = load_file(path)
        fresh = quantize_model(mlp(2), "nvfp4_w4a4")
        missing, unexpected = fresh.load_state_dict(loaded, strict=False)
        assert not unexpected and all(k.endswith("_extra_state") for k in missing)
        assert torch.equal(fresh(x), q(x))
        # one QuantizedTensor: tensors through safetensors, the rest is plain values
        qt = quantize(torch.randn(8, 48), "int8_channel_asym")
        sd = qt.state_dict()
        save_file({k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}, path)
        back = QuantizedTensor.from_state_dict({**sd, **load_file(path)})
    assert torch.equal(back.dequantize(), qt.dequantize())
    assert torch.equal(QuantizedTensor.from_state_dict(sd).dequantize(), qt.dequantize())


# ---- crashes that are now errors saying what to do ---------------------------------------------
def test_malformed_quantized_tensors_and_state_dicts():
    qt = quantize(torch.randn(4, 32), "nvfp4")
    sd = qt.state_dict()
    for key in ("codes", "recipe", "shape"):
        bad = {k: v for k, v in sd.items() if k != key}
        with pytest.raises(ValueError, match=key):
            QuantizedTensor.from_state_dict(bad)
    with pytest.raises(ValueError, match="tensor_scale"):
        QuantizedTensor.from_state_dict({k: v for k, v in sd.items() if k != "tensor_scale"})
    with pytest.raises(ValueError, match="dtype"):
        QuantizedTensor.from_state_dict({**sd, "dtype": "float7"})
    with pytest.raises(ValueError, match="recipe"):
        QuantizedTensor.from_state_dict({**sd, "recipe": {"name": "x", "colour": 3}})
    with pytest.raises(TypeError, match="state_dict"):
        QuantizedTensor.from_state_dict([1, 2])
    with pytest.raises(ValueError, match="codes has shape"):
        dataclasses.replace(qt, codes=qt.codes[:, :3])
    with pytest.raises(TypeError, match="scales"):
        dataclasses.replace(qt, scales=qt.scales.float())
    with pytest.raises(ValueError, match="zero_point"):
        dataclasses.replace(quantize(torch.randn(4, 32), "int8_channel_asym"), zero_point=None)
    with pytest.raises(TypeError, match="shape"):
        dataclasses.replace(qt, shape=(4, -32))


def test_meta_tensors_are_refused_clearly():
    x = torch.empty(4, 32, device="meta")
    with pytest.raises(ValueError, match="meta"):
        quantize(x, "nvfp4")
    with pytest.raises(ValueError, match="meta"):
        quantize(torch.randn(4, 32), "nvfp4").to("meta").dequantize()
    with pytest.raises(ValueError, match="meta"):
        compute_scale(x, (0, 1), "fp8_e4m3_tensor")
    with torch.device("meta"):
        m = mlp()
    with pytest.raises(ValueError, match="meta"):
        quantize_model(m, "int8")


def test_gptq_options_and_singular_hessian():
    w, x = torch.randn(8, 32), torch.randn(64, 32)
    for bs in (0, -1, 1.5):
        with pytest.raises(ValueError, match="block_size"):
            gptq_quantize(w, hessian(x), "int4_g32", block_size=bs)
    with pytest.raises(ValueError, match="damp"):
        gptq_quantize(w, hessian(x), "int4_g32", damp=-0.1)
    same = torch.ones(64, 32)                  # every token equal: H has rank 1
    with pytest.raises(ValueError, match="raise damp"):
        gptq_quantize(w, hessian(same), "int4_g32", damp=0.0)
    q, _ = gptq_quantize(w, hessian(same), "int4_g32", damp=0.1)
    assert torch.isfinite(q.dequantize()).all()
    with pytest.raises(ValueError, match="raise damp"):
        quantize_model(mlp(widths=(32, 8)), "int4_g32", calibration=same, method="gptq",
                       gptq_options={"damp": 0.0})


def test_scalar_input_to_weight_only_matmuls():
    w = torch.randn(16, 64)
    for fn, recipe in ((K.nvfp4_matmul, "nvfp4"), (K.mx_matmul, "mxfp4"),
                       (K.fp8_weight_matmul, "fp8_e4m3_rowwise")):
        with pytest.raises(ValueError, match="scalar"):
            fn(torch.tensor(1.0, dtype=torch.bfloat16), quantize(w, recipe))
