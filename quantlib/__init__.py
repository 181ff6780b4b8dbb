"""quantlib: low-precision number formats for deep learning, from the bits up.

The library of the executable book on model quantization: bit-exact codecs for every format
(FP32 ... FP4 E2M1, E8M0, INT8/INT4), block scaling (NVFP4, MX), Triton FP8/NVFP4 kernels with
plain-torch twins, PTQ/QAT/low-precision training tools and a memory calculator.
See ARCHITECTURE.md for where each concept lives.
"""
__version__ = "0.1.0"

from quantlib.table import Table
from quantlib.device import device_report, kernel_path
from quantlib.formats import Format, get_format, FORMATS, value_table, compare_formats
from quantlib.codecs import encode, decode, round_to_format
from quantlib.memory import (ModelConfig, get_model_config, param_count, inference_memory,
                             kv_cache_memory, training_memory, format_bytes)
from quantlib.packing import pack_nibbles, unpack_nibbles
from quantlib.recipes import Recipe, recipes, get_recipe, RECIPES
from quantlib.scaling import compute_scale, e8m0_scale, nvfp4_scale, max_calibrator
from quantlib.qtensor import QuantizedTensor, quantize
from quantlib.metrics import qsnr, mse, max_abs_error, max_rel_error, qsnr_table, error_table
