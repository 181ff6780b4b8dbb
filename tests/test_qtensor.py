"""quantize / QuantizedTensor: codes and scales against numpy + ml_dtypes oracles, published corner
cases, QSNR on N(0,1), edge cases (empty, zeros, NaN/Inf, padding), save/load, packing."""
import dataclasses
import io

import numpy as np
import pytest
import torch

import quantlib
from quantlib.metrics import qsnr
from quantlib.qtensor import QuantizedTensor, quantize
from quantlib.recipes import RECIPES, get_recipe

ml = pytest.importorskip("ml_dtypes")
f32 = np.float32


def _data(rows=32, cols=256, seed=0):
    """Gaussian rows spread over 12 binades, a few exact ties and an outlier."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=g) * torch.logspace(-6, 6, rows, base=2).unsqueeze(1)
    x[0, :8] = torch.tensor([0.25, 0.75, 1.25, 2.5, 5.0, -3.5, 6.0, 448.0])
    x[1, 3] = 1e4
    return x


def _codes(q):
    c = q.codes
    if q.recipe.format.bits == 4:
        c = torch.stack([c & 15, c >> 4], -1).reshape(*c.shape[:-1], -1)
    if q.recipe.format.bits == 6:      # 3 bytes = one little-endian 24-bit word of 4 codes
        b = c.numpy().astype(np.uint32).reshape(*c.shape[:-1], -1, 3)
        w = b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16)
        return ((w[..., None] >> np.array([0, 6, 12, 18], np.uint32)) & 63).astype(
            np.uint8).reshape(*c.shape[:-1], -1)
    return c.numpy()


def _mx_oracle(x, elem, emax, mldt, qmax):
    b = x.numpy().reshape(x.shape[0], -1, 32)
    amax = np.abs(b).max(-1)
    e = np.frexp(amax)[1] - 1 - emax                           # floor(log2(amax)) - emax
    byte = np.where(amax == 0, 0, np.clip(e, -127, 127) + 127).astype(np.uint8)
    r = np.ldexp(f32(1), 127 - byte.astype(np.int32)).astype(f32)
    y = np.clip(b * r[..., None], -qmax, qmax).astype(mldt).view(np.uint8)
    return byte, y.reshape(x.shape)


@pytest.mark.parametrize("name, elem, emax, qmax", [
    ("mxfp8_e4m3", "float8_e4m3fn", 8, 448.0), ("mxfp8_e5m2", "float8_e5m2", 15, 57344.0),
    ("mxfp6_e2m3", "float6_e2m3fn", 2, 7.5), ("mxfp6_e3m2", "float6_e3m2fn", 4, 28.0),
    ("mxfp4", "float4_e2m1fn", 2, 6.0)])
def test_mx_floor_matches_ml_dtypes_oracle(name, elem, emax, qmax):
    x = _data()
    q = quantize(x, name)
    byte, codes = _mx_oracle(x, elem, emax, getattr(ml, elem), qmax)
    assert np.array_equal(q.scales.numpy(), byte)
    assert np.array_equal(_codes(q), codes)
    want = codes.view(getattr(ml, elem)).astype(f32).reshape(32, -1, 32) * \
        np.ldexp(f32(1), byte.astype(np.int32) - 127)[..., None]
    assert np.array_equal(q.dequantize().numpy(), want.reshape(x.shape))


def test_nvfp4_matches_transformer_engine_math():
    x = _data(cols=128)
    q = quantize(x, "nvfp4")
    a = x.numpy()
    s_t = f32(np.abs(a).max()) / f32(2688.0)
    amax_b = np.abs(a.reshape(32, 8, 16)).max(-1)
    s_b = (amax_b / f32(6.0)).astype(f32) / s_t
    code_b = np.clip(s_b, 0, 448).astype(ml.float8_e4m3fn)
    t_b = code_b.astype(f32) * s_t
    enc = np.minimum(f32(1) / t_b, np.finfo(f32).max).astype(f32)
    y = np.clip(a.reshape(32, 8, 16) * enc[..., None], -6, 6).astype(ml.float4_e2m1fn)
    assert q.tensor_scale.item() == s_t
    assert np.array_equal(q.scales.numpy(), code_b.view(np.uint8))
    assert np.array_equal(_codes(q), y.view(np.uint8).reshape(x.shape))
    want = (y.astype(f32) * t_b[..., None]).reshape(x.shape)
    assert np.array_equal(q.dequantize().numpy(), want)


@pytest.mark.parametrize("name, mldt, qmax", [("fp8_e4m3_tensor", ml.float8_e4m3fn, 448.0),
                                               ("fp8_e5m2_rowwise", ml.float8_e5m2, 57344.0)])
def test_fp8_scaled_casts_match_ml_dtypes(name, mldt, qmax):
    x = _data()
    q = quantize(x, name)
    a = x.numpy()
    amax = np.abs(a).max(axis=None if "tensor" in name else 1, keepdims=True)
    s = (amax / f32(qmax)).astype(f32)
    y = np.clip(a * (f32(1) / s), -qmax, qmax).astype(mldt)
    assert np.array_equal(_codes(q), y.view(np.uint8))
    assert np.array_equal(q.dequantize().numpy(), y.astype(f32) * s)


def test_int8_rowwise_and_int4_group_asym_match_numpy():
    x = _data()
    a = x.numpy()
    q = quantize(x, "int8_rowwise")
    s = (np.abs(a).max(1, keepdims=True) / f32(127)).astype(f32)
    y = np.clip(np.rint(a * (f32(1) / s)), -128, 127).astype(np.int8)
    assert np.array_equal(_codes(q), y.view(np.uint8))
    qa = quantize(x, "int4_g128_asym")                          # GPTQ/AWQ arithmetic
    g = a.reshape(32, 2, 128)
    lo, hi = np.minimum(g.min(-1), 0), np.maximum(g.max(-1), 0)
    s = ((hi - lo) / f32(15)).astype(f32)
    r = (f32(1) / s).astype(f32)
    z = np.clip(np.rint(-lo * r), 0, 15)
    u = np.clip(np.rint(g * r[..., None]) + z[..., None], 0, 15).astype(np.uint8)
    assert np.array_equal(_codes(qa), u.reshape(x.shape))
    assert np.array_equal(qa.zero_point.numpy(), z.astype(np.uint8))
    assert np.array_equal(qa.dequantize().numpy(),
                          ((u - z[..., None]) * s[..., None]).astype(f32).reshape(x.shape))


def test_published_mx_corner_cases():
    x = torch.full((1, 32), 480.0)
    fl = quantize(x, "mxfp8_e4m3")
    assert fl.scales.item() == 127 and set(fl.codes.flatten().tolist()) == {0x7E}
    rc = quantize(x, dataclasses.replace(get_recipe("mxfp8_e4m3"), scale_rule="rceil"))
    assert rc.scales.item() == 128 and set(rc.codes.flatten().tolist()) == {0x77}
    assert rc.dequantize().unique().item() == 480.0 and fl.dequantize().unique().item() == 448.0
    for name in ("mxfp4", "mxfp8_e4m3", "mxint8"):
        z = quantize(torch.zeros(2, 64), name)
        assert z.scales.unique().item() == 0 and torch.equal(z.dequantize(), torch.zeros(2, 64))


def test_mxint8_is_fixed_point():
    x = torch.tensor([[1.0, -1.0, 0.5, 1.984375, 1 / 64, 3 / 128] + [0.0] * 26])
    q = quantize(x, "mxint8")
    assert q.scales.item() == 127                       # amax 1.98 -> 2^0, emax 0
    assert q.codes[0, :6].view(torch.int8).tolist() == [64, -64, 32, 127, 1, 2]  # 1.5 -> 2 (RNE)


@pytest.mark.parametrize("name, want", [
    ("nvfp4", 20.4), ("mxfp4", 18.8), ("mxfp8_e4m3", 30.7), ("fp8_e4m3_tensor", 31.5),
    ("fp8_e5m2_tensor", 25.6), ("int8_rowwise", 41.3), ("int4_g128", 18.6)])
def test_qsnr_on_gaussian(name, want):
    x = torch.randn(1024, 4096, generator=torch.Generator().manual_seed(0))
    assert abs(qsnr(x, quantize(x, name)) - want) < 0.3


def test_nvfp4_block_scale_times_6_is_block_amax():
    x = torch.randn(64, 512, generator=torch.Generator().manual_seed(3))
    q = quantize(x, "nvfp4")
    amax_b = x.reshape(64, 32, 16).abs().amax(-1)
    rec = q.scale_values() * q.tensor_scale * 6
    assert torch.all((rec - amax_b).abs() <= 2.0 ** -4 * amax_b)


def test_packing_low_nibble_first():
    x = torch.tensor([[1.0, -6.0, 0.5, 3.0] + [0.0] * 12])   # E2M1 codes 2, 0xF, 1, 5
    q = quantize(x, dataclasses.replace(get_recipe("nvfp4")))
    assert q.codes.shape == (1, 8) and q.codes[0, :2].tolist() == [0xF2, 0x51]
    qi = quantize(torch.tensor([[-1.0, 7.0, -7.0]]), "int4_channel")   # odd K: a zero nibble
    assert qi.codes.tolist() == [[0x7F, 0x09]]                 # two's complement: -1 -> 0xF


def test_packing_6bit_four_codes_in_three_bytes():
    # E2M3 codes 0x0A (1.25), 0x27 (-0.875), 0x1F (7.5), 0x3F (-7.5) under scale 2^0:
    # the word 0x0A | 0x27 << 6 | 0x1F << 12 | 0x3F << 18 = 0xFDF9CA, low byte first.
    x = torch.tensor([[1.25, -0.875, 7.5, -7.5] + [0.0] * 28])
    q = quantize(x, "mxfp6_e2m3")
    assert q.scales.tolist() == [[127]]
    assert q.codes.shape == (1, 24) and q.codes[0, :3].tolist() == [0xCA, 0xF9, 0xFD]
    assert torch.equal(q.dequantize(), x)
    # a last dimension that is not a multiple of 4: zero codes fill the last quad, then crop
    r = quantlib.Recipe("e2m3_row", "e2m3", "row")
    x6 = torch.tensor([[7.5, -1.0, 0.5, 3.0, -7.5, 2.0]])
    q6 = quantize(x6, r)
    assert q6.codes.shape == (1, 6) and _codes(q6)[0, 6:].tolist() == [0, 0]
    assert torch.equal(q6.dequantize(), x6)
    assert r.bits_per_element((1, 6)) == q6.bits_per_element == 8 * (6 + 4) / 6


@pytest.mark.parametrize("name", list(RECIPES))
def test_every_recipe_round_trips_and_saves(name):
    x = torch.randn(256, 256, generator=torch.Generator().manual_seed(4))
    q = quantize(x, name)
    assert q.codes.dtype == torch.uint8 and q.dequantize().shape == x.shape
    buf = io.BytesIO()
    torch.save(q.state_dict(), buf)
    buf.seek(0)
    q2 = QuantizedTensor.from_state_dict(torch.load(buf, weights_only=True))
    assert q2.recipe == q.recipe and torch.equal(q2.dequantize(), q.dequantize())
    assert torch.equal(q.to("cpu").dequantize(), q.dequantize())
    assert qsnr(x, q) > 15


@pytest.mark.parametrize("name, bits", [("nvfp4", 4.5), ("mxfp4", 4.25), ("mxfp8_e4m3", 8.25),
                                        ("mxfp6_e2m3", 6.25), ("mxfp6_e3m2", 6.25),
                                        ("int4_g128", 4.25), ("fp8_e4m3_tensor", 8.0)])
def test_bits_per_element(name, bits):
    q = quantize(torch.randn(128, 4096), name)
    assert abs(q.bits_per_element - bits) < 0.01
    assert abs(get_recipe(name).bits_per_element((128, 4096)) - q.bits_per_element) < 1e-9


def test_dtypes_in_and_out():
    x = torch.randn(4, 64, dtype=torch.bfloat16)
    q = quantize(x, "mxfp8_e4m3")
    assert q.dtype == torch.bfloat16 and q.dequantize(torch.bfloat16).dtype == torch.bfloat16
    assert torch.equal(quantize(x.float(), "mxfp8_e4m3").codes, q.codes)


def test_bad_inputs_say_what_to_do():
    with pytest.raises(TypeError, match="floating-point"):
        quantize(torch.arange(32), "mxfp4")
    with pytest.raises(TypeError, match="torch.Tensor"):
        quantize(np.zeros(32, dtype=np.float32), "mxfp4")
    with pytest.raises(ValueError, match="nvfp4.*mxfp4"):
        quantize(torch.zeros(32), "nvfp5")
    with pytest.raises(ValueError, match="pad=True"):
        quantize(torch.zeros(4, 40), "mxfp4")


@pytest.mark.parametrize("name", ["mxfp4", "mxfp6_e3m2", "nvfp4", "fp8_e4m3_128x128",
                                  "int4_g128_asym"])
def test_padding_is_remembered_and_cropped(name):
    x = torch.randn(3, 5, 40, generator=torch.Generator().manual_seed(5))
    r = dataclasses.replace(get_recipe(name), pad=True)
    q = quantize(x, r)
    assert q.shape == x.shape and q.dequantize().shape == x.shape
    per_byte = {4: 2, 6: 4 / 3}.get(r.format.bits, 1)         # codes per stored byte
    xp = torch.nn.functional.pad(x.reshape(15, 40), (0, round(q.codes.shape[-1] * per_byte) - 40))
    if r.granularity != "block2d":                             # zeros never change an amax
        assert torch.equal(quantize(xp.reshape(3, 5, -1), r).dequantize()[..., :40],
                           q.dequantize())


@pytest.mark.parametrize("name", list(RECIPES))
def test_empty_tensor(name):
    q = quantize(torch.zeros(0, 256), name)
    assert q.dequantize().shape == (0, 256) and q.codes.numel() == 0


@pytest.mark.parametrize("name", ["mxfp4", "mxfp8_e4m3", "int4_g128", "fp8_e4m3_1x128"])
def test_nan_inf_poison_only_their_block(name):
    x = torch.randn(2, 256, generator=torch.Generator().manual_seed(6))
    y = x.clone()
    y[0, 5], y[1, 200] = float("nan"), float("inf")
    qx, qy = quantize(x, name).dequantize(), quantize(y, name).dequantize()
    b = get_recipe(name).block
    bad = torch.zeros(2, 256, dtype=torch.bool)
    bad[0, :b], bad[1, (200 // b) * b:(200 // b + 1) * b] = True, True
    assert torch.isnan(qy[bad]).all() and torch.equal(qy[~bad], qx[~bad])


@pytest.mark.parametrize("name", ["nvfp4", "fp8_e4m3_tensor"])
def test_nan_poisons_a_shared_tensor_scale(name):
    x = torch.randn(2, 64)
    x[1, 3] = float("inf")
    assert torch.isnan(quantize(x, name).dequantize()).all()


def test_all_zero_and_tiny_blocks_stay_finite():
    x = torch.zeros(4, 64)
    x[1] = 1e-40
    x[2, :16] = 1e30
    for name in RECIPES:
        if get_recipe(name).block in (None, 16, 32, 64):
            d = quantize(x, name).dequantize()
            assert torch.isfinite(d).all(), name
            assert torch.equal(d[0], torch.zeros(64)), name


def test_public_names():
    for n in ("quantize", "QuantizedTensor", "Recipe", "recipes", "get_recipe", "qsnr", "mse",
              "max_abs_error", "max_rel_error", "qsnr_table", "compute_scale"):
        assert hasattr(quantlib, n), n


def test_pow2_scales_never_saturate():
    x = _data()
    r = dataclasses.replace(get_recipe("fp8_e4m3_1x128"), scale_format="pow2")
    q = quantize(x, r)
    m, _ = torch.frexp(q.scales)
    assert torch.all(m == 0.5)
    s = q.scales.repeat_interleave(128, dim=-1)
    assert torch.all(x.abs() / s <= 448)
    a = x.numpy()
    y = (a * (f32(1) / s.numpy())).astype(ml.float8_e4m3fn)     # exact: no clip needed
    assert np.array_equal(_codes(q), y.view(np.uint8))


def test_calibrator_through_quantize_clips():
    half = lambda rows, dim: rows.abs().amax(dim) / 2
    x = torch.randn(4, 128, generator=torch.Generator().manual_seed(7))
    r = dataclasses.replace(get_recipe("int8_rowwise"), calibrator=half)
    q = quantize(x, r)
    assert torch.equal(q.scales, (x.abs().amax(-1, keepdim=True) / 2) / 127)
    clipped = x.abs() > x.abs().amax(-1, keepdim=True) / 2 * (127.5 / 127)   # beyond 127.5 s
    codes = q.codes.view(torch.int8)
    assert clipped.any() and torch.all((codes[clipped] == 127) | (codes[clipped] == -128))


def test_asymmetric_represents_zero_exactly():
    x = torch.rand(8, 128, generator=torch.Generator().manual_seed(8)) + 0.5   # all positive
    x[:, ::7] = 0.0
    q = quantize(x, "int4_g128_asym")
    assert torch.all(q.dequantize()[:, ::7] == 0)
    assert torch.all(q.zero_point == 0)                        # lo = min(x, 0) = 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", list(RECIPES))
def test_cuda_gives_the_cpu_codes(name):
    x = _data(rows=128, cols=256)
    q, qc = quantize(x, name), quantize(x.cuda(), name)
    assert qc.codes.is_cuda and torch.equal(qc.codes.cpu(), q.codes)
    assert torch.equal(qc.scales.cpu(), q.scales)
    assert torch.equal(qc.dequantize().cpu(), q.dequantize())
