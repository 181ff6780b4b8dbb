"""FP8 scaled GEMM and W4A16 (NVFP4/MX weight x BF16) GEMM kernels and their reference twins
against a float64 matmul of the dequantized operands: the error must stay inside the bound of
FP32 accumulation, K * 2^-23 * (|A| |B|^T) elementwise."""
import dataclasses

import pytest
import torch

pytest.importorskip("triton")

import quantlib.kernels as K
from quantlib.kernels import _gemm
from quantlib.recipes import get_recipe

DEV = "cuda" if torch.cuda.is_available() else "cpu"


# the FP8 GEMM on FP8 tensor cores (sm_89+) accumulates each 128-product chain in ~13 bits
# before promoting it to FP32: its bound has the hardware's term (quantlib.kernels._gemm)
FP8_MMA = DEV == "cuda" and torch.cuda.get_device_capability() >= (8, 9)


def fp32_bound(a64, b64, bias=None, fp8_mma=False):
    """Elementwise bound on |C - float64 A @ B^T| for FP32 accumulation (+ the FP8 MMA term)."""
    s = a64.abs() @ b64.abs().T
    bound = s * (a64.shape[1] * 2.0 ** -23) + 1e-30
    if fp8_mma:
        bound = bound + s * _gemm.FP8_MMA_REL_ERR
    if bias is not None:
        bound = bound + 2.0 ** -23 * bias.double().abs()
    return bound


def within_fp32_bound(c, a64, b64, bias=None, fp8_mma=False):
    ref = a64 @ b64.T + (0 if bias is None else bias.double())
    return float(((c.double() - ref).abs() / fp32_bound(a64, b64, bias, fp8_mma)).max()) <= 1.0


