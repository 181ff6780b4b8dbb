"""Predicted vs measured: the calculator against the bytes a real training step holds (CPU), and
against FSDP2's per-rank shards on two gloo ranks."""
import pytest
import torch

from quantlib.memory import (
    ModelConfig,
    build_model,
    measure_training_step,
    param_count,
    storage_bytes,
    training_memory,
)
from quantlib.memory.fsdp import measure_fsdp

TINY = {"hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "vocab_size": 128}


def measure(cfg, dtype, recompute, batch=2, seq=32):
    model = build_model(cfg, max_seq_len=seq, dtype=dtype)
    model.recompute = recompute
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq), generator=g)
    targets = torch.randint(0, cfg.vocab_size, (batch, seq), generator=g)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return measure_training_step(model, ids, targets, opt)


@pytest.mark.parametrize("extra", [{}, {"tie_word_embeddings": True, "attention_bias": True},
                                   {"head_dim": 8, "num_key_value_heads": 1}])
@pytest.mark.parametrize("dtype,strategy", [(torch.float32, "fp32"), (torch.bfloat16, "bf16")])
@pytest.mark.parametrize("recompute", [False, True])
def test_training_step_matches_prediction(extra, dtype, strategy, recompute):
    cfg = ModelConfig(**{**TINY, **extra})
    got = measure(cfg, dtype, recompute)
    want = training_memory(cfg, strategy, batch_size=2, seq_len=32, recompute=recompute,
                           norm="unfused")  # torch's CPU F.rms_norm runs FP32 ops
    assert got.parameters == want.weights and want.master_weights == 0
    assert got.gradients == want.gradients
    # Adam: exp_avg + exp_avg_sq per parameter, plus one 4-byte `step` per parameter tensor
    n_tensors = len(list(build_model(cfg, 8).parameters()))
    assert got.optimizer_states == want.optimizer_states + 4 * n_tensors
    assert abs(got.activations / want.activations - 1) < 0.05, (got, want)
    assert abs(got.total / (want.total - want.gather_buffer) - 1) < 0.05


def test_activations_exact_on_the_chapter_model():
    # The count is exact, not just within 5%: a changed saved tensor shows up here first.
    cfg = ModelConfig(**{**TINY, "num_hidden_layers": 3})
    for dtype, strategy in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        got = measure(cfg, dtype, False, batch=3, seq=40)
        want = training_memory(cfg, strategy, batch_size=3, seq_len=40, norm="unfused")
        assert got.activations == want.activations


def test_recompute_saves_memory():
    cfg = ModelConfig(**TINY)
    assert measure(cfg, torch.float32, True).activations < \
        measure(cfg, torch.float32, False).activations / 3


def test_storage_bytes_dedupes_views():
    x = torch.zeros(10, 10)
    assert storage_bytes([x, x[2:], x.t(), x.view(-1)]) == 400
    assert storage_bytes([x, torch.zeros(5, dtype=torch.bfloat16)]) == 410


def test_fsdp2_two_ranks_match_zero3_prediction():
    cfg = ModelConfig(**TINY)
    ranks = measure_fsdp(cfg, world_size=2, batch_size=2, seq_len=32, timeout=150)
    want = training_memory(cfg, "fp32", batch_size=2, seq_len=32, n_gpus=2, sharding="fsdp")
    assert len(ranks) == 2
    for r in ranks:
        assert abs(r.parameters / want.weights - 1) < 0.05
        assert abs(r.gradients / want.gradients - 1) < 0.05
        assert abs(r.optimizer_states / want.optimizer_states - 1) < 0.05
    # together the shards hold exactly one copy of the model
    assert sum(r.parameters for r in ranks) == 4 * param_count(cfg)
    assert sum(r.gradients for r in ranks) == 4 * param_count(cfg)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_saved_tensors_match_fused_prediction():
    # On CUDA, torch's RMSNorm is one fused kernel and attention a flash/cuDNN kernel (BF16).
    from quantlib.memory import predicted_vs_measured
    t = predicted_vs_measured(ModelConfig(**TINY), "bf16", 2, 64, device="cuda")
    for ratio in t.column("measured / predicted"):
        assert abs(ratio - 1) < 0.05


def test_qat_step_matches_prediction():
    # quantlib.nn.qat's fake quantization (NVFP4 weights and inputs, STE with a clipping mask)
    # on the BF16 model: the saved tensors are the QAT activations plus the weight copies.
    from quantlib.nn.qat import prepare_qat
    cfg = ModelConfig(**TINY)
    model = prepare_qat(build_model(cfg, 32, dtype=torch.bfloat16), "nvfp4_w4a4",
                        skip="lm_head")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (2, 32), generator=g)
    got = measure_training_step(model, ids, ids, torch.optim.Adam(model.parameters()))
    want = training_memory(cfg, "qat", batch_size=2, seq_len=32, fmt="NVFP4", norm="unfused")
    assert abs(got.activations / (want.activations + want.weight_copies) - 1) < 0.05
    ptq = training_memory(cfg, "ptq", batch_size=2, seq_len=32, norm="unfused")
    assert got.activations > ptq.activations * 1.3   # QAT's copies are not small


@pytest.mark.parametrize("model_type,extra,tol", [
    ("mixtral", {"num_local_experts": 4, "num_experts_per_tok": 2}, 0.03),
    ("qwen3_moe", {"num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 32},
     0.03),
    # MLA: transformers' eager layout keeps a few more per-head copies than the count (~10%)
    ("deepseek_v3", {"n_routed_experts": 8, "num_experts_per_tok": 2, "n_shared_experts": 1,
                     "moe_intermediate_size": 16, "first_k_dense_replace": 1, "q_lora_rank": 24,
                     "kv_lora_rank": 32, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8,
                     "v_head_dim": 16, "num_key_value_heads": 4, "n_group": 1,
                     "topk_group": 1}, 0.12)])
def test_moe_activations_against_transformers(model_type, extra, tol):
    # The MoE (and MLA) activation count against the tensors transformers' own model saves in
    # one FP32 training step on the CPU (an independent implementation: a few percent apart).
    transformers = pytest.importorskip("transformers")
    hf = transformers.CONFIG_MAPPING[model_type](**{
        "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 128,
        "tie_word_embeddings": False, "attn_implementation": "sdpa", **extra})
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(hf).float()

    class Loss(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, ids, targets):
            return self.m(input_ids=ids, labels=targets).loss

    ids = torch.randint(0, 128, (2, 32), generator=torch.Generator().manual_seed(0))
    wrapped = Loss(model)
    got = measure_training_step(wrapped, ids, ids, torch.optim.Adam(wrapped.parameters()))
    cfg = ModelConfig.from_hf_config(hf.to_diff_dict())
    want = training_memory(cfg, "fp32", batch_size=2, seq_len=32, norm="unfused")
    assert abs(got.activations / want.activations - 1) < tol
