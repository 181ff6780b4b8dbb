"""Codec speed: quantlib.encode/decode against torch's native casts and ml_dtypes, same run.

    python benchmarks/bench_codecs.py [--n 16777216] [--repeats 5] [--device cpu|cuda]

float32 -> E4M3, E5M2, E2M1, BF16 (each format's default policy), median of `repeats` runs.
"speed" is elements per second relative to the fastest baseline of the row's format and
direction: the bar is >= 0.8 where a native cast has our semantics, >= 5 against ml_dtypes where
none has. "same semantics" compares each baseline's codes with ours on values where casts
disagree (ties, overflow, Inf, NaN, subnormals) and shows the first difference. The explicit
reference runs once (it is the readable path, not the fast one).
"""
from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch

from quantlib import decode, encode, get_format
from quantlib.table import Table
from quantlib.timing import time_ms

try:
    import ml_dtypes
except ImportError:  # the baseline is optional
    ml_dtypes = None

FORMATS = ["e4m3", "e5m2", "e2m1", "bf16"]


def probe(f):
    """Values where casts disagree: ties, overflow, Inf, NaN (if the format has it), subnormals."""
    v = [0.0, -0.0, f.max, f.max * 1.03, f.max * 1.07, -f.max * 4, f.min_positive / 2,
         f.min_positive * 0.75, 31.27, 1.25, 2.5, 5.0, float("inf"), float("-inf")]
    v += [float("nan"), -float("nan")] if f.has_nan else []
    return torch.tensor(v, dtype=torch.float32)


def same_semantics(f, codes_of, device):
    """Compare a baseline's codes with encode's default on the probe: 'yes' or the first miss."""
    x = probe(f)
    ours = encode(x, f).to(torch.int32) & (2 ** f.bits - 1)
    theirs = codes_of(x).to(torch.int32) & (2 ** f.bits - 1)
    bad = (ours != theirs).nonzero().flatten().tolist()
    if not bad:
        return "yes" if f.has_nan else "yes, but for NaN input (ours raises)"
    i = bad[0]
    return f"no: {x[i].item():g} -> 0x{theirs[i].item():X}, ours 0x{ours[i].item():X}"


def once(fn):
    """Seconds of one call (waiting for the GPU when the run uses one)."""
    return time_ms(lambda _: fn(), 1, warmup=0, clock="wall")[0] / 1e3


def timed_round_robin(impls):
    """Median seconds of each (name, fn, repeats): one warm-up each (look-up tables, native-cast
    checks), then the implementations take turns, so allocator and cache state (a 16M-element
    output is right at glibc's largest mmap threshold) fall on all of them alike."""
    for _, fn, _ in impls:
        fn()
    times = {name: [] for name, _, _ in impls}
    for i in range(max(rep for _, _, rep in impls)):
        for name, fn, rep in impls:
            if i < rep:
                times[name].append(once(fn))
    return [(name, statistics.median(times[name])) for name, _, _ in impls]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16 * 2 ** 20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--formats", nargs="*", default=FORMATS)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev, n, r = args.device, args.n, args.repeats
    x = torch.randn(n, generator=torch.Generator().manual_seed(0)) * 2
    xd = x.to(dev)
    xn = x.numpy()

    rows = []
    for name in args.formats:
        f = get_format(name)
        codes = encode(xd, f)
        cands = {"encode": [("quantlib", lambda f=f: encode(xd, f), r),
                            ("quantlib explicit",
                             lambda f=f: encode(xd, f, method="explicit"), 1)],
                 "decode": [("quantlib", lambda codes=codes, f=f: decode(codes, f), r),
                            ("quantlib explicit",
                             lambda codes=codes, f=f: decode(codes, f, method="explicit"), 1)]}
        same = {}
        if f.torch_dtype is not None and f.name != "e2m1":
            native = xd.to(f.torch_dtype)
            same["torch"] = same_semantics(f, lambda p, f=f: p.to(dev).to(f.torch_dtype).view(
                torch.uint8 if f.bits == 8 else torch.int16).cpu(), dev)
            cands["encode"].append(("torch", lambda f=f: xd.to(f.torch_dtype), r))
            cands["decode"].append(("torch", lambda native=native: native.to(torch.float32), r))
        if ml_dtypes is not None and dev == "cpu":
            mld = xn.astype(f.ml_dtype)
            view = np.uint8 if f.bits <= 8 else np.uint16
            same["ml_dtypes"] = same_semantics(f, lambda p, f=f, view=view: torch.from_numpy(
                p.numpy().astype(f.ml_dtype).view(view).astype(np.int32)), dev)
            cands["encode"].append(("ml_dtypes", lambda f=f: xn.astype(f.ml_dtype), r))
            cands["decode"].append(("ml_dtypes", lambda mld=mld: mld.astype(np.float32), r))
        for op, impls in cands.items():
            results = timed_round_robin(impls)
            base = [t for impl, t in results if not impl.startswith("quantlib")]
            best = min(base) if base else None
            for impl, t in results:
                rows.append([f.title, op, impl, t * 1e3, n / t / 1e6,
                             best / t if best else None,
                             "reference" if "explicit" in impl else
                             same.get(impl, "") if op == "encode" else ""])
    t = Table(["format", "op", "implementation", "ms", "Melem/s", "speed vs best baseline",
               "same semantics"], rows,
              title=f"codecs, {n:,} float32 elements, {dev}, "
                    f"{torch.get_num_threads()} CPU threads, torch {torch.__version__}", digits=2)
    print(t)


if __name__ == "__main__":
    main()
