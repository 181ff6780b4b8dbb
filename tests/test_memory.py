"""The memory calculator: parameter counts against published totals, bytes against REFERENCE.md,
sharding against the ZeRO paper, and clear errors on bad input."""
import math

import pytest
import torch

from quantlib.memory import (
    MODEL_TYPES,
    MOE_PRESETS,
    PRESETS,
    STORAGE_FORMATS,
    ModelConfig,
    activation_memory,
    bits_per_element,
    build_model,
    bytes_per_parameter,
    format_bytes,
    get_model_config,
    inference_memory,
    inference_table,
    kv_cache_memory,
    layer_activation_memory,
    linear_param_count,
    linear_weight_count,
    moe_table,
    param_count,
    qt_break_even_tokens,
    saved_tensors,
    sharding_table,
    storage_format,
    strategy_table,
    to_unit,
    training_memory,
)
from quantlib.recipes import get_recipe

# Totals published on each model card / safetensors index (independent of our formula).
PUBLISHED = {
    "Llama-2-7B": 6_738_415_616,
    "Llama-2-13B": 13_015_864_320,
    "Llama-3-8B": 8_030_261_248,
    "Llama-3-70B": 70_553_706_496,
    "Llama-3.2-1B": 1_235_814_400,
    "Mistral-7B": 7_241_732_096,
    "Qwen2.5-0.5B": 494_032_768,
    "TinyLlama-1.1B": 1_100_048_384,
}
# Mixture of experts: (total, active) as the model cards round them, in units of 1e9.
# Mixtral (mistral.ai, "Mixtral of experts"): 46.7B total, 12.9B per token. Qwen3-30B-A3B
# (model card): 30.5B, 3.3B activated. DeepSeek-V3 (README_WEIGHTS.md): main model 671B, 36.6B
# activated "including 0.9B for the output head", i.e. without the input embedding (the model
# card rounds it to 37B).
PUBLISHED_MOE = {
    "Mixtral-8x7B": (46.7, 12.9, True),
    "Qwen3-30B-A3B": (30.5, 3.3, True),
    "DeepSeek-V3": (671.0, 36.6, False),   # active without the input embedding
}

TINY = {"hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "vocab_size": 100}


class TestParamCount:
    @pytest.mark.parametrize("name", sorted(PUBLISHED))
    def test_presets_match_published_counts(self, name):
        assert param_count(name) == PUBLISHED[name]

    def test_every_preset_is_checked(self):
        assert set(PRESETS) == set(PUBLISHED) | set(PUBLISHED_MOE)
        assert set(MOE_PRESETS) == set(PUBLISHED_MOE)

    @pytest.mark.parametrize("name", sorted(PUBLISHED_MOE))
    def test_moe_presets_match_published_counts(self, name):
        total, active, with_embedding = PUBLISHED_MOE[name]
        c = get_model_config(name)
        got = param_count(c, active=True)
        if not with_embedding:
            got -= c.vocab_size * c.hidden_size
        # one decimal, as the cards print them (Qwen's 3.3 is 3.35 cut, not rounded)
        assert abs(param_count(c) / 1e9 - total) < 0.06
        assert abs(got / 1e9 - active) < 0.06
        assert param_count(c, active=True) < param_count(c)

    @pytest.mark.parametrize("extra", [
        {}, {"tie_word_embeddings": True}, {"attention_bias": True}, {"mlp_bias": True},
        {"head_dim": 24}, {"num_key_value_heads": 4}, {"num_key_value_heads": 1}])
    def test_matches_a_torch_module(self, extra):
        # Oracle: torch's own count of the parameters of the module built from the config.
        cfg = ModelConfig(**{**TINY, **extra})
        model = build_model(cfg, max_seq_len=8)
        assert sum(p.numel() for p in model.parameters()) == param_count(cfg)
        lin = sum(m.weight.numel() + (m.bias.numel() if m.bias is not None else 0)
                  for layer in model.layers for m in layer.modules()
                  if isinstance(m, torch.nn.Linear))
        assert lin == linear_param_count(cfg)

    def test_from_hf_config_ignores_unknown_keys_and_reads_head_dim(self):
        hf = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "rope_theta": 5e5,
              "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
              "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
              "vocab_size": 128256, "tie_word_embeddings": True, "attention_bias": False,
              "rms_norm_eps": 1e-5, "torch_dtype": "bfloat16"}
        cfg = ModelConfig.from_hf_config(hf)
        assert cfg.head_dim == 64 and cfg.kv_dim == 512
        assert param_count(cfg) == PUBLISHED["Llama-3.2-1B"]

    def test_qwen2_has_qkv_bias_without_the_key(self):
        cfg = get_model_config("qwen2.5-0.5b")          # case-insensitive
        assert cfg.attention_bias
        no_bias = ModelConfig(**{**cfg.__dict__, "attention_bias": False})
        L = cfg.num_hidden_layers
        assert param_count(cfg) - param_count(no_bias) == L * (cfg.q_dim + 2 * cfg.kv_dim)

    def test_defaults(self):
        cfg = ModelConfig(**{k: v for k, v in TINY.items() if k != "num_key_value_heads"})
        assert cfg.num_key_value_heads == 4 and cfg.head_dim == 16


