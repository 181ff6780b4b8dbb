"""The measurements of the KV-cache chapter: keys and values of real models, their outlier
channels, KV recipes' errors, and what a quantized KV cache does to a causal LM's loss and to
MiniLM's sentence embeddings.

KV quantization is applied where a cache would store the tensors: after the key and value
projections, after rotary embeddings for keys (the tiny LM), per head as (batch, heads, tokens,
head_dim). A whole forward pass stands for a prefill: every token attends to stored K and V.
"""
from __future__ import annotations

import contextlib
import types

import torch
import torch.nn.functional as F

from quantlib.attention.kvcache import KVStore, amax_of, get_kv_recipe
from quantlib.metrics import qsnr
from quantlib.table import Table


# ---- collecting keys and values -----------------------------------------------------------------
def _tinylm_qkv(attn, x):
    from quantlib.models.tinylm import rotary
    b, t, d = x.shape
    q, k, v = attn.qkv(x).view(b, t, 3, attn.n_heads, d // attn.n_heads).permute(2, 0, 3, 1, 4)
    return rotary(q), rotary(k), v


@contextlib.contextmanager
def tinylm_kv_hook(model, hook):
    """Within the block, each attention of the tiny LM calls hook(layer, q, k, v) -> (k, v) on
    its rotated queries and keys and its values (batch, heads, T, head_dim) before attending."""
    saved = []
    for i, blk in enumerate(model.blocks):
        attn = blk.attn

        def forward(self, x, _i=i):
            b, t, d = x.shape
            q, k, v = _tinylm_qkv(self, x)
            k, v = hook(_i, q, k, v)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.proj(y.transpose(1, 2).reshape(b, t, d))

        saved.append((attn, attn.__dict__.get("forward")))
        attn.forward = types.MethodType(forward, attn)
    try:
        yield model
    finally:
        for attn, old in saved:
            if old is None:
                del attn.forward
            else:
                attn.forward = old


@torch.no_grad()
def tinylm_qkv(model, idx) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(q, k, v) of every layer of the tiny LM on token ids `idx` (keys after rotary)."""
    out = []

    def rec(i, q, k, v):
        out.append((q.clone(), k.clone(), v.clone()))
        return k, v

    model.eval()
    with tinylm_kv_hook(model, rec):
        model(idx)
    return out


@contextlib.contextmanager
def minilm_kv_hook(model, hook):
    """Within the block, MiniLM's key and value projections pass their outputs through
    hook(layer, "k" | "v", x) with x as (batch, heads, T, head_dim)."""
    handles = []
    for i, layer in enumerate(model.encoder.layer):
        att = layer.attention.self
        heads = model.config.num_attention_heads
        for name, lin in (("k", att.key), ("v", att.value)):
            def h(mod, inp, out, _i=i, _n=name):
                b, t, e = out.shape
                x = out.view(b, t, heads, e // heads).transpose(1, 2)
                return hook(_i, _n, x).transpose(1, 2).reshape(b, t, e)
            handles.append(lin.register_forward_hook(h))
    try:
        yield model
    finally:
        for hd in handles:
            hd.remove()


@torch.no_grad()
def minilm_kv(model, batch) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(k, v) of every MiniLM layer on a tokenized batch, (batch, heads, T, head_dim)."""
    got = {}

    def rec(i, n, x):
        got[(i, n)] = x.clone()
        return x

    with minilm_kv_hook(model, rec):
        model(**batch)
    return [(got[(i, "k")], got[(i, "v")]) for i in range(len(model.encoder.layer))]


# ---- outliers and recipe errors -----------------------------------------------------------------
def channel_amax(x: torch.Tensor) -> torch.Tensor:
    """amax of each head_dim channel of x (batch, heads, T, head_dim): (heads, head_dim)."""
    return x.abs().amax(dim=(0, 2))


def outlier_table(named: dict) -> Table:
    """For {name: (k, v)}: the largest channel amax over the median one, for keys and values,
    averaged over heads (1 means flat channels; keys' outlier channels show as large ratios)."""
    t = Table(["tensor", "keys: max/median channel", "values: max/median channel",
               "keys amax", "values amax"], title="Outlier channels of keys and values", digits=1)
    for name, (k, v) in named.items():
        r = [(lambda c: (c.amax(-1) / c.median(-1).values).mean().item())(channel_amax(x))
             for x in (k, v)]
        t.append([name, *r, k.abs().max().item(), v.abs().max().item()])
    return t


def kv_recipe_errors(named: dict, recipes, rotate=(False, True)) -> Table:
    """QSNR (dB) of keys and values stored with each KV recipe, without and with the Hadamard
    rotation (dynamic scales from the tensor itself; per-token where the recipe says so)."""
    t = Table(["recipe", "rotated", *[f"{n} {s}" for n in named for s in ("K", "V")]],
              title="KV storage error, QSNR (dB)", digits=1)
    for name in recipes:
        for rot in rotate:
            row = [name, "yes" if rot else "no"]
            for k, v in named.values():
                for x, seed in ((k, 0), (v, 1)):
                    st = KVStore(get_kv_recipe(name, rotate=rot), seed=seed)
                    st.append(x)
                    row.append(qsnr(x, st.dequantize()))
            t.append(row)
    return t


# ---- the effect on models -----------------------------------------------------------------------
def _kv_quantizer(key_recipe, value_recipe, key_amax=None, value_amax=None):
    def hook(i, *qkv):
        k, v = qkv[-2:]
        ks = KVStore(key_recipe, None if key_amax is None else key_amax[i], seed=2 * i)
        vs = KVStore(value_recipe, None if value_amax is None else value_amax[i], seed=2 * i + 1)
        ks.append(k)
        vs.append(v)
        return ks.dequantize(k.dtype), vs.dequantize(v.dtype)
    return hook


@torch.no_grad()
def calibrate_tinylm_kv(model, batches, per_head=False, rotate_keys=False):
    """Per-layer amax of keys (rotated as a rotate_keys store would) and values over
    calibration `batches` of token ids: the static scales."""
    ka, va = {}, {}
    rec = get_kv_recipe("fp8_head")

    def hook(i, q, k, v):
        kk = KVStore(get_kv_recipe("fp8_token", rotate=True), seed=2 * i)._rotate(k) \
            if rotate_keys else k
        for d, x in ((ka, kk), (va, v)):
            a = amax_of(x, rec)
            d[i] = a if i not in d else torch.maximum(d[i], a)
        return k, v

    model.eval()
    with tinylm_kv_hook(model, hook):
        for idx in batches:
            model(idx)
    red = (lambda a: a) if per_head else (lambda a: a.amax())
    return [red(ka[i]) for i in sorted(ka)], [red(va[i]) for i in sorted(va)]


@torch.no_grad()
def tinylm_kv_loss(model, data, configs: dict, batch=8, n_batches=4, calib=None) -> Table:
    """Validation loss of the tiny LM with its keys and values stored by each config
    {label: (key recipe, value recipe)}; static recipes use `calib` = (key_amax, value_amax)
    from calibrate_tinylm_kv (per head for *_head_static recipes: pass per-head amaxes)."""
    from quantlib.models.tinylm import evaluate
    base = evaluate(model, data, batch, n_batches)
    t = Table(["KV cache", "keys", "values", "val loss", "change"],
              title=f"Tiny LM (context {model.cfg.context}): loss with a quantized KV cache",
              digits=4)
    t.append(["FP32", "-", "-", base, "-"])
    for label, (kr, vr) in configs.items():
        kr, vr = get_kv_recipe(kr), get_kv_recipe(vr)
        ka, va = calib if (kr.static or vr.static) else (None, None)
        hook = _kv_quantizer(kr, vr, ka if kr.static else None, va if vr.static else None)
        with tinylm_kv_hook(model, hook):
            loss = evaluate(model, data, batch, n_batches)
        d = loss - base
        t.append([label, kr.name + (" +H" if kr.rotate else ""), vr.name, loss,
                  f"{d:+.4f}" if abs(d) >= 5e-5 else "0.0000"])
    return t


@torch.no_grad()
def minilm_kv_agreement(model, tokenizer, configs: dict, sentences=None) -> Table:
    """MiniLM sentence embeddings with K and V quantized by each config {label: (key recipe,
    value recipe)} (dynamic scales), against the FP32 embeddings."""
    from quantlib.models.minilm import SENTENCES, embed, embedding_agreement
    sentences = sentences or SENTENCES
    ref = embed(model, tokenizer, sentences)
    t = Table(["KV", "cosine mean", "cosine min", "top-1 neighbour kept"],
              title="MiniLM embeddings with quantized keys and values", digits=4)
    for label, (kr, vr) in configs.items():
        kr, vr = get_kv_recipe(kr), get_kv_recipe(vr)

        def hook(i, n, x, kr=kr, vr=vr):
            st = KVStore(kr if n == "k" else vr, seed=2 * i + (n == "v"))
            st.append(x)
            return st.dequantize(x.dtype)

        with minilm_kv_hook(model, hook):
            emb = embed(model, tokenizer, sentences)
        a = embedding_agreement(ref, emb)
        t.append([label, a["cosine_mean"], a["cosine_min"], a["top1_agreement"]])
    return t


def plot_channel_amax(k: torch.Tensor, v: torch.Tensor, head: int = 0, title: str = ""):
    """Bar chart of the per-channel amax of one head's keys and values (matplotlib Figure), in
    the book's figure style."""
    import matplotlib.pyplot as plt

    from quantlib.viz import BOOK_STYLE     # matplotlib only when a figure is drawn
    ck, cv = channel_amax(k)[head], channel_amax(v)[head]
    with plt.rc_context(BOOK_STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(6.0, 3.2))
        for ax, c, name in ((axes[0], ck, "keys"), (axes[1], cv, "values")):
            ax.bar(range(len(c)), c.tolist(), color="tab:blue" if name == "keys" else "tab:orange")
            ax.set_title(name)
            ax.set_xlabel("head_dim channel")
        axes[0].set_ylabel("max |x| over tokens")
        if title:
            fig.suptitle(title)
        fig.tight_layout()
    return fig


# ---- a longer-context tiny LM, the transformers cache, the kernel -------------------------------
def train_long_context_lm(context: int = 256, steps: int = 100, batch: int = 4, seed: int = 0):
    """The book's tiny LM (2 layers, d=128, 4 heads of 32) trained from seed `seed` with a
    context of `context` bytes: a TrainResult (losses, val_loss, model)."""
    from quantlib.models.tinylm import TinyLM, TinyLMConfig, train
    torch.manual_seed(seed)
    model = TinyLM(TinyLMConfig(context=context))
    return train(model, steps=steps, batch=batch, seed=seed, val_batches=4)


@torch.no_grad()
def generate_table(model, input_ids, recipes, max_new_tokens: int = 8) -> Table:
    """Greedy `generate` of a transformers causal LM with a QuantizedKVCache per recipe: the
    tokens against the plain cache's, and the bytes per token measured on the cache against
    `quantlib.memory.kv_cache_memory` (plus the per-layer scales it does not count)."""
    import warnings

    from quantlib.attention.hf_cache import QuantizedKVCache
    from quantlib.memory import ModelConfig, kv_cache_memory
    mc = ModelConfig.from_hf_config(model.config.to_dict())
    kw = dict(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0,
              attention_mask=torch.ones_like(input_ids))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = model.generate(input_ids, **kw)
    b, n = input_ids.shape[0], input_ids.shape[1] + max_new_tokens - 1
    t = Table(["KV recipe", "same tokens", "bytes/token (cache)", "bytes/token (calculator)"],
              title=f"generate() with QuantizedKVCache: {mc.num_hidden_layers} layers x "
                    f"{mc.num_key_value_heads} KV heads x {mc.head_dim}", digits=2)
    for name in recipes:
        cache = QuantizedKVCache(name, config=model.config)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = model.generate(input_ids, cache=cache, **kw)
        pred = kv_cache_memory(mc, b, n, get_kv_recipe(name).storage_format(mc.head_dim))
        t.append([name, f"{(out == ref).float().mean().item():.0%}", cache.bytes_per_token(),
                  pred / (b * n)])
    return t


def kernel_check_table(recipes=("fp8_tensor", "fp8_head", "fp8_token", "nvfp4"),
                       shape=(2, 8, 2, 200, 32),
                       num_splits: int = 4, block_n: int = 16, seed: int = 0,
                       device: str | None = None) -> Table:
    """decode_attention's Triton kernel against its plain-torch twin (bit for bit on the
    interpreter) and both against float64 attention over the dequantized cache. device: the
    GPU when there is one, else the kernel runs on Triton's CPU interpreter."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    from quantlib.attention.kvcache import quantize_kv
    from quantlib.kernels import decode_attention
    from quantlib.kernels.report import run_kernel
    g = torch.Generator().manual_seed(seed)
    B, Hq, Hkv, T, D = shape
    q = torch.randn(B, Hq, D, generator=g).to(device)
    k = torch.randn(B, Hkv, T, D, generator=g).to(device)
    v = torch.randn(B, Hkv, T, D, generator=g).to(device)
    t = Table(["KV recipe", "kernel == twin", "max |kernel - float64| < 1e-6",
               "max |BF16 SDPA - float64|"],
              title=f"decode_attention: {B} sequences, {Hq} query / {Hkv} KV heads x {D}, "
                    f"{T} cached tokens, {num_splits} splits", digits=3)
    for name in recipes:
        kq, vq = quantize_kv(k, name), quantize_kv(v, name)
        if device == "cpu":      # Triton's CPU interpreter, however quantlib.kernels was imported
            got = run_kernel(decode_attention, q, kq, vq, where="interpreter",
                             num_splits=num_splits, block_n=block_n, path="triton")
        else:
            got = decode_attention(q, kq, vq, num_splits=num_splits, block_n=block_n,
                                   path="triton")
        twin = decode_attention(q, kq, vq, num_splits=num_splits, block_n=block_n,
                                path="reference")
        kd = kq.dequantize().repeat_interleave(Hq // Hkv, 1)
        vd = vq.dequantize().repeat_interleave(Hq // Hkv, 1)
        exact = F.scaled_dot_product_attention(q[:, :, None].double(), kd.double(),
                                               vd.double())[:, :, 0]
        bf16 = F.scaled_dot_product_attention(q[:, :, None].bfloat16(), kd.bfloat16(),
                                              vd.bfloat16())[:, :, 0]
        t.append([name, "yes" if torch.equal(got, twin) else "NO",
                  "yes" if (got.double() - exact).abs().max().item() < 1e-6 else "NO",
                  f"{(bf16.double() - exact).abs().max().item():.0e}"])
    return t


def small_llama(vocab_size=256, hidden_size=256, layers=2, heads=8, kv_heads=2, seed=0):
    """A small transformers Llama built from a config (random weights, offline), in eval mode."""
    import warnings
    with warnings.catch_warnings():          # tqdm warns about Jupyter widgets on import
        warnings.filterwarnings("ignore", message="IProgress not found")
        from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size,
                      intermediate_size=2 * hidden_size, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv_heads,
                      max_position_embeddings=256)
    return LlamaForCausalLM(cfg).eval()
