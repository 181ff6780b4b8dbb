"""The architecture of a decoder, built from a Hugging Face `config.json` dict, and its parameter
count: total, and active per token for mixture-of-experts (MoE) models.

The decoder: token embedding, `num_hidden_layers` blocks of (RMSNorm, attention, RMSNorm, MLP),
a final RMSNorm and an LM head (its own matrix, or the embedding's when `tie_word_embeddings`).

- Attention: grouped-query attention with q/k/v/o projections (Llama, Mistral, Qwen, Gemma;
  Qwen3 adds an RMSNorm of head_dim on q and on k), or DeepSeek's multi-head latent attention
  (MLA, `kv_lora_rank` set): q through a rank-`q_lora_rank` bottleneck, keys and values from one
  compressed latent of `kv_lora_rank` plus a shared `qk_rope_head_dim` RoPE key, which is also
  all the KV cache keeps per token and layer.
- MLP: SwiGLU (gate/up/down), or an MoE layer: `num_experts` routed SwiGLU experts of width
  `moe_intermediate_size`, `num_experts_per_tok` of them per token, picked by a router (one
  `num_experts x hidden` matrix), plus optional shared experts every token goes through.
  `dense_layers` lists the layers that keep a dense MLP of `intermediate_size` (DeepSeek's first
  `first_k_dense_replace`, Qwen-MoE's `mlp_only_layers` / `decoder_sparse_step`).

Active parameters count what one token runs through: everything except the routed experts it
was not sent to (embedding and LM head included, as the model cards count them). The presets
are the published `config.json` numbers of each model; their counts are checked in the tests
against the totals the model cards publish and against `transformers`' own modules.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from quantlib.table import Table


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a decoder, with Hugging Face's field names where there is one.

    `head_dim` defaults to hidden_size // num_attention_heads; `num_key_value_heads` defaults to
    num_attention_heads (plain multi-head attention). `attention_bias` adds biases to the q/k/v
    projections (Qwen2), `o_proj_bias` to the output projection (Llama's `attention_bias` sets
    both), `mlp_bias` to gate/up/down; `qk_norm` is Qwen3's RMSNorm on q and k.

    MoE (`num_experts` > 0): `num_experts_per_tok` routed experts of `moe_intermediate_size`
    (default intermediate_size, as Mixtral) per token; `shared_expert_intermediate_size` the
    total width of the shared experts (0: none); `shared_expert_gate` Qwen2-MoE's sigmoid gate
    (hidden x 1) on them; `router_bias` DeepSeek-V3's per-expert score-correction bias;
    `dense_layers` the layers with a dense MLP instead.

    MLA (`kv_lora_rank` set): `q_lora_rank` (None: a plain q projection), `qk_nope_head_dim`,
    `qk_rope_head_dim`, `v_head_dim`.
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
    o_proj_bias: bool = False
    qk_norm: bool = False
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int | None = None
    shared_expert_intermediate_size: int = 0
    shared_expert_gate: bool = False
    router_bias: bool = False
    dense_layers: tuple[int, ...] = ()
    q_lora_rank: int | None = None
    kv_lora_rank: int | None = None
    qk_nope_head_dim: int | None = None
    qk_rope_head_dim: int | None = None
    v_head_dim: int | None = None
    model_type: str | None = None
    name: str = "custom"

    def __post_init__(self):
        if self.num_key_value_heads is None:
            object.__setattr__(self, "num_key_value_heads", self.num_attention_heads)
        for f in ("hidden_size", "intermediate_size", "num_hidden_layers",
                  "num_attention_heads", "num_key_value_heads", "vocab_size"):
            _check_positive_int(f, getattr(self, f))
        for f in ("tie_word_embeddings", "attention_bias", "mlp_bias", "o_proj_bias", "qk_norm",
                  "shared_expert_gate", "router_bias"):
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
        self._check_moe()
        self._check_mla()

    def _check_moe(self):
        for f in ("num_experts", "num_experts_per_tok", "shared_expert_intermediate_size"):
            _check_positive_int(f, getattr(self, f), zero_ok=True)
        if not self.num_experts:
            if self.num_experts_per_tok or self.shared_expert_intermediate_size or \
                    self.shared_expert_gate or self.router_bias or self.dense_layers:
                raise ValueError("num_experts_per_tok, shared experts, router_bias and "
                                 "dense_layers describe an MoE model: set num_experts too")
            return
        if not 1 <= self.num_experts_per_tok <= self.num_experts:
            raise ValueError(f"num_experts_per_tok must be between 1 and num_experts "
                             f"({self.num_experts}), got {self.num_experts_per_tok}")
        if self.moe_intermediate_size is None:
            object.__setattr__(self, "moe_intermediate_size", self.intermediate_size)
        _check_positive_int("moe_intermediate_size", self.moe_intermediate_size)
        if self.shared_expert_gate and not self.shared_expert_intermediate_size:
            raise ValueError("shared_expert_gate needs shared experts "
                             "(shared_expert_intermediate_size > 0)")
        if self.mlp_bias:
            raise ValueError("mlp_bias on an MoE model is not modelled (the experts of "
                             "Mixtral, Qwen-MoE and DeepSeek have no biases)")
        layers = tuple(self.dense_layers)
        if any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.num_hidden_layers
               for i in layers) or len(set(layers)) != len(layers):
            raise ValueError(f"dense_layers must be distinct layer indices in "
                             f"[0, {self.num_hidden_layers}), got {self.dense_layers!r}")
        object.__setattr__(self, "dense_layers", tuple(sorted(layers)))

    def _check_mla(self):
        mla = ("qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")
        if self.kv_lora_rank is None:
            if self.q_lora_rank is not None or any(getattr(self, f) is not None for f in mla):
                raise ValueError("q_lora_rank, qk_nope_head_dim, qk_rope_head_dim and "
                                 "v_head_dim describe multi-head latent attention: set "
                                 "kv_lora_rank too")
            return
        for f in ("kv_lora_rank", *mla):
            _check_positive_int(f, getattr(self, f))
        if self.q_lora_rank is not None:
            _check_positive_int("q_lora_rank", self.q_lora_rank)
        if self.qk_norm:
            raise ValueError("qk_norm belongs to grouped-query attention, not to MLA")

    @classmethod
    def from_hf_config(cls, config: Mapping[str, Any], name: str | None = None,
                       ignore=()) -> ModelConfig:
        """Build from a Hugging Face `config.json` dict as it stands.

        `model_type` picks the architecture's rules (which projections carry biases, Qwen3's
        q/k norms, the MoE and MLA keys, the default of `tie_word_embeddings`); see
        `MODEL_TYPES`. Without `model_type` the config is read as a Llama-style decoder and must
        say `tie_word_embeddings`. Keys that cannot change the parameter count (rope_theta,
        token ids, router loss coefficients, ...) are skipped; any other key is refused, because
        dropping it could count a different model: pass the ones you know to be harmless in
        `ignore`.
        """
        if not isinstance(config, Mapping):
            raise TypeError(f"config must be a config.json dict, got {type(config).__name__}")
        ignore = {ignore} if isinstance(ignore, str) else set(ignore)
        cfg = {k: v for k, v in config.items() if k not in ignore}
        mtype = cfg.get("model_type")
        if mtype is not None and mtype not in MODEL_TYPES:
            raise ValueError(f"model_type {mtype!r} is not one this calculator counts "
                             f"({', '.join(MODEL_TYPES)}): its layers may hold parameters a "
                             f"Llama-style count misses. Drop model_type to count it as a "
                             f"Llama-style decoder if it is one.")
        missing = [k for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                               "num_attention_heads", "vocab_size") if k not in cfg]
        if missing:
            raise ValueError(f"config is missing {missing}: a decoder's config.json has "
                             f"hidden_size, intermediate_size, num_hidden_layers, "
                             f"num_attention_heads and vocab_size")
        read = _HF_READERS.get(mtype, ())
        unknown = sorted(k for k in cfg if k not in _DIRECT and k not in read
                         and k not in HARMLESS_KEYS)
        if unknown:
            raise ValueError(
                f"config.json keys {unknown} are unknown to ModelConfig "
                f"(model_type {mtype!r}) and may change the parameter count; if they do not, "
                f"pass ignore={unknown!r}")
        kw = {k: v for k, v in cfg.items() if k in _DIRECT and v is not None}
        if "tie_word_embeddings" not in kw:
            if mtype is None:
                raise ValueError(
                    "config has neither tie_word_embeddings nor model_type: the LM head may or "
                    "may not share the embedding (Hugging Face's default depends on the "
                    "architecture); give one of them")
            kw["tie_word_embeddings"] = MODEL_TYPES[mtype]
        kw.update(_ARCH_RULES.get(mtype, _llama_rules)(cfg))
        return cls(**kw, model_type=mtype, name=name or cfg.get("_name_or_path") or "custom")

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank is not None

    @property
    def moe_layers(self) -> int:
        """Number of layers whose MLP is an MoE layer."""
        return self.num_hidden_layers - len(self.dense_layers) if self.is_moe else 0

    @property
    def q_dim(self) -> int:
        """Width of the concatenated query heads (MLA: heads x (nope + rope) dims)."""
        if self.is_mla:
            return self.num_attention_heads * (self.qk_nope_head_dim + self.qk_rope_head_dim)
        return self.num_attention_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """Width of the concatenated key (or value) heads (num_key_value_heads * head_dim)."""
        if self.is_mla:
            raise ValueError("MLA has no key/value heads of head_dim: see kv_cache_width")
        return self.num_key_value_heads * self.head_dim

    @property
    def kv_cache_width(self) -> int:
        """Values cached per token and layer: K and V heads (2 kv_dim), or MLA's compressed
        latent plus its shared RoPE key (kv_lora_rank + qk_rope_head_dim)."""
        if self.is_mla:
            return self.kv_lora_rank + self.qk_rope_head_dim
        return 2 * self.kv_dim


def _check_positive_int(name: str, value: Any, zero_ok: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < 0 or (value == 0 and not zero_ok):
        raise ValueError(f"{name} must be {'>= 0' if zero_ok else 'positive'}, got {value}")


# Hugging Face model types counted here, with the default of tie_word_embeddings of each
# architecture's config class (transformers 5.x; tests check them against transformers).
MODEL_TYPES: dict[str, bool] = {
    "llama": False, "mistral": False, "qwen2": False, "qwen3": False, "gemma": True,
    "mixtral": False, "qwen2_moe": False, "qwen3_moe": False,
    "deepseek_v2": False, "deepseek_v3": False,
}

# config.json keys that do not change the parameter count.
HARMLESS_KEYS = frozenset({
    "_name_or_path", "architectures", "model_type", "transformers_version", "torch_dtype",
    "dtype", "auto_map", "bos_token_id", "eos_token_id", "pad_token_id", "hidden_act",
    "initializer_range", "max_position_embeddings", "rms_norm_eps", "rope_theta", "rope_scaling",
    "rope_parameters", "rope_interleave", "partial_rotary_factor", "use_cache",
    "attention_dropout", "sliding_window", "use_sliding_window", "max_window_layers",
    "layer_types", "pretraining_tp", "output_router_logits", "router_aux_loss_coef",
    "router_jitter_noise", "norm_topk_prob", "routed_scaling_factor", "scoring_func",
    "topk_method", "n_group", "topk_group", "aux_loss_alpha", "seq_aux", "ep_size",
    # Storage of a quantized checkpoint, not its parameter count.
    "quantization_config",
    # DeepSeek-V3's multi-token-prediction module: shipped in the checkpoint, not part of the
    # main model (transformers does not build it; the model card's 671B excludes it).
    "num_nextn_predict_layers", "num_mtp_layers",
    # Generic PretrainedConfig attributes (heads for other tasks, output switches).
    "id2label", "label2id", "problem_type", "is_encoder_decoder", "chunk_size_feed_forward",
    "output_attentions", "output_hidden_states", "return_dict", "torchscript",
    "tokenizer_class", "use_bidirectional_attention",
})
# Keys read straight into fields of the same name.
_DIRECT = frozenset({"hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "vocab_size", "num_key_value_heads", "head_dim",
                     "tie_word_embeddings"})


def _llama_rules(cfg):
    # Llama, Qwen3, Gemma: attention_bias on q, k, v and o; mlp_bias on gate/up/down.
    bias = bool(cfg.get("attention_bias") or False)
    return {"attention_bias": bias, "o_proj_bias": bias,
            "mlp_bias": bool(cfg.get("mlp_bias") or False)}


def _no_bias(cfg):
    return {}  # Mistral: no biases whatever the config says


def _qwen2(cfg):
    return {"attention_bias": True}  # q/k/v biases always, o none


def _qwen3(cfg):
    return {**_llama_rules(cfg), "qk_norm": True}


def _req(cfg, key, *aliases):
    """cfg[key], or the same value under one of its aliases (transformers renames some keys
    between versions: Qwen3-MoE's num_experts is num_local_experts in transformers 5)."""
    found = {k: cfg[k] for k in (key, *aliases) if cfg.get(k) is not None}
    if not found:
        raise ValueError(f"a {cfg.get('model_type')} config.json needs {key!r}")
    if len(set(found.values())) > 1:
        raise ValueError(f"config.json disagrees with itself: {found}")
    return next(iter(found.values()))


def _mixtral(cfg):
    return {"num_experts": _req(cfg, "num_local_experts", "num_experts"),
            "num_experts_per_tok": _req(cfg, "num_experts_per_tok")}


def _qwen_moe_layers(cfg):
    L, step = cfg["num_hidden_layers"], cfg.get("decoder_sparse_step", 1)
    only = set(cfg.get("mlp_only_layers") or ())
    if not isinstance(step, int) or step <= 0:
        raise ValueError(f"decoder_sparse_step must be a positive int, got {step!r}")
    return tuple(i for i in range(L) if i in only or (i + 1) % step)


def _qwen2_moe(cfg):
    return {"attention_bias": bool(cfg.get("qkv_bias", True)),
            "num_experts": _req(cfg, "num_experts", "num_local_experts"),
            "num_experts_per_tok": _req(cfg, "num_experts_per_tok"),
            "moe_intermediate_size": _req(cfg, "moe_intermediate_size"),
            # every Qwen2-MoE layer has a shared expert and its sigmoid gate
            "shared_expert_intermediate_size": _req(cfg, "shared_expert_intermediate_size"),
            "shared_expert_gate": True,
            "dense_layers": _qwen_moe_layers(cfg)}


def _qwen3_moe(cfg):
    if cfg.get("shared_expert_intermediate_size"):
        raise ValueError("Qwen3-MoE has no shared experts, but the config gives "
                         "shared_expert_intermediate_size: is model_type right?")
    return {**_llama_rules(cfg), "qk_norm": True,
            "num_experts": _req(cfg, "num_experts", "num_local_experts"),
            "num_experts_per_tok": _req(cfg, "num_experts_per_tok"),
            "moe_intermediate_size": _req(cfg, "moe_intermediate_size"),
            "dense_layers": _qwen_moe_layers(cfg)}


def _deepseek(router_bias):
    def rules(cfg):
        if cfg.get("moe_layer_freq", 1) != 1:
            raise ValueError(f"moe_layer_freq {cfg['moe_layer_freq']!r}: only 1 (every layer "
                             f"from first_k_dense_replace on is MoE) is modelled")
        bias = bool(cfg.get("attention_bias") or False)
        out = {"q_lora_rank": cfg.get("q_lora_rank"),
               "kv_lora_rank": _req(cfg, "kv_lora_rank"),
               "qk_nope_head_dim": _req(cfg, "qk_nope_head_dim"),
               "qk_rope_head_dim": _req(cfg, "qk_rope_head_dim"),
               "v_head_dim": _req(cfg, "v_head_dim"),
               "attention_bias": bias, "o_proj_bias": bias,
               "mlp_bias": bool(cfg.get("mlp_bias") or False)}
        if "qk_head_dim" in cfg and cfg["qk_head_dim"] != (out["qk_nope_head_dim"]
                                                           + out["qk_rope_head_dim"]):
            raise ValueError(f"qk_head_dim {cfg['qk_head_dim']} is not qk_nope_head_dim + "
                             f"qk_rope_head_dim")
        if cfg.get("n_routed_experts") or cfg.get("num_local_experts"):
            k = min(cfg.get("first_k_dense_replace", 0), cfg["num_hidden_layers"])
            out.update(num_experts=_req(cfg, "n_routed_experts", "num_local_experts"),
                       num_experts_per_tok=_req(cfg, "num_experts_per_tok"),
                       moe_intermediate_size=_req(cfg, "moe_intermediate_size"),
                       shared_expert_intermediate_size=(cfg.get("n_shared_experts") or 0)
                       * _req(cfg, "moe_intermediate_size"),
                       router_bias=router_bias, dense_layers=tuple(range(k)))
        return out
    return rules


_ARCH_RULES = {None: _llama_rules, "llama": _llama_rules, "gemma": _llama_rules,
               "mistral": _no_bias, "qwen2": _qwen2, "qwen3": _qwen3, "mixtral": _mixtral,
               "qwen2_moe": _qwen2_moe, "qwen3_moe": _qwen3_moe,
               "deepseek_v2": _deepseek(False), "deepseek_v3": _deepseek(True)}
# The keys each architecture's rules read (beyond _DIRECT).
_MLA_KEYS = ("q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim",
             "v_head_dim", "attention_bias", "mlp_bias", "n_routed_experts", "n_shared_experts",
             "num_experts_per_tok", "moe_intermediate_size", "first_k_dense_replace",
             "moe_layer_freq", "num_local_experts", "qk_head_dim")
_QWEN_MOE_KEYS = ("num_experts", "num_local_experts", "num_experts_per_tok",
                  "moe_intermediate_size", "decoder_sparse_step", "mlp_only_layers")
_HF_READERS = {
    None: ("attention_bias", "mlp_bias"), "llama": ("attention_bias", "mlp_bias"),
    "gemma": ("attention_bias", "mlp_bias"), "qwen3": ("attention_bias", "mlp_bias"),
    "mistral": (), "qwen2": ("attention_bias",),
    "mixtral": ("num_local_experts", "num_experts", "num_experts_per_tok"),
    "qwen2_moe": (*_QWEN_MOE_KEYS, "shared_expert_intermediate_size", "qkv_bias"),
    "qwen3_moe": (*_QWEN_MOE_KEYS, "attention_bias", "mlp_bias",
                  "shared_expert_intermediate_size"),
    "deepseek_v2": _MLA_KEYS, "deepseek_v3": _MLA_KEYS,
}


# Published config.json numbers (Hugging Face model repositories), the architecture's keys as
# they stand there.
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
    # mistralai/Mixtral-8x7B-v0.1: 8 experts of Mistral-7B's MLP, 2 per token.
    "Mixtral-8x7B": {"model_type": "mixtral", "hidden_size": 4096, "intermediate_size": 14336,
                     "num_hidden_layers": 32, "num_attention_heads": 32,
                     "num_key_value_heads": 8, "vocab_size": 32000, "num_local_experts": 8,
                     "num_experts_per_tok": 2, "tie_word_embeddings": False},
    # Qwen/Qwen3-30B-A3B: 128 experts of width 768, 8 per token, no shared expert, every layer
    # MoE (intermediate_size 6144 is unused: no dense layer).
    "Qwen3-30B-A3B": {"model_type": "qwen3_moe", "hidden_size": 2048, "intermediate_size": 6144,
                      "moe_intermediate_size": 768, "num_hidden_layers": 48,
                      "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128,
                      "vocab_size": 151936, "num_experts": 128, "num_experts_per_tok": 8,
                      "decoder_sparse_step": 1, "mlp_only_layers": [],
                      "tie_word_embeddings": False},
    # deepseek-ai/DeepSeek-V3: MLA; 3 dense layers, then 58 MoE layers of 256 routed experts
    # (8 per token) and 1 shared expert, all of width 2048. The checkpoint's multi-token-
    # prediction module (num_nextn_predict_layers: 1, 11.5B more) is not part of the model.
    "DeepSeek-V3": {"model_type": "deepseek_v3", "hidden_size": 7168, "intermediate_size": 18432,
                    "moe_intermediate_size": 2048, "num_hidden_layers": 61,
                    "num_attention_heads": 128, "num_key_value_heads": 128,
                    "vocab_size": 129280, "n_routed_experts": 256, "n_shared_experts": 1,
                    "num_experts_per_tok": 8, "first_k_dense_replace": 3, "q_lora_rank": 1536,
                    "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
                    "v_head_dim": 128, "num_nextn_predict_layers": 1,
                    "tie_word_embeddings": False},
}
PRESETS: tuple[str, ...] = tuple(_PRESETS)
MOE_PRESETS: tuple[str, ...] = ("Mixtral-8x7B", "Qwen3-30B-A3B", "DeepSeek-V3")


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