class TestInference:
    # REFERENCE.md "Memory": GB = 10^9 bytes, two decimals
    @pytest.mark.parametrize("fmt,gb", [("FP32", 26.95), ("BF16", 13.48), ("FP8", 6.74),
                                        ("INT4", 3.37), ("NVFP4", 3.79), ("MXFP4", 3.58),
                                        ("MXFP8", 6.95)])
    def test_llama2_7b_reference(self, fmt, gb):
        m = inference_memory("Llama-2-7B", fmt)
        assert round(to_unit(m.total), 2) == gb
        assert m.total == m.weight_bytes + m.scale_bytes

    @pytest.mark.parametrize("fmt,bits", [("FP32", 32), ("BF16", 16), ("FP16", 16), ("FP8", 8),
                                          ("INT8", 8), ("INT4", 4), ("MXFP8", 8.25),
                                          ("MXFP6", 6.25), ("MXFP4", 4.25), ("NVFP4", 4.5)])
    def test_bits_per_element(self, fmt, bits):
        assert bits_per_element(fmt) == bits

    def test_int4_group_scales(self):
        assert bits_per_element("INT4", group_size=128) == 4 + 32 / 128
        n = param_count("Llama-2-7B")
        m = inference_memory("Llama-2-7B", "INT4", group_size=128)
        assert m.weight_bytes == n // 2 and m.scale_bytes == 4 * n // 128

    @pytest.mark.parametrize("fmt,recipe", [("MXFP8", "mxfp8_e4m3"), ("MXFP6", "mxfp6_e2m3"),
                                            ("MXFP4", "mxfp4"),
                                            ("NVFP4", "nvfp4"),
                                            ("FP8", "fp8_e4m3_tensor"),
                                            ("fp8_e4m3_1x128", "fp8_e4m3_1x128"),
                                            ("fp8_e4m3_128x128", "fp8_e4m3_128x128")])
    def test_agrees_with_recipes(self, fmt, recipe):
        # quantlib.recipes counts the bytes of a real tensor (per-tensor scales included)
        got = get_recipe(recipe).bits_per_element((8192, 8192))
        assert bits_per_element(fmt) == pytest.approx(got, abs=1e-5)
        assert bits_per_element("INT4", 128) == get_recipe("int4_g128").bits_per_element()

    def test_bytes_exact_for_a_known_count(self):
        # 6,738,415,616 is a multiple of 32: every block format divides exactly
        n = param_count("Llama-2-7B")
        for f in STORAGE_FORMATS.values():
            assert inference_memory("Llama-2-7B", f.name).total * 8 == n * f.bits_per_element

    def test_rule_of_thumb_rows(self):
        t = inference_table("Llama-2-7B")
        assert t.column("format")[:4] == ["FP32", "BF16", "FP8", "INT4"]
        assert t.column("rule of thumb")[:4] == ["~28 GB", "~14 GB", "~7 GB", "~3.5 GB"]
        # the seed's rounding is 7e9 x bytes: within 4% of the exact count
        for gb, seed in zip(t.column("total GB")[:4], (28, 14, 7, 3.5)):
            assert abs(gb / seed - 1) < 0.04

    def test_kv_cache(self):
        # Llama-2-7B keeps 2 x 32 layers x 4096 values per token: 0.5 MiB in 16 bits
        assert kv_cache_memory("Llama-2-7B", 1, 1, "BF16") == 2**19
        assert kv_cache_memory("Llama-2-7B", 2, 4096, "BF16") == 2 * 4096 * 2**19
        # GQA: Llama-3-8B has 8 KV heads, a quarter of Llama-2-7B's
        assert kv_cache_memory("Llama-3-8B", 1, 4096) * 4 == kv_cache_memory("Llama-2-7B", 1, 4096)
        # FP8 halves it; NVFP4 is 4.5 bits per value (head_dim 128 = 8 blocks of 16)
        assert kv_cache_memory("Llama-2-7B", 1, 64, "FP8") * 2 == kv_cache_memory(
            "Llama-2-7B", 1, 64, "BF16")
        assert kv_cache_memory("Llama-2-7B", 1, 64, "NVFP4") * 8 == (
            2 * 64 * 32 * 4096 * 4.5)

    def test_format_bytes(self):
        n = inference_memory("Llama-2-7B", "FP32").total
        assert format_bytes(n) == "26.95 GB"
        assert format_bytes(n, "GiB") == "25.10 GiB"
        assert format_bytes(2**30, "GiB", 1) == "1.0 GiB"


