"""The tables and roofline points of the kernels chapter."""
import json

import pytest
import torch

import quantlib.kernels as K
import quantlib.kernels.report as report

pytest.importorskip("triton")

from quantlib.kernels import _minifloat
from quantlib.kernels.report import (
    benchmark_table,
    bit_exact_table,
    check_table,
    kernel_source,
    load_gpu_results,
    roofline_points,
)

RUN = {"device": "GPU X", "date": "2026-01-01T00:00:00", "checks": [
    {"check": "quantize a", "pass": True, "detail": "ok"},
    {"check": "gemm b", "pass": False, "detail": "max err / fp32 bound = 1.9"}],
    "benchmarks": [
    {"bench": "device copy", "GB/s": 3000.0},
    {"bench": "quantize q", "shape": [8192, 8192], "GB/s": 2700.0, "copy GB/s": 3000.0,
     "ratio": 0.9, "bar": 0.85, "pass": True},
    {"bench": "fp8 mm", "M": 8192, "N": 8192, "K": 8192, "scales": "tensor", "ms": 1.0,
     "TFLOP/s": 1099.5, "best baseline TFLOP/s": 1200.0, "ratio": 0.92, "bar": 0.9, "pass": True},
    {"bench": "w4a16", "M": 1, "N": 8192, "K": 8192, "ms": 0.015, "cuBLAS bf16 ms": 0.045,
     "speedup": 3.0, "bar": 2.5, "pass": True},
    {"bench": "later", "skipped": "time budget"}]}


def test_bit_exact_table_reports_zero_differences():
    x = torch.randn(8, 128, generator=torch.Generator().manual_seed(0))
    t = bit_exact_table(x, ["fp8_e4m3_1x128", "nvfp4"])
    assert t.column("codes differing") == [0, 0]
    assert t.column("dequantize equal") == [True, True]


def test_bit_exact_table_on_a_cuda_machine_sends_the_kernels_to_the_gpu(monkeypatch):
    # A CUDA machine, simulated: the table must not call the kernels on CPU tensors (there
    # TRITON_INTERPRET is unset and path="triton" on the CPU raises). The fake move records
    # the device and keeps the tensors here, where the interpreter stands in for the GPU.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(report, "kernel_path", lambda device: "native-fp8")
    moved = []
    real_move = report._move

    def fake_move(obj, device):
        moved.append(device)
        with monkeypatch.context() as m:
            m.setattr(report, "_move", real_move)
            return real_move(obj, "cpu")
    monkeypatch.setattr(report, "_move", fake_move)
    x = torch.randn(4, 128, generator=torch.Generator().manual_seed(1))
    t = bit_exact_table(x, ["fp8_e4m3_1x128"])
    assert moved == ["cuda", "cuda", "cpu"]        # args and kwargs there, the result back
    assert "GPU" in t.title and t.column("codes differing") == [0]