def attention_params(c: ModelConfig) -> int:
    """Parameters of one layer's attention: projections, their biases, q/k or MLA norms."""
    h = c.hidden_size
    if c.is_mla:
        a, qk = c.num_attention_heads, c.qk_nope_head_dim + c.qk_rope_head_dim
        kv_a = c.kv_lora_rank + c.qk_rope_head_dim
        if c.q_lora_rank is None:
            q = h * a * qk
        else:  # q_a_proj, q_a_layernorm, q_b_proj
            q = h * c.q_lora_rank + c.q_lora_rank + c.q_lora_rank * a * qk
        n = q + h * kv_a + c.kv_lora_rank + c.kv_lora_rank * a * (c.qk_nope_head_dim
                                                                   + c.v_head_dim)
        n += a * c.v_head_dim * h
        if c.attention_bias:  # the down projections q_a and kv_a
            n += (c.q_lora_rank or 0) + kv_a
        return n + (h if c.o_proj_bias else 0)
    n = h * c.q_dim + 2 * h * c.kv_dim + c.q_dim * h
    if c.attention_bias:
        n += c.q_dim + 2 * c.kv_dim
    if c.o_proj_bias:
        n += h
    if c.qk_norm:
        n += 2 * c.head_dim
    return n


def _swiglu(h: int, f: int, bias: bool = False) -> int:
    return 3 * h * f + (2 * f + h if bias else 0)