class TestTraining:
    def test_mixed_precision_adam_is_16_bytes_per_parameter(self):
        assert bytes_per_parameter("ptq", "adam") == 16
        m = training_memory("Llama-2-7B", "ptq", batch_size=1, seq_len=16)
        P = param_count("Llama-2-7B")
        assert (m.weights, m.gradients) == (2 * P, 2 * P)                  # ZeRO: 2 + 2
        assert m.master_weights + m.optimizer_states == 12 * P             # ... + K = 12
        assert bytes_per_parameter("fp32") == 16 and bytes_per_parameter("bf16") == 8

    def test_adam8bit(self):
        assert bytes_per_parameter("ptq", "adam8bit") == 2 + 4 + 2 + 2 * (1 + 4 / 2048)
        assert bytes_per_parameter("ptq", "sgd") == 8

    @pytest.mark.parametrize("scheme,per_gpu", [("dp", 120.0), ("zero1", 31.4),
                                                ("zero2", 16.6), ("zero3", 1.9)])
    def test_zero_paper_figure_1(self, scheme, per_gpu):
        # ZeRO paper Figure 1: 7.5B parameters, K = 12, N = 64 GPUs
        cfg = ModelConfig(hidden_size=64, intermediate_size=64, num_hidden_layers=1,
                          num_attention_heads=1, vocab_size=1)
        P = param_count(cfg)
        m = training_memory(cfg, "ptq", batch_size=1, seq_len=1, n_gpus=64, sharding=scheme)
        states = m.weights + m.master_weights + m.gradients + m.optimizer_states
        assert round(states / P * 7.5e9 / 1e9, 1) == per_gpu

    def test_sharding_divides_the_right_components(self):
        base = training_memory("Llama-3-8B", "ptq", seq_len=1024)
        for scheme, sharded in [("zero1", {"master_weights", "optimizer_states"}),
                                ("zero2", {"master_weights", "optimizer_states", "gradients"}),
                                ("fsdp", {"master_weights", "optimizer_states", "gradients",
                                          "weights"})]:
            m = training_memory("Llama-3-8B", "ptq", seq_len=1024, n_gpus=8, sharding=scheme)
            for comp, v in m.as_dict().items():
                if comp in sharded:
                    assert v == math.ceil(getattr(base, comp) / 8), (scheme, comp)
                elif comp == "gather_buffer":
                    assert (v > 0) == (scheme == "fsdp")
                else:
                    assert v == getattr(base, comp), (scheme, comp)

    @pytest.mark.parametrize("norm,norm_bytes", [("fused", 8), ("unfused", 20)])
    def test_activation_closed_form(self, norm, norm_bytes):
        # Per layer, BF16: T (c h + 4 q_dim + 4 kv_dim + 8f + 4a + 8) bytes, c = 8 or 20
        for name in ("Llama-2-7B", "Llama-3-8B", "Qwen2.5-0.5B"):
            c, b, s = get_model_config(name), 2, 512
            T = b * s
            want = T * (norm_bytes * c.hidden_size + 4 * c.q_dim + 4 * c.kv_dim
                        + 8 * c.intermediate_size + 4 * c.num_attention_heads + 8)
            assert layer_activation_memory(c, b, s, norm=norm) == want

    def test_recompute_keeps_layer_inputs(self):
        c = get_model_config("Llama-2-7B")
        full = activation_memory(c, 1, 4096)
        rec = activation_memory(c, 1, 4096, recompute=True)
        head = activation_memory(c, 1, 4096) - c.num_hidden_layers * layer_activation_memory(
            c, 1, 4096)
        assert rec == head + c.num_hidden_layers * 4096 * c.hidden_size * 2
        assert full > 10 * rec

    def test_strategies_order(self):
        kw = {"batch_size": 1, "seq_len": 2048, "fmt": "MXFP8"}
        ptq, qat, qt = (training_memory("Llama-2-7B", s, **kw) for s in ("ptq", "qat", "qt"))
        assert qat.total > qt.total > ptq.total
        assert qat.weight_copies == 3 * linear_param_count("Llama-2-7B")  # BF16 copy + mask
        # two FP8 bytes each: a row-wise copy (forward) and a column-wise one (input gradient)
        assert qt.weight_copies == 2 * linear_param_count("Llama-2-7B")
        assert qt.activations < ptq.activations < qat.activations
        assert qt.quantization_scales > 0 == ptq.quantization_scales
        # QT with fused layers: q/k/v share a 1-byte copy of the normed input (h instead of 2h
        # bytes), gate/up likewise, down 1 byte instead of 2 (saves f), and the o projection a
        # 1-byte copy of the attention output that the kernel keeps anyway (+q_dim)
        c = get_model_config("Llama-2-7B")
        TL = 2048 * c.num_hidden_layers
        assert ptq.activations - qt.activations == TL * (2 * c.hidden_size + c.intermediate_size
                                                         - c.q_dim)
        # one copy per linear: q, k and v each 1 byte (3h), gate and up (2h)
        sep = training_memory("Llama-2-7B", "qt", fused_inputs=False, **kw)
        assert ptq.activations - sep.activations == TL * (c.intermediate_size - c.hidden_size
                                                          - c.q_dim)
        one = training_memory("Llama-2-7B", "qt", weight_transpose=False, **kw)
        assert one.weight_copies * 2 == qt.weight_copies
        assert one.quantization_scales < qt.quantization_scales

    def test_bf16_moments(self):
        # DeepSeek-V3 kept Adam's moments in BF16: 2 + 2 bytes instead of 4 + 4 per parameter
        P = param_count("Llama-3-8B")
        m = training_memory("Llama-3-8B", "qt", seq_len=16, moment_bytes=2)
        assert m.optimizer_states == 4 * P
        assert bytes_per_parameter("ptq", moment_bytes=2) == 12
        with pytest.raises(ValueError, match="moment_bytes must be 4"):
            training_memory("Llama-3-8B", moment_bytes=1)

    @pytest.mark.parametrize("name,fmt", [("Llama-3-8B", "FP8"), ("Llama-2-7B", "MXFP8"),
                                          ("Mixtral-8x7B", "FP8")])
    def test_qt_break_even(self, name, fmt):
        n = qt_break_even_tokens(name, fmt)

        def extra(tokens):
            return (training_memory(name, "qt", 1, tokens, fmt=fmt).total
                    - training_memory(name, "ptq", 1, tokens, fmt=fmt).total)
        assert extra(n) <= 0 < extra(n - 1)
        # the fixed cost over the per-token saving: 2 bytes of FP8 copies per linear weight
        # against (2h + f - q_dim) bytes per token and layer (dense, FP8: no scales)
        c = get_model_config(name)
        if fmt == "FP8" and not c.is_moe:
            per_token = c.num_hidden_layers * (2 * c.hidden_size + c.intermediate_size - c.q_dim)
            assert n == math.ceil(2 * linear_weight_count(c) / per_token)

    def test_tables(self):
        t = strategy_table("Llama-2-7B", seq_len=1024)
        assert t.column("strategy") == ["ptq", "qat", "qt"]
        assert "gather buffer" not in t.columns and "weight copies" in t.columns
        s = sharding_table("Llama-2-7B", seq_len=1024, n_gpus=(1, 8))
        dp, z3 = s.rows[0], s.rows[3]
        assert dp[1] == dp[2] and z3[2] < z3[1]