def test_run_kernel_forces_the_interpreter_whatever_the_import(monkeypatch):
    # This process's kernels treated as compiled for a GPU (as when quantlib.kernels was
    # imported without TRITON_INTERPRET) and no GPU: the call goes to a child interpreter.
    monkeypatch.setattr(report, "kernels_interpreted", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x = torch.randn(4, 128, generator=torch.Generator().manual_seed(2))
    q = report.run_kernel(K.fp8_quantize, x, "fp8_e4m3_1x128", path="triton")
    ref = K.fp8_quantize(x, "fp8_e4m3_1x128", path="reference")
    assert torch.equal(q.codes, ref.codes) and torch.equal(q.scales, ref.scales)
    with pytest.raises(ValueError, match="where="):
        report.run_kernel(K.fp8_quantize, x, where="gpu")


def test_run_kernel_in_process_needs_no_environment_variable(monkeypatch):
    # The kernels of this test process were built for the interpreter (tests/conftest.py); a
    # notebook that unset the variable afterwards still runs them.
    if not report.kernels_interpreted():
        pytest.skip("this process's kernels are compiled for a GPU")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x = torch.randn(2, 128, generator=torch.Generator().manual_seed(3))
    y = report.run_kernel(K.fp8_quantize, x, "fp8_e4m3_1x128", path="triton",
                          where="interpreter")
    assert torch.equal(y.codes, K.fp8_quantize(x, "fp8_e4m3_1x128", path="reference").codes)


def test_results_tables_and_roofline(tmp_path):
    path = tmp_path / "gpu_check.json"
    path.write_text(json.dumps(RUN))
    run = load_gpu_results(path)
    assert check_table(run).column("pass") == [True, False]
    b = benchmark_table(run)
    assert len(b.rows) == 4 and b.column("ratio")[1:] == [0.9, 0.92, 3.0]
    assert len(benchmark_table(run, skipped=True).rows) == 5
    pts = roofline_points(run)
    fp8 = next(p for p in pts if p["kernel"].startswith("FP8"))
    assert fp8["ai"] == pytest.approx(2 * 8192**3 / (4 * 8192**2))     # 2MNK / (MK+NK+2MN)
    w4 = next(p for p in pts if p["kernel"] == "W4A16 (ours)")
    assert w4["ai"] == pytest.approx(2 * 8192**2 / (2 * 8192 + 8192**2 * 0.5625 + 2 * 8192))


def test_kernel_source_unwraps_the_jit():
    src = kernel_source(_minifloat.encode_minifloat)
    assert src.startswith("@triton.jit") and "def encode_minifloat" in src


RUN2 = {**RUN, "compute_capability": "sm_90", "torch": "2.11.0+cu130", "triton": "3.6.0",
        "checks": RUN["checks"] + [
            {"check": "fp8_scaled_mm x", "pass": True, "detail": "max err / fp32 bound = 0.137"},
            {"check": "fp8_scaled_mm vs torch._scaled_mm", "pass": True,
             "detail": "max err / fp32 bound: ours 0.42, torch._scaled_mm 0.42"},
            {"check": "nvfp4 matmul M=1", "pass": True, "detail": "max err / fp32 bound = 5e-05"}]}


def test_check_summary_groups_and_takes_the_largest_error():
    t = report.check_summary(RUN2)
    rows = {r[0]: r for r in t.rows}
    assert rows["FP8 GEMM (W8A8)"][1:4] == [2, 2, 0.42]
    assert rows["NVFP4/MXFP4 weights (W4A16)"][1:4] == [1, 1, 5e-05]
    assert rows["quantize + dequantize"][1:4] == [1, 1, None]
    assert rows["FP8/MXFP8 weights (W8A16)"][1:3] == [1, 0]      # "gemm b" failed
    assert "sm_90" in t.title and "2.11.0," in t.title


def test_benchmark_table_for_readers_drops_bars_and_other_shapes():
    t = report.benchmark_table(RUN2, bars=False, square_only=True)
    assert "bar" not in t.columns and "pass" not in t.columns
    assert t.column("ratio") == [None, 0.9, 0.92, 3.0]


def test_limits_table_floors():
    t = report.limits_table(RUN2)
    row = {r[0]: r for r in t.rows}
    w4 = row["w4a16"]                       # M=1: 8192 outputs, bytes 2K + NK*4.5/8 + 2N
    assert w4[1] == pytest.approx((2 * 8192 + 8192**2 * 0.5625 + 2 * 8192) / 8192)
    assert w4[-1] == "memory"
    mem_us = (2 * 8192 + 8192**2 * 0.5625 + 2 * 8192) / 3000e9 * 1e6
    assert w4[5] == pytest.approx(mem_us / 15.0)         # floor / measured (15 us)
    assert row["fp8 mm"][-1] == "compute"               # 2*8192^3 FLOP at 1979 TFLOP/s


def test_peer_table_reads_the_committed_run():
    t = report.peer_table()
    if t is None:
        pytest.skip("no committed peers run in this checkout")
    assert t.columns[:3] == ["N x K", "M", "quantlib NVFP4"] and len(t.rows) >= 1


def test_wq_error_table_within_the_fp32_bound():
    t = report.wq_error_table({"GEMV": ("gemv", 4, 16, 64, 1, 4, 1),
                               "GEMV split 4": ("gemv", 4, 16, 64, 4, 4, 1)}, m=2, n=32, k=256)
    errs = t.column("max |y - exact| / FP32 bound")
    assert all(0 < e < 0.01 for e in errs)


def test_roofline_figure_draws_every_point():
    import matplotlib
    matplotlib.use("Agg")
    fig = report.roofline_figure(RUN2)
    n = sum(len(c.get_offsets()) for c in fig.axes[0].collections)
    assert n == len(report.roofline_points(RUN2))


def test_gemv_timing_needs_a_gpu_and_times_both_kernels_on_one():
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA GPU"):
            report.gemv_timing(256, 256)
        return
    t = report.gemv_timing(1024, 1024, reps=3)
    assert t.column("kernel") == ["cuBLAS BF16", "NVFP4 W4A16"]
    assert all(v > 0 for v in t.column("time (us)"))