def param_breakdown(config: ModelConfig | str, active: bool = False) -> dict[str, int]:
    """Parameter counts by part: embedding, attention, mlp (dense layers), experts (routed),
    shared_experts (with Qwen2-MoE's gate), router, norms, lm_head (0 when tied).

    `active=True`: the parameters one token runs through, i.e. num_experts_per_tok of the
    routed experts in each MoE layer (the same as the total for a dense model)."""
    c = _as_config(config)
    h, L = c.hidden_size, c.num_hidden_layers
    n_dense = len(c.dense_layers) if c.is_moe else L
    n_moe = c.moe_layers
    experts = shared = router = 0
    if c.is_moe:
        per_expert = _swiglu(h, c.moe_intermediate_size)
        experts = n_moe * (c.num_experts_per_tok if active else c.num_experts) * per_expert
        shared = n_moe * (_swiglu(h, c.shared_expert_intermediate_size)
                          if c.shared_expert_intermediate_size else 0)
        shared += n_moe * h if c.shared_expert_gate else 0
        router = n_moe * c.num_experts * (h + (1 if c.router_bias else 0))
    return {
        "embedding": c.vocab_size * h,
        "attention": L * attention_params(c),
        "mlp": n_dense * _swiglu(h, c.intermediate_size, c.mlp_bias),
        "experts": experts,
        "shared_experts": shared,
        "router": router,
        "norms": L * (2 * h) + h,
        "lm_head": 0 if c.tie_word_embeddings else c.vocab_size * h,
    }


