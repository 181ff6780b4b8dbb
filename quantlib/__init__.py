"""quantlib: low-precision number formats for deep learning, from the bits up.

The library of the executable book on model quantization: bit-exact codecs for every format
(FP32 ... FP4 E2M1, E8M0, INT8/INT4), block scaling (NVFP4, MX), Triton FP8/NVFP4 kernels with
plain-torch twins, PTQ/QAT/low-precision training tools and a memory calculator.
See ARCHITECTURE.md for where each concept lives.
"""
__version__ = "0.1.0"

from quantlib.codecs import decode, encode, round_to_format
from quantlib.device import device_report, kernel_path
from quantlib.formats import FORMATS, Format, compare_formats, get_format, value_table
from quantlib.memory import (
    ModelConfig,
    format_bytes,
    get_model_config,
    inference_memory,
    kv_cache_memory,
    param_count,
    training_memory,
)
from quantlib.metrics import error_table, max_abs_error, max_rel_error, mse, qsnr, qsnr_table
from quantlib.packing import pack_nibbles, unpack_nibbles
from quantlib.qtensor import QuantizedTensor, quantize
from quantlib.recipes import RECIPES, Recipe, get_recipe, recipes
from quantlib.scaling import compute_scale, e8m0_scale, max_calibrator, nvfp4_scale
from quantlib.table import Table

__all__ = [
    "FORMATS", "RECIPES", "Format", "ModelConfig", "QuantizedTensor", "Recipe", "Table",
    "compare_formats", "compute_scale", "decode", "device_report", "e8m0_scale", "encode",
    "error_table", "format_bytes", "get_format", "get_model_config", "get_recipe",
    "inference_memory", "kernel_path", "kv_cache_memory", "max_abs_error", "max_calibrator",
    "max_rel_error", "mse", "nvfp4_scale", "pack_nibbles", "param_count", "qsnr", "qsnr_table",
    "quantize", "recipes", "round_to_format", "training_memory", "unpack_nibbles", "value_table",
]