class TestBadInput:
    def test_unknown_preset_lists_valid(self):
        with pytest.raises(KeyError, match="Llama-2-7B.*Qwen2.5-0.5B"):
            get_model_config("Llama-9B")
        with pytest.raises(KeyError, match="valid presets"):
            param_count("gpt-2")

    @pytest.mark.parametrize("field,value", [("hidden_size", 0), ("hidden_size", -64),
                                             ("num_hidden_layers", 0), ("vocab_size", -1),
                                             ("intermediate_size", 0), ("head_dim", 0),
                                             ("num_key_value_heads", 0)])
    def test_non_positive_sizes(self, field, value):
        with pytest.raises(ValueError, match=f"{field} must be positive"):
            ModelConfig(**{**TINY, field: value})

    def test_non_int_size(self):
        with pytest.raises(TypeError, match="hidden_size must be an int"):
            ModelConfig(**{**TINY, "hidden_size": 64.0})

    def test_heads_not_divisible(self):
        with pytest.raises(ValueError, match="multiple of num_key_value_heads"):
            ModelConfig(**{**TINY, "num_key_value_heads": 3})

    def test_hidden_not_divisible_without_head_dim(self):
        with pytest.raises(ValueError, match="give head_dim"):
            ModelConfig(**{**TINY, "hidden_size": 66})

    def test_missing_keys(self):
        with pytest.raises(ValueError, match="missing.*vocab_size"):
            ModelConfig.from_hf_config({k: v for k, v in TINY.items() if k != "vocab_size"})

    def test_measured_model_refuses_what_it_does_not_build(self):
        with pytest.raises(ValueError, match="dense Llama-style"):
            build_model(get_model_config("Mixtral-8x7B"))

    def test_unknown_format(self):
        with pytest.raises(ValueError, match="unknown weight format 'FP5'.*NVFP4"):
            inference_memory("Llama-2-7B", "FP5")
        with pytest.raises(ValueError, match="group_size applies to INT8/INT4"):
            storage_format("MXFP4", group_size=128)
        with pytest.raises(ValueError, match="unknown unit"):
            format_bytes(1, "gigs")

    @pytest.mark.parametrize("kw,match", [({"strategy": "int8"}, "unknown strategy"),
                                          ({"optimizer": "lion"}, "unknown optimizer"),
                                          ({"sharding": "zero4"}, "unknown sharding"),
                                          ({"n_gpus": 0}, "n_gpus must be a positive"),
                                          ({"batch_size": 0}, "batch_size must be a positive"),
                                          ({"seq_len": -5}, "seq_len must be a positive"),
                                          ({"norm": "layer"}, "norm must be 'fused'")])
    def test_training_arguments(self, kw, match):
        with pytest.raises(ValueError, match=match):
            training_memory("Llama-2-7B", **kw)

    def test_kv_cache_arguments(self):
        with pytest.raises(ValueError, match="seq_len must be a positive"):
            kv_cache_memory("Llama-2-7B", 1, 0)