def param_count(config: ModelConfig | str, active: bool = False) -> int:
    """Total number of parameters (a tied LM head counted once); `active=True`: the parameters
    one token runs through (MoE: num_experts_per_tok routed experts per layer)."""
    return sum(param_breakdown(config, active).values())


def linear_weight_count(config: ModelConfig | str, active: bool = False) -> int:
    """Weight elements of the decoder blocks' linear layers (attention projections, MLPs,
    experts, shared experts; no biases, norms or router): the matrices that QAT fake-quantizes
    and low-precision training casts (embedding, LM head and router stay high)."""
    c = _as_config(config)
    h = c.hidden_size
    b = param_breakdown(c, active)
    attn = attention_params(c)
    if c.is_mla:
        attn -= (c.q_lora_rank or 0) + c.kv_lora_rank  # q_a and kv_a layernorms
        if c.attention_bias:
            attn -= (c.q_lora_rank or 0) + c.kv_lora_rank + c.qk_rope_head_dim
    else:
        attn -= (c.q_dim + 2 * c.kv_dim if c.attention_bias else 0) + (
            2 * c.head_dim if c.qk_norm else 0)
    attn -= h if c.o_proj_bias else 0
    mlp = b["mlp"] - (len(c.dense_layers) if c.is_moe else c.num_hidden_layers) * (
        2 * c.intermediate_size + h if c.mlp_bias else 0)
    shared = b["shared_experts"] - (c.moe_layers * h if c.shared_expert_gate else 0)
    return c.num_hidden_layers * attn + mlp + b["experts"] + shared


