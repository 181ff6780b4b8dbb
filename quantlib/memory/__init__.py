"""Memory math and measured memory: parameter counts, inference and KV-cache bytes by format,
training memory by component and strategy, sharding across GPUs, and a tracker that measures a
real training step (plus FSDP2 on CPU ranks) to check the predictions.

- config.py: `ModelConfig` (from a Hugging Face config.json dict; dense, MoE and MLA), presets,
  `param_count` (total, or active per token)
- inference.py: storage formats with block-scale overhead, `inference_memory`, `kv_cache_memory`
- activations.py: the tensors a decoder block saves for backward (Korthikanti et al. 2022's method)
- training.py: `training_memory` for PTQ/QAT/QT, DP/ZeRO-1/2/3/FSDP
- model.py, tracker.py, fsdp.py: the measured side
- plots.py: the chapter's figures (matplotlib, imported on use)
"""
from quantlib.memory.activations import (
    SavedTensor,
    activation_memory,
    activation_table,
    layer_activation_memory,
    saved_tensors,
)
from quantlib.memory.config import (
    DENSE_PRESETS,
    HARMLESS_KEYS,
    MODEL_TYPES,
    MOE_PRESETS,
    PRESETS,
    ModelConfig,
    get_model_config,
    linear_param_count,
    linear_weight_count,
    param_breakdown,
    param_count,
    preset_table,
)
from quantlib.memory.fsdp import fsdp_table, measure_fsdp
from quantlib.memory.inference import (
    STORAGE_FORMATS,
    InferenceMemory,
    StorageFormat,
    bits_per_element,
    inference_memory,
    inference_table,
    kv_cache_memory,
    kv_cache_table,
    moe_table,
    scale_overhead_table,
    storage_format,
)
from quantlib.memory.model import LlamaDecoder, build_model
from quantlib.memory.tracker import (
    MeasuredMemory,
    compare_table,
    cuda_peak_memory,
    cuda_peak_table,
    measure_training_step,
    predicted_vs_measured,
    storage_bytes,
)
from quantlib.memory.training import (
    OPTIMIZERS,
    SHARDING,
    STRATEGIES,
    TrainingMemory,
    bytes_per_parameter,
    optimizer_state_bytes,
    qt_break_even_tokens,
    sharding_table,
    strategy_table,
    training_memory,
)
from quantlib.memory.units import GB, GiB, format_bytes, to_unit

__all__ = [
    "DENSE_PRESETS", "GB", "GiB", "HARMLESS_KEYS", "InferenceMemory", "LlamaDecoder",
    "MODEL_TYPES", "MOE_PRESETS", "MeasuredMemory", "ModelConfig", "OPTIMIZERS", "PRESETS",
    "SHARDING", "STORAGE_FORMATS", "STRATEGIES", "SavedTensor", "StorageFormat", "TrainingMemory",
    "activation_memory", "activation_table", "bits_per_element", "build_model",
    "bytes_per_parameter", "compare_table", "cuda_peak_memory", "cuda_peak_table", "format_bytes",
    "fsdp_table", "get_model_config", "inference_memory", "inference_table", "kv_cache_memory",
    "kv_cache_table", "layer_activation_memory", "linear_param_count", "linear_weight_count",
    "measure_fsdp", "measure_training_step", "moe_table", "optimizer_state_bytes",
    "param_breakdown", "param_count", "predicted_vs_measured", "preset_table",
    "qt_break_even_tokens", "saved_tensors", "scale_overhead_table", "sharding_table",
    "storage_bytes", "storage_format", "strategy_table", "to_unit", "training_memory",
]