def test_saved_tensor_names_are_unique_per_place():
    names = [(t.where, t.name) for t in saved_tensors("Llama-2-7B", 1, 8, fake_quant=True)]
    assert len(names) == len(set(names))


def test_strategy_figure_draws_the_computed_totals():
    pytest.importorskip("matplotlib")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from quantlib.memory.plots import plot_sharding, plot_strategies

    fig = plot_strategies("Llama-3-8B", batch_size=1, seq_len=1024, fmt="MXFP8")
    ax = fig.axes[0]
    heights = {}
    for bar in ax.patches:  # stacked: sum the segments at each x
        heights[round(bar.get_x(), 6)] = heights.get(round(bar.get_x(), 6), 0) + bar.get_height()
    want = [to_unit(training_memory("Llama-3-8B", s, batch_size=1, seq_len=1024, fmt="MXFP8",
                                    recompute=r).total)
            for s in ("ptq", "qat", "qt") for r in (False, True)]
    assert [pytest.approx(h) for _, h in sorted(heights.items())] == want
    plt.close(fig)
    fig = plot_sharding("Llama-3-8B", n_gpus=(1, 8))
    assert len(fig.axes[0].lines) == 5 + 1   # five schemes and the activation floor
    plt.close(fig)


def _hf_count(hf_config) -> int:
    """transformers' own count: the parameters of the module it builds (on the meta device),
    plus DeepSeek-V3's router correction bias (a buffer there, a tensor of the checkpoint)."""
    transformers = pytest.importorskip("transformers")
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(hf_config)
    return (sum(p.numel() for p in model.parameters())
            + sum(b.numel() for n, b in model.named_buffers()
                  if n.endswith("e_score_correction_bias")))