def linear_param_count(config: ModelConfig | str) -> int:
    """Parameters inside the decoder blocks' linear layers, biases included (q/k/v/o, MLPs,
    experts): everything in the blocks except norms and the router."""
    b = param_breakdown(config)
    c = _as_config(config)
    norm_extra = 0
    if c.qk_norm:
        norm_extra = c.num_hidden_layers * 2 * c.head_dim
    if c.is_mla:
        norm_extra = c.num_hidden_layers * ((c.q_lora_rank or 0) + c.kv_lora_rank)
    return b["attention"] - norm_extra + b["mlp"] + b["experts"] + b["shared_experts"]


def preset_table(names: tuple[str, ...] | list[str] = PRESETS) -> Table:
    """Each preset's shape and parameter count; for MoE models the experts per token, the
    expert width ("MLP") and the active parameters too."""
    configs = [get_model_config(n) for n in names]
    moe = any(c.is_moe for c in configs)
    t = Table(["model", "hidden", "layers", "heads", "kv heads", "head dim", "MLP", "vocab",
               "tied", *(["experts"] if moe else []), "parameters", *(["active"] if moe else [])],
              title="Presets (published config.json)")
    for c in configs:
        head_dim = (f"{c.qk_nope_head_dim}+{c.qk_rope_head_dim}" if c.is_mla else c.head_dim)
        row = [c.name, c.hidden_size, c.num_hidden_layers, c.num_attention_heads,
               "MLA" if c.is_mla else c.num_key_value_heads, head_dim,
               c.moe_intermediate_size if c.is_moe else c.intermediate_size, c.vocab_size,
               c.tie_word_embeddings]
        if moe:
            row.append(f"{c.num_experts_per_tok} of {c.num_experts}" if c.is_moe else "-")
        row.append(param_count(c))
        if moe:
            row.append(param_count(c, active=True))
        t.append(row)
    return t


DENSE_PRESETS: tuple[str, ...] = tuple(n for n in PRESETS if n not in MOE_PRESETS)
