"""quantlib.nn: quantized layers and whole-model tools (PTQ, GPTQ, QAT, low-precision training)."""
from quantlib.nn.training import FP8Linear, convert_to_low_precision_training
from quantlib.nn.linear import QuantConfig, QuantLinear, CONFIGS, get_config, configs_table
from quantlib.nn.calibrate import (max_calibrator, percentile_calibrator, mse_calibrator,
                                   fixed_amax, calibrate_activations, collect_inputs)
from quantlib.nn.ptq import quantize_model, memory_report, size_by_component, compare_ptq
from quantlib.nn.gptq import gptq_quantize, hessian
from quantlib.nn.transforms import awq_factors, smoothquant_factors
from quantlib.nn.qat import (fake_quantize, LSQQuantizer, QATLinear, prepare_qat, convert,
                             qat_vs_ptq)