SMALL = {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 4,
         "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 128}
HF_VARIANTS = [
    ("llama", {}), ("llama", {"attention_bias": True, "mlp_bias": True}),
    ("llama", {"tie_word_embeddings": True, "head_dim": 24}),
    ("mistral", {}), ("qwen2", {}), ("qwen3", {"head_dim": 32}), ("gemma", {"head_dim": 32}),
    ("mixtral", {"num_local_experts": 4, "num_experts_per_tok": 2}),
    ("qwen2_moe", {"num_experts": 6, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                   "shared_expert_intermediate_size": 48, "decoder_sparse_step": 2,
                   "mlp_only_layers": [3]}),
    ("qwen2_moe", {"num_experts": 4, "num_experts_per_tok": 1, "moe_intermediate_size": 32,
                   "shared_expert_intermediate_size": 48, "qkv_bias": False}),
    ("qwen3_moe", {"num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                   "head_dim": 16}),
    ("qwen3_moe", {"num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                   "mlp_only_layers": [0, 2]}),
    ("deepseek_v2", {"n_routed_experts": 8, "num_experts_per_tok": 2, "n_shared_experts": 2,
                     "moe_intermediate_size": 16, "first_k_dense_replace": 1,
                     "q_lora_rank": None, "kv_lora_rank": 32, "qk_nope_head_dim": 16,
                     "qk_rope_head_dim": 8, "v_head_dim": 24, "num_key_value_heads": 4}),
    ("deepseek_v3", {"n_routed_experts": 8, "num_experts_per_tok": 3, "n_shared_experts": 1,
                     "moe_intermediate_size": 16, "first_k_dense_replace": 2,
                     "q_lora_rank": 24, "kv_lora_rank": 32, "qk_nope_head_dim": 16,
                     "qk_rope_head_dim": 8, "v_head_dim": 16, "num_key_value_heads": 4,
                     "attention_bias": True}),
]


class TestAgainstTransformers:
    """transformers' modules are the oracle for the count of every architecture read here."""

    @pytest.mark.parametrize("model_type,extra", HF_VARIANTS)
    def test_count_matches_transformers_module(self, model_type, extra):
        from transformers import CONFIG_MAPPING
        hf = CONFIG_MAPPING[model_type](**{**SMALL, **extra})
        for d in (hf.to_diff_dict(), hf.to_dict()):  # what save_pretrained writes, and all
            cfg = ModelConfig.from_hf_config(d)
            assert param_count(cfg) == _hf_count(hf)

    @pytest.mark.parametrize("model_type,extra", [v for v in HF_VARIANTS if "moe" in v[0]
                                                  or v[0] in ("mixtral", "deepseek_v3")])
    def test_active_and_linear_counts(self, model_type, extra):
        # Active = total less the routed experts a token skips; linear weights = the 2-D
        # weights of the blocks' nn.Linear layers and the experts' stacked matrices.
        transformers = pytest.importorskip("transformers")
        hf = transformers.CONFIG_MAPPING[model_type](**{**SMALL, **extra})
        cfg = ModelConfig.from_hf_config(hf.to_diff_dict())
        with torch.device("meta"):
            model = transformers.AutoModelForCausalLM.from_config(hf)
        experts = [p for n, p in model.named_parameters() if ".experts." in n]
        skipped = sum(p.numel() for p in experts) * (
            1 - cfg.num_experts_per_tok / cfg.num_experts)
        assert param_count(cfg, active=True) == param_count(cfg) - skipped
        lin = sum(m.weight.numel() for n, m in model.model.layers.named_modules()
                  if isinstance(m, torch.nn.Linear) and "shared_expert_gate" not in n)
        assert linear_weight_count(cfg) == lin + sum(p.numel() for p in experts)

    @pytest.mark.parametrize("name", sorted(PUBLISHED) + sorted(PUBLISHED_MOE))
    def test_presets_match_transformers_modules(self, name):
        from transformers import CONFIG_MAPPING

        from quantlib.memory.config import _PRESETS
        d = dict(_PRESETS[name])
        hf = CONFIG_MAPPING[d.pop("model_type", "llama")](**d)
        assert param_count(name) == _hf_count(hf)

    def test_tie_defaults_are_transformers_defaults(self):
        from transformers import CONFIG_MAPPING
        for model_type, tied in MODEL_TYPES.items():
            assert CONFIG_MAPPING[model_type]().tie_word_embeddings is tied, model_type


class TestHFConfigReading:
    def test_missing_tie_uses_the_architecture_default(self):
        base = {**SMALL}
        assert ModelConfig.from_hf_config({**base, "model_type": "gemma"}).tie_word_embeddings
        assert not ModelConfig.from_hf_config({**base, "model_type": "llama"}).tie_word_embeddings
        gemma = ModelConfig.from_hf_config({**base, "model_type": "gemma"})
        assert param_count(gemma) == param_count(ModelConfig(**SMALL, tie_word_embeddings=True))
        with pytest.raises(ValueError, match="neither tie_word_embeddings nor model_type"):
            ModelConfig.from_hf_config(base)

    def test_unknown_model_type_is_refused(self):
        with pytest.raises(ValueError, match="model_type 'gpt2' is not one.*llama"):
            ModelConfig.from_hf_config({**SMALL, "model_type": "gpt2"})

    @pytest.mark.parametrize("model_type,key", [
        ("llama", "num_local_experts"),          # an MoE key on a dense architecture
        ("mistral", "n_routed_experts"), ("qwen3", "num_experts"),
        ("mixtral", "n_shared_experts"), ("llama", "some_new_key")])
    def test_unknown_keys_are_refused_not_dropped(self, model_type, key):
        d = {**SMALL, "model_type": model_type, key: 8}
        if model_type == "mixtral":
            d.update(num_local_experts=4, num_experts_per_tok=2)
        with pytest.raises(ValueError, match=f"keys \\['{key}'\\] are unknown.*ignore="):
            ModelConfig.from_hf_config(d)
        assert ModelConfig.from_hf_config(d, ignore=[key]).hidden_size == 64

    def test_harmless_keys_pass(self):
        d = {**SMALL, "model_type": "mixtral", "num_local_experts": 4, "num_experts_per_tok": 2,
             "router_aux_loss_coef": 0.02, "output_router_logits": False, "rope_theta": 1e6,
             "sliding_window": None, "torch_dtype": "bfloat16"}
        assert ModelConfig.from_hf_config(d).num_experts == 4

    @pytest.mark.parametrize("d,match", [
        ({"model_type": "mixtral", "num_experts_per_tok": 2}, "needs 'num_local_experts'"),
        ({"model_type": "qwen3_moe", "num_experts": 8, "num_local_experts": 4,
          "num_experts_per_tok": 2, "moe_intermediate_size": 8}, "disagrees with itself"),
        ({"model_type": "mixtral", "num_local_experts": 4, "num_experts_per_tok": 5},
         "between 1 and num_experts"),
        ({"model_type": "deepseek_v3", "n_routed_experts": 8, "num_experts_per_tok": 2,
          "moe_intermediate_size": 8, "kv_lora_rank": 16, "qk_nope_head_dim": 8,
          "qk_rope_head_dim": 8, "v_head_dim": 8, "moe_layer_freq": 2}, "moe_layer_freq")])
    def test_inconsistent_moe_configs(self, d, match):
        with pytest.raises(ValueError, match=match):
            ModelConfig.from_hf_config({**SMALL, **d})

    def test_moe_fields_need_experts(self):
        with pytest.raises(ValueError, match="set num_experts too"):
            ModelConfig(**SMALL, num_experts_per_tok=2)
        with pytest.raises(ValueError, match="set kv_lora_rank too"):
            ModelConfig(**SMALL, q_lora_rank=16)
        with pytest.raises(ValueError, match="dense_layers must be distinct"):
            ModelConfig(**SMALL, num_experts=4, num_experts_per_tok=1, dense_layers=(4,))


class TestMoEMemory:
    def test_weights_hold_every_expert(self):
        P = param_count("Mixtral-8x7B")
        assert inference_memory("Mixtral-8x7B", "BF16").total == 2 * P
        m = training_memory("Mixtral-8x7B", "ptq", seq_len=16)
        assert (m.weights, m.gradients, m.master_weights) == (2 * P, 2 * P, 4 * P)

    def test_moe_table(self):
        t = moe_table()
        assert t.column("model") == list(MOE_PRESETS)
        for name, total, active in zip(t.column("model"), t.column("total params (B)"),
                                       t.column("active params (B)")):
            assert total == param_count(name) / 1e9 and active == param_count(name, True) / 1e9
        assert t.column("weights BF16 GB")[0] == to_unit(2 * param_count("Mixtral-8x7B"))

    def test_mla_kv_cache(self):
        # DeepSeek-V2 paper, Table 1: MLA caches (d_c + d_h^R) l = 4.5 d_h l elements per token
        c = get_model_config("DeepSeek-V3")
        assert c.kv_cache_width == 4.5 * c.qk_nope_head_dim
        assert kv_cache_memory(c, 1, 1, "BF16") == 2 * 576 * c.num_hidden_layers
        assert kv_cache_memory(c, 2, 64, "FP8") == 2 * 64 * 576 * c.num_hidden_layers

    def test_moe_activations_closed_form(self):
        # An MoE layer against a dense layer of the expert's width: k copies of the expert
        # tensors (input 2h, four of width f: 8f bytes each), the expert outputs (2h each), the
        # router's input (2h), FP32 probabilities (4E) and int64 indices (8k).
        E, k, f = 6, 2, 32
        moe = ModelConfig(**SMALL, num_experts=E, num_experts_per_tok=k,
                          moe_intermediate_size=f)
        dense = ModelConfig(**{**SMALL, "intermediate_size": f})
        T, h, L = 2 * 16, SMALL["hidden_size"], SMALL["num_hidden_layers"]
        per_layer = (k - 1) * (2 * h + 8 * f) + 2 * k * h + 2 * h + 4 * E + 8 * k
        assert (activation_memory(moe, 2, 16) - activation_memory(dense, 2, 16)
                == T * L * per_layer)
        # dense layers of a partly-MoE model are counted as dense
        mixed = ModelConfig(**SMALL, num_experts=E, num_experts_per_tok=k,
                            moe_intermediate_size=f, dense_layers=(0,))
        dense_f = ModelConfig(**SMALL)
        want = (activation_memory(moe, 2, 16) * 3 + activation_memory(dense_f, 2, 16)) / 4
        assert activation_memory(mixed, 2, 16) == want
        assert layer_activation_memory(mixed, 2, 16) == max(
            layer_activation_memory(moe, 2, 16), layer_activation_memory(dense_f, 2, 16))

    def test_moe_training_copies_every_expert(self):
        c = get_model_config("Qwen3-30B-A3B")
        qt = training_memory(c, "qt", seq_len=64)
        assert qt.weight_copies == 2 * linear_weight_count(c)
        assert linear_weight_count(c) > 0.9 * param_count(c)   # the experts dominate


class TestCheckpointLayouts:
    @pytest.mark.parametrize("fmt,bits", [("INT4 g128 FP16", 4.125),
                                          ("int4-g128-fp16+zp", 4 + 20 / 128),
                                          ("INT4 g128 FP16 zp", 4 + 20 / 128)])
    def test_gptq_awq_layouts(self, fmt, bits):
        f = storage_format(fmt)
        assert f.bits_per_element == bits
        n = 4096 * 4096
        zp = n // 128 // 2 if "zp" in fmt.lower() else 0   # 4-bit zero points, packed
        assert f.nbytes(n) == n // 2 + 2 * (n // 128) + zp

    def test_recipe_int4_g128_keeps_fp32_scales(self):
        assert bits_per_element("INT4", 128) == get_recipe("int4_g128").bits_per_element() == 4.25

    @pytest.mark.parametrize("symmetric,fmt", [(True, "INT4 g128 FP16"),
                                               (False, "INT4 g128 FP16+zp")])
    def test_layout_matches_compressed_tensors(self, symmetric, fmt):
        # compressed-tensors' pack-quantized checkpoint of one weight: its stored bytes
        # (codes, FP16 scales, packed zero points; not the 2-int shape) are the calculator's
        pytest.importorskip("compressed_tensors")
        from compressed_tensors.compressors import PackedQuantizationCompressor
        from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
        N, K = 256, 512
        args = QuantizationArgs(num_bits=4, symmetric=symmetric, strategy="group",
                                group_size=128, type="int")
        state = {"weight": torch.randn(N, K, dtype=torch.float16),
                 "weight_scale": torch.rand(N, K // 128, dtype=torch.float16) + 0.1,
                 "weight_zero_point": torch.zeros(N, K // 128, dtype=torch.int8)}
        out = PackedQuantizationCompressor.compress(
            state, QuantizationScheme(targets=["Linear"], weights=args))
        stored = sum(v.numel() * v.element_size() for k, v in out.items() if k != "weight_shape")
        assert stored == storage_format(fmt).nbytes(N * K)
