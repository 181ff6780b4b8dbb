"""The architecture of a Llama-style decoder, built from a Hugging Face `config.json` dict, and its
parameter count.

A Llama-style decoder: token embedding, `num_hidden_layers` blocks of (RMSNorm, grouped-query
attention with q/k/v/o projections, RMSNorm, SwiGLU MLP with gate/up/down projections), a final
RMSNorm and an LM head (its own matrix, or the embedding's when `tie_word_embeddings`). The
presets are the published `config.json` numbers of each model; their counts are checked in the
tests against the totals the model cards publish.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from quantlib.table import Table


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a Llama-style decoder, with Hugging Face's field names.

    `head_dim` defaults to hidden_size // num_attention_heads; `num_key_value_heads` defaults to
    num_attention_heads (plain multi-head attention). `attention_bias` adds biases to the q/k/v
    projections (Qwen2), `mlp_bias` to gate/up/down.
    """
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    vocab_size: int
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    name: str = "custom"

    def __post_init__(self):
        if self.num_key_value_heads is None:
            object.__setattr__(self, "num_key_value_heads", self.num_attention_heads)
        for f in ("hidden_size", "intermediate_size", "num_hidden_layers",
                  "num_attention_heads", "num_key_value_heads", "vocab_size"):
            _check_positive_int(f, getattr(self, f))
        for f in ("tie_word_embeddings", "attention_bias", "mlp_bias"):
            if not isinstance(getattr(self, f), bool):
                raise TypeError(f"{f} must be True or False, got {getattr(self, f)!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads}): in grouped-query attention "
                f"each key/value head serves a whole group of query heads")
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(
                    f"hidden_size ({self.hidden_size}) is not a multiple of num_attention_heads "
                    f"({self.num_attention_heads}): give head_dim explicitly")
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        _check_positive_int("head_dim", self.head_dim)

    @classmethod
    def from_hf_config(cls, config: Mapping[str, Any], name: str | None = None) -> ModelConfig:
        """Build from a Hugging Face `config.json` dict as it stands; unknown keys are ignored.

        Qwen2 configs have no `attention_bias` key but their q/k/v projections carry biases:
        `model_type == "qwen2"` turns it on.
        """
        known = {f.name for f in fields(cls)} - {"name"}
        missing = [k for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                               "num_attention_heads", "vocab_size") if k not in config]
        if missing:
            raise ValueError(f"config is missing {missing}: a Llama-style config.json has "
                             f"hidden_size, intermediate_size, num_hidden_layers, "
                             f"num_attention_heads and vocab_size")
        kw = {k: v for k, v in config.items() if k in known and v is not None}
        if "attention_bias" not in config and config.get("model_type") == "qwen2":
            kw["attention_bias"] = True
        return cls(**kw, name=name or config.get("_name_or_path") or "custom")

    @property
    def q_dim(self) -> int:
        """Width of the concatenated query heads (num_attention_heads * head_dim)."""
        return self.num_attention_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """Width of the concatenated key (or value) heads (num_key_value_heads * head_dim)."""
        return self.num_key_value_heads * self.head_dim


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")


# Published config.json numbers (Hugging Face model repositories).
_PRESETS: dict[str, dict[str, Any]] = {
    "Llama-2-7B": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                   "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000,
                   "tie_word_embeddings": False},
    "Llama-2-13B": {"hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 40,
                    "num_attention_heads": 40, "num_key_value_heads": 40, "vocab_size": 32000,
                    "tie_word_embeddings": False},
    "Llama-3-8B": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                   "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
                   "tie_word_embeddings": False},
    "Llama-3-70B": {"hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
                    "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 128256,
                    "tie_word_embeddings": False},
    "Llama-3.2-1B": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
                     "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
                     "vocab_size": 128256, "tie_word_embeddings": True},
    "Mistral-7B": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                   "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32000,
                   "tie_word_embeddings": False},
    "Qwen2.5-0.5B": {"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864,
                     "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
                     "vocab_size": 151936, "tie_word_embeddings": True},
    "TinyLlama-1.1B": {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
                       "num_attention_heads": 32, "num_key_value_heads": 4, "vocab_size": 32000,
                       "tie_word_embeddings": False},
}
PRESETS: tuple[str, ...] = tuple(_PRESETS)


def get_model_config(name: str) -> ModelConfig:
    """A preset by name (case-insensitive), e.g. "Llama-2-7B"; see `PRESETS`."""
    for key, cfg in _PRESETS.items():
        if key.lower() == str(name).lower():
            return ModelConfig.from_hf_config(cfg, name=key)
    raise KeyError(f"unknown model preset {name!r}; valid presets: {', '.join(PRESETS)} "
                   f"(or build one with ModelConfig.from_hf_config(config_json_dict))")


def _as_config(config: ModelConfig | str) -> ModelConfig:
    if isinstance(config, str):
        return get_model_config(config)
    if not isinstance(config, ModelConfig):
        raise TypeError(f"expected a ModelConfig or a preset name, got {type(config).__name__}"
                        f"; for a Hugging Face config.json dict use "
                        f"ModelConfig.from_hf_config(d)")
    return config


def param_breakdown(config: ModelConfig | str) -> dict[str, int]:
    """Parameter counts by part: embedding, attention, mlp, norms, lm_head (0 when tied)."""
    c = _as_config(config)
    h, L = c.hidden_size, c.num_hidden_layers
    attn = h * c.q_dim + 2 * h * c.kv_dim + c.q_dim * h
    if c.attention_bias:
        attn += c.q_dim + 2 * c.kv_dim
    mlp = 3 * h * c.intermediate_size
    if c.mlp_bias:
        mlp += 2 * c.intermediate_size + h
    return {
        "embedding": c.vocab_size * h,
        "attention": L * attn,
        "mlp": L * mlp,
        "norms": (2 * L + 1) * h,
        "lm_head": 0 if c.tie_word_embeddings else c.vocab_size * h,
    }


def param_count(config: ModelConfig | str) -> int:
    """Total number of parameters (a tied LM head counted once)."""
    return sum(param_breakdown(config).values())


def linear_param_count(config: ModelConfig | str) -> int:
    """Parameters inside the decoder blocks' linear layers (q/k/v/o, gate/up/down): the weights
    that QAT fake-quantizes and low-precision training casts (embedding and LM head stay high)."""
    b = param_breakdown(config)
    return b["attention"] + b["mlp"]


def preset_table(names: tuple[str, ...] | list[str] = PRESETS) -> Table:
    """Each preset's shape and parameter count."""
    t = Table(["model", "hidden", "layers", "heads", "kv heads", "head dim", "MLP", "vocab",
               "tied", "parameters"], title="Llama-style presets (published config.json)")
    for n in names:
        c = get_model_config(n)
        t.append([c.name, c.hidden_size, c.num_hidden_layers, c.num_attention_heads,
                  c.num_key_value_heads, c.head_dim, c.intermediate_size, c.vocab_size,
                  c.tie_word_embeddings, param_count(c)])
    return t
