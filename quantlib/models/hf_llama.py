"""A Hugging Face Llama built from a config (random weights, nothing downloaded): the shape of a
served LLM (q/k/v, o, gate/up/down projections, grouped KV heads) at a size a CPU handles."""
from __future__ import annotations

import os
import warnings

import torch


def quiet_transformers():
    """transformers, offline and without progress bars or the Jupyter-widgets warning."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    with warnings.catch_warnings():          # tqdm warns about Jupyter widgets on import
        warnings.filterwarnings("ignore", message="IProgress not found")
        import transformers
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


def hf_llama(hidden_size: int = 128, intermediate_size: int = 256, num_hidden_layers: int = 2,
             num_attention_heads: int = 4, num_key_value_heads: int = 2, vocab_size: int = 256,
             seed: int = 0):
    """A `transformers.LlamaForCausalLM` with seeded random weights, in eval mode.

    The matrices are drawn by numpy's PCG64 generator (normal, std = the config's
    initializer_range) rather than torch's: torch's CPU normal_ draws differ between its kernel
    sets (AVX2, AVX-512, default), and the book's outputs must not depend on the CPU."""
    import numpy as np
    transformers = quiet_transformers()
    config = transformers.LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads, max_position_embeddings=64,
        tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).eval()
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            if p.dim() >= 2:
                w = rng.normal(0.0, config.initializer_range, size=tuple(p.shape))
                p.copy_(torch.from_numpy(w.astype(np.float32)))
    return model
