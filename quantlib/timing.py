"""The one timer: benchmarks, the kernels' autotuner, the training-step timers and chapter 6's GEMV
table all time with it.

`time_ms(fn, reps)` returns (ms per call, how). One timed unit is a group of `calls` calls
fn(0), ..., fn(calls - 1) (fn(i) may pick the i-th of several input copies, so that a working
set smaller than L2 is not served from it).

- clock="events" (a CUDA GPU): `warmup` eager calls on a side stream (compiles, tuning, caches;
  a capture needs them off the capturing stream), the group captured in a CUDA graph and
  replayed once (the first replay uploads the graph), then replays timed between CUDA events:
  Python and launch overheads are excluded, for quantlib and the baselines alike. graph=False,
  or a capture that fails (logged with `log` and said in `how`; fallback=False raises it
  instead), times the eager group between the same events (overheads partly hidden).
- clock="wall": `warmup` eager calls, then perf_counter around each group, waiting for the GPU
  when this process uses one (host time counts: what a CPU run or a whole step costs).

stat="median": the median over `reps` groups, each between its own pair of events or clock
reads; stat="mean": one pair around `reps` groups run back to back.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def time_ms(fn: Callable[[int], object], reps: int = 20, *, calls: int = 1, warmup: int = 1,
            clock: str = "events", graph: bool = True, stat: str = "median",
            fallback: bool = True, log: Callable[[str], None] | None = None) -> tuple[float, str]:
    """(ms per call of fn(i), how it was timed: "cuda graph", "eager", "eager (Error)")."""
    if clock not in ("events", "wall") or stat not in ("median", "mean"):
        raise ValueError(f"clock is 'events' or 'wall' and stat 'median' or 'mean', got "
                         f"clock={clock!r}, stat={stat!r}")
    if reps < 1 or calls < 1 or warmup < 0:
        raise ValueError(f"reps and calls must be >= 1 and warmup >= 0, got reps={reps}, "
                         f"calls={calls}, warmup={warmup}")

    def group():
        for i in range(calls):
            fn(i)
    if clock == "wall":
        return _wall_ms(fn, group, reps, calls, warmup, stat), "eager"
    return _events_ms(fn, group, reps, calls, warmup, graph, stat, fallback, log)


def _wall_ms(fn, group, reps, calls, warmup, stat) -> float:
    def sync():      # never starts CUDA in a CPU-only run
        if torch.cuda.is_initialized():
            torch.cuda.synchronize()
    for i in range(warmup):
        fn(i % calls)
    sync()
    if stat == "mean":
        t0 = time.perf_counter()
        for _ in range(reps):
            group()
        sync()
        return (time.perf_counter() - t0) * 1e3 / (reps * calls)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        group()
        sync()
        ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts) / calls


def _events_ms(fn, group, reps, calls, warmup, graph, stat, fallback, log):
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for i in range(warmup):
            fn(i % calls)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    run, how = group, "eager"
    if graph:
        try:
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                group()
            run, how = g.replay, "cuda graph"
        except Exception as e:  # noqa: BLE001 (said in `how`, timed eagerly)
            if not fallback:
                raise
            torch.cuda.synchronize()
            how = f"eager ({type(e).__name__})"
            if log is not None:
                log(f"no CUDA graph ({type(e).__name__}: {str(e)[:100]}): timing eager calls")
    run()
    torch.cuda.synchronize()
    if stat == "mean":
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(reps):
            run()
        b.record()
        torch.cuda.synchronize()
        return a.elapsed_time(b) / (reps * calls), how
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
          for _ in range(reps)]
    for a, b in ev:
        a.record()
        run()
        b.record()
    torch.cuda.synchronize()
    return statistics.median(a.elapsed_time(b) for a, b in ev) / calls, how
