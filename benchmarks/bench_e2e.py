"""End to end: a Llama-shaped decoder quantized with quantize_model, decode and prefill timed
against its BF16 original and torch's tinygemm INT4 in the same run.

    PYTHONPATH=. python3 benchmarks/bench_e2e.py --out benchmarks/results
    PYTHONPATH=. python3 benchmarks/bench_e2e.py --dry-run        # tiny sizes on the CPU

The model is transformers' LlamaForCausalLM built from a config (random init, BF16, offline):
"llama-4l" is 4 layers of hidden 4096, FFN 14336, 32 heads / 8 KV heads, vocab 32000 (the
issue's shape); "llama-8b" is the same with 32 layers and vocab 128256 (run when the GPU has
the memory). Every nn.Linear but lm_head is quantized per config. Decode: one token for a
batch of 1 and 8 with a static KV cache of 512 and 4096 positions, captured in a CUDA graph and
replayed (median of the replays between CUDA events); prefill: 2048 tokens, one forward.
Ratios are BF16 time / config time (> 1: faster than BF16). Model bytes count parameters and
buffers (the canonical codes + scales) and, apart, the decode kernels' weight layout.
Bars (issue 13): decode batch 1 >= 1.8x BF16 for nvfp4 and int4_g128, >= 1.4x for fp8;
prefill >= 0.85x for every config. Writes bench_e2e.json into --out.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import gc
import json
import os
import sys
import time

import torch

CONFIGS = ["nvfp4", "mxfp4", "fp8", "w8a8_fp8", "int4_g128"]
BARS = {"nvfp4": 1.8, "int4_g128": 1.8, "fp8": 1.4}
PREFILL_BAR = 0.85
SIZES = {
    "llama-4l": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=4,
                     num_attention_heads=32, num_key_value_heads=8, vocab_size=32000),
    "llama-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                     num_attention_heads=32, num_key_value_heads=8, vocab_size=128256),
    "tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, vocab_size=256),
}
FREE_GB_FOR = {"llama-4l": 12, "llama-8b": 60}   # free GPU memory a size needs (3 copies)


def log(msg):
    print(msg, flush=True)


def build_model(size: str, device: str):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(**SIZES[size], max_position_embeddings=8192, tie_word_embeddings=False)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    return model.eval()


def timer(fn, reps: int, graph: bool):
    """Median ms of fn() (quantlib.timing): on a GPU a CUDA graph of one call replayed between
    events (eager when capture fails, reported); on the CPU, or graph=False, wall-clock calls.
    Returns (ms, how)."""
    from quantlib.timing import time_ms
    gpu = torch.cuda.is_available() and graph
    return time_ms(lambda _: fn(), reps, warmup=1 if gpu else 0,
                   clock="events" if gpu else "wall", log=lambda m: log(f"    {m}"))


def decode_step(model, batch: int, kv_len: int, device: str):
    """One-token forward at position kv_len - 1 of a static cache of kv_len positions (every
    position attended: the cost of decoding with kv_len tokens of context)."""
    from transformers import StaticCache
    cache = StaticCache(config=model.config, max_cache_len=kv_len)
    g = torch.Generator(device="cpu").manual_seed(1)
    ids = torch.randint(0, model.config.vocab_size, (batch, 1), generator=g).to(device)
    pos = torch.full((batch, 1), kv_len - 1, device=device)

    @torch.no_grad()
    def step():
        for layer in cache.layers:      # write slot kv_len - 1 again on every call (and replay)
            layer.cumulative_length.fill_(kv_len - 1)
        return model(input_ids=ids, position_ids=pos, cache=cache, use_cache=True).logits
    return step


def prefill(model, tokens: int, device: str):
    g = torch.Generator(device="cpu").manual_seed(2)
    ids = torch.randint(0, model.config.vocab_size, (1, tokens), generator=g).to(device)

    @torch.no_grad()
    def run():
        return model(input_ids=ids, use_cache=False).logits
    return run


def model_bytes(model) -> tuple[int, int]:
    """(parameter + buffer bytes, bytes of the decode kernels' weight layouts)."""
    n = sum(t.numel() * t.element_size() for t in list(model.parameters())
            + list(model.buffers()))
    lay = 0
    for m in model.modules():
        c = m.__dict__.get("_decode_cache")
        if c is not None:
            lay += c[1].nbytes()
    return n, lay


def variants(base, configs):
    """(name, model) pairs, built one at a time: BF16, tinygemm INT4 g128, each config."""
    from quantlib.nn import quantize_model
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _baselines import tinygemm_model
    yield "bf16", base
    yield "tinygemm_int4_g128", tinygemm_model(copy.deepcopy(base))
    for c in configs:
        yield c, quantize_model(base, c, skip="lm_head")


def run_size(size, args, device, out):
    base = build_model(size, device)
    dec = [(b, L) for b in args.batches for L in args.kv]
    rows = []
    for name, model in variants(base, args.configs):
        row = {"config": name}
        t0 = time.time()
        try:
            ref = None
            for b, L in dec:
                step = decode_step(model, b, L, device)
                for _ in range(1 if args.dry_run else 2):    # warm-up: compiles, tuning,
                    logits = step()                          # kernel layouts
                if ref is None:
                    ref = logits.float()
                ms, how = timer(step, args.reps, graph=not args.no_graph)
                row[f"decode b{b} kv{L} ms"] = ms
                row["timing"] = how
            run = prefill(model, args.prefill, device)
            run()
            row[f"prefill {args.prefill} ms"], _ = timer(run, max(2, args.reps // 4),
                                                         graph=not args.no_graph)
            row["bytes"], row["layout bytes"] = model_bytes(model)
            row["finite logits"] = bool(torch.isfinite(ref).all())
        except Exception as e:  # noqa: BLE001 (one failing config must not stop the table)
            import traceback
            traceback.print_exc()
            row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
        row["seconds"] = time.time() - t0
        log(f"  {size} {name}: " + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else
                                             f"{k}={v}" for k, v in row.items()))
        rows.append(row)
        out["results"][size] = rows
        dump(out, args.out)
        if model is not base:
            del model
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows


def ratios(rows, key, base="bf16"):
    ref = next((r.get(key) for r in rows if r["config"] == base), None)
    return {r["config"]: (ref / r[key] if ref and r.get(key) else None) for r in rows}


def print_table(size, rows, args):
    keys = [k for k in rows[0] if k.endswith(" ms")]
    rs = {k: ratios(rows, k) for k in keys}
    tg = {k: ratios(rows, k, "tinygemm_int4_g128") for k in keys}
    print(f"\n{size}: time of BF16 / time of the config (> 1 is faster); bytes vs BF16"
          + (" [dry run on the CPU: the times mean nothing]" if args.dry_run else ""))
    heads = [k.replace(" ms", "") for k in keys]
    print(f"{'config':20s} " + " ".join(f"{h:>16s}" for h in heads) + f" {'bytes':>7s}  bars")
    bb = next(r.get("bytes") for r in rows if r["config"] == "bf16")
    for r in rows:
        if "error" in r:
            print(f"{r['config']:20s} {r['error'][:90]}")
            continue
        cells = [f"{rs[k][r['config']]:15.2f}x" if rs[k][r["config"]] else f"{'-':>16s}"
                 for k in keys]
        verdict = []
        bar = BARS.get(r["config"])
        dk = [k for k in keys if k.startswith("decode b1 ")]
        if bar and dk:
            verdict.append(("PASS" if min(rs[k][r["config"]] for k in dk) >= bar else "FAIL")
                           + f" decode>={bar}")
        pk = [k for k in keys if k.startswith("prefill")]
        if r["config"] != "bf16" and pk and not r["config"].startswith("tinygemm"):
            verdict.append(("PASS" if rs[pk[0]][r["config"]] >= PREFILL_BAR else "FAIL")
                           + f" prefill>={PREFILL_BAR}")
        if r["config"] == "int4_g128" and dk:
            verdict.append(f"vs tinygemm {min(tg[k]['int4_g128'] for k in dk):.2f}x")
        print(f"{r['config']:20s} " + " ".join(cells) + f" {r['bytes'] / bb:6.2f}x  "
              + ", ".join(verdict))
    b = next(r for r in rows if r["config"] == "bf16")
    print("BF16 ms: " + ", ".join(f"{k.replace(' ms', '')} {b[k]:.3f}" for k in keys))


def dump(out, folder):
    if folder:
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "bench_e2e.json"), "w") as f:
            json.dump(out, f, indent=1, default=str)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results", help="folder for bench_e2e.json")
    ap.add_argument("--dry-run", action="store_true", help="tiny model on the CPU (a test)")
    ap.add_argument("--sizes", default="llama-4l,llama-8b")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--kv", default="512,4096")
    ap.add_argument("--prefill", type=int, default=2048)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--no-graph", action="store_true", help="time eager calls")
    ap.add_argument("--no-tune", action="store_true",
                    help="no kernel autotuning: the configs chosen by the shape heuristics")
    args = ap.parse_args(argv)
    args.configs = [c for c in args.configs.split(",") if c]
    args.batches = [int(b) for b in args.batches.split(",")]
    args.kv = [int(k) for k in args.kv.split(",")]
    if args.dry_run:
        device, sizes = "cpu", ["tiny"]
        args.kv, args.batches, args.prefill, args.reps = [32], [1, 2], 32, 1
    elif not torch.cuda.is_available():
        print("bench_e2e.py needs a CUDA GPU (or --dry-run: a tiny model on the CPU)")
        return 2
    else:
        device, sizes = "cuda", [s for s in args.sizes.split(",") if s]
    if args.no_tune:
        from quantlib.kernels import _decode, _tuning
        _tuning.AUTOTUNE = _decode.AUTOTUNE = False
    import transformers

    import quantlib.kernels  # noqa: F401 (the kernels' imports, before any timing)
    out = {"device": torch.cuda.get_device_name() if device == "cuda" else "CPU (dry run)",
           "torch": torch.__version__, "transformers": transformers.__version__,
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "args": vars(args), "results": {}}
    torch.backends.cuda.matmul.allow_tf32 = False
    for size in sizes:
        if device == "cuda":
            free = torch.cuda.mem_get_info()[0] / 2**30
            if free < FREE_GB_FOR.get(size, 0):
                log(f"{size}: skipped ({free:.0f} GB free, needs ~{FREE_GB_FOR[size]} GB)")
                out["results"][size] = [{"config": "-", "error": "not enough GPU memory"}]
                continue
        log(f"{size}: building and timing ...")
        rows = run_size(size, args, device, out)
        print_table(size, rows, args)
    dump(out, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
