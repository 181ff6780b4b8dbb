"""quantlib.nn: quantized layers and whole-model tools (PTQ, GPTQ, QAT, low-precision training)."""
from quantlib.nn.calibrate import (
    calibrate_activations,
    collect_inputs,
    fixed_amax,
    max_calibrator,
    mse_calibrator,
    percentile_calibrator,
)
from quantlib.nn.gptq import gptq_quantize, hessian
from quantlib.nn.linear import CONFIGS, QuantConfig, QuantLinear, configs_table, get_config
from quantlib.nn.ptq import compare_ptq, memory_report, quantize_model, size_by_component
from quantlib.nn.qat import LSQQuantizer, QATLinear, convert, fake_quantize, prepare_qat, qat_vs_ptq
from quantlib.nn.sensitivity import (
    MixedPrecisionPlan,
    apply_plan,
    mixed_precision_plan,
    multiple_choice_knapsack,
    plan_table,
    sensitivity_report,
)
from quantlib.nn.training import FP8Linear, convert_to_low_precision_training
from quantlib.nn.transforms import awq_factors, smoothquant_factors

__all__ = [
    "CONFIGS", "FP8Linear", "LSQQuantizer", "MixedPrecisionPlan", "QATLinear", "QuantConfig",
    "QuantLinear", "apply_plan", "awq_factors", "calibrate_activations", "collect_inputs",
    "compare_ptq", "configs_table", "convert", "convert_to_low_precision_training",
    "fake_quantize", "fixed_amax", "get_config", "gptq_quantize", "hessian", "max_calibrator",
    "memory_report", "mixed_precision_plan", "mse_calibrator", "multiple_choice_knapsack",
    "percentile_calibrator", "plan_table", "prepare_qat", "qat_vs_ptq", "quantize_model",
    "sensitivity_report", "size_by_component", "smoothquant_factors",
]


def __getattr__(name):
    # The transformers KV cache lives in quantlib.attention; imported on first use (transformers
    # is needed only there).
    if name in ("QuantizedKVCache", "calibrate_kv"):
        from quantlib.attention import hf_cache
        return getattr(hf_cache, name)
    raise AttributeError(f"module 'quantlib.nn' has no attribute {name!r}")