def rand(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(DEV)


MM_CASES = [("fp8_e4m3_tensor", "fp8_e4m3_tensor"), ("fp8_e4m3_rowwise", "fp8_e4m3_rowwise"),
            ("fp8_e4m3_1x128", "fp8_e4m3_128x128"), ("fp8_e5m2_rowwise", "fp8_e4m3_tensor")]


@pytest.mark.parametrize("ra,rb", MM_CASES, ids=[f"{a}-{b}" for a, b in MM_CASES])
@pytest.mark.parametrize("path", ["triton", "reference"])
def test_fp8_scaled_mm(ra, rb, path):
    rb = dataclasses.replace(get_recipe(rb), pad=True)
    a = K.fp8_quantize(rand(37, 256, seed=1), ra)          # odd M; N below one 128 block
    b = K.fp8_quantize(rand(72, 256, seed=2), rb)
    bias = rand(72, seed=3)
    a64, b64 = a.dequantize().double(), b.dequantize().double()
    c = K.fp8_scaled_mm(a, b, bias=bias, out_dtype=torch.float32, path=path)
    assert c.shape == (37, 72) and c.dtype == torch.float32
    assert within_fp32_bound(c, a64, b64, bias, fp8_mma=FP8_MMA and path == "triton")
    cb = K.fp8_scaled_mm(a, b, bias=bias, path=path)            # BF16 output, rounded once
    assert cb.dtype == torch.bfloat16
    assert torch.allclose(cb.float(), c, rtol=2.0 ** -8, atol=1e-6)


TORCH_CASES = [("fp8_e4m3_tensor", "fp8_e4m3_tensor", True, torch.float32),
               ("fp8_e5m2_tensor", "fp8_e4m3_tensor", True, torch.bfloat16),
               ("fp8_e4m3_rowwise", "fp8_e4m3_rowwise", False, torch.bfloat16)]


@pytest.mark.parametrize("ra,rb,with_bias,out", TORCH_CASES,
                         ids=[f"{a}-{b}-{w}" for a, b, w, _ in TORCH_CASES])
def test_fp8_scaled_mm_through_torch(ra, rb, with_bias, out):
    """path="torch" (what "auto" takes on an sm_89+ GPU for these scalings): torch._scaled_mm
    with quantlib's scales laid out as it wants them, the same FP32 contract (bias added in
    FP32, one rounding), and equal to quantlib's own kernel to the output's precision."""
    a = K.fp8_quantize(rand(40, 256, seed=1), ra)
    b = K.fp8_quantize(rand(48, 256, seed=2), rb)
    bias = rand(48, seed=3) if with_bias else None
    a64, b64 = a.dequantize().double(), b.dequantize().double()
    c = K.fp8_scaled_mm(a, b, bias=bias, out_dtype=out, path="torch")
    assert c.shape == (40, 48) and c.dtype == out
    ours = K.fp8_scaled_mm(a, b, bias=bias, out_dtype=torch.float32, path="reference")
    if out == torch.float32:
        assert within_fp32_bound(c, a64, b64, bias, fp8_mma=FP8_MMA)
    else:     # one rounding of the FP32 result: within one BF16 ulp of the twin's
        assert torch.allclose(c.float(), ours, rtol=2.0 ** -8, atol=1e-6)


def test_fp8_scaled_mm_torch_refuses_what_it_cannot_take():
    blk = K.fp8_quantize(rand(32, 256), "fp8_e4m3_1x128")
    w_blk = K.fp8_quantize(rand(128, 256), "fp8_e4m3_128x128")
    row = K.fp8_quantize(rand(32, 256), "fp8_e4m3_rowwise")
    with pytest.raises(ValueError, match="per-tensor or per-row.*path='auto'"):
        K.fp8_scaled_mm(blk, w_blk, path="torch")
    with pytest.raises(ValueError, match="BF16 only"):
        K.fp8_scaled_mm(row, row, bias=rand(32), path="torch")
    odd = K.fp8_quantize(rand(24, 256), "fp8_e4m3_rowwise")
    with pytest.raises(ValueError, match="multiples of 16"):
        K.fp8_scaled_mm(row, odd, path="torch")
    with pytest.raises(ValueError, match="path"):
        K.fp8_scaled_mm(row, row, path="cublas")


W_CASES = [("nvfp4", 1), ("nvfp4", 20), ("mxfp4", 3), ("mxfp8_e4m3", 17), ("mxfp8_e5m2", 1)]


@pytest.mark.parametrize("recipe,M", W_CASES, ids=[f"{r}-M{m}" for r, m in W_CASES])
@pytest.mark.parametrize("path", ["triton", "reference"])
def test_weight_matmul(recipe, M, path):
    quant, mm = ((K.nvfp4_quantize, K.nvfp4_matmul) if recipe == "nvfp4"
                 else (K.mx_quantize, K.mx_matmul))
    w = quant(rand(48, 256, seed=4), recipe)
    x = rand(M, 256, seed=5).to(torch.bfloat16)
    bias = rand(48, seed=6)
    y = mm(x, w, bias=bias, out_dtype=torch.float32, path=path)
    assert y.shape == (M, 48)
    assert within_fp32_bound(y, x.double(), w.dequantize().double(), bias)
    x3 = x.reshape(1, M, 256)                                    # leading dims pass through
    assert mm(x3, w, path=path).shape == (1, M, 48)
    empty = mm(x[:0], w, bias=bias, path=path)                   # no tokens: an empty result
    assert empty.shape == (0, 48) and empty.dtype == torch.bfloat16


WQ_CONFIGS = [("gemv", 1, 16, 64, 1, 4, 1), ("gemv", 4, 16, 64, 2, 4, 1),
              ("gemv", 8, 8, 128, 4, 4, 1), ("dot", 16, 32, 64, 1, 4, 4, 1),
              ("dot", 16, 16, 64, 4, 4, 4, 1), ("scaled", 16, 32, 64, 1, 4, 4, 1),
              ("scaled", 16, 16, 128, 2, 4, 4, 1), ("dequant", 16, 64, 4)]


def cfg_id(c):
    return f"{c[0]}-BN{c[1]}" if c[0] == "dequant" else f"{c[0]}-BM{c[1]}-SK{c[4]}"


def test_gpu_candidates_fit_the_weight():
    """The configs the launcher tunes on a GPU: tl.dot_scaled only for MX weights (an FP8
    weight once got a 'scaled' candidate on an H100, and every call was refused), from sm_90;
    GEMV only for the rows one program holds; dequantize-once only for compute-bound M."""
    import triton.language as tl

    from quantlib.kernels import _wq_gemm
    for kind in _wq_gemm._WQ:
        mx = kind.startswith("mx")
        assert _wq_gemm.scaled_dot_supported(kind, (10, 0)) == (mx and hasattr(tl, "dot_scaled"))
        assert not _wq_gemm.scaled_dot_supported(kind, (8, 9))
    for M in (1, 3, 4, 16, 300, 512, 2048):
        cfgs = _wq_gemm.wq_configs(M, interpret=False, scaled=True)
        assert all(c[1] >= M for c in cfgs if c[0] == "gemv")
        assert any(c[0] == "gemv" for c in cfgs) == (M <= _wq_gemm.GEMV_MAX_M)
        assert any(c[0] == "dequant" for c in cfgs) == (M >= _wq_gemm.DEQUANT_MIN_M)
        assert len(set(cfgs)) == len(cfgs)


@pytest.mark.parametrize("recipe", ["nvfp4", "mxfp4", "mxfp8_e4m3"])
@pytest.mark.parametrize("config", WQ_CONFIGS, ids=[cfg_id(c) for c in WQ_CONFIGS])
def test_weight_matmul_every_kernel(recipe, config):
    """The CUDA-core GEMV, the tensor-core kernel and its tl.dot_scaled variant (MX weights),
    with and without split K (partial sums reduced in a fixed order), and dequantize-once then
    a library GEMM: each meets the FP32 bound, and its BF16 output is its own FP32 output
    rounded once (the epilogue rounds after the reduction)."""
    from quantlib.kernels import _wq_gemm
    if DEV == "cuda":
        pytest.skip("forced interpreter-sized configs; gpu_check.py covers the GPU's")
    if config[0] == "scaled" and recipe == "nvfp4":      # tl.dot_scaled takes MX scales only
        w = K.nvfp4_quantize(rand(40, 256, seed=9))
        with pytest.raises(ValueError, match="E8M0 scales per 32"):
            _wq_gemm.wq_mm(rand(3, 256).to(torch.bfloat16), w.codes, w.scales, w.tensor_scale,
                           "nvfp4", config=config)
        return
    M = min(config[1], 3) if config[0] == "gemv" else 20
    w = (K.nvfp4_quantize if recipe == "nvfp4" else K.mx_quantize)(rand(40, 256, seed=9), recipe)
    if config[0] == "gemv":                # one program holds every row: BM < M is refused
        with pytest.raises(ValueError, match="at most BM rows"):
            _wq_gemm.wq_mm(rand(config[1] + 1, 256).to(torch.bfloat16), w.codes, w.scales,
                           w.tensor_scale, recipe, config=config)
    x = rand(M, 256, seed=10).to(torch.bfloat16)
    bias = rand(40, seed=11)

    def run(out):
        return _wq_gemm.wq_mm(x, w.codes, w.scales, w.tensor_scale, recipe, bias=bias,
                              out_dtype=out, config=config)
    y = run(torch.float32)
    assert within_fp32_bound(y, x.double(), w.dequantize().double(), bias)
    assert torch.equal(run(torch.bfloat16), y.to(torch.bfloat16))
    assert torch.equal(run(torch.float32), y)                      # deterministic


@pytest.mark.parametrize("recipe", ["fp8_e4m3_rowwise", "fp8_e4m3_tensor", "fp8_e5m2_rowwise"])
@pytest.mark.parametrize("M", [1, 3, 20])
@pytest.mark.parametrize("path", ["triton", "reference"])
def test_fp8_weight_matmul(recipe, M, path):
    """W8A16: an FP8 weight with one FP32 scale per row or tensor, BF16 activations; the scale
    multiplies the FP32 accumulator. The kernel's GEMV and tensor-core configs, split K or not."""
    from quantlib.kernels import _wq_gemm
    w = K.fp8_quantize(rand(40, 256, seed=16), recipe)
    x = rand(M, 256, seed=17).to(torch.bfloat16)
    bias = rand(40, seed=18)
    y = K.fp8_weight_matmul(x, w, bias=bias, out_dtype=torch.float32, path=path)
    assert y.shape == (M, 40)
    assert within_fp32_bound(y, x.double(), w.dequantize().double(), bias)
    if path == "triton" and DEV == "cpu":
        kind = "fp8_" + get_recipe(recipe).element
        for cfg in [c for c in WQ_CONFIGS if c[0] in ("dot", "dequant") or
                    (c[0] == "gemv" and c[1] >= M)]:
            yc = _wq_gemm.wq_mm(x, w.codes, None, w.scales.reshape(-1).contiguous(), kind,
                                bias=bias, out_dtype=torch.float32, config=cfg)
            assert within_fp32_bound(yc, x.double(), w.dequantize().double(), bias), cfg
    with pytest.raises(ValueError, match="multiple of 16"):
        K.fp8_weight_matmul(rand(2, 40).to(torch.bfloat16),
                            K.fp8_quantize(rand(8, 40), recipe), path=path)
    with pytest.raises(ValueError, match="recipe"):
        K.fp8_weight_matmul(x, K.fp8_quantize(rand(40, 256), "fp8_e4m3_1x128"), path=path)


def test_gemm_bad_input():
    a = K.fp8_quantize(rand(16, 256), "fp8_e4m3_rowwise")
    b = K.fp8_quantize(rand(32, 128), "fp8_e4m3_rowwise")
    with pytest.raises(ValueError, match="K must match"):
        K.fp8_scaled_mm(a, b)
    with pytest.raises(TypeError, match="QuantizedTensor"):
        K.fp8_scaled_mm(rand(16, 256), a)
    with pytest.raises(ValueError, match="FP8 elements"):
        K.fp8_scaled_mm(a, K.mx_quantize(rand(32, 256), "mxfp4"))
    g = dataclasses.replace(get_recipe("fp8_e4m3_1x128"), pad=True)
    with pytest.raises(ValueError, match="multiple of the 128"):
        K.fp8_scaled_mm(K.fp8_quantize(rand(16, 200), g), K.fp8_quantize(rand(32, 200), g))
    with pytest.raises(ValueError, match="malformed QuantizedTensor: scales has shape"):
        dataclasses.replace(a, scales=a.scales[:8])        # refused before any kernel reads it
    w = K.nvfp4_quantize(rand(32, 256))
    with pytest.raises(TypeError, match="bfloat16"):
        K.nvfp4_matmul(rand(4, 256), w)
    with pytest.raises(ValueError, match="K=128"):
        K.nvfp4_matmul(rand(4, 128).to(torch.bfloat16), w)
    with pytest.raises(ValueError, match="recipe"):
        K.nvfp4_matmul(rand(4, 256).to(torch.bfloat16), K.mx_quantize(rand(32, 256), "mxfp4"))


@pytest.mark.parametrize("path", ["triton", "reference"])
def test_fp8_linear(path):
    x, w = rand(2, 5, 256, seed=7), 0.02 * rand(48, 256, seed=8)
    y = K.fp8_linear(x, w, out_dtype=torch.float32, path=path)
    xq = K.fp8_quantize(x.reshape(-1, 256), "fp8_e4m3_rowwise", path="reference")
    wq = K.fp8_quantize(w, "fp8_e4m3_rowwise", path="reference")
    assert y.shape == (2, 5, 48)
    assert within_fp32_bound(y.reshape(10, 48), xq.dequantize().double(), wq.dequantize().double(),
                             fp8_mma=FP8_MMA and path == "triton")


@pytest.mark.parametrize("ra,rb", MM_CASES, ids=[f"{a}-{b}" for a, b in MM_CASES])
def test_fp8_scaled_mm_nan_poisons_like_reference(ra, rb):
    """A NaN in an operand makes its group's scale NaN: the kernel's output has NaN exactly
    where the reference's has, and the same finite values elsewhere (to the FP32 bound)."""
    rb = dataclasses.replace(get_recipe(rb), pad=True)
    xa, xb = rand(37, 256, seed=12), rand(72, 256, seed=13)
    xa[5, 17] = float("nan")
    xb[40, 200] = float("inf")
    a, b = K.fp8_quantize(xa, ra), K.fp8_quantize(xb, rb)
    ref = K.fp8_scaled_mm(a, b, out_dtype=torch.float32, path="reference")
    c = K.fp8_scaled_mm(a, b, out_dtype=torch.float32, path="triton")
    assert ref.isnan().any()
    assert torch.equal(c.isnan(), ref.isnan())
    ok = ~ref.isnan()             # none with per-tensor scales: one NaN poisons the whole tensor
    if not ok.any():
        return
    a64, b64 = a.dequantize().double().nan_to_num(), b.dequantize().double().nan_to_num()
    bound = fp32_bound(a64, b64, fp8_mma=FP8_MMA)
    assert float(((c.double() - ref.double()).abs()[ok] / bound[ok]).max()) <= 2.0


@pytest.mark.parametrize("recipe", ["nvfp4", "mxfp4", "mxfp8_e4m3"])
@pytest.mark.parametrize("M", [1, 20])
def test_weight_matmul_nan_weight_block(recipe, M):
    """A NaN weight poisons its block (MX: NaN scale; NVFP4: the tensor scale too, so all of
    w): the output is NaN in the kernel exactly where it is in the reference."""
    xw = rand(48, 256, seed=14)
    xw[7, 100] = float("nan")
    w = (K.nvfp4_quantize if recipe == "nvfp4" else K.mx_quantize)(xw, recipe)
    x = rand(M, 256, seed=15).to(torch.bfloat16)
    mm = K.nvfp4_matmul if recipe == "nvfp4" else K.mx_matmul
    ref = mm(x, w, out_dtype=torch.float32, path="reference")
    y = mm(x, w, out_dtype=torch.float32, path="triton")
    if recipe == "nvfp4":
        assert ref.isnan().all()
    else:
        assert ref[:, 7].isnan().all() and not ref[:, :7].isnan().any()
    assert torch.equal(y.isnan(), ref.isnan())
